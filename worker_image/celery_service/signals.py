"""Celery signal handlers: metrics, dead letters, logging, protection.

Imported once by `create_app`. Handlers never raise into Celery: a metrics or Redis hiccup
is logged and the task goes on.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import traceback as tb
from typing import Any

from celery import current_app, signals
from celery.worker import state as worker_state

from celery_service import contract, logs
from celery_service.dlq import DeadLetter, DeadLetterQueues, encode_raw, entry_id_for
from celery_service.metrics import recorder
from celery_service.protection import TaskMonitor
from celery_service.redis_client import client_for
from celery_service.settings import Settings

log = logging.getLogger(__name__)

_started: dict[str, float] = {}  # task id -> monotonic start, in the executing process
_monitor: list[TaskMonitor] = []


def _settings() -> Settings:
    settings: Settings = current_app.platform_settings
    return settings


@signals.setup_logging.connect
def _setup_logging(**_: Any) -> None:
    logs.configure(_settings().log_level)


@signals.before_task_publish.connect
def _stamp_publish_time(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None:
        headers.setdefault(contract.PUBLISHED_AT_HEADER, time.time())


def _queue_of(task: Any) -> str:
    delivery = getattr(task.request, "delivery_info", None) or {}
    queue = delivery.get("routing_key")
    return str(queue) if queue else _settings().catalog.queue_of(task.name)


@signals.task_prerun.connect
def _task_started(task_id: str, task: Any, **_: Any) -> None:
    _started[task_id] = time.monotonic()
    published = getattr(task.request, contract.PUBLISHED_AT_HEADER, None)
    if isinstance(published, int | float):
        wait_ms = max(0.0, (time.time() - published) * 1000)
        recorder(_settings()).distribution(
            contract.TASK_QUEUE_WAIT_MS, wait_ms, _queue_of(task), task.name
        )


@signals.task_postrun.connect
def _task_finished(task_id: str, task: Any, state: str | None = None, **_: Any) -> None:
    settings = _settings()
    queue = _queue_of(task)
    started = _started.pop(task_id, None)
    metrics = recorder(settings)
    if started is not None:
        runtime_ms = (time.monotonic() - started) * 1000
        metrics.distribution(contract.TASK_RUNTIME_MS, runtime_ms, queue, task.name)
    if state == "SUCCESS":
        metrics.count(contract.TASK_SUCCEEDED, queue, task.name)
    # The queue's completion counter moves with the message's ack (delivery.FORGET).


@signals.task_retry.connect
def _task_retried(sender: Any = None, **_: Any) -> None:
    if sender is not None:
        recorder(_settings()).count(contract.TASK_RETRIED, _queue_of(sender), sender.name)


# Failed tasks whose dead letter could not be written, in this process: their request
# requeues the message instead of acking it (consumer.PlatformRequest).
failures_not_recorded: set[str] = set()


@signals.task_failure.connect
def _task_failed(
    sender: Any = None,
    task_id: str | None = None,
    exception: BaseException | None = None,
    args: Any = None,
    kwargs: Any = None,
    einfo: Any = None,
    **_: Any,
) -> None:
    """A terminal failure: retries exhausted, a non-retryable error, an unhandled soft limit
    or a hard limit. Celery reports a hard limit twice in the main process (the pool's
    result, then the request's timeout handler, both with the request on the task's stack:
    consumer.PlatformRequest); both map to one entry id, so one entry is kept."""
    if sender is not None:
        record_failure(sender, task_id, exception, args, kwargs, einfo)


def record_failure(
    task: Any,
    task_id: str | None,
    exception: BaseException | None,
    args: Any,
    kwargs: Any,
    einfo: Any,
) -> bool | None:
    """Record a failed task in its queue's DLQ, as record_dead_letter answers; a failure
    that cannot be recorded is remembered in failures_not_recorded until one can."""
    request = task.request
    trace = str(einfo) if einfo else None
    if trace is None and exception is not None:
        trace = "".join(tb.format_exception(exception))
    in_task = getattr(request, "id", None) == task_id  # False for a task without the request
    queue = _queue_of(task) if in_task else _settings().catalog.queue_of(task.name)
    attempt = (request.retries or 0) + 1 if in_task else None
    entry = DeadLetter(
        queue=queue,
        kind="failed",
        task_name=task.name,
        task_id=task_id,
        args=list(args or []),
        kwargs=dict(kwargs or {}),
        exception=f"{type(exception).__name__}: {exception}" if exception else None,
        traceback=trace,
        attempts=attempt,
        published_at=getattr(request, contract.PUBLISHED_AT_HEADER, None) if in_task else None,
    )
    if task_id:
        entry.id = entry_id_for("failed", task_id, attempt)
    recorded = record_dead_letter(entry)
    if recorded:  # not a repeat of a recorded failure
        recorder(_settings()).count(contract.TASK_FAILED, queue, task.name)
    if task_id and recorded is False:
        failures_not_recorded.add(task_id)
    elif task_id:
        failures_not_recorded.discard(task_id)
    return recorded


@signals.task_internal_error.connect
def _internal_error(
    sender: Any = None,
    task_id: str | None = None,
    args: Any = None,
    kwargs: Any = None,
    request: Any = None,
    exception: BaseException | None = None,
    **_: Any,
) -> None:
    """An error outside the task's body, from a malformed message (keyword arguments that
    are not an object, options that are not one): Celery sends no task_failure, stores no
    result and acks the message, so this is the only record of it."""
    if sender is None:
        return
    delivery = (request.get("delivery_info") if isinstance(request, dict) else None) or {}
    queue = delivery.get("routing_key") if isinstance(delivery, dict) else None
    record_dead_letter(
        DeadLetter(
            queue=str(queue or _settings().catalog.queue_of(sender.name)),
            kind="rejected",
            task_name=sender.name,
            task_id=task_id,
            exception=f"{type(exception).__name__}: {exception}" if exception else None,
            raw=encode_raw(repr([args, kwargs])),
            headers={k: v for k, v in (request or {}).items() if isinstance(v, str | int | float)}
            if isinstance(request, dict)
            else {},
        )
    )


def record_dead_letter(entry: DeadLetter) -> bool | None:
    """Store the entry: True, None when the same failure was already recorded, False when
    the DLQ cannot be written (the caller keeps the message then, where it can)."""
    settings = _settings()
    try:
        added = DeadLetterQueues(client_for(settings)).record(entry)
    except Exception:
        log.exception("dead letter NOT recorded for %s %s", entry.task_name, entry.task_id)
        return False
    if not added:
        return None
    log.error(
        "dead letter recorded",
        extra={
            "dlq_id": entry.id,
            "dlq_queue": entry.queue,
            "kind": entry.kind,
            "failed_task_id": entry.task_id,
            "failed_task_name": entry.task_name,
        },
    )
    recorder(settings).count(
        contract.DLQ_WRITTEN, entry.queue, entry.task_name, extra=(f"kind:{entry.kind}",)
    )
    return True


def dead_letter_from_message(message: Any, kind: str, exc: BaseException | None) -> DeadLetter:
    headers = dict(getattr(message, "headers", None) or {})
    delivery = getattr(message, "delivery_info", None) or {}
    queue = str(delivery.get("routing_key") or _settings().catalog.default_queue)
    entry = DeadLetter(
        queue=queue,
        kind=kind,
        task_name=headers.get("task"),
        task_id=headers.get("id"),
        exception=f"{type(exc).__name__}: {exc}" if exc else None,
        raw=encode_raw(getattr(message, "body", None)),
        headers={k: v for k, v in headers.items() if isinstance(v, str | int | float | None)},
        published_at=headers.get(contract.PUBLISHED_AT_HEADER),
    )
    task_id, retries = headers.get("id"), headers.get("retries")
    if isinstance(task_id, str) and task_id:
        entry.id = entry_id_for(kind, task_id, retries if isinstance(retries, int) else None)
    return entry


@signals.worker_shutting_down.connect
def _bound_warm_shutdown(how: str | None = None, **_: Any) -> None:
    """Celery's warm shutdown (SIGTERM) stops consuming and waits for running tasks, acking
    each as it ends, but without any limit, so Fargate would SIGKILL a long task and leave it
    to the slow crash-recovery sweep. After the budget, switch to a cold shutdown (SIGQUIT):
    it cancels what still runs and puts those messages straight back on their queue."""
    if how != "Warm":
        return
    budget = _settings().shutdown_budget_s
    log.warning("warm shutdown: running tasks have %.0f s before they are requeued", budget)
    timer = threading.Timer(budget, os.kill, args=(os.getpid(), signal.SIGQUIT))
    timer.daemon = True
    timer.start()


@signals.worker_ready.connect
def _warn_unregistered(**_: Any) -> None:
    from celery_service.factory import unregistered_catalog_entries

    missing = unregistered_catalog_entries(current_app)
    if missing:
        log.warning(
            "the catalog names tasks no task module registers (their routing, priority and "
            "limits apply to nothing): %s; %s",
            ", ".join(missing),
            _settings().modules(),
        )
    _warn_unscheduled()


@signals.beat_init.connect
def _warn_unscheduled(**_: Any) -> None:
    from celery_service.factory import unregistered_schedules

    unscheduled = unregistered_schedules(current_app)
    if unscheduled:
        log.warning(
            "schedules name tasks no task module registers (each run goes to the DLQ as an "
            "unknown task): %s; %s",
            ", ".join(unscheduled),
            _settings().modules(),
        )


@signals.worker_ready.connect
def _start_monitor(**_: Any) -> None:
    settings = _settings()
    monitor = TaskMonitor(
        busy=lambda: len(worker_state.reserved_requests),
        agent_uri=settings.ecs_agent_uri,
        protection_minutes=settings.protection_minutes,
        # The event loop touches the heartbeat (celery_service.delivery); a solo pool runs
        # tasks on that loop, so there the monitor keeps it while a task runs.
        heartbeat_file=settings.heartbeat_file if settings.group.pool == "solo" else None,
        max_minutes=settings.group.protection_max_minutes if settings.worker_group else None,
    )
    monitor.start()
    _monitor.append(monitor)


@signals.task_received.connect
def _wake_monitor(**_: Any) -> None:
    # Only a message that finds the worker idle needs protection at once; waking the thread
    # for every message costs the main process measurable throughput.
    if worker_state.reserved_requests:
        return
    for monitor in _monitor:
        monitor.wake()


@signals.worker_shutdown.connect
def _stop_monitor(**_: Any) -> None:
    while _monitor:
        _monitor.pop().stop()
    recorder(_settings()).flush()


@signals.worker_process_shutdown.connect
def _flush_child_metrics(**_: Any) -> None:
    # Pool processes leave with os._exit, which skips atexit: write their last window now.
    recorder(_settings()).flush()
