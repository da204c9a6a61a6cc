"""The soak's processes: a redis-server broker, workers started as the image starts them, the
publisher, and the chaos loop that kills and restarts them; `run` is one soak, end to end."""

from __future__ import annotations

import contextlib
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
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from bench.chaos.analysis import LedgerReader, analyse
from bench.chaos.model import (
    CATALOG,
    RECONNECT_SLACK_S,
    REDIS_DOWN_S,
    ROOT,
    SHUTDOWN_BUDGET_S,
    Event,
    Options,
    Report,
)
from bench.chaos_tasks import LEDGER_DIR_ENV, WORKER_NAME_ENV
from celery_service import contract
from celery_service.dlq import DeadLetterQueues
from celery_service.factory import create_app
from celery_service.settings import Settings, variables_for
from tools.local_redis import (
    RedisServerMissingError,
    redis_server_binary,
    start_server,
)

# ---------------------------------------------------------------- processes


class Broker:
    """redis-server with the append-only file; `kill9` then `start` keeps its port and files."""

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

# Share of tasks per name, and (share, low ms, high ms) bands of their durations.
MIX: dict[str, tuple[float, list[tuple[float, int, int]]]] = {
    "chaos.urgent": (0.20, [(1.0, 1, 20)]),
    "chaos.normal": (0.40, [(0.9, 1, 100), (0.1, 100, 800)]),
    "chaos.bulk": (0.20, [(1.0, 1, 50)]),
    "chaos.default": (0.16, [(1.0, 5, 100)]),
    "chaos.report": (0.04, [(0.8, 100, 1500), (0.2, 1500, 3000)]),
}
EFFECT_SHARE = 0.5  # tasks that apply an effect through applied_once


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


@contextlib.contextmanager
def work_directory(keep: Path | None, prefix: str = "chaos-") -> Iterator[Path]:
    """`keep` (created, left behind for a look at logs and ledgers), or a temporary one."""
    if keep is not None:
        keep.mkdir(parents=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)
