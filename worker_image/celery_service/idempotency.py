"""Apply a side effect once per key, even when its task is delivered twice.

Late acknowledgement means at-least-once delivery: a task can run again after a crash or a
redelivery. Wrap each effect that must not repeat:

    if not applied_once(client, f"welcome-email:{user_id}", lambda: send(user_id)):
        return "already sent"

A lock stops two concurrent deliveries from both applying it; the done-marker stops later
ones. If the process dies after the effect but before the marker is written, the effect can
repeat: make such effects naturally idempotent or keep them in the same Redis transaction.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis

from celery_service.contract import KEY_PREFIX
from celery_service.tasks.base import RetryLater

DONE_TTL_S = 7 * 86400  # remember applied effects this long (seconds)
LOCK_TTL_S = 600  # a crashed holder's lock frees itself after this long (seconds)


class EffectInProgressError(RetryLater):
    """Another delivery of the same task holds the effect's lock. A PlatformTask retries
    when the lock ends (a killed holder's lock ends by itself) without spending a retry, so
    a redelivery never runs out of retries waiting for a dead delivery's lock."""

    def __init__(self, key: str, retry_in_s: float) -> None:
        super().__init__(
            f"{key}: another delivery holds the effect's lock for {retry_in_s:.0f} s", retry_in_s
        )
        self.key = key


def applied_once(
    client: redis.Redis, key: str, effect: Callable[[], object], *, ttl_s: int = DONE_TTL_S
) -> bool:
    """Run `effect` unless it already ran for `key`; True if it ran now."""
    done_key = f"{KEY_PREFIX}:effect:{key}"
    if client.exists(done_key):
        return False
    lock = client.lock(f"{done_key}:lock", timeout=LOCK_TTL_S, blocking=False)
    if not lock.acquire():
        left_ms = client.pttl(lock.name)
        raise EffectInProgressError(key, (left_ms if left_ms > 0 else 0) / 1000 + 1)
    try:
        if client.exists(done_key):
            return False
        effect()
        client.set(done_key, time.time(), ex=ttl_s)
        return True
    finally:
        lock.release()
