"""Replay a workload through the autoscaler's policy and the published anchors on a model of
ECS Fargate; report waits, cost and killed jobs, and plot one run.

    python -m bench.autoscaler_sim simulate --workload batch    # one day, every policy, a PNG
    python -m bench.autoscaler_sim simulate --csv jobs.csv --interval 60 --no-protection
    python -m bench.autoscaler_sim bench                        # the full benchmark table
    python -m bench.autoscaler_sim csv --workload long out.csv  # write a generated workload

The model (event-driven, exact times):

* jobs (`bench/workloads.py`: a CSV of `arrival_s,service_s` or a generated day) are published
  into one FIFO queue;
* a running ECS task has `concurrency` slots; the idle slot that has waited longest takes the
  next message (Redis serves blocked BRPOP clients in order), so work spreads over all tasks;
* the policy is called every `interval_s` from t = 0 with what the handler sees: waiting,
  in flight (busy slots, including those of stopping tasks), running and pending tasks, the
  desired count, completions since the last call and the handler's arrival estimate
  max(0, d waiting + d in flight + completed);
* ECS then launches tasks up to the desired count; a task is up after a start-up delay drawn
  uniformly from 45-90 s and is billed from launch (Fargate bills from the image pull);
* above the desired count ECS first cancels pending tasks (newest first), then stops running
  ones. With scale-in protection (the workers' default) only tasks idle for the workers'
  5 s grace are unprotected, and only those are stopped; a busy task above the desired count
  keeps serving. Without protection ECS picks tasks without knowing which are busy (seeded
  random); a stopping worker takes no new message, finishes what it runs (Celery's warm
  shutdown) and is killed after the 120 s stop timeout: its unfinished jobs are *killed* and
  redelivered to the head of the queue (immediately; in production after the visibility
  timeout, so this is the optimistic case).

Metrics (jobs published after the warm-up): wait = publish to the start of the run that
completed (a killed job's wait includes its lost run); p50/p95/p99 and the share of jobs
waiting longer than the target ("late"); task-hours billed (from the warm-up to the end of the
day, or until the queue has drained); the work's lower bound = sum of service seconds /
concurrency (every slot of every task busy all the time, no start-up); jobs killed.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import json
import math
import platform
import random
import statistics
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from bench.workloads import DAY_S, SHAPES, Job, generate, read_csv, write_csv
from config import CONFIG_DIR
from lambdas.autoscaler.policy import Observation, PolicyConfig, decide

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"


OURS = "policy.py"
ANCHORS = ("step 5..50", "AWS backlog/task", "KEDA redis list", "Copilot worker")
POLICIES = (OURS, *ANCHORS)
# The goal's setup: target wait 300 s, 1-50 tasks of 4 slots, scale-in protection on.
HEADLINE_INTERVALS_S = (300, 60)
SEEDS = (1, 2, 3)  # one day per shape and seed; the tables show seed 1
# The goals: at 300 s a mean late share at most 60 % of the best anchor's, at a
# geometric-mean cost within 1.3 x the lower bound; at 60 s at most 1 % late within 1.25 x.
GOALS = {300: ("anchor", 0.6, 1.3), 60: ("absolute", 0.01, 1.25)}
WARMUP_S = 1800.0  # every policy starts at min_tasks; the first half hour is not measured
DRAIN_CAP_S = 6 * 3600.0  # after the day, stop waiting for a queue that never drains
SAMPLE_S = 60.0  # time series resolution for the plots


@dataclass(frozen=True)
class Service:
    """One worker service on Fargate, as the simulator models it."""

    concurrency: int = 4  # slots per ECS task
    min_tasks: int = 1
    max_tasks: int = 50
    target_wait_s: float = 300.0
    protection: bool = True  # ECS task scale-in protection while a worker has work
    startup_s: tuple[float, float] = (45.0, 90.0)  # launch to ready, uniform
    stop_timeout_s: float = 120.0  # SIGTERM to SIGKILL (ECS stopTimeout, its maximum)
    protection_grace_s: float = 5.0  # a worker releases protection after this long idle


# ---------------------------------------------------------------- policies


class Policy(Protocol):
    def decide(self, observation: Observation) -> int: ...


def _clamp(value: int, low: int, high: int) -> int:
    return min(max(value, low), high)


def _known(observation: Observation) -> tuple[float, int, int]:
    # The simulator always fills these; the anchors are not written for missing data.
    assert observation.now is not None
    assert observation.waiting is not None
    assert observation.desired is not None
    return observation.now, observation.waiting, observation.desired


class Ours:
    """`lambdas/autoscaler/policy.py`, with its state round-tripped through JSON."""

    def __init__(self, service: Service, interval_s: float) -> None:
        self.config = PolicyConfig(
            min_tasks=service.min_tasks,
            max_tasks=service.max_tasks,
            concurrency=service.concurrency,
            target_wait_s=service.target_wait_s,
            interval_s=interval_s,
        )
        self.state: dict[str, Any] | None = None
        self.reasons: list[tuple[float, str]] = []

    def decide(self, observation: Observation) -> int:
        decision = decide(observation, self.config, self.state)
        self.state = json.loads(json.dumps(decision.state, allow_nan=False))
        return decision.desired


class StepRule:
    """The seed design: +5 above 200 waiting, -2 below 20, within 5..50 whatever the service
    says."""

    def __init__(self, low: int = 5, high: int = 50) -> None:
        self.low, self.high = low, high

    def decide(self, observation: Observation) -> int:
        _, waiting, desired = _known(observation)
        if waiting > 200:
            desired += 5
        elif waiting < 20:
            desired -= 2
        return _clamp(desired, self.low, self.high)


class BacklogPerTask:
    """Target tracking on backlog per task (AWS's SQS recipe, Copilot's worker service).

    Acceptable backlog per task = acceptable latency / processing time of one message by one
    task; a task runs `concurrency` messages at once, so its processing time per message is
    mean run time / concurrency. desired = ceil(waiting / target). The backlog is the visible
    queue only (ApproximateNumberOfMessagesVisible: in-flight messages are not counted).
    A scale-out waits for the scale-out cooldown since the last scale-out; a scale-in for the
    scale-in cooldown since the last scaling of either direction.
    """

    def __init__(
        self, service: Service, mean_run_s: float, out_cooldown_s: float, in_cooldown_s: float
    ) -> None:
        self.service = service
        self.target = service.target_wait_s * service.concurrency / mean_run_s
        self.out_cooldown_s, self.in_cooldown_s = out_cooldown_s, in_cooldown_s
        self.last_out = self.last_in = -math.inf

    def decide(self, observation: Observation) -> int:
        now, waiting, desired = _known(observation)
        s = self.service
        want = _clamp(math.ceil(waiting / self.target), s.min_tasks, s.max_tasks)
        if want > desired and now - self.last_out >= self.out_cooldown_s:
            self.last_out = now
            return want
        if want < desired and now - max(self.last_out, self.last_in) >= self.in_cooldown_s:
            self.last_in = now
            return want
        return desired


class KedaRedisList:
    """KEDA's Redis list scaler driving the Kubernetes HPA.

    listLength target 5 (KEDA's documented default), activation above 0 messages, HPA
    desired = ceil(length / target) unless within 10 % of the current ratio, scale-down to
    the largest recommendation of the last 300 s (window inclusive, because one evaluation
    per cadence would otherwise never see its predecessor at the 300 s cadence), scale to
    zero (min_tasks 0) after KEDA's cooldownPeriod of 300 s without activity.
    """

    LIST_LENGTH = 5
    TOLERANCE = 0.1
    STABILIZATION_S = 300.0
    COOLDOWN_S = 300.0

    def __init__(self, service: Service) -> None:
        self.service = service
        self.last_active = -math.inf
        self.recommendations: list[tuple[float, int]] = []

    def decide(self, observation: Observation) -> int:
        now, waiting, desired = _known(observation)
        s = self.service
        if waiting > 0:
            self.last_active = now
        elif s.min_tasks == 0 and now - self.last_active >= self.COOLDOWN_S:
            self.recommendations.clear()
            return 0
        hpa_min = max(1, s.min_tasks)
        if desired == 0:
            recommendation = math.ceil(waiting / self.LIST_LENGTH)
        else:
            ratio = waiting / desired / self.LIST_LENGTH
            if abs(ratio - 1) <= self.TOLERANCE:
                recommendation = desired
            else:
                recommendation = math.ceil(waiting / self.LIST_LENGTH)
        recommendation = _clamp(recommendation, hpa_min, s.max_tasks)
        self.recommendations = [
            (t, r) for t, r in self.recommendations if now - t <= self.STABILIZATION_S
        ]
        self.recommendations.append((now, recommendation))
        if recommendation >= desired:
            return recommendation
        return min(desired, max(r for _, r in self.recommendations))


def make_policy(name: str, service: Service, interval_s: float, mean_run_s: float) -> Policy:
    if name == OURS:
        return Ours(service, interval_s)
    if name == "step 5..50":
        return StepRule()
    if name == "AWS backlog/task":
        # Application Auto Scaling's default cooldowns for ECS: 300 s each way.
        return BacklogPerTask(service, mean_run_s, 300, 300)
    if name == "KEDA redis list":
        return KedaRedisList(service)
    if name == "Copilot worker":
        return BacklogPerTask(service, mean_run_s, 60, 120)
    raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")


def initial_tasks(policy: str, service: Service) -> int:
    return 5 if policy == "step 5..50" else service.min_tasks


# ---------------------------------------------------------------- the Fargate model

PENDING, RUNNING, STOPPING, STOPPED = range(4)
# Order of simultaneous events: capacity first, then arrivals, then decisions.
_READY, _DONE, _KILL, _ARRIVAL, _RECONCILE, _DECIDE, _SAMPLE = range(7)


class _Task:
    __slots__ = ("busy", "idle_since", "jobs", "launched", "state")

    def __init__(self, launched: float) -> None:
        self.launched = launched
        self.state = PENDING
        self.busy = 0
        self.idle_since = launched
        self.jobs: dict[int, int] = {}  # attempt number -> job index


@dataclass
class Series:
    """Samples every SAMPLE_S seconds, and each measured job's (arrival, wait)."""

    t: list[float] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)
    in_flight: list[int] = field(default_factory=list)
    desired: list[int] = field(default_factory=list)
    running: list[int] = field(default_factory=list)
    pending: list[int] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)


