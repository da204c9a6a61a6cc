"""A worker consumer that keeps what it cannot decode or run instead of dropping it or
stopping on it."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

from celery.exceptions import CPendingDeprecationWarning, InvalidTaskError
from celery.worker.consumer import Consumer

from celery_service.delivery import use_delivery

log = logging.getLogger(__name__)

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
        """Celery logs and acks (deletes) such a message. Record it in the DLQ first; if the
        DLQ cannot be written, leave the message unacked so Redis restores it later."""
        from celery_service.signals import dead_letter_from_message, record_dead_letter

        if record_dead_letter(dead_letter_from_message(message, "undecodable", exc)):
            super().on_decode_error(message, exc)
        else:
            log.error("undecodable message left unacked: the DLQ is unreachable")

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

        def on_task_received(message: Any) -> Any:
            try:
                check_headers(message.headers)
                return handle(message)
            except broker_errors:
                raise  # the connection, not the message: Celery reconnects and redelivers
            except Exception as exc:
                log.error("malformed task message rejected: %r", exc)
                return self.on_invalid_task(None, message, exc)

        return on_task_received


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
