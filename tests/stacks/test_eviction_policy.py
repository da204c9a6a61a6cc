"""The broker's eviction policy, proven on a real redis-server: a full broker refuses new
messages instead of dropping queued ones (which the default of some setups would do)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from stacks.parts.redis_broker import MAXMEMORY_POLICY
from tests.conftest import RedisServer

PAYLOAD = b"x" * 1024  # one 1 KiB message
QUEUE = "default"


def fill(client: redis.Redis) -> int:
    """Push messages until Redis refuses one; return how many it accepted."""
    for pushed in range(100_000):
        try:
            client.lpush(QUEUE, PAYLOAD)
        except redis.exceptions.OutOfMemoryError:
            return pushed
    pytest.fail("Redis never reached maxmemory")


def test_full_broker_refuses_writes_and_keeps_every_queued_message(
    redis_server: Callable[..., RedisServer],
) -> None:
    server = redis_server(maxmemory="4mb", maxmemory_policy=MAXMEMORY_POLICY)
    client = server.client()
    client.set("celery-task-meta-1", b"r" * 4096, ex=3600)  # a result with a TTL
    accepted = fill(client)
    assert accepted > 100
    assert client.llen(QUEUE) == accepted, "a queued message was evicted"
    assert client.exists("celery-task-meta-1") == 1
    assert client.info("stats")["evicted_keys"] == 0
    # Consuming frees memory, and the broker accepts work again.
    client.rpop(QUEUE, accepted // 2)
    client.lpush(QUEUE, PAYLOAD)
    assert client.llen(QUEUE) == accepted - accepted // 2 + 1


def test_an_evicting_policy_would_lose_queued_work(
    redis_server: Callable[..., RedisServer],
) -> None:
    """The contrast that makes the first test meaningful: allkeys-lru drops whole queues."""
    server = redis_server(maxmemory="4mb", maxmemory_policy="allkeys-lru")
    client = server.client()
    for queue in range(400):
        client.lpush(f"queue-{queue}", *([PAYLOAD] * 10))
    assert client.info("stats")["evicted_keys"] > 0
    assert sum(client.llen(f"queue-{q}") for q in range(400)) < 4000