@dataclass
class RunResult:
    workload: str
    policy: str
    interval_s: float
    protection: bool
    jobs: int
    task_hours: float  # billed, launch to stop, within the measured window
    lower_bound_hours: float  # sum of service seconds / concurrency
    cost_x: float  # task_hours / lower_bound_hours
    p50_wait_s: float
    p95_wait_s: float
    p99_wait_s: float
    mean_wait_s: float
    late: float  # share of jobs that waited longer than the target
    killed: int  # runs killed at the stop timeout (each redelivered)
    max_waiting: int
    actions: int  # changes of the desired count
    unfinished: int  # jobs never started by the end (counted with their wait so far)
    end_s: float
    seed: int = 1
    series: Series | None = None


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return float(sorted_values[min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1)])


def simulate(
    jobs: Sequence[Job],
    policy: str | Policy,
    *,
    service: Service | None = None,
    interval_s: float = 300.0,
    seed: int = 1,
    warmup_s: float = 0.0,
    workload: str = "csv",
    record: bool = False,
    initial: int | None = None,
    duration_s: float | None = None,
) -> RunResult:
    """Replay `jobs` (sorted by arrival) under `policy` (a name from POLICIES or an object
    with `decide(observation) -> int`). The run lasts `duration_s` (default: until the last
    arrival), then until the queue has drained, at most DRAIN_CAP_S longer."""
    s = service or Service()
    c = s.concurrency
    arrival = [j.arrival_s for j in jobs]
    service_s = [j.service_s for j in jobs]
    if any(b < a for a, b in itertools.pairwise(arrival)):
        raise ValueError("jobs must be sorted by arrival")
    mean_run = statistics.fmean(service_s) if jobs else 1.0
    name = policy if isinstance(policy, str) else type(policy).__name__
    scaler = make_policy(policy, s, interval_s, mean_run) if isinstance(policy, str) else policy
    rng = random.Random(f"fargate-{seed}")
    day_end = max(duration_s or 0.0, arrival[-1] if jobs else 0.0)
    n = len(jobs)

    events: list[tuple[float, int, int, _Task | None]] = []
    sequence = 0

    def push(t: float, kind: int, task: _Task | None = None) -> None:
        nonlocal sequence
        sequence += 1
        heapq.heappush(events, (t, kind, sequence, task))

    queue: deque[int] = deque()
    free: deque[_Task] = deque()  # one entry per idle slot, longest idle first
    live: dict[_Task, None] = {}  # running tasks (not stopping), in start order
    pending: list[_Task] = []
    waits: list[float] = [math.nan] * n
    attempts: dict[int, tuple[_Task, int]] = {}
    in_flight = completed = killed = actions = max_waiting = 0
    task_s = 0.0
    series = Series() if record else None

    def bill(task: _Task, until: float) -> None:
        nonlocal task_s
        task_s += max(0.0, until - max(task.launched, warmup_s))

    def stop(task: _Task, t: float) -> None:
        task.state = STOPPED
        bill(task, t)

    def dispatch(t: float) -> None:
        nonlocal in_flight, max_waiting
        while queue and free:
            task = free.popleft()
            if task.state != RUNNING:
                continue  # a slot of a task that has since been told to stop
            job = queue.popleft()
            waits[job] = t - arrival[job]
            task.busy += 1
            in_flight += 1
            push(t + service_s[job], _DONE, task)
            task.jobs[sequence] = job
            attempts[sequence] = (task, job)
        if t >= warmup_s:
            max_waiting = max(max_waiting, len(queue))

    def reconcile(t: float) -> None:
        count = len(live) + len(pending)
        while count < desired:
            task = _Task(t)
            pending.append(task)
            push(t + rng.uniform(*s.startup_s), _READY, task)
            count += 1
        while count > desired and pending:
            stop(pending.pop(), t)  # newest first
            count -= 1
        if count <= desired:
            return
        if s.protection:
            candidates = [
                task
                for task in live
                if task.busy == 0 and t - task.idle_since >= s.protection_grace_s
            ]
        else:
            candidates = list(live)
            rng.shuffle(candidates)  # ECS does not know which workers are busy
        for task in candidates[: count - desired]:
            del live[task]
            if task.busy == 0:
                stop(task, t)
            else:
                task.state = STOPPING  # warm shutdown: finish what runs, take nothing new
                push(t + s.stop_timeout_s, _KILL, task)

    desired = initial if initial is not None else initial_tasks(name, s)
    for _ in range(desired):
        first = _Task(0.0)
        first.state = RUNNING
        live[first] = None
        free.extend([first] * c)
    push(0.0, _DECIDE)
    if record:
        push(0.0, _SAMPLE)

    next_job = 0
    completed_since = 0
    last_waiting = last_in_flight = 0
    end = 0.0
    while True:
        t_event = events[0][0] if events else math.inf
        kind_event = events[0][1] if events else _SAMPLE
        if next_job < n and (
            arrival[next_job] < t_event or (arrival[next_job] == t_event and kind_event > _ARRIVAL)
        ):
            t = arrival[next_job]
            queue.append(next_job)
            next_job += 1
            dispatch(t)
            continue
        t, kind, attempt, task = heapq.heappop(events)
        if kind == _DONE:
            assert task is not None
            if attempt not in attempts:
                continue  # killed before it finished
            del attempts[attempt]
            del task.jobs[attempt]
            task.busy -= 1
            in_flight -= 1
            completed += 1
            completed_since += 1
            if task.state == STOPPING:
                if task.busy == 0:
                    stop(task, t)
                continue
            free.append(task)
            dispatch(t)
            if task.busy == 0:
                task.idle_since = t
                if s.protection and len(live) + len(pending) > desired:
                    push(t + s.protection_grace_s, _RECONCILE)
        elif kind == _READY:
            assert task is not None
            if task.state != PENDING:
                continue  # cancelled while starting
            pending.remove(task)
            task.state = RUNNING
            task.idle_since = t
            live[task] = None
            free.extend([task] * c)
            dispatch(t)
        elif kind == _KILL:
            assert task is not None
            if task.state != STOPPING:
                continue
            # SIGKILL: unfinished runs are lost and their messages go back to the queue.
            for number, job in sorted(task.jobs.items(), reverse=True):
                del attempts[number]
                queue.appendleft(job)
                waits[job] = math.nan
                killed += arrival[job] >= warmup_s
            in_flight -= task.busy
            task.busy = 0
            task.jobs.clear()
            stop(task, t)
            dispatch(t)
        elif kind == _RECONCILE:
            reconcile(t)
        elif kind == _SAMPLE:
            assert series is not None
            series.t.append(t)
            series.waiting.append(len(queue))
            series.in_flight.append(in_flight)
            series.desired.append(desired)
            series.running.append(len(live))
            series.pending.append(len(pending))
            push(t + SAMPLE_S, _SAMPLE)
        elif kind == _DECIDE:
            waiting = len(queue)
            observation = Observation(
                now=t,
                waiting=waiting,
                in_flight=in_flight,
                running_tasks=len(live),
                pending_tasks=len(pending),
                desired=desired,
                arrived_since_last=max(
                    0, waiting - last_waiting + in_flight - last_in_flight + completed_since
                ),
                completed_since_last=completed_since,
            )
            new = scaler.decide(observation)
            if name == OURS and not s.min_tasks <= new <= s.max_tasks:
                raise AssertionError(f"{name} left the bounds: {new}")
            if new != desired:
                actions += 1
                desired = new
            completed_since = 0
            last_waiting, last_in_flight = waiting, in_flight
            reconcile(t)
            drained = next_job == n and not queue and in_flight == 0
            if t >= day_end and (drained or t >= day_end + DRAIN_CAP_S):
                end = t
                break
            push(t + interval_s, _DECIDE)

    for task in [*live, *pending]:
        bill(task, end)
    for task in {task for task, _ in attempts.values() if task.state == STOPPING}:
        bill(task, end)
    measured = [i for i in range(n) if arrival[i] >= warmup_s]
    unfinished = 0
    for i in measured:
        if math.isnan(waits[i]):
            waits[i] = end - arrival[i]
            unfinished += 1
    measured_waits = sorted(waits[i] for i in measured)
    lower_bound_s = sum(service_s[i] for i in measured) / c
    late = sum(1 for w in measured_waits if w > s.target_wait_s)
    if series is not None:
        series.arrivals = [arrival[i] for i in measured]
        series.waits = [waits[i] for i in measured]
    return RunResult(
        workload=workload,
        policy=name,
        interval_s=interval_s,
        protection=s.protection,
        jobs=len(measured),
        task_hours=task_s / 3600,
        lower_bound_hours=lower_bound_s / 3600,
        cost_x=task_s / lower_bound_s if lower_bound_s else math.inf,
        p50_wait_s=_percentile(measured_waits, 0.50),
        p95_wait_s=_percentile(measured_waits, 0.95),
        p99_wait_s=_percentile(measured_waits, 0.99),
        mean_wait_s=statistics.fmean(measured_waits) if measured_waits else 0.0,
        late=late / len(measured_waits) if measured_waits else 0.0,
        killed=killed,
        max_waiting=max_waiting,
        actions=actions,
        unfinished=unfinished,
        end_s=end,
        seed=seed,
        series=series,
    )


