"""Chaos soak: real workers of the image's code lose processes and their broker, no work is lost.

`make chaos` runs this. Everything stays on 127.0.0.1 and every process it starts is stopped
on exit, Ctrl-C and failure included:

- a `redis-server` broker with append-only persistence and `appendfsync always` (a write is
  on disk before Redis answers it, so even a host crash keeps every acknowledged publish);
- worker processes started as the image starts them (`python -m celery_service worker`) for
  two worker groups: `interactive` (queues `fast` and `default`) and `batch` (queue `slow`);
- a publisher thread that submits --tasks tasks (default 10,000) at a steady rate over the
  first three quarters of the chaos phase, with the catalog's named priorities and durations
  from milliseconds to a few seconds; half of them apply an effect through the project's
  idempotency helper (`applied_once`). Publishing goes on while Redis is down: a publish that
  fails is retried with the same task id until it is acknowledged;
- a chaos loop that every few seconds `kill -9`s a whole worker (a crashed container), only a
  worker's main process (its pool processes orphaned), or one pool process, or sends a worker
  SIGTERM (an ECS stop); a replacement worker starts a second later. Halfway through it
  `kill -9`s Redis and starts it again on the same files.

After the chaos phase the driver waits until every submitted task is done (or dead-lettered)
or the drain deadline passes. Counting uses only the tasks' own ledger (see chaos_tasks), not
Celery's state: submitted, completed, lost, executed more than once, effects applied twice.
Every duplicate execution must be explained: the earlier execution of the same delivery was
in flight on a process hit by a kill, a SIGTERM or the Redis restart. Exit status 1 if a task
is lost (neither done nor in a dead-letter queue), an effect was applied twice, or duplicates
exceed that bound. Dead letters are counted and listed with their reason: they are kept for
an operator, not lost.
Results go to bench/results/chaos.{json,md} (not for a run with --no-write).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from bench.chaos_tasks import LEDGER_DIR_ENV, TASKS, WORKER_NAME_ENV
from celery_service import contract
from celery_service.dlq import DeadLetterQueues
from celery_service.factory import create_app
from celery_service.settings import Settings, variables_for
from tools.local_redis import (
    RedisServerMissingError,
    redis_server_binary,
    start_server,
)

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"
RESULTS_DIR = BENCH_DIR / "results"


# Short limits so a crashed worker's messages come back within the run. The visibility
# timeout obeys the platform's rule: hard limit 5 + retry backoff max 1 + margin 10 <= 20.
HARD_LIMIT_S = 5
VISIBILITY_TIMEOUT_S = 20
CATALOG: dict[str, Any] = {
    "visibility_timeout_s": VISIBILITY_TIMEOUT_S,
    "default_queue": "default",
    "result_expires_s": 600,
    "retry_backoff_max_s": 1,
    "queues": ["fast", "default", "slow"],
    "worker_groups": {
        "interactive": {
            "queues": ["fast", "default"],
            "concurrency": 3,
            "soft_time_limit_s": HARD_LIMIT_S - 1,
            "time_limit_s": HARD_LIMIT_S,
        },
        "batch": {
            "queues": ["slow"],
            "concurrency": 3,
            "soft_time_limit_s": HARD_LIMIT_S - 1,
            "time_limit_s": HARD_LIMIT_S,
        },
    },
    "tasks": {
        name: {"queue": queue, "priority": priority} for name, (queue, priority) in TASKS.items()
    },
    "schedules": {},
}
# Share of tasks per name, and (share, low ms, high ms) bands of their durations.
MIX: dict[str, tuple[float, list[tuple[float, int, int]]]] = {
    "chaos.urgent": (0.20, [(1.0, 1, 20)]),
    "chaos.normal": (0.40, [(0.9, 1, 100), (0.1, 100, 800)]),
    "chaos.bulk": (0.20, [(1.0, 1, 50)]),
    "chaos.default": (0.16, [(1.0, 5, 100)]),
    "chaos.report": (0.04, [(0.8, 100, 1500), (0.2, 1500, 3000)]),
}
EFFECT_SHARE = 0.5  # tasks that apply an effect through applied_once
SHUTDOWN_BUDGET_S = 2.0  # SIGTERM: running tasks get this long, then they are requeued
# A task that ended this shortly before a kill may not have been acknowledged yet (seconds).
ACK_GRACE_S = 1.0
# After Redis is back, workers need this long to reconnect and settle acks (seconds).
RECONNECT_SLACK_S = 2.0
REDIS_DOWN_S = 2.0  # how long the broker stays down (seconds)
ACTIONS = ("kill_worker", "kill_main", "kill_child", "sigterm")


@dataclass
class Options:
    tasks: int = 10_000
    duration_s: float = 180.0  # chaos phase; publishing spans its first three quarters
    drain_s: float = 180.0  # then wait at most this long for the rest
    interactive_workers: int = 3
    batch_workers: int = 2
    actions: tuple[str, ...] = ACTIONS
    action_every_s: tuple[float, float] = (4.0, 9.0)
    redis_restart: bool = True
    seed: int = 7
    verbose: bool = True


@dataclass
class Event:
    kind: str  # kill_worker | kill_main | kill_child | sigterm | redis_restart | exited
    worker: str  # "*" for the broker
    t0: float  # when it hit (epoch seconds)
    t1: float  # until when its processes could still lose an ack (exit, broker back)
    pid: int | None = None  # the one process hit (kill_child)
    running: int = 0  # executions on the hit processes running at t0
    in_flight: int = 0  # those, and the ones that ended within ACK_GRACE_S before t0
    duplicates: int = 0  # re-executions explained by this event


@dataclass
class Execution:
    task_id: str
    retries: int
    worker: str
    pid: int
    start: float
    end: float | None = None


@dataclass
class Report:
    submitted: int
    completed: int
    lost: int
    dead_lettered: int
    not_submitted: int
    executions: int
    retries: int
    executed_more_than_once: int
    duplicate_executions: int
    max_executions: int
    duplicate_bound: int
    unexplained_duplicates: int
    effect_tasks: int
    effects_applied: int
    effects_applied_twice: int
    effects_missing: int
    publish_retries: int
    actions: dict[str, int]
    events: list[Event] = field(default_factory=list)
    lost_ids: list[str] = field(default_factory=list)
    lost_never_started: int = 0  # of the lost: no execution at all
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    broker_left: dict[str, int] = field(default_factory=dict)
    # Longest time between a run's end and the kill that still made it run again (seconds).
    max_ack_lag_s: float = 0.0

    @property
    def ok(self) -> bool:
        return (
            self.lost == 0
            and self.not_submitted == 0
            and self.effects_applied_twice == 0
            and self.effects_missing == 0
            and self.duplicate_executions <= self.duplicate_bound
            and self.unexplained_duplicates == 0
        )


# ---------------------------------------------------------------- the ledger


class LedgerReader:
    """Tails every process's ledger file; only whole lines count (a kill can cut the last)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.offsets: dict[Path, int] = {}
        self.records: list[dict[str, Any]] = []
        self.done: set[str] = set()

    def poll(self) -> None:
        for path in sorted(self.directory.glob("*.jsonl")):
            with path.open("rb") as fh:
                fh.seek(self.offsets.get(path, 0))
                data = fh.read()
            complete = data[: data.rfind(b"\n") + 1]
            self.offsets[path] = self.offsets.get(path, 0) + len(complete)
            for line in complete.splitlines():
                record = json.loads(line)
                self.records.append(record)
                if record["e"] == "d":
                    self.done.add(record["id"])


