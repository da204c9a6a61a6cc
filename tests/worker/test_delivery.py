"""The worker's delivery (celery_service/delivery.py) on a real redis-server: a message is
never only in a worker's memory, an idle worker wakes on a push, and what is not a message
reaches the DLQ even across a crash."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import redis
from kombu.connection import Connection

from celery_service import contract
from celery_service.delivery import FORGET, POP_AND_RECORD, DeliveryChannel, use_delivery
from celery_service.dlq import DeadLetterQueues
from celery_service.factory import create_app
from celery_service.redis_client import call_script
from celery_service.settings import Settings
from tests.conftest import RedisServer
from tests.worker.harness import IMAGE_DIR, base_env, publisher, running, wait_for
from tools.faultproxy import FaultProxy

# A consumer whose main process dies the moment the message is in its hands: after the pop
# reached it, before anything else (kombu's own `unacked` write included) could run.
DIE_ON_DELIVERY = """
import os, signal, sys
from kombu import Connection
from kombu.transport import virtual
from celery_service.delivery import use_delivery

virtual.Transport._deliver = lambda *_: os.kill(os.getpid(), signal.SIGKILL)
connection = Connection(sys.argv[1])
if sys.argv[2] == "platform":
    use_delivery(connection)
channel = connection.channel()
channel.basic_consume("default", False, lambda message: None, "test-consumer")
connection.drain_events(timeout=20)
"""


def _unacked(client: redis.Redis) -> dict[str, list[object]]:
    entries: dict[bytes, bytes] = client.hgetall("unacked")  # type: ignore[assignment]
    return {key.decode(): json.loads(value) for key, value in entries.items()}


@pytest.mark.parametrize("delivery", ["kombu", "platform"])
def test_a_main_process_killed_right_after_the_pop(
    delivery: str, redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    """kombu's BRPOP loses the message; the platform's pop has already recorded it in
    `unacked`, kombu's restore sweep puts it back, and a worker runs it."""
    server = redis_server()
    client = server.client()
    app = publisher(server.port)
    url = f"redis://127.0.0.1:{server.port}/0"
    sent = app.send_task("samples.square", args=[7], priority=0)  # kept in the key `default`
    queued = client.lindex("default", 0)
    assert queued is not None
    tag = json.loads(queued)["properties"]["delivery_tag"]

    consumer = subprocess.run(
        [sys.executable, "-c", DIE_ON_DELIVERY, url, delivery],
        cwd=IMAGE_DIR,
        env={"PYTHONPATH": str(IMAGE_DIR)},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert consumer.returncode == -signal.SIGKILL, consumer.stderr.decode()[-2000:]
    assert client.llen("default") == 0, "the consumer popped the message"

    if delivery == "kombu":
        assert _unacked(client) == {}, "kombu recorded it: the gap this test shows is closed"
        app.close()
        return

    # The entry kombu's QoS would have written: the message as queued, its exchange and
    # routing key.
    message = json.loads(queued)
    route = message["properties"]["delivery_info"]
    assert _unacked(client) == {tag: [message, route["exchange"], route["routing_key"]]}
    assert client.zscore("unacked_index", tag) is not None
    # kombu's restore sweep, as any worker runs it, once the visibility timeout is over.
    with Connection(url, transport_options={"visibility_timeout": 0}) as sweeper:
        sweeper.default_channel.qos.restore_visible(num=10)
    assert client.llen("default") == 1
    assert _unacked(client) == {}
    with running(server.port, tmp_path):
        assert sent.get(timeout=20) == 49
    assert client.hlen("unacked") == 0
    app.close()


def test_the_pop_records_on_a_full_noeviction_server(
    redis_server: Callable[..., RedisServer],
) -> None:
    """Redis refuses writes once `maxmemory` is reached (the broker's `noeviction`), but not
    a script's writes after its RPOP: a popped message is still recorded."""
    server = redis_server(maxmemory="2mb", maxmemory_policy="noeviction")
    client = server.client()
    message = {
        "body": "e30=",
        "headers": {},
        "properties": {
            "delivery_tag": "tag-1",
            "delivery_info": {"exchange": "default", "routing_key": "default"},
        },
    }
    client.lpush("default", json.dumps(message))
    with pytest.raises(redis.ResponseError, match="maxmemory"):
        _fill(client)
    keys = [
        "unacked",
        "unacked_index",
        contract.DELIVERIES_KEY,
        contract.pop_receipt_key("test"),
        "default",
        contract.malformed_key("default"),
    ]
    reply = client.eval(POP_AND_RECORD, len(keys), *keys, repr(time.time()), 5, 1, 60, "default")
    assert reply[2] == b"tag-1"
    assert json.loads(client.hget("unacked", "tag-1") or b"null")[0] == message
    assert client.llen("default") == 0


def test_a_worker_acks_on_a_full_noeviction_server_and_keeps_running(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    """A broker that fills up while workers run refuses kombu's MULTI acks even though they
    free memory, and the worker exits on that; acks by script go through, and the worker
    works on."""
    from tests.worker import semantics_tasks
    from tests.worker.test_semantics import CATALOG, MODULES

    server = redis_server(maxmemory_policy="noeviction")
    client = server.client()
    app = publisher(server.port, CATALOG, MODULES)
    marks = [tmp_path / f"ran-{n}" for n in range(3)]
    with running(server.port, tmp_path, "runner", catalog=CATALOG, task_modules=MODULES) as w:
        for mark in marks:  # held by the worker until due, then run and acked on a full Redis
            semantics_tasks.quiet.apply_async((str(mark),), countdown=4)
        wait_for(lambda: client.hlen("unacked") == len(marks), 5, "the worker to take them")
        # Full, and staying full: the limit goes below what the server holds.
        used = int(client.info("memory")["used_memory"])
        client.config_set("maxmemory", max(used - 256 * 1024, 1))
        with pytest.raises(redis.ResponseError, match="maxmemory"):
            client.set("one-more", "x")
        kombu_ack = client.pipeline()  # what kombu's QoS.ack sends: MULTI, ZREM, HDEL, EXEC
        kombu_ack.zrem("unacked_index", "x")
        kombu_ack.hdel("unacked", "x")
        with pytest.raises(redis.ResponseError, match="maxmemory"):
            kombu_ack.execute()
        wait_for(lambda: all(m.exists() for m in marks), 20, "the tasks to run")
        wait_for(lambda: client.hlen("unacked") == 0, 10, "their acks")
        time.sleep(1)  # a worker that exits on a refused ack does so within this
        assert w.proc.poll() is None, w.output()[-2000:]
    assert client.llen("work") == 0
    app.close()


def test_a_worker_starts_on_a_full_noeviction_server_and_drains_it(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    """A replacement worker meets the broker still full: it starts anyway (its queue and
    remote-control declarations are refused, and need not be written again), and its acks
    free the memory."""
    from tests.worker import semantics_tasks
    from tests.worker.test_semantics import CATALOG, MODULES

    server = redis_server(maxmemory_policy="noeviction")
    client = server.client()
    app = publisher(server.port, CATALOG, MODULES)
    marks = [tmp_path / f"ran-{n}" for n in range(3)]
    for mark in marks:
        semantics_tasks.quiet.delay(str(mark))
    used = int(client.info("memory")["used_memory"])
    client.config_set("maxmemory", max(used - 256 * 1024, 1))
    with pytest.raises(redis.ResponseError, match="maxmemory"):
        client.set("one-more", "x")
    with running(server.port, tmp_path, "runner", catalog=CATALOG, task_modules=MODULES) as w:
        wait_for(lambda: all(m.exists() for m in marks), 30, "the tasks to run")
        wait_for(lambda: client.hlen("unacked") == 0, 10, "their acks")
        assert w.proc.poll() is None, w.output()[-3000:]
    assert client.llen("work") == 0
    app.close()


def test_a_worker_whose_event_loop_is_blocked_turns_unhealthy(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    """The heartbeat comes from the event loop's polls, not from a thread beside it: with
    the loop blocked (the threads of the worker still running) the health check fails once
    the file is older than its limit, and passes again when the loop turns."""
    from tests.worker.test_semantics import CATALOG, MODULES

    server = redis_server()
    app = publisher(server.port, CATALOG, MODULES)
    limit_s = 3

    def healthcheck(heartbeat: Path) -> subprocess.CompletedProcess[str]:
        env = {
            "PATH": os.environ["PATH"],
            "PYTHONPATH": str(IMAGE_DIR),
            "CELERY_HEARTBEAT_FILE": str(heartbeat),
            "CELERY_HEARTBEAT_MAX_AGE_S": str(limit_s),
        }
        command = [sys.executable, "-m", "celery_service", "healthcheck", "worker"]
        return subprocess.run(command, env=env, capture_output=True, text=True, check=False)

    with running(server.port, tmp_path, "runner", catalog=CATALOG, task_modules=MODULES) as w:
        assert healthcheck(w.heartbeat).returncode == 0
        app.control.broadcast("block_event_loop", arguments={"seconds": limit_s + 5})
        wait_for(lambda: healthcheck(w.heartbeat).returncode == 1, limit_s + 4, "unhealthy")
        stuck = healthcheck(w.heartbeat)
        assert "main process is stuck" in stuck.stderr, stuck.stderr
        wait_for(lambda: healthcheck(w.heartbeat).returncode == 0, 10, "healthy again")
    app.close()


def _fill(client: redis.Redis) -> None:
    for n in range(10_000):
        client.set(f"filler:{n}", "x" * 10_000)


def _eval_calls(client: redis.Redis) -> int:
    return int(client.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


@pytest.mark.parametrize("db", ["0", "3"])
def test_an_idle_worker_waits_for_a_push_instead_of_polling(
    db: str, redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    """Woken by the keyspace notification of its own database's queue keys."""
    server = redis_server()  # with keyspace events of lists, as the broker is configured
    client = server.client()
    settings = Settings.from_env({**base_env(server.port, tmp_path), "CELERY_BROKER_DB": db})
    app = create_app(settings, main="test-publisher")
    with running(server.port, tmp_path, CELERY_IDLE_POLL_S="60", CELERY_BROKER_DB=db) as worker:
        time.sleep(1)
        before = _eval_calls(client)
        time.sleep(3)
        assert _eval_calls(client) - before <= 1, "an idle worker kept popping"
        # Without the notification the next look would be a minute away.
        assert app.send_task("samples.square", args=[12]).get(timeout=15) == 144
        assert "keyspace" not in worker.output()
    app.close()


def test_a_flushed_script_cache_is_reloaded(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    """A failover to a replica or a restart without the script: NOSCRIPT, load, pop."""
    server = redis_server()
    client = server.client()
    app = publisher(server.port)
    with running(server.port, tmp_path, CELERY_IDLE_POLL_S="0.2") as worker:
        assert app.send_task("samples.square", args=[2]).get(timeout=15) == 4
        client.script_flush()
        assert app.send_task("samples.square", args=[6]).get(timeout=15) == 36
        assert worker.proc.poll() is None
    assert client.hlen("unacked") == 0
    app.close()


def test_without_notifications_an_idle_worker_polls_and_says_so(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    server = redis_server(notify_keyspace_events="")
    app = publisher(server.port)
    with running(server.port, tmp_path, CELERY_IDLE_POLL_S="0.2") as worker:
        assert app.send_task("samples.square", args=[5]).get(timeout=15) == 25
        assert "does not publish keyspace events" in worker.output()
    app.close()


def test_entries_that_are_not_messages_reach_the_dlq_even_after_a_crash(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    server = redis_server()
    client = server.client()
    dlq = DeadLetterQueues(client)
    app = publisher(server.port)
    # Moved aside by a worker that died before recording it in the DLQ.
    client.lpush(contract.malformed_key("default"), b"left by a dead worker")
    with running(server.port, tmp_path) as worker:
        wait_for(lambda: dlq.depth("default") == 1, 20, "the crashed worker's entry")
        client.lpush("default", b"\xff not json")
        client.lpush("default", json.dumps({"properties": {"delivery_tag": 7}}))
        assert app.send_task("samples.square", args=[3]).get(timeout=20) == 9
        wait_for(lambda: dlq.depth("default") == 3, 20, "three dead letters")
        assert worker.proc.poll() is None
    raws = sorted(base64.b64decode(entry.raw or "") for entry in dlq.entries("default"))
    assert raws == sorted(
        [
            b"left by a dead worker",
            b"\xff not json",
            json.dumps({"properties": {"delivery_tag": 7}}).encode(),
        ]
    )
    assert client.llen(contract.malformed_key("default")) == 0
    assert client.hlen("unacked") == 0
    app.close()


def test_a_queue_key_that_holds_no_list_is_skipped_and_reported(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    """kombu's BRPOP stops a running worker on such a key (WRONGTYPE); here the worker goes
    on consuming the queue's other keys. (A worker starting then still refuses: kombu's queue
    declaration counts the key's length.)"""
    server = redis_server()
    client = server.client()
    app = publisher(server.port)
    with running(server.port, tmp_path, CELERY_IDLE_POLL_S="0.2") as worker:
        assert app.send_task("samples.square", args=[7]).get(timeout=15) == 49
        client.set("default\x06\x169", "not a list")  # the key of priority `bulk`
        assert app.send_task("samples.square", args=[8]).get(timeout=15) == 64
        assert app.send_task("samples.square", args=[9], priority=0).get(timeout=15) == 81
        time.sleep(1)  # several idle polls
        assert worker.proc.poll() is None
        assert worker.output().count("holds no list") == 1
    app.close()


def _holding_one(app: Any, port: int) -> tuple[Connection, DeliveryChannel, list[Any]]:
    """A consumer through the platform's delivery on `port`, holding (not acking) the one
    message `app` publishes to `default`: as a worker holds a running task's message."""
    app.send_task("samples.square", args=[7], priority=0)
    connection = Connection(f"redis://127.0.0.1:{port}/0")
    use_delivery(connection)
    channel = connection.default_channel
    assert isinstance(channel, DeliveryChannel)
    held: list[Any] = []
    channel.basic_consume("default", False, held.append, "test-consumer")
    connection.drain_events(timeout=10)
    assert len(held) == 1
    return connection, channel, held


def _assert_back_in_its_queue(server: RedisServer) -> None:
    client = server.client()
    assert client.llen("default") == 1, "the held message went back to its queue"
    assert client.hlen("unacked") == 0


def test_a_channel_closes_with_a_pop_in_flight_on_a_reset_connection(
    redis_server: Callable[..., RedisServer],
) -> None:
    """Celery's consumer restart after a connection loss closes the channel (`collect()`,
    then `close()`) while it holds a message and its pop's reply is lost with a reset
    connection. Regression: the close raised on reading that pop and left the channel
    open; the next close met the transport `collect()` had dropped, and its
    AttributeError ended the worker (seen in a failover under load)."""
    server = redis_server()
    proxy = FaultProxy(server.port)
    app = publisher(server.port)
    try:
        connection, channel, _ = _holding_one(app, proxy.port)
        proxy.sever()
        channel._brpop_start()  # sent, never answered
        proxy.reset_open()
        channel.close()
        assert channel.closed
        _assert_back_in_its_queue(server)
        connection.close()
    finally:
        proxy.close()
        app.close()


def test_a_message_whose_channel_closed_while_redis_was_away_is_requeued_after(
    redis_server: Callable[..., RedisServer],
) -> None:
    """Celery's consumer restart closes the channel while every request is reset, so the
    close cannot put back the message a task still holds; the task then rejects it with
    requeue (the platform does on a broker error). Regression: the reject met the closed
    transport, raised AttributeError, and the message waited the visibility timeout."""
    server = redis_server()
    proxy = FaultProxy(server.port)
    app = publisher(server.port)
    try:
        connection, _, held = _holding_one(app, proxy.port)
        proxy.set("reset")
        proxy.reset_open()
        with contextlib.suppress(Exception):  # as Celery's consumer does
            connection.collect()
        proxy.set("pass")
        held[0].reject(requeue=True)
        _assert_back_in_its_queue(server)
    finally:
        proxy.close()
        app.close()


def test_the_remote_control_subscription_is_read_only_for_what_arrived(
    redis_server: Callable[..., RedisServer],
) -> None:
    """kombu reads the fanout (remote-control) subscription with a blocking
    `parse_response()`, which redis-py 8 runs with no socket timeout. Regression: a worker's
    event loop stopped in that read for over a minute after a failover reset (its stack
    dumped by the test harness), its heartbeat going stale; the read now returns at once
    when nothing has arrived, and the poller calls again when something has."""
    server = redis_server()
    connection = Connection(f"redis://127.0.0.1:{server.port}/0")
    use_delivery(connection)
    try:
        channel = connection.default_channel
        assert isinstance(channel, DeliveryChannel)
        subscription = channel.subclient
        subscription.psubscribe("/0.celery.pidbox/*")
        wait_for(lambda: subscription.connection.can_read(timeout=0.1), 10, "the confirmation")
        returned: list[object] = []
        reader = threading.Thread(target=lambda: returned.append(subscription.parse_response()))
        reader.start()
        reader.join(timeout=5)
        assert not reader.is_alive(), "the read waited for a message that never comes"
        assert returned == [[b"psubscribe", b"/0.celery.pidbox/*", 1]], "what had arrived"
        reader = threading.Thread(target=lambda: returned.append(subscription.parse_response()))
        reader.start()
        reader.join(timeout=5)
        assert not reader.is_alive(), "the read waited for a message that never comes"
        assert returned[1] is None
    finally:
        connection.close()


def test_a_channel_without_its_transport_still_reaches_redis_for_what_it_holds(
    redis_server: Callable[..., RedisServer],
) -> None:
    """The state a consumer restart leaves when a close did not finish: kombu's
    `close_channel` has dropped the channel's transport and `_disconnect_pools` its pool,
    while a task still holds its message. Regression: the next close, ack or requeue
    built a pool from the missing transport, and the AttributeError ended the worker
    (seen in the failover harness's read-only mode); the channel now uses the pool
    parameters it last read."""
    server = redis_server()
    app = publisher(server.port)
    try:
        _, channel, held = _holding_one(app, server.port)
        channel._disconnect_pools()
        channel.connection = None  # as kombu's Transport.close_channel leaves it
        held[0].reject(requeue=True)
        _assert_back_in_its_queue(server)
    finally:
        app.close()


def test_a_message_counts_as_completed_once_when_it_leaves_not_when_it_is_requeued(
    redis_server: Callable[..., RedisServer],
) -> None:
    """The autoscaler's completion counter moves with the ack, in the ack's own script: a
    requeue does not count, the ack of the message redelivered afterwards does, once."""
    server = redis_server()
    client = server.client()
    app = publisher(server.port)
    completed = contract.completed_key("default")
    try:
        connection, _, held = _holding_one(app, server.port)
        held[0].reject(requeue=True)
        assert client.get(completed) is None
        connection.close()
        # One of the two now waiting (the requeued one and a new one), acked.
        connection, _, held = _holding_one(app, server.port)
        held[0].ack()
        assert int(client.get(completed) or 0) == 1
        assert client.hlen("unacked") == 0
        connection.close()
    finally:
        app.close()


class _FlushedAfterEveryLoad(redis.Redis):
    """A server whose script cache is flushed right after each SCRIPT LOAD: a failover or a
    restart between redis-py's load of a script and its EVALSHA."""

    def script_load(self, script: Any) -> Any:
        sha = super().script_load(script)
        self.script_flush()
        return sha


def test_an_ack_survives_a_script_cache_flushed_between_load_and_call(
    redis_server: Callable[..., RedisServer],
) -> None:
    """Regression: the first ack of a worker loads FORGET; a flush right then failed the
    EVALSHA that followed, and the NoScriptError ended the worker (seen in
    test_a_flushed_script_cache_is_reloaded)."""
    server = redis_server()
    client = _FlushedAfterEveryLoad(port=server.port)
    client.hset("unacked", "tag-1", "[]")
    keys = ["unacked_index", "unacked", contract.DELIVERIES_KEY, contract.completed_key("q")]
    assert call_script(client.register_script(FORGET), client, keys, ["tag-1", "1"]) == 1
    assert client.hlen("unacked") == 0
    assert client.get(contract.completed_key("q")) == b"1"
    client.close()
