"""Routing from the catalog, and the order in which mixed priorities are consumed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from celery_service.contract import PRIORITIES, queue_keys
from samples.tasks import EMAILS_SENT_KEY
from tests.conftest import RedisServer
from tests.worker.harness import TEST_CATALOG, publisher, running, wait_for


def depth(client: object, queue: str) -> int:
    return sum(client.llen(key) for key in queue_keys(queue))  # type: ignore[attr-defined]


def test_tasks_land_in_their_catalog_queue_and_priority_key(
    redis_server: Callable[..., RedisServer],
) -> None:
    server = redis_server()
    client = server.client()
    app = publisher(server.port)
    app.send_task("samples.build_report", args=["r1", 1])  # reports, priority "low"
    app.send_task("samples.fetch_exchange_rates", args=["http://127.0.0.1:9/"])  # priority, high
    app.send_task("samples.square", args=[3])  # not in the catalog: default queue, normal
    assert client.llen("reports\x06\x166") == 1  # low = 6
    assert client.llen("priority") == 1  # high = 0: the bare key
    assert client.llen("default\x06\x163") == 1  # normal = 3
    assert sum(depth(client, q) for q in TEST_CATALOG["queues"]) == 3
    app.close()


def test_high_priority_is_consumed_first(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    """Publish bulk, low, normal and high messages interleaved while no worker runs, then
    let one single-process worker drain them: all high first, bulk last."""
    server = redis_server()
    client = server.client()
    app = publisher(server.port)
    order = ["bulk", "low", "normal", "high"] * 5
    for user_id, level in enumerate(order):
        app.send_task("samples.send_welcome_email", args=[user_id], priority=PRIORITIES[level])
    catalog = {
        **TEST_CATALOG,
        "worker_groups": {
            "general": {**TEST_CATALOG["worker_groups"]["general"], "concurrency": 1},
            "batch": TEST_CATALOG["worker_groups"]["batch"],
        },
    }
    with running(server.port, tmp_path, catalog=catalog):
        wait_for(lambda: client.llen(EMAILS_SENT_KEY) == len(order), 30, "all emails")
    consumed = [order[int(uid)] for uid in client.lrange(EMAILS_SENT_KEY, 0, -1)]
    assert consumed == sorted(order, key=lambda level: PRIORITIES[level])
    app.close()
