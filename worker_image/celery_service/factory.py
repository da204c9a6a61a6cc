"""Build the Celery app from validated settings.

Every choice here answers a known trap of Celery on Redis (see the README of this folder):
late acks with requeue on worker loss, no prefetch hoarding, a visibility timeout above the
longest hard limit, TLS that verifies certificates, priorities in kombu's 0-is-first order,
RedBeat with a short lock, and a soft shutdown that hands unfinished work back at once.
"""

from __future__ import annotations

import ssl
from datetime import timedelta
from typing import Any

from celery import Celery
from celery.schedules import crontab
from kombu.entity import Exchange, Queue

from celery_service import names
from celery_service.settings import DEFAULT_PRIORITY, PRIORITIES, PRIORITY_STEPS, Settings

# Modules whose tasks every process registers. Teams add theirs to celery_service/tasks/.
TASK_MODULES = ["celery_service.tasks.samples"]

# kombu's separator between a queue name and its priority suffix: queue `q` lives in the
# keys q, q\x06\x163, q\x06\x166, q\x06\x169. Shared with the autoscaler's depth reader.
PRIORITY_SEPARATOR = "\x06\x16"

BEAT_MAX_LOOP_INTERVAL_S = 5  # beat wakes at least this often (seconds)
# The RedBeat lock expires this long after its holder stops renewing it (seconds): how long a
# replacement beat waits after a crash. RedBeat's default (25 minutes) skips schedules.
BEAT_LOCK_TIMEOUT_S = 5 * BEAT_MAX_LOOP_INTERVAL_S


def create_app(settings: Settings, *, main: str = "celery_service") -> Celery:
    app = Celery(main, include=TASK_MODULES)
    app.conf.update(celery_config(settings))
    app.platform_settings = settings
    from celery_service import signals  # noqa: F401  (connects the handlers, once)

    return app


def celery_config(settings: Settings) -> dict[str, Any]:
    catalog = settings.catalog
    url = settings.redis_url()
    tls = {"ssl_cert_reqs": ssl.CERT_REQUIRED} if settings.broker_tls else None
    config: dict[str, Any] = {
        "broker_url": url,
        "broker_use_ssl": tls,
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {
            "visibility_timeout": catalog.visibility_timeout_s,
            "priority_steps": PRIORITY_STEPS,
            "sep": PRIORITY_SEPARATOR,
            "queue_order_strategy": "priority",
            "socket_connect_timeout": 5,
            "socket_timeout": 30,  # a hung server fails the command instead of the worker
            "socket_keepalive": True,
            "retry_on_timeout": True,
            "health_check_interval": 25,
            # Restore a dead worker's messages on every sweep, not every 10th: a crash then
            # costs the visibility timeout plus ~10 s, not plus ~100 s.
            "unacked_restore_throttle": 1,
            # celery_service.delivery: what an idle worker does without a notification.
            "idle_poll_interval": settings.idle_poll_s,
        },
        "result_backend": url,
        "redis_backend_use_ssl": tls,
        "redis_socket_connect_timeout": 5,
        "redis_socket_timeout": 30,
        "redis_retry_on_timeout": True,
        "redis_backend_health_check_interval": 25,
        "result_expires": timedelta(seconds=catalog.result_expires_s),
        "result_extended": True,
        "result_backend_transport_options": {"visibility_timeout": catalog.visibility_timeout_s},
        # JSON only: a pickled message could run code on the worker.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "result_accept_content": ["json"],
        # At-least-once: ack after the task ends; a lost worker process puts it back.
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        # With late acks, multiplier 1 caps unacked messages at the pool size: nothing waits
        # in one worker's buffer while another worker is idle.
        "worker_prefetch_multiplier": 1,
        # On a lost broker connection running tasks finish; an ack that cannot be sent leaves
        # the message unacked, so it runs again (at least once). Cancelling them instead lost
        # work: the cancel writes RETRY to the result backend, the same Redis, which is down;
        # Celery then marks the task REVOKED and acks its message (tests/worker/
        # test_broker_restart.py, bench/chaos.py).
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_default_queue": catalog.default_queue,
        "task_default_priority": DEFAULT_PRIORITY,
        "task_queues": [
            Queue(name, Exchange(name, type="direct"), routing_key=name) for name in catalog.queues
        ],
        "task_create_missing_queues": False,
        "task_routes": _routes(settings),
        "task_annotations": _annotations(settings),
        # Task events cost the worker's main process a publish per state change (measured:
        # about a third of its throughput). Off, as in Celery's defaults; Flower switches
        # them on while it runs (its enable_events option), `celery control enable_events`
        # does it by hand. STARTED is not written either: progress comes from update_state.
        "task_track_started": False,
        "task_send_sent_event": False,
        "worker_send_task_events": False,
        "worker_hijack_root_logger": False,
        # SIGTERM starts a warm shutdown, bounded by signals._bound_warm_shutdown. Celery's own
        # soft shutdown is off: it sleeps its whole timeout inside the signal handler, with
        # the event loop stopped, so even a task that ends early is neither acked nor
        # reported until the timeout is over.
        "worker_soft_shutdown_timeout": 0,
        "worker_enable_soft_shutdown_on_idle": False,
        "worker_consumer": "celery_service.consumer:SafeConsumer",
        # Beat: RedBeat keeps schedules and its lock in Redis; a second beat waits on the lock.
        "beat_scheduler": "celery_service.beat:HeartbeatScheduler",
        "beat_max_loop_interval": BEAT_MAX_LOOP_INTERVAL_S,
        "redbeat_redis_url": url,
        "redbeat_redis_use_ssl": tls,
        "redbeat_key_prefix": f"{names.KEY_PREFIX}:redbeat:",
        "redbeat_lock_timeout": BEAT_LOCK_TIMEOUT_S,
        "beat_schedule": _beat_schedule(settings),
        "timezone": "UTC",
    }
    if settings.worker_group is not None:
        group = settings.group
        config["task_soft_time_limit"] = group.soft_time_limit_s
        config["task_time_limit"] = group.time_limit_s
    return config