def executions_of(records: Iterable[dict[str, Any]]) -> list[Execution]:
    """Pair each start with the end written by the same process for the same delivery."""
    runs: list[Execution] = []
    open_runs: dict[tuple[str, int, int], Execution] = {}
    for rec in sorted(records, key=lambda r: r["t"]):
        key = (rec["id"], rec["r"], rec["p"])
        if rec["e"] == "s":
            run = Execution(rec["id"], rec["r"], rec["w"], rec["p"], rec["t"])
            runs.append(run)
            open_runs[key] = run
        elif rec["e"] == "d" and key in open_runs:
            open_runs.pop(key).end = rec["t"]
    return runs


def _hit(event: Event, run: Execution) -> bool:
    """Was `run` on a process `event` hit, and not yet acknowledged when it hit?"""
    if event.worker != "*" and run.worker != event.worker:
        return False
    if event.pid is not None and run.pid != event.pid:
        return False
    return run.start <= event.t1 and (run.end is None or run.end >= event.t0 - ACK_GRACE_S)


def analyse(
    records: list[dict[str, Any]],
    submitted: dict[str, bool],
    events: list[Event],
    *,
    dead_letters: dict[str, str],
    not_submitted: int = 0,
    republished: frozenset[str] = frozenset(),
) -> Report:
    """The verdict from the ledger alone. `submitted`: task id -> applies an effect."""
    runs = executions_of(records)
    done = {r["id"] for r in records if r["e"] == "d"}
    effects = Counter(r["id"] for r in records if r["e"] == "x")
    per_delivery: dict[tuple[str, int], list[Execution]] = defaultdict(list)
    for run in runs:
        per_delivery[(run.task_id, run.retries)].append(run)
    per_task = Counter(run.task_id for run in runs)

    for event in events:
        event.in_flight = sum(1 for run in runs if _hit(event, run))
        event.running = sum(
            1
            for run in runs
            if _hit(event, run) and run.start <= event.t0 and (run.end or event.t0) >= event.t0
        )
    ack_lags: list[float] = []
    duplicates = unexplained = 0
    for deliveries in per_delivery.values():
        for earlier, _again in itertools.pairwise(deliveries):
            duplicates += 1
            cause = next((e for e in events if _hit(e, earlier)), None)
            if cause is None and earlier.task_id in republished and earlier.retries == 0:
                continue  # a publish retried after Redis took the first copy
            if cause is None:
                unexplained += 1
            else:
                cause.duplicates += 1
                if earlier.end is not None and earlier.end < cause.t0:
                    ack_lags.append(cause.t0 - earlier.end)
    not_done = set(submitted) - done
    failed = not_done & set(dead_letters)
    with_effect = {task_id for task_id, effect in submitted.items() if effect}
    return Report(
        submitted=len(submitted),
        completed=len(done & set(submitted)),
        lost=len(not_done - failed),
        dead_lettered=len(failed),
        not_submitted=not_submitted,
        executions=len(runs),
        retries=sum(1 for key in per_delivery if key[1] > 0),
        executed_more_than_once=sum(1 for n in per_task.values() if n > 1),
        duplicate_executions=duplicates,
        max_executions=max(per_task.values(), default=0),
        # Publish retries can enqueue a second copy when Redis took the first but its
        # answer was lost; each is one more allowed duplicate.
        duplicate_bound=sum(e.in_flight for e in events) + len(republished),
        unexplained_duplicates=unexplained,
        effect_tasks=len(with_effect),
        effects_applied=sum(effects[t] for t in with_effect),
        effects_applied_twice=sum(1 for t in with_effect if effects[t] > 1),
        effects_missing=len({t for t in with_effect & done if effects[t] == 0}),
        publish_retries=len(republished),
        actions=dict(Counter(e.kind for e in events)),
        events=events,
        lost_ids=sorted(not_done - failed)[:20],
        lost_never_started=len((not_done - failed) - set(per_task)),
        dead_letter_reasons=dict(Counter(dead_letters[t][:100] for t in failed)),
        max_ack_lag_s=round(max(ack_lags, default=0.0), 3),
    )


