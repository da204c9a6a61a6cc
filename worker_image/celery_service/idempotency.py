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

DONE_TTL_S = 7 * 86400  # remember applied effects this long (seconds)
LOCK_TTL_S = 600  # a crashed holder's lock frees itself after this long (seconds)


class EffectInProgressError(Exception):
    """Another delivery of the same task holds the effect's lock; retry later."""


def applied_once(
    client: redis.Redis, key: str, effect: Callable[[], object], *, ttl_s: int = DONE_TTL_S
) -> bool:
    """Run `effect` unless it already ran for `key`; True if it ran now."""
    done_key = f"{KEY_PREFIX}:effect:{key}"
    if client.exists(done_key):
        return False
    lock = client.lock(f"{done_key}:lock", timeout=LOCK_TTL_S, blocking=False)
    if not lock.acquire():
        raise EffectInProgressError(key)
    try:
        if client.exists(done_key):
            return False
        effect()
        client.set(done_key, time.time(), ex=ttl_s)
        return True
    finally:
        lock.release()
