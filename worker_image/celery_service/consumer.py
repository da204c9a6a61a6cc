"""A worker consumer that keeps what it cannot decode or run instead of dropping it or
stopping on it."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from billiard.einfo import ExceptionWithTraceback
from billiard.exceptions import Terminated, TimeLimitExceeded, WorkerLostError
from celery.exceptions import CPendingDeprecationWarning, Ignore, InvalidTaskError, Reject, Retry
from celery.worker.consumer import Consumer
from celery.worker.request import Request
from kombu.asynchronous import get_event_loop

from celery_service import contract
from celery_service.catalog import VISIBILITY_MARGIN_S
from celery_service.delivery import RecordingQoS, use_delivery
from celery_service.metrics import recorder
from celery_service.settings import Settings
from celery_service.signals import (
    dead_letter_from_message,
    failures_not_recorded,
    record_dead_letter,
    record_failure,
)

log = logging.getLogger(__name__)

#: Seconds before a failed task whose dead letter could not be written is requeued.
DEAD_LETTER_RETRY_S = 10.0

# Celery warns at every broker connection loss that
# worker_cancel_long_running_tasks_on_connection_loss will default to True in 6.0. The
# factory sets it to False on purpose (see there), so the warning is only noise in the logs.
warnings.filterwarnings(
    "ignore",
    message=r"\s*In Celery 5.1 we introduced an optional breaking change",
    category=CPendingDeprecationWarning,
)


class SafeConsumer(Consumer):  # type: ignore[misc]
    def connection_for_read(self, heartbeat: float | None = None) -> Any:
        """The broker connection, delivering through celery_service.delivery (set before
        the connection opens its first channel)."""
        connection = self.app.connection_for_read(heartbeat=heartbeat)
        use_delivery(connection)
        return self.ensure_connected(connection)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        """Celery logs and acks (deletes) such a message."""
        if _kept(message, "undecodable", exc):
            super().on_decode_error(message, exc)

    def on_unknown_task(self, body: Any, message: Any, exc: Exception) -> None:
        """A task name this worker does not register: Celery rejects the message first and
        signals after, so a DLQ that cannot be written would lose it."""
        if _kept(message, "unknown_task", exc):
            super().on_unknown_task(body, message, exc)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        if _kept(message, "rejected", exc):
            super().on_invalid_task(body, message, exc)

    def on_unknown_message(self, body: Any, message: Any) -> None:
        if _kept(message, "rejected", None):
            super().on_unknown_message(body, message)

    def create_task_handler(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        """Celery turns only some malformed messages into an invalid-task rejection; any other
        error from a message's fields (an empty body, a header of the wrong type) escapes the
        event loop and stops the worker, and the restored message stops the next one too.
        Treat such a message as invalid: rejected into the DLQ (the task_rejected handler),
        and the worker goes on."""
        handle = super().create_task_handler(*args, **kwargs)
        # kombu counts KeyError as a connection error; from a message's fields (no `id`
        # header) it is not, and treating it as one restarts the consumer on the same
        # restored message forever.
        broker_errors = tuple(
            e for e in (*self.connection_errors, *self.channel_errors) if e is not KeyError
        )

        hold_limit_s = eta_hold_limit_s(self.app.platform_settings)

        def on_task_received(message: Any) -> Any:
            try:
                check_headers(message.headers)
                if self._defer_far_eta(message, hold_limit_s):
                    return None
                return handle(message)
            except broker_errors:
                raise  # the connection, not the message: Celery reconnects and redelivers
            except Exception as exc:
                log.error("malformed task message rejected: %r", exc)
                return self.on_invalid_task(None, message, exc)

        return on_task_received

    def _defer_far_eta(self, message: Any, hold_limit_s: float) -> bool:
        """A worker holds a countdown/ETA message unacknowledged until it is due. Held past
        the visibility timeout, Redis hands it to a second worker and it runs twice. So a
        message due later than the hold limit is held only that long, then published again
        unchanged (same id, ETA, priority) and acknowledged: the next worker holds it for
        another window, until it is due within one."""
        eta = _eta_of(message.headers)
        if eta is None:
            return False
        due_in_s = (eta - datetime.now(UTC)).total_seconds()
        if due_in_s <= hold_limit_s:
            return False
        headers = message.headers
        log.warning(
            "task %s[%s] is due in %.0f s, beyond what a worker may hold it (%.0f s, the "
            "visibility timeout less the longest run): it goes back to its queue then",
            headers.get("task"),
            headers.get("id"),
            due_in_s,
            hold_limit_s,
        )
        queue = str((message.delivery_info or {}).get("routing_key") or "")
        recorder(self.app.platform_settings).count(
            contract.TASK_ETA_DEFERRED, queue, str(headers.get("task"))
        )
        # Like Celery's own ETA handling: a held message does not use up the prefetch window.
        self.qos.increment_eventually()
        self.timer.call_after(max(hold_limit_s, 0.0), self._republish, (message,))
        return True

    def _republish(self, message: Any) -> None:
        try:
            delivery = message.delivery_info or {}
            properties = message.properties or {}
            with self.app.producer_or_acquire() as producer:
                producer.publish(
                    message.body,
                    exchange=delivery.get("exchange") or "",
                    routing_key=delivery.get("routing_key"),
                    headers=message.headers,
                    content_type=message.content_type,
                    content_encoding=message.content_encoding,
                    priority=delivery.get("priority", properties.get("priority")),
                    correlation_id=properties.get("correlation_id"),
                    reply_to=properties.get("reply_to"),
                    retry=True,
                )
            message.ack()
        except Exception:
            # Left unacknowledged: the restore sweep puts it back after the timeout.
            log.exception("deferred message %s not published again", message.headers.get("id"))
        finally:
            self.qos.decrement_eventually()


def _kept(message: Any, kind: str, exc: BaseException | None) -> bool:
    """Record the message in the DLQ before Celery acks it; if the DLQ cannot be written,
    leave the message unacked so Redis restores it later. Returns whether it was kept."""
    if record_dead_letter(dead_letter_from_message(message, kind, exc)) is False:
        log.error("%s message left unacked: the DLQ is unreachable", kind)
        return False
    return True


class PlatformRequest(Request):  # type: ignore[misc]
    """Celery's request, except that a failed task's message is acked only once its dead
    letter is stored: if the DLQ cannot be written, the message goes back to its queue, not
    counted as a poison delivery, and a later delivery records it. And Celery's hard-limit
    handler reports the failure without the request on the task's stack, so its
    task_failure could not tell the message's queue or attempt; it is pushed, as the pool's
    own failure path does, and both reports name the same delivery."""

    def on_failure(
        self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False
    ) -> None:
        exc = exc_info.exception
        if isinstance(exc, ExceptionWithTraceback):
            exc = exc.exc
        if isinstance(exc, WorkerLostError | TimeLimitExceeded):
            # Its run ended its pool process (a crash, or the hard limit's kill): a requeue
            # (reject on worker lost, or a task's acks_on_timeout=False) counts towards
            # max_deliveries, so a task that always does it is set aside as poison.
            qos = getattr(self.message.channel, "qos", None)
            if isinstance(qos, RecordingQoS):
                qos.count_as_crash(self.message.delivery_tag)
        if return_ok and self.task.acks_late and not isinstance(exc, _NOT_DEAD_LETTERED):
            # The pool process recorded it, or could not: record it here, where the ack is
            # decided (the entry's id makes a second record of one failure a no-op).
            with self._on_task_stack():
                record_failure(self.task, self.id, exc, self.args, self.kwargs, exc_info)
        super().on_failure(exc_info, send_failed_event, return_ok)

    def on_timeout(self, soft: bool, timeout: float) -> None:
        with self._on_task_stack():
            super().on_timeout(soft, timeout)

    def acknowledge(self) -> None:
        if not self._requeued_for_its_dead_letter():
            super().acknowledge()

    def reject(self, requeue: bool = False) -> None:
        if requeue or not self._requeued_for_its_dead_letter():
            super().reject(requeue=requeue)

    def _requeued_for_its_dead_letter(self) -> bool:
        """A failure whose dead letter is missing goes back to its queue after a pause
        (the event loop's timer; the message stays unacked meanwhile), so that a DLQ that
        stays unwritable costs one run of the task per pause, not a tight loop."""
        if self.id not in failures_not_recorded:
            return False
        failures_not_recorded.discard(self.id)
        log.error(
            "task %s[%s] failed and its dead letter could not be written: requeued in %.0f s",
            self.name,
            self.id,
            DEAD_LETTER_RETRY_S,
        )
        hub = get_event_loop()
        if hub is None:
            self._requeue()
        else:
            hub.call_later(DEAD_LETTER_RETRY_S, self._requeue)
        return True

    def _requeue(self) -> None:
        super().reject(requeue=True)  # a failure, not a process it ended: not counted

    @contextlib.contextmanager
    def _on_task_stack(self) -> Iterator[None]:
        self.task.request_stack.push(self._context)
        try:
            yield
        finally:
            self.task.request_stack.pop()


# What a task's result may carry that is not a failure to dead-letter: Celery's control flow
# (retry, reject, ignore), a revoke, and a lost or exiting pool process (requeued).
_NOT_DEAD_LETTERED = (
    Retry,
    Reject,
    Ignore,
    Terminated,
    WorkerLostError,
    SystemExit,
    KeyboardInterrupt,
    MemoryError,
)


def eta_hold_limit_s(settings: Settings) -> float:
    """How long a worker may hold a message before it is due: the visibility timeout less
    the longest run of the worker's group and the margin, so hold + run stays inside it."""
    longest = settings.group.longest_s if settings.worker_group else 0
    return float(settings.catalog.visibility_timeout_s - longest - VISIBILITY_MARGIN_S)


def _eta_of(headers: Any) -> datetime | None:
    eta = headers.get("eta") if isinstance(headers, dict) else None
    if not isinstance(eta, str):
        return None
    try:
        parsed = datetime.fromisoformat(eta)
    except ValueError:
        return None  # Celery's own ETA parsing rejects it into the DLQ
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _seconds(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def check_headers(headers: Any) -> None:
    """Reject task headers the worker's main process uses after it has accepted the message
    (time limits, retry count, id): a wrong type there fails in the timer or the pool's
    bookkeeping and stops the worker, not the task."""
    if not isinstance(headers, dict) or "task" not in headers:
        return  # not a protocol 2 task message: Celery's own checks apply
    limits = headers.get("timelimit")
    if limits is not None and not (
        isinstance(limits, list | tuple)
        and len(limits) == 2
        and all(limit is None or _seconds(limit) for limit in limits)
    ):
        raise InvalidTaskError(f"timelimit must be [soft, hard] seconds or null, got {limits!r}")
    retries = headers.get("retries")
    if retries is not None and not (
        isinstance(retries, int) and not isinstance(retries, bool) and retries >= 0
    ):
        raise InvalidTaskError(f"retries must be a whole number >= 0, got {retries!r}")
    if "id" in headers and not isinstance(headers["id"], str):
        raise InvalidTaskError(f"id must be a string, got {headers['id']!r}")