# ---------------------------------------------------------------- processes


class Broker:
    """redis-server with the append-only file; `kill9_and_restart` keeps port and files."""

    def __init__(self, workdir: Path) -> None:
        try:
            self.binary = redis_server_binary()
        except RedisServerMissingError as exc:
            raise SystemExit(str(exc)) from None
        self.dir = workdir / "redis"
        self.dir.mkdir()
        self.port = 0  # a free one chosen at the first start, kept by the restarts
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        options = {
            "appendonly": "yes",
            "appendfsync": "always",
            # Queue data is never evicted (the platform's rule for the broker).
            "maxmemory_policy": "noeviction",
        }
        log = (self.dir / "redis.log").open("ab")
        self.port, self.process = start_server(
            self.binary,
            self.dir,
            options,
            port=self.port or None,
            # Replaying the append-only file after a restart takes a while with 10,000 tasks.
            timeout_s=30,
            stdout=log,
            start_new_session=True,
        )

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10)

    def kill9(self) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill9()


@dataclass
class Worker:
    name: str
    group: str
    proc: subprocess.Popen[bytes]
    heartbeat: Path
    stopping: bool = False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def ready(self) -> bool:
        return self.heartbeat.exists()

    def children(self) -> list[int]:
        pid = self.proc.pid
        try:
            text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def killpg(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


class Fleet:
    """The worker processes; each in its own process group, so all of it can be killed."""

    def __init__(
        self, workdir: Path, broker_port: int, catalog: dict[str, Any] | None = None
    ) -> None:
        self.workdir = workdir
        self.ledger = workdir / "ledger"
        self.ledger.mkdir()
        self.logs = workdir / "logs"
        self.logs.mkdir()
        self.env = chaos_env(broker_port, catalog)
        self.workers: list[Worker] = []  # every worker ever started
        self.counts: Counter[str] = Counter()

    def start(self, group: str, command: str = "worker") -> Worker:
        """A worker of `group`, or with command "beat" the scheduler (named `group`-n)."""
        self.counts[group] += 1
        name = f"{group}-{self.counts[group]}"
        heartbeat = self.workdir / f"{name}.heartbeat"
        env = {
            **self.env,
            **({"CELERY_WORKER_GROUP": group} if command == "worker" else {}),
            "CELERY_HEARTBEAT_FILE": str(heartbeat),
            "CELERY_SHUTDOWN_BUDGET_S": str(SHUTDOWN_BUDGET_S),
            LEDGER_DIR_ENV: str(self.ledger),
            WORKER_NAME_ENV: name,
        }
        with (self.logs / f"{name}.log").open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "celery_service", command],
                cwd=ROOT,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        worker = Worker(name, group, proc, heartbeat)
        self.workers.append(worker)
        return worker

    def serving(self) -> list[Worker]:
        return [w for w in self.workers if w.alive() and not w.stopping]

    def stop_all(self) -> None:
        for worker in self.workers:
            if worker.alive():
                with contextlib.suppress(ProcessLookupError):
                    worker.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for worker in self.workers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for worker in self.workers:
            worker.killpg()  # whatever is left, orphaned pool processes included
            with contextlib.suppress(subprocess.TimeoutExpired):
                worker.proc.wait(timeout=5)


