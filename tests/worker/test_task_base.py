"""What the platform's base task retries, and what it sends straight to the DLQ."""

from __future__ import annotations

import pytest
import redis
from celery import Celery
from celery.canvas import Signature
from celery.exceptions import Reject
from kombu.exceptions import OperationalError

from celery_service.tasks.base import PermanentError, PlatformTask, TransientError


@pytest.mark.parametrize(
    "error",
    [
        TransientError("upstream 503"),
        ConnectionError("reset"),
        TimeoutError("slow"),
        redis.exceptions.ConnectionError("Redis is failing over"),
        redis.exceptions.TimeoutError("Redis timed out"),
    ],
)
def test_transient_errors_are_retried(error: Exception) -> None:
    assert isinstance(error, PlatformTask.autoretry_for)


@pytest.mark.parametrize(
    "error",
    [PermanentError("bad input"), ValueError("bad"), redis.exceptions.ResponseError("WRONGTYPE")],
)
def test_other_errors_are_not(error: Exception) -> None:
    assert not isinstance(error, PlatformTask.autoretry_for)


@pytest.mark.parametrize(
    ("publish_error", "requeue"),
    [
        (OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused."), True),
        (redis.exceptions.ConnectionError("Connection closed by server."), True),
        (redis.exceptions.ResponseError("OOM command not allowed"), False),
    ],
)
def test_a_retry_that_cannot_be_published(
    publish_error: Exception, requeue: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Celery rejects the message without requeueing (so into the DLQ) when publishing the
    retry fails; with the broker unreachable the platform's task requeues it instead."""
    app = Celery("retry-test", set_as_current=False)

    @app.task(base=PlatformTask, bind=True, shared=False)
    def flaky(self: PlatformTask) -> None:
        raise TransientError("upstream 503")

    def refuse(*_: object, **__: object) -> None:
        raise publish_error

    monkeypatch.setattr(Signature, "apply_async", refuse)
    flaky.push_request(id="task-1", retries=0, called_directly=False)
    try:
        with pytest.raises(Reject) as rejected:
            flaky.retry(exc=TransientError("upstream 503"))
    finally:
        flaky.pop_request()
    assert rejected.value.requeue is requeue
    assert rejected.value.reason is publish_error
