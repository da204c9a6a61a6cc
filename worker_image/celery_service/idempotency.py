"""Apply a side effect once per key, even when its task is delivered twice.

Late acknowledgement means at-least-once delivery: a task can run again after a crash or a
redelivery. Wrap each effect that must not repeat:

    if not applied_once(client, f"welcome-email:{user_id}", lambda: send(user_id)):
        return "already sent"

A lock stops two concurrent deliveries from both applying it; the done-marker stops later
ones. The lock is short and renewed while the effect runs, so a delivery killed inside the
effect holds it for at most LOCK_TTL_S more; a delivery that meets it gets
EffectInProgressError with the time to wait:

    except EffectInProgressError as exc:
        raise self.retry(exc=exc, countdown=exc.retry_after_s)

If the process dies after the effect but before the marker is written, the effect can
repeat: make such effects naturally idempotent or keep them in the same Redis transaction.
With the catalog's `wait_for_replicas`, the marker is on the replicas before this returns,
so a failover cannot lose it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import redis
from celery import current_app
from redis.exceptions import LockNotOwnedError
from redis.lock import Lock

from celery_service.contract import KEY_PREFIX
from celery_service.redis_client import write_replicated

DONE_TTL_S = 7 * 86400  # remember applied effects this long (seconds)
# A live holder renews its lock every third of this; a killed one's lock ends within it, so
# a redelivery waits at most this long for it (seconds).
LOCK_TTL_S = 30
# How long a delivery waits for a held lock before it is told to retry: enough for a racing
# delivery's short effect to finish (seconds).
LOCK_WAIT_S = 2.0
# How long the done-marker of an applied effect is retried while Redis is away: a failover's
# worth (seconds), and how often.
MARK_RETRY_S = 60.0
MARK_RETRY_EVERY_S = 0.5


class EffectInProgressError(Exception):
    """Another delivery of the same task holds the effect's lock: retry once it may have
    ended, in `retry_after_s` seconds (`raise self.retry(exc=exc, countdown=exc.retry_after_s)`)."""

    def __init__(self, key: str, retry_after_s: float) -> None:
        super().__init__(f"{key}: held by another delivery for up to {retry_after_s:.1f} s")
        self.key = key
        self.retry_after_s = retry_after_s


def applied_once(
    client: redis.Redis,
    key: str,
    effect: Callable[[], object],
    *,
    ttl_s: int = DONE_TTL_S,
    lock_ttl_s: float = LOCK_TTL_S,
) -> bool:
    """Run `effect` unless it already ran for `key`; True if it ran now."""
    done_key = f"{KEY_PREFIX}:effect:{key}"
    if client.exists(done_key):
        return False
    # Not thread-local: the renewing thread uses the holder's token.
    lock = client.lock(f"{done_key}:lock", timeout=lock_ttl_s, thread_local=False)
    if not lock.acquire(blocking_timeout=min(LOCK_WAIT_S, lock_ttl_s)):
        remaining_ms = client.pttl(f"{done_key}:lock")
        raise EffectInProgressError(key, max(remaining_ms, 100) / 1000)
    try:
        if client.exists(done_key):
            return False
        with _renewed(lock, lock_ttl_s / 3):
            effect()
            _mark_done(client, done_key, ttl_s)
        return True
    finally:
        lock.release()


def _mark_done(client: redis.Redis, done_key: str, ttl_s: int) -> None:
    """The effect ran: its marker is not given up on a broker blip (a reset, a failover),
    or the redelivery that follows applies the effect again. Retried for MARK_RETRY_S,
    then raised; with the catalog's `wait_for_replicas`, confirmed by the replicas."""
    deadline = time.monotonic() + MARK_RETRY_S
    while True:
        try:
            write_replicated(client, *_replica_wait(), ("SET", done_key, time.time(), "EX", ttl_s))
            return
        except (redis.ConnectionError, redis.TimeoutError):
            if time.monotonic() >= deadline:
                raise
            time.sleep(MARK_RETRY_EVERY_S)


def _replica_wait() -> tuple[int, int]:
    """The catalog's wait_for_replicas and replica_wait_ms (none outside a platform app)."""
    settings = getattr(current_app, "platform_settings", None)
    if settings is None:
        return 0, 0
    return settings.catalog.wait_for_replicas, settings.catalog.replica_wait_ms


@contextmanager
def _renewed(lock: Lock, every_s: float) -> Iterator[None]:
    """Keep the lock while the effect runs, however long: a short lock frees itself soon
    after its holder dies, and a live holder's never lapses."""
    done = threading.Event()

    def renew() -> None:
        while not done.wait(every_s):
            try:
                lock.reacquire()
            except LockNotOwnedError:
                return  # it lapsed while Redis was away, and another delivery holds it
            except redis.RedisError:
                continue  # Redis away: try again at the next renewal

    renewer = threading.Thread(target=renew, name="applied-once-lock", daemon=True)
    renewer.start()
    try:
        yield
    finally:
        done.set()
        renewer.join()
