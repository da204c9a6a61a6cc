"""A worker consumer that keeps what it cannot decode or run instead of dropping it or
stopping on it."""

from __future__ import annotations

import logging
from collections.abc import Callable
from queue import Empty
from typing import Any

from celery.exceptions import InvalidTaskError
from celery.worker.consumer import Consumer
from kombu.transport import redis as kombu_redis
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads

log = logging.getLogger(__name__)


class SafeChannel(kombu_redis.Channel):
    """kombu's Redis channel, except that a queue entry which is not a message envelope at
    all (not JSON, headers that are not an object, an unknown body encoding) is recorded in
    the DLQ. kombu would raise out of the event loop and stop the worker, and the entry,
    already popped by BRPOP, would be gone. This is kombu 5.7's `_brpop_read` with that
    one change."""

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                dest__item = self.client.parse_response(self.client.connection, "BRPOP", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            if not dest__item:
                raise Empty()
            dest, item = dest__item
            dest = bytes_to_str(dest).rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(dest)
            try:
                self.connection._deliver(loads(bytes_to_str(item)), dest)
            except _BROKER_ERRORS:
                raise
            except Exception as exc:  # the entry, not the connection
                _keep_malformed_entry(dest, item, exc)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # as kombu does
            # kombu flushes a pending streaming re-auth token once the BRPOP reply is read.
            flush_reauth = getattr(self, "_flush_brpop_reauth", None)
            if flush_reauth is not None:
                flush_reauth()


# Errors of the connection itself, which kombu's reconnection handles. kombu also counts
# KeyError as one; from an envelope missing a field it is not.
_BROKER_ERRORS = tuple(
    e
    for e in (*kombu_redis.Transport.connection_errors, *kombu_redis.Transport.channel_errors)
    if e is not KeyError
)


def _keep_malformed_entry(queue: str, item: bytes, exc: Exception) -> None:
    from celery_service.dlq import DeadLetter, encode_raw
    from celery_service.signals import record_dead_letter

    entry = DeadLetter(
        queue=queue,
        kind="undecodable",
        exception=f"{type(exc).__name__}: {exc}",
        raw=encode_raw(item),
    )
    if not record_dead_letter(entry):
        log.error("malformed queue entry LOST: the DLQ is unreachable")


class SafeConsumer(Consumer):  # type: ignore[misc]
    def connection_for_read(self, heartbeat: float | None = None) -> Any:
        """The broker connection, with SafeChannel for its channels (set before the
        connection opens its first channel)."""
        connection = self.app.connection_for_read(heartbeat=heartbeat)
        if isinstance(connection.transport, kombu_redis.Transport):
            connection.transport.Channel = SafeChannel
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