def _annotations(settings: Settings) -> dict[str, dict[str, Any]]:
    # "*" applies to every task, on top of its own entry.
    annotations: dict[str, dict[str, Any]] = {
        "*": {"retry_backoff_max": settings.catalog.retry_backoff_max_s}
    }
    for name, spec in settings.catalog.tasks.items():
        options: dict[str, Any] = {"max_retries": spec.max_retries}
        if spec.rate_limit:
            options["rate_limit"] = spec.rate_limit
        if spec.soft_time_limit_s:
            options["soft_time_limit"] = spec.soft_time_limit_s
        if spec.time_limit_s:
            options["time_limit"] = spec.time_limit_s
        annotations[name] = options
    return annotations


def _routes(settings: Settings) -> list[Any]:
    """Queue and priority of each task from the catalog; anything else goes to the default
    queue at normal priority. A caller's explicit queue= or priority= still wins."""
    catalog = settings.catalog
    by_name = {
        name: {"queue": spec.queue, "priority": PRIORITIES[spec.priority]}
        for name, spec in catalog.tasks.items()
    }
    fallback = {"queue": catalog.default_queue, "priority": DEFAULT_PRIORITY}

    def default_route(*_: Any, **__: Any) -> dict[str, Any]:
        return dict(fallback)

    return [by_name, default_route]


def _beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    schedule: dict[str, dict[str, Any]] = {}
    for name, spec in settings.catalog.schedules.items():
        when: Any
        if spec.every_s is not None:
            when = timedelta(seconds=spec.every_s)
        else:
            minute, hour, day_of_month, month, day_of_week = (spec.cron or "").split()
            when = crontab(minute, hour, day_of_week, day_of_month, month)
        schedule[name] = {
            "task": spec.task,
            "schedule": when,
            "args": tuple(spec.args),
            "options": {"queue": settings.catalog.queue_of(spec.task)},
        }
    return schedule
