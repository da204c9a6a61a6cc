"""One mode, end to end: the cluster, two workers and beat started as the image starts them
(bench.chaos.Fleet), the publisher under load, the fault, the drain, the count.

Phases, on the wall clock: warm-up under load, the fault, publishing goes on for a while
after the fault's end, then the run waits until every acknowledged task is done,
dead-lettered or gone from the broker for good, or the drain deadline passes. A watcher
thread meanwhile does what ECS does (replaces a process that exited, a second later,
counting the exit), follows every process's heartbeat file, and notes when beat's heartbeat
first reaches the new primary. Every process started is stopped at the end, however it ends.
"""

from __future__ import annotations

import contextlib
import copy
import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis

from bench import chaos
from bench.chaos import Fleet, LedgerReader, Publisher, Worker, plan_tasks, publisher_app
from bench.failover.cluster import Cluster, Node
from bench.failover.ledger import Exit, Figures, Observed, count
from bench.failover.logs import error_lines
from bench.failover.modes import Fault, Mode, Timing
from celery_service import contract

GROUP = "all"
BEAT = "beat"
# Limits long enough that no task is cut short by a broker stall, and a visibility timeout
# so long that its sweep cannot be what brings a message back within a run: a message left
# unacked by a fault shows as stuck, as it would wait an hour in production.
VISIBILITY_TIMEOUT_S = 600
CATALOG: dict[str, Any] = copy.deepcopy(chaos.CATALOG) | {
    "visibility_timeout_s": VISIBILITY_TIMEOUT_S,
    "worker_groups": {
        GROUP: {
            "queues": chaos.CATALOG["queues"],
            "concurrency": 3,
            "soft_time_limit_s": 30,
            "time_limit_s": 35,
        }
    },
    # Beat publishes a short task every second, so its own recovery shows in the ledger.
    "schedules": {"tick": {"task": "chaos.default", "every_s": 1, "args": [5, False]}},
}
START_TIMEOUT_S = 90  # workers and beat to start on a busy machine
REPLACE_AFTER_S = 1.0  # an exited process is replaced this long after (as by ECS)
WATCH_EVERY_S = 0.25


@dataclass
class Phases:
    warmup_s: float = 10.0
    after_s: float = 20.0  # publishing goes on this long after the fault's end
    drain_s: float = 60.0  # the drain deadline, counted from the fault's end
    timing: Timing = field(default_factory=Timing)
    workers: int = 2


QUICK = Phases(warmup_s=4.0, after_s=6.0, drain_s=30.0, timing=Timing(4.0, 4.0, 1.0))


@dataclass
class ModeResult:
    mode: str
    figures: Figures | None
    notes: dict[str, Any] = field(default_factory=dict)
    heartbeat_max_age_s: dict[str, float] = field(default_factory=dict)
    log_lines: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    error: str | None = None  # the run itself failed (a process never started)

    @property
    def misses(self) -> list[str]:
        if self.figures is None:
            return [f"run failed: {self.error}"]
        return self.figures.misses()

    @property
    def ok(self) -> bool:
        return not self.misses


class Watcher(threading.Thread):
    def __init__(self, fleet: Fleet, cluster: Cluster) -> None:
        super().__init__(name="watcher", daemon=True)
        self.fleet, self.cluster = fleet, cluster
        self.exits: list[Exit] = []
        self.heartbeat_max_age_s: dict[str, float] = {}
        self.fault_end: float | None = None  # set once the new primary serves
        self.beat_resumed_at: float | None = None
        self.halt = threading.Event()
        self._due: list[tuple[float, str]] = []  # (monotonic, group) replacements

    def run(self) -> None:
        while not self.halt.wait(WATCH_EVERY_S):
            now = time.monotonic()
            for worker in list(self.fleet.workers):
                if not worker.stopping and not worker.alive():
                    worker.stopping = True
                    self.exits.append(Exit(worker.name, worker.proc.returncode, time.time()))
                    self._due.append((now + REPLACE_AFTER_S, worker.group))
                elif not worker.stopping and worker.ready():
                    self._heartbeat(worker)
            for due, group in list(self._due):
                if now >= due:
                    self._due.remove((due, group))
                    self.fleet.start(group, BEAT if group == BEAT else "worker")
            if self.fault_end is not None and self.beat_resumed_at is None:
                self._beat(self.cluster.current, self.fault_end)

    def _heartbeat(self, worker: Worker) -> None:
        with contextlib.suppress(OSError):
            age = time.time() - worker.heartbeat.stat().st_mtime
            previous = self.heartbeat_max_age_s.get(worker.name, 0.0)
            self.heartbeat_max_age_s[worker.name] = round(max(previous, age), 1)

    def _beat(self, node: Node, since: float) -> None:
        with contextlib.suppress(redis.RedisError):
            written = float(node.client().get(contract.BEAT_HEARTBEAT_KEY) or 0)
            if written > since:
                self.beat_resumed_at = written