def chaos_env(broker_port: int, catalog: dict[str, Any] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DD_", "ECS_"))}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            **variables_for(
                task_modules=["bench.chaos_tasks"],
                broker_host="127.0.0.1",
                broker_port=broker_port,
                broker_tls=False,
                catalog=catalog or CATALOG,
                log_level="WARNING",
            ),
        }
    )
    return env


def publisher_app(broker_port: int, catalog: dict[str, Any] | None = None) -> Celery:
    return create_app(Settings.from_env(chaos_env(broker_port, catalog)), main="chaos-publisher")


# ---------------------------------------------------------------- the run


@dataclass
class Plan:
    task_id: str
    name: str
    duration_ms: int
    effect: bool


def plan_tasks(count: int, rng: random.Random) -> list[Plan]:
    names = list(MIX)
    shares = [MIX[n][0] for n in names]
    plans = []
    for _ in range(count):
        name = rng.choices(names, shares)[0]
        bands = MIX[name][1]
        _, low, high = rng.choices(bands, [b[0] for b in bands])[0]
        task_id = str(uuid.UUID(int=rng.getrandbits(128)))
        duration_ms = rng.randint(low, high)
        plans.append(Plan(task_id, name, duration_ms, rng.random() < EFFECT_SHARE))
    return plans


