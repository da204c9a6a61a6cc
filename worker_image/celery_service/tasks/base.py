"""The base class of the platform's tasks: retries with backoff and jitter, then the DLQ."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import redis
from celery import Task
from celery.exceptions import Reject
from kombu.exceptions import OperationalError


class TransientError(Exception):
    """Raise (or raise from) this for failures worth retrying: timeouts, 5xx, throttling."""


class PermanentError(Exception):
    """Raise this when retrying cannot help (bad input, 4xx): the task goes to the DLQ now."""


class TaskOutOfMemory(Exception):  # noqa: N818 (it names what happened, as MemoryError does)
    """The task's own allocation failed: this task fails, its worker goes on."""


class BaseTask(Task):  # type: ignore[misc]
    """The app's default task class (`shared_task` and `app.task` without a `base`): Celery's
    Task with the platform's request, so each failure leaves one dead letter, and a task
    that runs out of memory fails alone."""

    Request = "celery_service.consumer:PlatformRequest"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # Celery lets a MemoryError escape its tracer, which ends the pool process and the
        # worker with it, and the message goes back to end the next one. By the time it
        # reaches the task's caller the failed allocation is unwound: fail just the task.
        # (`run` rather than `__call__`: a custom __call__ sends every task down Celery's
        # slower tracing path.)
        super().__init_subclass__(**kwargs)
        run = cls.__dict__.get("run")
        if isinstance(run, staticmethod):
            cls.run = staticmethod(_failing_alone(run.__func__, cls))
        elif callable(run):
            cls.run = _failing_alone(run, cls)


class PlatformTask(BaseTask):
    """Retries transient errors with exponential backoff (2, 4, 8 ... s, capped, randomized)
    up to `max_retries` (from the catalog); then, or on any other error, the failure is
    recorded in the queue's dead-letter queue by the `task_failure` handler."""

    # redis-py's connection errors do not derive from the built-in ones: a task that touches
    # Redis during a failover retries instead of going to the DLQ.
    autoretry_for = (
        TransientError,
        ConnectionError,
        TimeoutError,
        redis.exceptions.ConnectionError,
        redis.exceptions.TimeoutError,
    )
    dont_autoretry_for = (PermanentError,)
    retry_backoff = 2  # seconds, doubled per attempt
    # retry_backoff_max comes from the catalog (task annotations): the visibility timeout
    # is validated against it.
    retry_jitter = True  # spread retries of a failed batch instead of stampeding
    max_retries = 5

    def retry(self, *args: Any, **kwargs: Any) -> Any:
        """Celery rejects the message for good, into the DLQ, when it cannot publish the
        retry because the broker is unreachable at that moment (seen in `make chaos` at the
        Redis restart). Requeue it instead: put back at once, or, while Redis is away, left
        in `unacked` until the visibility timeout restores it."""
        try:
            return super().retry(*args, **kwargs)
        except Reject as exc:
            if exc.requeue or not isinstance(exc.reason, _BROKER_UNREACHABLE):
                raise
            raise Reject(exc.reason, requeue=True) from exc


def _failing_alone(run: Callable[..., Any], task: type[Task]) -> Callable[..., Any]:
    @functools.wraps(run)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        try:
            return run(*args, **kwargs)
        except MemoryError as exc:
            raise TaskOutOfMemory(f"{task.name} ran out of memory ({exc!r})") from exc

    return guarded


# What publishing raises when the broker cannot be reached (kombu wraps connection errors).
_BROKER_UNREACHABLE = (
    OperationalError,
    ConnectionError,
    TimeoutError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)
