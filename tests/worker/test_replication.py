"""The replication window: what a primary acknowledged but had not yet sent to its replica
when it failed. With the catalog's `wait_for_replicas`, a publish and an `applied_once`
marker return only once the replica holds them; a requeue after a failover that lost the
worker's pop keeps the message. On a real primary and replica, the replica's link delayed
or cut by a proxy."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import group
from kombu.exceptions import OperationalError

from celery_service import contract, redis_client
from samples.tasks import EMAILS_SENT_KEY
from tests.conftest import RedisServer
from tests.worker import semantics_tasks as t
from tests.worker.harness import TEST_CATALOG, publisher, running, wait_for
from tools.faultproxy import FaultProxy

LAG_S = 0.3  # the replica's link delays each way this long
WAITING = {"wait_for_replicas": 1, "replica_wait_ms": 2000}
MODULES = ("samples.tasks", "tests.worker.semantics_tasks")
CATALOG: dict[str, Any] = TEST_CATALOG | {
    "tasks": {
        **TEST_CATALOG["tasks"],
        "semantics.step": {"queue": "default"},
        "semantics.rejected_once": {"queue": "default"},
    },
}


class Pair:
    """A primary and its replica, which follows it through `link`."""

    def __init__(self, start: Callable[..., RedisServer], tmp_path: Path) -> None:
        (tmp_path / "replica").mkdir()
        self.primary = start()
        self.replica = start(dir=str(tmp_path / "replica"))
        self.link = FaultProxy(self.primary.port)
        self.replica.client().replicaof("127.0.0.1", self.link.port)
        replica = self.replica.client()
        wait_for(
            lambda: replica.info("replication").get("master_link_status") == "up",
            10,
            "the replica to sync",
        )


def queued(server: RedisServer) -> int:
    client = server.client()
    return sum(int(client.llen(key)) for q in CATALOG["queues"] for key in contract.queue_keys(q))


@pytest.fixture
def pair(redis_server: Callable[..., RedisServer], tmp_path: Path) -> Iterator[Pair]:
    servers = Pair(redis_server, tmp_path)
    try:
        yield servers
    finally:
        servers.link.close()


def test_a_publish_returns_once_the_replica_holds_it(pair: Pair) -> None:
    """send_task and a canvas group, as an API publishes: when each call returns, the
    replica, lagging LAG_S, already has the messages. Without the option it has none yet,
    and a failover at that moment loses tasks their caller was told are queued."""
    pair.link.delay(LAG_S)
    app = publisher(pair.primary.port, CATALOG | WAITING, MODULES)
    app.loader.import_default_modules()
    app.send_task("samples.send_welcome_email", args=[1])
    assert queued(pair.replica) == 1
    group(t.step.s(n) for n in range(3)).apply_async()
    assert queued(pair.replica) == 4
    app.close()


def test_without_the_option_a_publish_returns_before_the_replica_has_it(pair: Pair) -> None:
    """The anchor of the test above: the same lag, wait_for_replicas 0."""
    pair.link.delay(LAG_S)
    app = publisher(pair.primary.port, CATALOG, MODULES)
    app.send_task("samples.send_welcome_email", args=[1])
    assert queued(pair.replica) == 0
    wait_for(lambda: queued(pair.replica) == 1, 10, "replication")
    app.close()


def test_a_replica_that_does_not_answer_costs_the_wait_and_one_warning(
    pair: Pair, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The replica is cut off: each publish still returns, after replica_wait_ms, and the
    operator is warned once, not at every publish."""
    monkeypatch.setattr(redis_client, "_short_warned_at", -float("inf"))  # no earlier warning
    monkeypatch.setattr(redis_client, "_replicas_seen", (-float("inf"), 0))
    pair.link.sever()
    app = publisher(pair.primary.port, CATALOG | WAITING | {"replica_wait_ms": 200})
    caplog.set_level(logging.WARNING, logger="celery_service.redis_client")
    started = time.monotonic()
    for n in range(3):
        app.send_task("samples.send_welcome_email", args=[n])
    took = time.monotonic() - started
    assert took >= 3 * 0.2
    warnings = [r.getMessage() for r in caplog.records if "replicas confirmed" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "0 of 1 replicas confirmed writes (not within 200 ms)" in warnings[0]
    assert queued(pair.primary) == 3
    app.close()


def test_a_publish_whose_confirmation_is_cut_off_raises(
    pair: Pair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection drops while WAIT is pending (the primary gone with the message, as
    far as the publisher can tell): the publish raises as a failed one does, so the caller
    publishes again, instead of returning as if the task were safe."""
    monkeypatch.setattr(redis_client, "_replicas_seen", (-float("inf"), 0))
    pair.link.sever()  # the replica never confirms: WAIT waits its whole timeout
    endpoint = FaultProxy(pair.primary.port)
    app = publisher(endpoint.port, CATALOG | WAITING)
    try:

        def cut_off() -> None:
            endpoint.set("reset")
            endpoint.reset_open()

        cut = threading.Timer(0.5, cut_off)
        cut.start()
        with pytest.raises(OperationalError, match="not confirmed by replicas"):
            app.send_task("samples.send_welcome_email", args=[1])
        cut.join()
    finally:
        endpoint.close()
        app.close()


def test_a_primary_without_replicas_is_not_waited_on(
    redis_server: Callable[..., RedisServer],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a failover the promoted node has no replica until one is replaced: waiting
    would cost every write replica_wait_ms and protect nothing. Writes go on unwaited,
    with one warning, and the replicas are counted again every REPLICA_CHECK_EVERY_S."""
    monkeypatch.setattr(redis_client, "_replicas_seen", (-float("inf"), 0))
    monkeypatch.setattr(redis_client, "_short_warned_at", -float("inf"))
    server = redis_server()
    app = publisher(server.port, CATALOG | WAITING)
    caplog.set_level(logging.WARNING, logger="celery_service.redis_client")
    for n in range(5):
        app.send_task("samples.send_welcome_email", args=[n])
    stats = server.client().info("commandstats")
    assert "cmdstat_wait" not in stats, stats.get("cmdstat_wait")
    assert stats["cmdstat_info"]["calls"] < 5, "the replicas are not counted at every write"
    assert [r.getMessage() for r in caplog.records] == [
        "0 of 1 replicas confirmed writes (the primary has no replica connected): a failover "
        "now could lose the latest (warned at most every 60 s)"
    ]
    assert queued(server) == 5
    app.close()


def test_an_applied_once_marker_is_on_the_replica_before_the_task_returns(
    pair: Pair, tmp_path: Path
) -> None:
    """The sample's welcome email, through a worker: when its result is stored, the
    replica holds the marker that stops a redelivery from sending the email again."""
    pair.link.delay(LAG_S)
    app = publisher(pair.primary.port, CATALOG | WAITING, MODULES)
    with running(pair.primary.port, tmp_path, catalog=CATALOG | WAITING, task_modules=MODULES):
        assert app.send_task("samples.send_welcome_email", args=[7]).get(timeout=30) == "sent"
        replica = pair.replica.client()
        assert replica.exists(f"{contract.KEY_PREFIX}:effect:welcome-email:7")
        assert replica.lrange(EMAILS_SENT_KEY, 0, -1) == [b"7"]
    app.close()


def test_a_requeue_after_a_failover_that_lost_the_pop_keeps_the_message(
    pair: Pair, tmp_path: Path
) -> None:
    """The replica never received the publish nor the worker's pop (its link cut), the
    primary fails, the replica is promoted and the endpoint moves to it; the running task
    then hands its message back. Regression: the requeue read the `unacked` entry, which
    the new primary lacks, and dropped the message; it is now pushed back from the copy
    the worker holds, and runs on the new primary."""
    endpoint = FaultProxy(pair.primary.port)
    try:
        app = publisher(pair.primary.port, CATALOG, MODULES)
        with running(endpoint.port, tmp_path, catalog=CATALOG, task_modules=MODULES) as worker:
            pair.link.sever()
            result = app.send_task("semantics.rejected_once", args=["kept", 4.0])
            primary = pair.primary.client()
            wait_for(lambda: primary.hlen(contract.UNACKED_KEY) == 1, 20, "the task to start")
            promoted = pair.replica.client()
            promoted.replicaof("NO", "ONE")
            endpoint.retarget(pair.replica.port)
            endpoint.reset_open()
            pair.primary.process.kill()
            after = publisher(pair.replica.port, CATALOG, MODULES)
            assert after.AsyncResult(result.id).get(timeout=60) == "kept"
            assert promoted.hget(t.RUNS_KEY, "kept") == b"1"
            assert "has no unacked entry (a failover?): requeued as held" in worker.output()
            after.close()
        app.close()
    finally:
        endpoint.close()