class Publisher(threading.Thread):
    """Submits the plan at a steady rate; a failed publish is retried with the same id."""

    def __init__(self, app: Celery, plans: list[Plan], rate: float, stop: threading.Event):
        super().__init__(name="publisher", daemon=True)
        self.app, self.plans, self.rate, self.stop = app, plans, rate, stop
        self.submitted: dict[str, bool] = {}
        self.acked_at: dict[str, float] = {}  # task id -> when its publish returned (epoch)
        self.sent_at: dict[str, float] = {}  # task id -> when that publish began (epoch)
        self.republished: set[str] = set()  # ids whose publish was retried
        self.failed = 0

    def run(self) -> None:
        started = time.monotonic()
        for i, plan in enumerate(self.plans):
            delay = started + i / self.rate - time.monotonic()
            if delay > 0 and self.stop.wait(delay):
                return
            while not self.stop.is_set():
                began = time.time()
                try:
                    self.app.send_task(
                        plan.name,
                        args=[plan.duration_ms, plan.effect],
                        task_id=plan.task_id,
                        retry=True,
                        retry_policy={"max_retries": 3, "interval_start": 0.2},
                    )
                    self.submitted[plan.task_id] = plan.effect
                    self.acked_at[plan.task_id] = time.time()
                    self.sent_at[plan.task_id] = began
                    break
                except Exception:
                    self.republished.add(plan.task_id)
                    time.sleep(0.5)
            else:
                self.failed += 1


def dead_letters(client: redis.Redis) -> dict[str, str]:
    """Task id -> the exception that sent it to a dead-letter queue."""
    dlq = DeadLetterQueues(client)
    found: dict[str, str] = {}
    for queue in CATALOG["queues"]:
        for entry in dlq.entries(queue, limit=100_000):
            if entry.task_id:
                found[entry.task_id] = f"{entry.kind}: {entry.exception}"
    return found


def _broker_left(client: redis.Redis) -> dict[str, int]:
    left = {"unacked": int(client.hlen("unacked"))}
    for queue in CATALOG["queues"]:
        keys = contract.queue_keys(queue)
        left[queue] = sum(int(client.llen(k)) for k in keys)
    return left


def run(opts: Options, workdir: Path) -> Report:
    rng = random.Random(opts.seed)
    say = print if opts.verbose else (lambda *_a, **_k: None)
    began = time.time()
    broker = Broker(workdir)
    broker.start()
    fleet = Fleet(workdir, broker.port)
    stop = threading.Event()
    events: list[Event] = []
    publisher: Publisher | None = None
    try:
        wanted = {"interactive": opts.interactive_workers, "batch": opts.batch_workers}
        for group, n in wanted.items():
            for _ in range(n):
                fleet.start(group)
        _wait(lambda: all(w.ready() for w in fleet.workers), 90, "workers to start", fleet)
        say(f"broker on 127.0.0.1:{broker.port}, {len(fleet.workers)} workers ready")

        plans = plan_tasks(opts.tasks, rng)
        publish_s = opts.duration_s * 0.75
        publisher = Publisher(publisher_app(broker.port), plans, opts.tasks / publish_s, stop)
        publisher.start()
        ledger = LedgerReader(fleet.ledger)
        t_start = time.monotonic()
        redis_at = t_start + opts.duration_s / 2 if opts.redis_restart else None
        next_action = t_start + rng.uniform(*opts.action_every_s)
        pending: list[tuple[float, str]] = []  # (monotonic time, group) replacements due
        deck: list[str] = []

        while time.monotonic() - t_start < opts.duration_s:
            now = time.monotonic()
            if redis_at is not None and now >= redis_at:
                redis_at = None
                t0 = time.time()
                broker.kill9()
                time.sleep(REDIS_DOWN_S)
                broker.start()
                events.append(Event("redis_restart", "*", t0, time.time() + RECONNECT_SLACK_S))
                say(f"[{now - t_start:5.1f}s] redis-server kill -9, back after {REDIS_DOWN_S} s")
            if now >= next_action and opts.actions:
                next_action = now + rng.uniform(*opts.action_every_s)
                if not deck:  # every kind once per round, in a random order
                    deck = rng.sample(opts.actions, len(opts.actions))
                event = _act(fleet, rng, deck.pop())
                if event is not None:
                    events.append(event)
                    if event.kind != "kill_child":
                        pending.append((now + 1.0, fleet_group(fleet, event.worker)))
                    say(f"[{now - t_start:5.1f}s] {event.kind} {event.worker}")
            _replace(fleet, events, pending, now, say, t_start)
            _settle_sigterms(fleet, events)
            time.sleep(0.2)

        publisher.join(timeout=max(1.0, opts.duration_s))
        stop.set()
        publisher.join(timeout=30)
        client = broker.client()
        deadline = time.monotonic() + opts.drain_s
        while time.monotonic() < deadline:
            ledger.poll()
            _replace(fleet, events, pending, time.monotonic(), say, t_start)
            _settle_sigterms(fleet, events)
            missing = set(publisher.submitted) - ledger.done
            finished = not (missing - set(dead_letters(client)))
            # Also wait for the broker to hand back what the kills left unacknowledged, so
            # every duplicate they cause is counted.
            if finished and not any(_broker_left(client).values()):
                break
            time.sleep(1.0)
        ledger.poll()
        _settle_sigterms(fleet, events)
        report = analyse(
            ledger.records,
            dict(publisher.submitted),
            events,
            dead_letters=dead_letters(client),
            not_submitted=opts.tasks - len(publisher.submitted),
            republished=frozenset(publisher.republished),
        )
        report.broker_left = _broker_left(client)
        (workdir / "submitted.json").write_text(json.dumps(publisher.submitted))
        (workdir / "events.json").write_text(json.dumps([asdict(e) for e in events]))
        report.wall_s = round(time.time() - began, 1)
        return report
    finally:
        stop.set()
        fleet.stop_all()
        broker.stop()