def run_mode(
    mode: Mode, phases: Phases, workdir: Path, seed: int, say: Callable[..., None]
) -> ModeResult:
    began = time.time()
    workdir.mkdir(parents=True)
    cluster = Cluster(workdir, replication_delay_s=mode.replication_delay_s)
    catalog = CATALOG | mode.catalog
    stop = threading.Event()
    fleet: Fleet | None = None
    watcher: Watcher | None = None
    publishers: list[Publisher] = []
    try:
        cluster.start()
        fleet = Fleet(workdir, cluster.proxy.port, catalog)
        for _ in range(phases.workers):
            fleet.start(GROUP)
        fleet.start(BEAT, BEAT)
        _wait_ready(fleet)
        watcher = Watcher(fleet, cluster)
        watcher.start()
        horizon_s = phases.warmup_s + phases.after_s + 60  # more plans than can be published
        plans = plan_tasks(int(mode.rate * horizon_s), random.Random(seed))
        app = publisher_app(cluster.proxy.port, catalog)
        n = mode.publishers
        publishers = [Publisher(app, plans[i::n], mode.rate / n, stop) for i in range(n)]
        for publisher in publishers:
            publisher.start()
        say(f"{mode.name}: cluster, {phases.workers} workers and beat up; {mode.rate:.0f} tasks/s")
        time.sleep(phases.warmup_s)
        serving = [w.name for w in fleet.serving() if w.group == GROUP]
        fault = mode.inject(cluster, phases.timing)
        watcher.fault_end = fault.end
        say(f"{mode.name}: fault over after {fault.end - fault.start:.1f} s {fault.notes}")
        time.sleep(max(0.0, fault.end + phases.after_s - time.time()))
        stop.set()
        for publisher in publishers:
            publisher.join(timeout=15)
        acked_at = {k: v for p in publishers for k, v in p.acked_at.items()}
        ledger = LedgerReader(fleet.ledger)
        _drain(ledger, acked_at, watcher, fault.end + phases.drain_s)
        client = cluster.current.client()
        seen = Observed(
            acked_at=acked_at,
            effects={k: v for p in publishers for k, v in p.submitted.items()},
            sent_at={k: v for p in publishers for k, v in p.sent_at.items()},
            fault_start=fault.start,
            fault_end=fault.end,
            workers=serving,
            dead_letters=chaos.dead_letters(client),
            in_broker=broker_ids(client),
            exits=list(watcher.exits),
            beat_resumed_at=watcher.beat_resumed_at,
            window=fault.window,
        )
        kept = {"fault": asdict(fault), "acked_at": seen.acked_at, "effects": seen.effects}
        (workdir / "observed.json").write_text(json.dumps(kept))  # for a run with --keep
        return _result(mode, count(ledger.records, seen), fault, watcher, fleet, began)
    except Exception as exc:  # the run failed: report it, and go on with the next mode
        logs = error_lines(fleet.logs) if fleet is not None else {}
        return ModeResult(mode.name, None, log_lines=logs, error=f"{type(exc).__name__}: {exc}")
    finally:
        stop.set()
        if watcher is not None:
            watcher.halt.set()
            watcher.join(timeout=5)
        if publishers:
            with contextlib.suppress(Exception):
                publishers[0].app.close()
        if fleet is not None:
            fleet.stop_all()
        cluster.stop()


def _result(
    mode: Mode, figures: Figures, fault: Fault, watcher: Watcher, fleet: Fleet, began: float
) -> ModeResult:
    return ModeResult(
        mode.name,
        figures,
        notes=fault.notes,
        heartbeat_max_age_s=dict(watcher.heartbeat_max_age_s),
        log_lines=error_lines(fleet.logs),
        wall_s=round(time.time() - began, 1),
    )


def _wait_ready(fleet: Fleet) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not all(w.ready() for w in fleet.workers):
        dead = [w.name for w in fleet.workers if not w.alive()]
        if dead or time.monotonic() > deadline:
            tail = {
                w.name: (fleet.logs / f"{w.name}.log").read_text()[-1500:] for w in fleet.workers
            }
            raise RuntimeError(f"processes did not start (exited: {dead}): {tail}")
        time.sleep(0.1)


def _drain(
    ledger: LedgerReader, acked_at: dict[str, float], watcher: Watcher, deadline: float
) -> None:
    """Until beat works on the new primary and every acknowledged task is done or
    dead-lettered, or the rest has been gone from the broker at two checks in a row (lost:
    nothing can run it any more); at most until the deadline."""
    gone_before = False
    while time.time() < deadline:
        ledger.poll()
        client = watcher.cluster.current.client()
        with contextlib.suppress(redis.RedisError):
            left = set(acked_at) - ledger.done - set(chaos.dead_letters(client))
            gone = not (left & broker_ids(client))
            finished = not left or (gone and gone_before)
            if finished and watcher.beat_resumed_at is not None:
                return
            gone_before = gone
        time.sleep(1.0)
    ledger.poll()


def broker_ids(client: redis.Redis) -> set[str]:
    """Ids of the tasks in the broker: queued at any priority, or unacked."""
    messages: list[bytes | str] = []
    for queue in CATALOG["queues"]:
        for key in contract.queue_keys(queue):
            messages += client.lrange(key, 0, -1)
    ids = {_task_id(json.loads(m)) for m in messages}
    ids |= {_task_id(json.loads(v)[0]) for v in client.hvals(contract.UNACKED_KEY)}
    return {i for i in ids if i}


def _task_id(message: dict[str, Any]) -> str:
    return str(message.get("headers", {}).get("id") or "")
