"""What each row of the worker benchmark runs: the variants compared (which app, which
Celery settings, which bench_app tweaks), the pool and the worker group they share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from config import load_environment

CONCURRENCY = 2  # pool processes: one per core of the 2-core reference machine
BENCH_GROUP = "bench"  # worker group added to the catalog: queue `default`, prefork, 2


@dataclass(frozen=True)
class Variant:
    name: str
    title: str
    app: Literal["shipped", "defaults"]
    # Celery settings applied on top of the app's (worker and publisher alike).
    conf: dict[str, Any] = field(default_factory=dict)
    tweaks: tuple[str, ...] = ()  # see bench_app
    # The shipped variant runs the image's own entry point, `python -m celery_service worker`.
    image_entry: bool = False


# What an earlier version of the shipped configuration did and the current one does not
# (see bench/README.md): task events, the STARTED state write, Celery's per-task INFO lines
# and a wake-up of the monitor thread per message. `untuned` puts all of them back.
EVENTS_ON: dict[str, Any] = {"worker_send_task_events": True, "task_send_sent_event": True}
UNTUNED_CONF: dict[str, Any] = {**EVENTS_ON, "task_track_started": True}
UNTUNED_TWEAKS = ("loud_task_logs", "wake_every_message")


# Further changes measured here that keep late acks and no prefetch (see bench/README.md):
# results stored only for tasks that opt in, and dead connections found by TCP keepalive
# rather than by a timeout on every socket call.
NO_SOCKET_TIMEOUTS: dict[str, Any] = {
    "broker_transport_options": {"socket_timeout": None},
    "redis_socket_timeout": None,
}
PROPOSAL_CONF: dict[str, Any] = {"task_ignore_result": True, **NO_SOCKET_TIMEOUTS}


def _variants(*items: Variant) -> dict[str, Variant]:
    return {v.name: v for v in items}


def _shipped(name: str, title: str, conf: dict[str, Any] | None = None, *tweaks: str) -> Variant:
    return Variant(name, title, "shipped", conf or {}, tweaks)


VARIANTS = _variants(
    Variant("defaults", "Celery defaults", "defaults"),
    Variant("shipped", "shipped configuration", "shipped", image_entry=True),
    _shipped(
        "untuned",
        "shipped, untuned (events, STARTED, INFO lines, wake-ups)",
        UNTUNED_CONF,
        *UNTUNED_TWEAKS,
    ),
    _shipped("results_off", "shipped + task_ignore_result", {"task_ignore_result": True}),
    # The catalog's [celery] settings turned on (the trade-off of their defaults, off).
    _shipped("task_events", "shipped + catalog task_events", {"worker_send_task_events": True}),
    _shipped(
        "events_and_started",
        "shipped + catalog task_events and track_started",
        {"worker_send_task_events": True, "task_track_started": True},
    ),
    _shipped("proposal", "shipped + results off + no socket timeouts", PROPOSAL_CONF),
    # Celery's defaults with one thing the platform does for every task: results stored
    # (callers poll them, chords need them); late acks with no prefetch (nothing lost with
    # a worker, nothing hoarded by a busy one).
    Variant("defaults_results", "defaults + results stored", "defaults", {}, ("store_results",)),
    Variant(
        "defaults_late_ack",
        "defaults + acks_late + prefetch x1",
        "defaults",
        {"task_acks_late": True, "worker_prefetch_multiplier": 1},
    ),
    # Diagnostics: one change each, to show where the time goes.
    _shipped("control", "shipped via bench_app (control)"),
    _shipped("events_on", "shipped + task events", EVENTS_ON),
    _shipped("track_started", "shipped + task_track_started", {"task_track_started": True}),
    _shipped("loud_task_logs", "shipped + per-task INFO lines", None, "loud_task_logs"),
    _shipped(
        "wake_every_message", "shipped + monitor wake per message", None, "wake_every_message"
    ),
    _shipped("not_extended", "shipped, result_extended off", {"result_extended": False}),
    _shipped("no_signals", "shipped, no prerun/postrun handlers", None, "no_platform_signals"),
    _shipped(
        "celery_pool",
        "shipped on Celery's prefork pool (a timer per task's limits)",
        {"worker_pool": "prefork"},
    ),
    _shipped(
        "no_time_limits",
        "shipped, no time limits",
        {"task_time_limit": None, "task_soft_time_limit": None},
    ),
    _shipped(
        "disable_prefetch", "shipped + worker_disable_prefetch", {"worker_disable_prefetch": True}
    ),
    _shipped("prefetch4", "shipped, prefetch x4 (hoards)", {"worker_prefetch_multiplier": 4}),
    _shipped(
        "early_ack",
        "shipped, early acks + prefetch x4 (as defaults)",
        {"task_acks_late": False, "worker_prefetch_multiplier": 4},
    ),
    _shipped("no_socket_timeouts", "shipped, no socket timeouts", NO_SOCKET_TIMEOUTS),
    _shipped(
        "short_time_limits",
        "shipped, limits due in the run (timers popped)",
        {"task_soft_time_limit": 4, "task_time_limit": 8},
    ),
    _shipped("statsd", "shipped, metrics sent (DogStatsD sink)", None, "statsd"),
)
DEFAULT_VARIANTS = [
    "defaults",
    "defaults_results",
    "defaults_late_ack",
    "shipped",
    "task_events",
    "track_started",
    "events_and_started",
]


def catalog() -> dict[str, Any]:
    """The dev environment's runtime catalog with the benchmark's worker group added."""
    runtime = load_environment("dev").runtime_catalog()
    runtime["worker_groups"][BENCH_GROUP] = {
        "queues": [runtime["default_queue"]],
        "concurrency": CONCURRENCY,
        "pool": "prefork",
        "soft_time_limit_s": 240,
        "time_limit_s": 300,
    }
    return runtime