def fleet_group(fleet: Fleet, name: str) -> str:
    return next(w.group for w in fleet.workers if w.name == name)


def _act(fleet: Fleet, rng: random.Random, kind: str) -> Event | None:
    candidates = [w for w in fleet.serving() if w.ready()]
    if not candidates:
        return None
    worker = rng.choice(candidates)
    t0 = time.time()
    if kind == "kill_child":
        children = worker.children()
        if not children:
            return None
        pid = rng.choice(children)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return Event(kind, worker.name, t0, t0, pid=pid)
    worker.stopping = True
    if kind == "kill_worker":
        worker.killpg()
    elif kind == "kill_main":
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.proc.pid, signal.SIGKILL)
    else:
        worker.proc.send_signal(signal.SIGTERM)
        # t1 is set to its exit time by _settle_sigterms.
        return Event(kind, worker.name, t0, float("inf"))
    return Event(kind, worker.name, t0, t0)


def _replace(
    fleet: Fleet,
    events: list[Event],
    pending: list[tuple[float, str]],
    now: float,
    say: Callable[..., None],
    t_start: float,
) -> None:
    """Do what the ECS service does: replace a worker that exited on its own, and start the
    replacements that are due."""
    for worker in fleet.workers:
        if not worker.stopping and not worker.alive():
            worker.stopping = True
            t = time.time()
            events.append(Event("exited", worker.name, t - 0.2, t))
            pending.append((now + 1.0, worker.group))
            code = worker.proc.returncode
            say(f"[{now - t_start:5.1f}s] {worker.name} exited on its own (status {code})")
    for due, group in list(pending):
        if now >= due:
            pending.remove((due, group))
            fleet.start(group)


def _settle_sigterms(fleet: Fleet, events: list[Event]) -> None:
    """A SIGTERMed worker can lose acks until it exits: close its window then."""
    for event in events:
        if event.kind == "sigterm" and event.t1 == float("inf"):
            worker = next(w for w in fleet.workers if w.name == event.worker)
            if not worker.alive():
                event.t1 = time.time()


def _wait(condition: Callable[[], bool], timeout: float, what: str, fleet: Fleet) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        dead = [w.name for w in fleet.workers if not w.alive()]
        if dead or time.monotonic() > deadline:
            tails = {w.name: _tail(fleet.logs / f"{w.name}.log") for w in fleet.workers}
            raise RuntimeError(f"timed out or failed waiting for {what}: {dead}\n{tails}")
        time.sleep(0.1)


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:]


# ---------------------------------------------------------------- results


def run_meta(opts: Options) -> dict[str, Any]:
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "options": {k: v for k, v in asdict(opts).items() if k != "verbose"},
        "visibility_timeout_s": VISIBILITY_TIMEOUT_S,
        "shutdown_budget_s": SHUTDOWN_BUDGET_S,
        "redis_down_s": REDIS_DOWN_S,
        "ack_grace_s": ACK_GRACE_S,
        "reconnect_slack_s": RECONNECT_SLACK_S,
    }


