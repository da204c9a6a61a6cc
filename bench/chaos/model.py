"""What the chaos soak is made of: where it lives, its limits and catalog, the options of a
run, and the data it records (events, executions, the report)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.chaos_tasks import TASKS

ROOT = Path(__file__).resolve().parents[2]  # this file is bench/chaos/model.py
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
