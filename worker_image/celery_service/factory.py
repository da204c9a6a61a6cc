"""Build the Celery app from validated settings.

Every choice here answers a known trap of Celery on Redis (see the README of this folder):
late acks with requeue on worker loss, no prefetch hoarding, a visibility timeout above the
longest hard limit, TLS that verifies certificates, priorities in kombu's 0-is-first order,
RedBeat with a short lock, and a soft shutdown that hands unfinished work back at once.
"""

from __future__ import annotations

import fnmatch
import importlib
import logging
import ssl
from datetime import timedelta
from typing import Any

import redis
from celery import Celery
from celery.app.amqp import AMQP
from kombu.entity import Exchange, Queue
from kombu.exceptions import OperationalError

from celery_service import contract
from celery_service.catalog import Catalog
from celery_service.contract import PRIORITIES, PRIORITY_SEPARATOR, PRIORITY_STEPS
from celery_service.redis_client import (
    PrimaryConnection,
    PrimarySSLConnection,
    client_for,
    write_replicated,
)
from celery_service.settings import Settings

log = logging.getLogger(__name__)

BEAT_MAX_LOOP_INTERVAL_S = 5  # beat wakes at least this often (seconds)
# The RedBeat lock expires this long after its holder stops renewing it (seconds): how long a
# replacement beat waits after a crash. RedBeat's default (25 minutes) skips schedules.
BEAT_LOCK_TIMEOUT_S = 5 * BEAT_MAX_LOOP_INTERVAL_S


RESULT_BACKEND = "celery_service.redis_client:ResultBackend"


class ReplicatedPublishing(AMQP):  # type: ignore[misc]
    """Celery's publishing, then, as the catalog asks, Redis WAIT: every publish (delay,
    apply_async, canvas, send_task, retries, beat) returns once `wait_for_replicas` replicas
    hold it, so a failover cannot lose a task its caller was told is queued. A confirmation
    cut off by a lost connection raises OperationalError, as a failed publish does (the
    primary that took the message may be gone with it): the caller publishes again. One
    that times out returns, with a warning (redis_client.write_replicated)."""

    def _create_task_sender(self) -> Any:
        send = super()._create_task_sender()

        def send_task_message(producer: Any, name: str, message: Any, **options: Any) -> Any:
            sent = send(producer, name, message, **options)
            settings: Settings = self.app.platform_settings
            replicas, wait_ms = settings.catalog.wait_for_replicas, settings.catalog.replica_wait_ms
            if replicas:
                try:
                    write_replicated(client_for(settings), replicas, wait_ms)
                except redis.RedisError as exc:
                    raise OperationalError(f"{name}: not confirmed by replicas: {exc}") from exc
            return sent

        return send_task_message


def create_app(settings: Settings, *, main: str = "celery_service") -> Celery:
    app = Celery(
        main,
        include=settings.task_modules,
        task_cls="celery_service.tasks.base:BaseTask",
        amqp=ReplicatedPublishing,
    )
    platform = celery_config(settings)
    if settings.app_config_module is not None:
        # The app's celeryconfig first; where it sets what the platform sets, say so once.
        app.config_from_object(settings.app_config_module)
        module = importlib.import_module(settings.app_config_module)
        own = {key for key in platform if hasattr(module, key)}
        if own:
            log.warning(
                "%s sets %s; the platform's values apply (they come from the catalog)",
                settings.app_config_module,
                ", ".join(sorted(own)),
            )
    app.conf.update(platform)
    # Results through connections that reconnect on READONLY (RedBeat's: its options).
    app.loader.override_backends = dict.fromkeys(("redis", "rediss"), RESULT_BACKEND)
    app.platform_settings = settings
    from celery_service import signals  # noqa: F401  (connects the handlers, once)

    return app


def unregistered_catalog_entries(app: Celery) -> list[str]:
    """Catalog task names (and patterns) that match no task the app registers."""
    app.loader.import_default_modules()  # the task modules (imported once)
    registered = [name for name in app.tasks if not name.startswith("celery.")]
    return [
        entry
        for entry in app.platform_settings.catalog.tasks
        if not any(fnmatch.fnmatchcase(name, entry) for name in registered)
    ]


