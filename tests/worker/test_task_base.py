"""What the platform's base task retries, and what it sends straight to the DLQ."""

from __future__ import annotations

import pytest
import redis

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