# ---------------------------------------------------------------- plot


def plot(result: RunResult, path: Path, *, target_wait_s: float, title: str) -> None:
    """Queue depth, desired/running tasks and waits over time, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    series = result.series
    if series is None:
        raise ValueError("run the simulation with record=True to plot it")
    hours = [t / 3600 for t in series.t]
    fig, (ax_queue, ax_tasks, ax_wait) = plt.subplots(3, 1, figsize=(10, 7.5), sharex=True)
    ax_queue.plot(hours, series.waiting, lw=0.8, label="waiting")
    ax_queue.plot(hours, series.in_flight, lw=0.8, label="in flight")
    ax_queue.set_ylabel("messages")
    ax_queue.legend(loc="upper right", fontsize=8)
    ax_tasks.step(hours, series.desired, where="post", lw=0.9, label="desired")
    ax_tasks.plot(hours, series.running, lw=0.8, label="running")
    ax_tasks.plot(
        hours,
        [r + p for r, p in zip(series.running, series.pending, strict=True)],
        lw=0.6,
        ls=":",
        label="running + starting",
    )
    ax_tasks.set_ylabel("ECS tasks")
    ax_tasks.legend(loc="upper right", fontsize=8)
    # Waits per 5-minute bin of publish time: median and worst.
    bins: dict[int, list[float]] = {}
    for arrival, wait in zip(series.arrivals, series.waits, strict=True):
        bins.setdefault(int(arrival // 300), []).append(wait)
    keys = sorted(bins)
    ax_wait.plot(
        [(k * 300 + 150) / 3600 for k in keys],
        [statistics.median(bins[k]) for k in keys],
        lw=0.8,
        label="median wait (5 min bins)",
    )
    ax_wait.plot(
        [(k * 300 + 150) / 3600 for k in keys],
        [max(bins[k]) for k in keys],
        lw=0.8,
        label="longest wait",
    )
    ax_wait.axhline(target_wait_s, color="red", lw=0.8, ls="--", label="target")
    ax_wait.set_ylabel("wait s (by publish time)")
    ax_wait.set_xlabel("hours")
    ax_wait.legend(loc="upper right", fontsize=8)
    fig.suptitle(
        f"{title}\np50/p95/p99 wait {result.p50_wait_s:.0f}/{result.p95_wait_s:.0f}/"
        f"{result.p99_wait_s:.0f} s, late {result.late:.1%}, "
        f"{result.task_hours:.0f} task-h = {result.cost_x:.2f} x lower bound, "
        f"killed {result.killed}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


# ---------------------------------------------------------------- runs and report


@dataclass(frozen=True)
class Case:
    workload: str
    policy: str
    interval_s: float
    protection: bool
    seed: int = 1


def run_case(case: Case, *, record: bool = False) -> RunResult:
    jobs = generate(case.workload, case.seed)
    return simulate(
        jobs,
        case.policy,
        service=Service(protection=case.protection),
        interval_s=case.interval_s,
        seed=case.seed,
        warmup_s=WARMUP_S,
        workload=case.workload,
        record=record,
        duration_s=DAY_S,
    )


def _run_plain(case: Case) -> RunResult:
    return run_case(case)


def run_cases(cases: Sequence[Case], processes: int) -> list[RunResult]:
    if processes <= 1:
        return [_run_plain(c) for c in cases]
    # Slow cases first (short cadences, many jobs), so the processes finish together.
    order = sorted(cases, key=lambda c: (c.interval_s, c.workload))
    with ProcessPoolExecutor(max_workers=processes) as pool:
        done = dict(zip(order, pool.map(_run_plain, order, chunksize=1), strict=True))
    return [done[c] for c in cases]


def goals(results: Sequence[RunResult], interval_s: float) -> dict[str, Any]:
    """Per policy over the shapes (and seeds): mean late share, geometric-mean cost, kills;
    and whether the policy meets the issue's goal for this cadence."""
    by_policy: dict[str, list[RunResult]] = {}
    for r in results:
        if r.interval_s == interval_s and r.protection:
            by_policy.setdefault(r.policy, []).append(r)
    summary = {
        policy: {
            "mean_late": statistics.fmean(r.late for r in runs),
            "worst_late": max(r.late for r in runs),
            "geomean_cost_x": math.exp(statistics.fmean(math.log(r.cost_x) for r in runs)),
            "killed": sum(r.killed for r in runs),
        }
        for policy, runs in by_policy.items()
    }
    anchors = {p: m for p, m in summary.items() if p != OURS}
    best = min(anchors, key=lambda p: anchors[p]["mean_late"]) if anchors else None
    verdict: dict[str, Any] = {}
    if OURS in summary and interval_s in GOALS:
        kind, late_goal, cost_goal = GOALS[int(interval_s)]
        late_limit = (
            late_goal * anchors[best]["mean_late"] if kind == "anchor" and best else late_goal
        )
        ours = summary[OURS]
        verdict = {
            "late_limit": late_limit,
            "cost_limit": cost_goal,
            "met": ours["mean_late"] <= late_limit
            and ours["geomean_cost_x"] <= cost_goal
            and ours["killed"] == 0,
        }
    return {"interval_s": interval_s, "policies": summary, "best_anchor": best, **verdict}