def unregistered_schedules(app: Celery) -> list[str]:
    """Schedules ("name (task)") whose task the app does not register: beat publishes it
    on time, and every run goes to the DLQ as an unknown task."""
    app.loader.import_default_modules()
    return [
        f"{name} ({schedule.task})"
        for name, schedule in app.platform_settings.catalog.schedules.items()
        if schedule.task not in app.tasks
    ]


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
            "priority_steps": list(PRIORITY_STEPS),
            "sep": PRIORITY_SEPARATOR,
            # kombu's default "round_robin": a worker rotates between its queues, so a
            # backlog in one does not starve the others; priority levels still go first
            # across all of them (every queue's priority-0 key is read before any 3-key).
            # contract.redis_client_options: no read waits for ever on a dead peer.
            **contract.redis_client_options(),
            # Restore a dead worker's messages on every sweep, not every 10th: a crash then
            # costs the visibility timeout plus ~10 s, not plus ~100 s.
            "unacked_restore_throttle": 1,
            # celery_service.delivery: what an idle worker does without a notification, and
            # how often a message may be delivered without an ack before it is dead-lettered.
            "idle_poll_interval": settings.idle_poll_s,
            "max_deliveries": catalog.max_deliveries,
            # A requeue waits for replicas as a publish does (ReplicatedPublishing).
            "wait_for_replicas": catalog.wait_for_replicas,
            "replica_wait_ms": catalog.replica_wait_ms,
            # A worker's health: its event loop touches this as it polls (beat's tick does).
            "heartbeat_file": settings.heartbeat_file,
        },
        "result_backend": settings.redis_url(db=catalog.result_db),
        "redis_backend_use_ssl": tls,
        "redis_socket_connect_timeout": contract.REDIS_CONNECT_TIMEOUT_S,
        "redis_socket_timeout": contract.REDIS_SOCKET_TIMEOUT_S,
        "redis_socket_keepalive": True,  # Celery's backend takes no keepalive timings
        "redis_retry_on_timeout": True,
        "redis_backend_health_check_interval": contract.REDIS_HEALTH_CHECK_S,
        "result_expires": timedelta(seconds=catalog.result_expires_s),
        "result_extended": True,
        "result_backend_transport_options": {"visibility_timeout": catalog.visibility_timeout_s},
        # A result write that meets a failover or a restart is retried (12 attempts, backoff
        # capped at 8 s: up to about 25 s), not turned into a failure and a dead letter of
        # work that is done.
        "result_backend_always_retry": True,
        "result_backend_max_retries": 12,
        "result_backend_max_sleep_between_retries_ms": 8000,
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
        # test_broker_restart.py, bench/chaos/).
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "task_default_queue": catalog.default_queue,
        # No task_default_priority: Celery copies it onto every task as its own `priority`,
        # and a task's options beat its route, so every delay(), canvas hop and beat run
        # would publish at that priority instead of the catalog's. The router gives unlisted
        # tasks "normal".
        "task_queues": [
            Queue(name, Exchange(name, type="direct"), routing_key=name) for name in catalog.queues
        ],
        "task_create_missing_queues": False,
        "task_routes": [CatalogRouter(catalog)],
        "task_annotations": [CatalogAnnotations(catalog)],
        # Catalog settings (worker README, "Task events, STARTED, results"): task events
        # feed Flower's task pages; STARTED tells a poller that its task left the queue.
        "task_track_started": catalog.track_started,
        "worker_send_task_events": catalog.task_events,
        # A task-sent event would cost every publisher a second publish per task.
        "task_send_sent_event": False,
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
        "redbeat_redis_options": {
            **contract.redis_client_options(),
            "connection_class": PrimarySSLConnection if tls else PrimaryConnection,
        },
        "redbeat_key_prefix": contract.REDBEAT_KEY_PREFIX,
        "redbeat_lock_timeout": BEAT_LOCK_TIMEOUT_S,
        "beat_schedule": _beat_schedule(settings),
        "timezone": "UTC",
    }
    if settings.worker_group is not None:
        group = settings.group
        # None where the group's pool cannot enforce the limit (settings.POOL_LIMITS).
        config["task_soft_time_limit"] = group.soft_time_limit_s
        config["task_time_limit"] = group.time_limit_s
        config["worker_max_tasks_per_child"] = group.max_tasks_per_child
        if group.pool == "prefork":
            # `--pool prefork` then runs this subclass: time limits without a timer per task.
            config["worker_pool"] = "celery_service.pool:TaskPool"
        if group.max_memory_per_child_mib is not None:
            config["worker_max_memory_per_child"] = group.max_memory_per_child_mib * 1024  # KiB
    return config


class CatalogRouter:
    """Queue and priority of each task from the catalog (its name, else the longest
    matching pattern); unlisted tasks go to the default queue at normal priority. An explicit
    queue= or priority= on a call still wins (Celery merges the route under the options)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog
        # Task name -> route: it runs on every publish, and a name's patterns never change.
        self._routes: dict[str, dict[str, Any]] = {}

    def __call__(self, name: str, *_: Any, **__: Any) -> dict[str, Any]:
        route = self._routes.get(name)
        if route is None:
            catalog = self.catalog
            route = {"queue": catalog.queue_of(name), "priority": catalog.priority_of(name)}
            self._routes[name] = route
        return dict(route)  # Celery's router pops keys from what it is given


class CatalogAnnotations:
    """What the catalog sets for a task, applied to the task class when it registers (a
    Celery annotation object): only the fields an entry sets, so a decorator's other options
    stand. Queue and priority too, so a decorator's own `queue=`/`priority=` cannot override
    the catalog on the paths that use task attributes (delay, apply_async, canvas, beat)."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def annotate(self, task: Any) -> dict[str, Any]:
        # The catalog's backoff maximum caps every task's (the visibility timeout is checked
        # against it); a decorator's lower one stands. Celery's own default is 600 s.
        cap = self.catalog.retry_backoff_max_s
        own = getattr(task, "retry_backoff_max", None)
        options: dict[str, Any] = {
            "retry_backoff_max": min(own, cap) if isinstance(own, int) else cap
        }
        spec = self.catalog.task_spec(task.name)
        if spec is None:
            return options
        options["queue"] = spec.queue
        if spec.priority is not None:
            options["priority"] = PRIORITIES[spec.priority]
        for field, attribute in (
            ("max_retries", "max_retries"),
            ("rate_limit", "rate_limit"),
            ("soft_time_limit_s", "soft_time_limit"),
            ("time_limit_s", "time_limit"),
        ):
            value = getattr(spec, field)
            if value is not None:
                options[attribute] = value
        return options

    def annotate_any(self) -> None:
        return None


def _beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    schedule: dict[str, dict[str, Any]] = {}
    for name, spec in settings.catalog.schedules.items():
        when = timedelta(seconds=spec.every_s) if spec.every_s is not None else spec.crontab()
        # No queue or priority here: beat publishes through the app's router like any
        # caller, so a pattern entry routes a scheduled task as it routes a delay().
        schedule[name] = {"task": spec.task, "schedule": when, "args": tuple(spec.args)}
    return schedule
