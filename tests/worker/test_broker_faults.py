"""A worker meets the ways a broker connection really fails, with the endpoint a TCP proxy
in front of a real redis-server: it recovers on its own, in a stated time, without a
restart, and loses nothing."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from celery_service import contract
from celery_service.dlq import DeadLetterQueues
from tests.conftest import RedisServer
from tests.worker.harness import TEST_CATALOG, base_env, publisher, running, start, wait_for
from tools.faultproxy import FaultProxy
from tools.http_standin import standin

# How long a worker takes at most to work again after every connection it had went silent
# (seconds): each connection notices within contract.REDIS_SOCKET_TIMEOUT_S of its next
# use, a pending pop within that of being sent; room is left for a loaded machine.
SILENT_CONNECTIONS_BOUND_S = 45
# A notification subscription is PINGed at a check (one per contract.REDIS_HEALTH_CHECK_S),
# dropped at the next if it has not answered, and subscribed again at once.
SILENT_SUBSCRIPTION_BOUND_S = 3 * contract.REDIS_HEALTH_CHECK_S

# Limits long enough that a task is never cut short by a stalled result write, and a
# visibility timeout so long that its sweep cannot be what brings a message back here.
CATALOG: dict[str, Any] = copy.deepcopy(TEST_CATALOG) | {"visibility_timeout_s": 600}
for _group in CATALOG["worker_groups"].values():
    _group |= {"soft_time_limit_s": 60, "time_limit_s": 70}


@pytest.fixture
def proxied(redis_server: Callable[..., RedisServer]) -> Iterator[tuple[RedisServer, FaultProxy]]:
    server = redis_server()
    proxy = FaultProxy(server.port)
    try:
        yield server, proxy
    finally:
        proxy.close()


def _squares(port: int, numbers: range) -> list[int]:
    """Published and read straight on the server, past the proxy."""
    app = publisher(port, CATALOG)
    results = [app.send_task("samples.square", args=[n]) for n in numbers]
    return [r.get(timeout=SILENT_CONNECTIONS_BOUND_S) for r in results]


def test_worker_works_again_when_its_connections_go_silent(
    proxied: tuple[RedisServer, FaultProxy], tmp_path: Path
) -> None:
    """Every established connection of the worker goes silent (a dropped NAT entry, a host
    gone mid-session) while Redis stays up. Regression: the event loop waited for ever in
    a read of the remote-control subscription, the health check stayed green."""
    server, proxy = proxied
    with running(proxy.port, tmp_path, catalog=CATALOG) as worker:
        assert _squares(server.port, range(3)) == [0, 1, 4]
        assert proxy.sever() > 0
        severed_at = time.monotonic()
        assert _squares(server.port, range(10)) == [n * n for n in range(10)]
        took = time.monotonic() - severed_at
        assert worker.proc.poll() is None, worker.output()[-3000:]
    assert took < SILENT_CONNECTIONS_BOUND_S, f"worked again after {took:.0f} s"


def test_a_pop_whose_reply_is_lost_is_put_back_at_once(
    proxied: tuple[RedisServer, FaultProxy], tmp_path: Path
) -> None:
    """The pop script runs, records its message in `unacked` for this worker, and the
    connection goes silent before the reply. Regression: the message waited there for the
    visibility timeout (3,960 s in the sample catalog); the worker now puts it back."""
    server, proxy = proxied
    client = server.client()
    app = publisher(server.port, CATALOG)
    with running(proxy.port, tmp_path, catalog=CATALOG) as worker:
        with standin([(200, {"EUR": 1.0})] * 2, delay_s=2.0) as rates:
            busy = [app.send_task("samples.fetch_exchange_rates", args=[rates.url]) for _ in "ab"]
            wait_for(lambda: client.hlen(contract.UNACKED_KEY) == 2, 10, "both slots busy")
            result = app.send_task("samples.square", args=[3])  # waits for a slot
            proxy.sever_after(b"pop-receipt")  # the pop script's arguments name its receipt
            assert [r.get(timeout=20) for r in busy] == [{"EUR": 1.0}] * 2
        assert result.get(timeout=30) == 9
        assert worker.proc.poll() is None
        assert "popped but its reply was lost: back to its queue" in worker.output()
    assert client.hlen(contract.UNACKED_KEY) == 0
    assert client.hlen(contract.DELIVERIES_KEY) == 0, "the lost pop is not counted"


def test_a_silent_notification_subscription_is_replaced(
    proxied: tuple[RedisServer, FaultProxy], tmp_path: Path
) -> None:
    """Only the subscriptions go silent (keyspace notifications, remote control).
    Regression: the worker never noticed, and fell back to polling every second for the
    rest of its life; now it subscribes again within the bound."""
    server, proxy = proxied
    client = server.client()

    def notification_subscribers() -> set[str]:
        """Ids of the clients subscribed to channels (remote control uses a pattern)."""
        return {c["id"] for c in client.client_list(_type="pubsub") if c.get("sub") != "0"}

    with running(proxy.port, tmp_path, catalog=CATALOG) as worker:
        wait_for(lambda: len(notification_subscribers()) == 1, 10, "the worker to subscribe")
        (before,) = notification_subscribers()
        assert proxy.sever(subscribers_only=True) >= 1
        wait_for(
            lambda: notification_subscribers() - {before},
            SILENT_SUBSCRIPTION_BOUND_S,
            "a new subscription",
        )
        assert "keyspace notification connection left a PING unanswered" in worker.output()
        assert _squares(server.port, range(3)) == [0, 1, 4]
        assert worker.proc.poll() is None


# How long the endpoint answers from a read-only replica in the failover below (seconds).
READ_ONLY_WINDOW_S = 8


@pytest.fixture
def failover(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> Iterator[tuple[RedisServer, RedisServer, FaultProxy]]:
    """A primary, its replica, and the endpoint (a proxy) in front of the primary."""
    (tmp_path / "replica").mkdir()
    primary, replica = redis_server(), redis_server(dir=str(tmp_path / "replica"))
    replica.client().replicaof("127.0.0.1", primary.port)
    proxy = FaultProxy(primary.port)
    try:
        yield primary, replica, proxy
    finally:
        proxy.close()


def _synced(replica: RedisServer) -> redis.Redis:
    """The replica's client, once it holds the primary's data."""
    client = replica.client()
    wait_for(
        lambda: client.info("replication").get("master_link_status") == "up",
        10,
        "the replica to sync",
    )
    return client


def _fail_over(replica: RedisServer, proxy: FaultProxy) -> float:
    """As ElastiCache runs one: connections are reset, the endpoint name answers from the
    read-only replica for a while, then from the promoted replica. Returns the moment of
    the promotion."""
    promoted = _synced(replica)
    proxy.retarget(replica.port)
    assert proxy.reset_open() > 0
    time.sleep(READ_ONLY_WINDOW_S)
    promoted.replicaof("NO", "ONE")
    return time.monotonic()


def test_a_worker_rides_out_an_endpoint_that_answers_from_a_replica(
    failover: tuple[RedisServer, RedisServer, FaultProxy], tmp_path: Path
) -> None:
    """Regression: the worker exited on the first READONLY reply (a pop or an ack)."""
    primary, replica, proxy = failover
    with running(proxy.port, tmp_path, catalog=CATALOG) as worker:
        assert _squares(primary.port, range(3)) == [0, 1, 4]
        promoted_at = _fail_over(replica, proxy)
        assert _squares(replica.port, range(5)) == [n * n for n in range(5)]
        took = time.monotonic() - promoted_at
        assert worker.proc.poll() is None, worker.output()[-3000:]
    assert took < 30, f"worked on the new primary {took:.0f} s after its promotion"


def test_a_result_written_during_the_read_only_window_is_stored_after_the_promotion(
    failover: tuple[RedisServer, RedisServer, FaultProxy], tmp_path: Path
) -> None:
    """A task that finishes (and reports progress) while the endpoint answers READONLY:
    its result writes are retried until the promoted primary takes them. Regression: the
    READONLY reply failed the done task into the DLQ."""
    primary, replica, proxy = failover
    with running(proxy.port, tmp_path, group="batch", catalog=CATALOG) as worker:
        app = publisher(primary.port, CATALOG)
        result = app.send_task("samples.build_report", args=["r-ro", 4, 1.0])
        wait_for(lambda: result.state == "PROGRESS", 20, "the report to start")
        _fail_over(replica, proxy)
        after = publisher(replica.port, CATALOG)
        assert after.AsyncResult(result.id).get(timeout=60) == "report r-ro: 4 sections"
        assert DeadLetterQueues(replica.client()).depth("reports") == 0
        assert worker.proc.poll() is None, worker.output()[-3000:]
        after.close()
    app.close()


def test_beat_rides_out_an_endpoint_that_answers_from_a_replica(
    failover: tuple[RedisServer, RedisServer, FaultProxy], tmp_path: Path
) -> None:
    """Regression: beat exited on the READONLY reply to its lock's renewal."""
    _, replica, proxy = failover
    catalog = CATALOG | {
        "schedules": {"tick": {"task": "samples.square", "every_s": 1, "args": [2]}}
    }
    beat = start(["beat"], "beat", base_env(proxy.port, tmp_path, catalog), tmp_path)
    try:
        wait_for(beat.heartbeat.exists, 30, "beat to tick")
        promoted_at = _fail_over(replica, proxy)
        client = replica.client()
        wait_for(
            lambda: float(client.get(contract.BEAT_HEARTBEAT_KEY) or 0) > time.time() - 2,
            30,
            "beat's heartbeat on the new primary",
        )
        took = time.monotonic() - promoted_at
        assert beat.proc.poll() is None, beat.output()[-3000:]
    finally:
        beat.stop()
    assert took < 30, f"beat ticked on the new primary {took:.0f} s after its promotion"


def test_beat_started_while_the_endpoint_answers_from_a_replica_waits_for_the_promotion(
    failover: tuple[RedisServer, RedisServer, FaultProxy], tmp_path: Path
) -> None:
    """Regression: RedBeat's write of the schedule at start met READONLY and beat exited."""
    _, replica, proxy = failover
    promoted = _synced(replica)
    proxy.retarget(replica.port)
    catalog = CATALOG | {
        "schedules": {"tick": {"task": "samples.square", "every_s": 1, "args": [2]}}
    }
    beat = start(["beat"], "beat", base_env(proxy.port, tmp_path, catalog), tmp_path)
    try:
        time.sleep(READ_ONLY_WINDOW_S)
        assert beat.proc.poll() is None, beat.output()[-3000:]
        promoted.replicaof("NO", "ONE")
        wait_for(beat.heartbeat.exists, 30, "beat to tick on the new primary")
        assert promoted.get(contract.BEAT_HEARTBEAT_KEY) is not None
    finally:
        beat.stop()
