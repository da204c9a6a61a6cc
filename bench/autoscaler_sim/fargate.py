"""The model of ECS Fargate the policies run against (the package's docstring describes it):
event-driven, exact times, seeded."""

from __future__ import annotations

import heapq
import itertools
import math
import random
import statistics
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

from bench.autoscaler_sim.policies import OURS, Policy, Service, initial_tasks, make_policy
from bench.workloads import Job
from lambdas.autoscaler.policy import Observation

DRAIN_CAP_S = 6 * 3600.0  # after the day, stop waiting for a queue that never drains
SAMPLE_S = 60.0  # time series resolution for the plots

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