def write_results(report: Report, meta: dict[str, Any], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    data = {**meta, "ok": report.ok, "report": asdict(report)}
    (directory / "chaos.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (directory / "chaos.md").write_text(markdown(report, meta))


def markdown(report: Report, meta: dict[str, Any]) -> str:
    actions = ", ".join(f"{k} {v}" for k, v in sorted(report.actions.items()))
    rows = [
        ("submitted (publish acknowledged)", report.submitted),
        ("not submitted (publish gave up)", report.not_submitted),
        ("completed", report.completed),
        ("lost", report.lost),
        ("lost without ever starting", report.lost_never_started),
        ("dead-lettered", report.dead_lettered),
        ("executions", report.executions),
        ("retries (task-requested)", report.retries),
        ("tasks executed more than once", report.executed_more_than_once),
        ("duplicate executions of one delivery", report.duplicate_executions),
        ("bound: in flight at the kills + publish retries", report.duplicate_bound),
        ("duplicates not explained by a kill", report.unexplained_duplicates),
        ("most executions of one task", report.max_executions),
        ("tasks with an effect (applied_once)", report.effect_tasks),
        ("effects applied", report.effects_applied),
        ("effects applied twice", report.effects_applied_twice),
        ("effects missing on completed tasks", report.effects_missing),
        ("publish retries", report.publish_retries),
        ("longest end-to-kill gap of a re-run task (s)", report.max_ack_lag_s),
        ("wall time (s)", report.wall_s),
    ]
    lines = [
        "# Chaos soak",
        "",
        f"{meta['when']}, {meta['cpus']} CPUs. Verdict: **{'PASS' if report.ok else 'FAIL'}**.",
        f"Actions: {actions}. Visibility timeout {meta['visibility_timeout_s']} s, "
        f"SIGTERM budget {meta['shutdown_budget_s']} s, Redis down {meta['redis_down_s']} s "
        "(appendonly, appendfsync always).",
        "",
        "| count | value |",
        "|---|---:|",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
        "## Events",
        "",
        "| at (s) | action | worker | running | in flight | duplicates it caused |",
        "|---:|---|---|---:|---:|---:|",
    ]
    start = min((e.t0 for e in report.events), default=0.0)
    for e in report.events:
        lines.append(
            f"| {e.t0 - start:.1f} | {e.kind} | {e.worker} | {e.running} | {e.in_flight} "
            f"| {e.duplicates} |"
        )
    lines += ["", f"Broker at the end: {report.broker_left}", ""]
    if report.dead_letter_reasons:
        lines += ["Dead letters by reason:", ""]
        lines += [f"- {n} x `{reason}`" for reason, n in report.dead_letter_reasons.items()]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--tasks", type=int, default=Options.tasks)
    parser.add_argument("--duration", type=float, default=Options.duration_s, help="seconds")
    parser.add_argument("--drain", type=float, default=Options.drain_s, help="seconds")
    parser.add_argument("--seed", type=int, default=Options.seed)
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results")
    parser.add_argument("--keep", type=Path, help="keep ledger, logs and Redis files here")
    args = parser.parse_args(argv)
    opts = Options(tasks=args.tasks, duration_s=args.duration, drain_s=args.drain, seed=args.seed)
    # SIGTERM and SIGHUP unwind like Ctrl-C, so the finally blocks stop every process
    # (SIGINT too: a shell starts background jobs with it ignored).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    with work_directory(args.keep) as directory:
        report = run(opts, directory)
    meta = run_meta(opts)
    if not args.no_write:
        write_results(report, meta, RESULTS_DIR)
    print(markdown(report, meta))
    return 0 if report.ok else 1


@contextlib.contextmanager
def work_directory(keep: Path | None, prefix: str = "chaos-") -> Iterator[Path]:
    """`keep` (created, left behind for a look at logs and ledgers), or a temporary one."""
    if keep is not None:
        keep.mkdir(parents=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)


if __name__ == "__main__":
    sys.exit(main())