def _table(results: Sequence[RunResult]) -> list[str]:
    lines = [
        "| workload | policy | p50 s | p95 s | p99 s | late | task-h | lower bound h | "
        "x bound | killed | max waiting |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        label = f"**{r.policy}**" if r.policy == OURS else r.policy
        lines.append(
            f"| {r.workload} | {label} | {r.p50_wait_s:.0f} | {r.p95_wait_s:.0f} | "
            f"{r.p99_wait_s:.0f} | {r.late:.1%} | {r.task_hours:.1f} | "
            f"{r.lower_bound_hours:.1f} | {r.cost_x:.2f} | {r.killed} | {r.max_waiting} |"
        )
    return lines


def _goal_lines(g: dict[str, Any]) -> list[str]:
    lines = [
        "| policy | mean late over shapes | worst shape | geo-mean x bound | killed |",
        "|---|---|---|---|---|",
    ]
    for policy, m in g["policies"].items():
        label = f"**{policy}**" if policy == OURS else policy
        lines.append(
            f"| {label} | {m['mean_late']:.1%} | {m['worst_late']:.1%} | "
            f"{m['geomean_cost_x']:.2f} | {m['killed']} |"
        )
    return lines


def compact(results: Sequence[RunResult], interval_s: float) -> list[str]:
    """Late share / cost multiple per shape and policy, means over the seeds."""
    runs = [r for r in results if r.interval_s == interval_s and r.protection]
    shapes = list(dict.fromkeys(r.workload for r in runs))
    lines = [
        "| shape | " + " | ".join(POLICIES) + " |",
        "|---" * (len(POLICIES) + 1) + "|",
    ]
    for shape in [*shapes, "mean"]:  # the last row: mean late share, geometric-mean cost
        cells = []
        for policy in POLICIES:
            mine = [r for r in runs if r.policy == policy and shape in (r.workload, "mean")]
            late = statistics.fmean(r.late for r in mine)
            cost = math.exp(statistics.fmean(math.log(r.cost_x) for r in mine))
            cells.append(f"{late:.1%} / {cost:.2f}")
        lines.append(f"| {shape} | " + " | ".join(cells) + " |")
    return lines


def _goal_text(g: dict[str, Any], per_seed: list[dict[str, Any]]) -> list[str]:
    if "met" not in g:
        return []
    ours = g["policies"][OURS]
    kind = GOALS[int(g["interval_s"])][0]
    limit = (
        f"60 % of the best anchor's ({g['best_anchor']}, "
        f"{g['policies'][g['best_anchor']]['mean_late']:.1%}) = {g['late_limit']:.1%}"
        if kind == "anchor"
        else f"{g['late_limit']:.0%}"
    )
    seeds = ", ".join(
        f"seed {p['seed']}: {p['policies'][OURS]['mean_late']:.1%} late (limit "
        f"{p['late_limit']:.1%}), {p['policies'][OURS]['geomean_cost_x']:.3f} x "
        f"{'met' if p['met'] else 'NOT met'}"
        for p in per_seed
    )
    return [
        f"Goal: mean late share at most {limit}, geometric-mean cost at most "
        f"{g['cost_limit']:g} x the lower bound, no job killed. The policy: "
        f"{ours['mean_late']:.2%} late, {ours['geomean_cost_x']:.3f} x, {ours['killed']} killed: "
        f"**{'met' if g['met'] else 'NOT met'}** ({seeds}).",
        "",
    ]


def catalog_service(args: argparse.Namespace) -> Service:
    """The worker group's bounds, target and concurrency from the app's catalog (the first
    group unless --group names one); each flag given overrides its value."""
    from config import ConfigError, load_environment

    try:
        config = load_environment(args.env, args.config_dir)
    except ConfigError as exc:
        raise SystemExit(f"simulate: {exc}") from None
    name = args.group or next(iter(config.worker_groups))
    if name not in config.worker_groups:
        known = ", ".join(config.worker_groups)
        raise SystemExit(f"simulate: no worker group {name!r} in the catalog; groups: {known}")
    group = config.worker_groups[name]
    return Service(
        concurrency=args.concurrency or group.concurrency,
        min_tasks=group.min_tasks if args.min_tasks is None else args.min_tasks,
        max_tasks=args.max_tasks or group.max_tasks,
        target_wait_s=args.target or group.target_wait_s,
        protection=not args.no_protection,
    )


def main_simulate(args: argparse.Namespace) -> int:
    if args.csv:
        jobs, name = read_csv(args.csv), args.csv.stem
    else:
        jobs, name = generate(args.workload, args.seed), args.workload
    service = catalog_service(args)
    results = []
    started = time.monotonic()
    for policy in POLICIES:
        results.append(
            simulate(
                jobs,
                policy,
                service=service,
                interval_s=args.interval,
                seed=args.seed,
                warmup_s=args.warmup,
                workload=name,
                record=policy == args.plot_policy,
                duration_s=None if args.csv else DAY_S,
            )
        )
    print(
        f"{name}: {len(jobs)} jobs, decisions every {args.interval:g} s, target "
        f"{service.target_wait_s:g} s, {service.min_tasks}-{service.max_tasks} tasks x "
        f"{service.concurrency} slots, protection {'on' if service.protection else 'off'} "
        f"({time.monotonic() - started:.1f} s)\n"
    )
    print("\n".join(_table(results)))
    plotted = next(r for r in results if r.policy == args.plot_policy)
    # Outside the repository by default: a plot per try is not something to commit.
    out = args.plot or Path(tempfile.gettempdir()) / (
        f"autoscaler_{name}_{args.interval:g}s{'' if service.protection else '_no_protection'}.png"
    )
    plot(
        plotted,
        out,
        target_wait_s=service.target_wait_s,
        title=f"{name}, {plotted.policy}, decisions every {args.interval:g} s",
    )
    print(f"\nplot: {out}")
    return 0


def main_bench(args: argparse.Namespace) -> int:
    started = time.monotonic()
    shapes = tuple(args.workload or SHAPES)
    seeds = tuple(args.seed or SEEDS)
    cases = [
        Case(w, p, i, True, seed)
        for seed in seeds
        for i in HEADLINE_INTERVALS_S
        for w in shapes
        for p in POLICIES
    ] + [Case(w, p, 300, False, seeds[0]) for w in shapes for p in POLICIES]
    results = run_cases(cases, args.processes)
    output: Path = args.output
    output.mkdir(parents=True, exist_ok=True)
    plots = []
    shown = [Case(w, OURS, 300, True, seeds[0]) for w in shapes]
    shown += [Case(w, OURS, 60, True, seeds[0]) for w in ("batch", "spike") if w in shapes]
    shown += [Case(w, OURS, 300, False, seeds[0]) for w in ("steady",) if w in shapes]
    for case in shown:
        r = run_case(case, record=True)
        suffix = "" if case.protection else "_no_protection"
        path = output / f"autoscaler_sim_{case.workload}_{case.interval_s:g}s{suffix}.png"
        title = (
            f"{case.workload}, {OURS}, decisions every {case.interval_s:g} s, scale-in "
            f"protection {'on' if case.protection else 'off'}"
        )
        plot(r, path, target_wait_s=300, title=title)
        plots.append(path.name)
    meta = {
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "elapsed_s": round(time.monotonic() - started, 1),
        "machine": f"Python {platform.python_version()}, {platform.machine()}",
        "seeds": list(seeds),
        "service": asdict(Service()),
        "warmup_s": WARMUP_S,
    }
    goal = [goals(results, i) for i in HEADLINE_INTERVALS_S]
    per_seed = [
        goals([r for r in results if r.seed == seed], i)
        for i in HEADLINE_INTERVALS_S
        for seed in seeds
    ]
    for g, seed in zip(per_seed, [s for _ in HEADLINE_INTERVALS_S for s in seeds], strict=True):
        g["seed"] = seed
    markdown = render(results, goal, per_seed, meta, plots)
    print(markdown)
    (output / "autoscaler_sim.md").write_text(markdown)
    payload = {
        "meta": meta,
        "goals": goal,
        "goals_per_seed": per_seed,
        "runs": [
            {k: v for k, v in asdict(replace(r, series=None)).items() if k != "series"}
            for r in results
        ],
    }
    (output / "autoscaler_sim.json").write_text(json.dumps(payload, indent=1) + "\n")
    return 0


def render(
    results: Sequence[RunResult],
    goal: list[dict[str, Any]],
    per_seed: list[dict[str, Any]],
    meta: dict[str, Any],
    plots: list[str],
) -> str:
    lines = [
        "# Autoscaler simulation",
        "",
        f"{meta['generated']}, {meta['elapsed_s']:.0f} s on {meta['machine']}. Regenerate with "
        "`make bench-autoscaler`; one workload with a plot: `make simulate WORKLOAD=batch`.",
        "",
        f"Each shape is one day (`bench/workloads.py`), seeds {meta['seeds']}; the first "
        f"{WARMUP_S / 60:.0f} min are not measured. Service: target wait 300 s, 1-50 tasks of 4 "
        "slots, start-up 45-90 s, stop timeout 120 s. 'x bound' = task-hours / (sum of "
        "service seconds / 4). 'late' = share of jobs waiting longer than 300 s. Model: "
        "`bench/autoscaler_sim.py`'s docstring.",
        "",
    ]
    seed = meta["seeds"][0]
    for g in goal:
        interval = g["interval_s"]
        lines += [f"## Decisions every {interval:g} s, scale-in protection on", ""]
        lines += _goal_text(g, [p for p in per_seed if p["interval_s"] == interval])
        lines += _goal_lines(g)
        lines += ["", "Late share / cost (x lower bound), means over the seeds:", ""]
        lines += compact(results, interval)
        lines += ["", f"Seed {seed}:", ""]
        lines += _table(
            [r for r in results if r.interval_s == interval and r.protection and r.seed == seed]
        )
        lines += [""]
    off = [r for r in results if not r.protection]
    if off:
        lines += ["## Decisions every 300 s, scale-in protection off", ""]
        lines += _table(off)
        lines += [""]
    if plots:
        lines += ["Plots of the policy's runs: " + ", ".join(f"`{p}`" for p in plots), ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="command", required=True)

    one = sub.add_parser("simulate", help="one workload under every policy, with a plot")
    source = one.add_mutually_exclusive_group()
    source.add_argument("--workload", choices=sorted(SHAPES), default="batch")
    source.add_argument("--csv", type=Path, help="a CSV of arrival_s,service_s")
    one.add_argument("--seed", type=int, default=1)
    one.add_argument("--interval", type=float, default=300.0, help="seconds between decisions")
    # The group's own values from the app's catalog, unless these say otherwise.
    one.add_argument("--config-dir", type=Path, default=CONFIG_DIR, help="the app's config")
    one.add_argument("--env", default="dev", help="an environment of the config directory")
    one.add_argument("--group", help="a worker group of the catalog (default: the first)")
    one.add_argument("--target", type=float, help="target wait, seconds (the group's)")
    one.add_argument("--min-tasks", type=int, help="the group's min_tasks")
    one.add_argument("--max-tasks", type=int, help="the group's max_tasks")
    one.add_argument("--concurrency", type=int, help="the group's concurrency")
    one.add_argument("--no-protection", action="store_true", help="scale-in protection off")
    one.add_argument("--warmup", type=float, default=0.0, help="seconds not measured")
    one.add_argument(
        "--plot",
        type=Path,
        help="PNG path (default: autoscaler_<name>_<interval>s.png in the temporary directory)",
    )
    one.add_argument("--plot-policy", choices=POLICIES, default=OURS)

    bench = sub.add_parser("bench", help="every shape, policy and cadence; the results table")
    bench.add_argument("--workload", action="append", choices=sorted(SHAPES))
    bench.add_argument("--seed", action="append", type=int, help=f"default: {SEEDS}")
    bench.add_argument("--processes", type=int, default=2)
    bench.add_argument("--output", type=Path, default=RESULTS_DIR)

    export = sub.add_parser("csv", help="write a generated workload as CSV")
    export.add_argument("--workload", choices=sorted(SHAPES), required=True)
    export.add_argument("--seed", type=int, default=1)
    export.add_argument("path", type=Path)

    args = parser.parse_args(argv)
    if args.command == "simulate":
        return main_simulate(args)
    if args.command == "bench":
        return main_bench(args)
    write_csv(generate(args.workload, args.seed), args.path)
    print(f"wrote {args.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
