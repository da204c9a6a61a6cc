"""The sample tasks' patterns on a real worker: idempotency, progress, canvas, rate limits,
and results that expire."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import chord, group

from celery_service import contract
from celery_service.idempotency import EffectInProgressError, applied_once
from celery_service.redis_client import client_for
from celery_service.settings import Settings
from samples.tasks import EMAILS_SENT_KEY
from tests.conftest import RedisServer
from tests.worker.harness import (
    TEST_CATALOG,
    base_env,
    publisher,
    results_client,
    running,
    wait_for,
)
from tools.faultproxy import FaultProxy

# Longer than redis-py's own retries of a command (10, backoff capped at 1 s) last.
OUTAGE_S = 12.0


def test_idempotent_task_sends_once_however_often_it_runs(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    server = redis_server()
    client = server.client()
    app = publisher(server.port)
    with running(server.port, tmp_path):
        results = [app.send_task("samples.send_welcome_email", args=[42]) for _ in range(5)]
        outcomes = sorted(r.get(timeout=20) for r in results)
    assert outcomes == ["already sent"] * 4 + ["sent"]
    assert client.lrange(EMAILS_SENT_KEY, 0, -1) == [b"42"]
    app.close()


def test_an_applied_effect_is_marked_done_once_redis_is_back(
    redis_server: Callable[..., RedisServer],
) -> None:
    """Redis goes away right after the effect (a reset, then every request refused for
    longer than redis-py's own retries last). Regression: the marker write raised, the
    task was requeued, and its redelivery applied the effect again; the write is now
    retried until Redis is back."""
    server = redis_server()
    proxy = FaultProxy(server.port)
    settings = Settings.from_env(base_env(proxy.port, Path(".")))
    client = client_for(settings)
    applied: list[str] = []

    def effect_then_outage() -> None:
        applied.append("sent")
        proxy.set("reset")
        proxy.reset_open()
        threading.Timer(OUTAGE_S, proxy.set, ("pass",)).start()

    try:
        assert applied_once(client, "outage", effect_then_outage) is True
        assert server.client().exists(f"{contract.KEY_PREFIX}:effect:outage")
        assert applied_once(client, "outage", lambda: applied.append("again")) is False
        assert applied == ["sent"]
    finally:
        proxy.close()


def test_a_redelivery_waits_out_the_lock_of_a_killed_delivery(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    """A delivery killed inside `applied_once` leaves its lock until the lock's short TTL.
    The next delivery retries once the lock may have ended, instead of spending its retries
    in seconds and landing in the DLQ while the dead delivery's lock stands."""
    server = redis_server()
    client = server.client()
    app = publisher(server.port)
    lock_s = 8
    with running(server.port, tmp_path):
        client.set("celery:effect:welcome-email:7:lock", "killed-delivery", ex=lock_s)
        started = time.monotonic()
        result = app.send_task("samples.send_welcome_email", args=[7])
        assert result.get(timeout=30) == "sent"
        waited = time.monotonic() - started
    assert waited >= lock_s - 1, f"sent after {waited:.1f} s, before the lock ended"
    assert client.lrange(EMAILS_SENT_KEY, 0, -1) == [b"7"]
    assert client.zcard(contract.dlq_index_key("default")) == 0
    app.close()


def test_a_live_holder_keeps_its_short_lock_however_long_its_effect_runs(
    redis_server: Callable[..., RedisServer],
) -> None:
    """The lock is renewed while the effect runs: a second delivery meeting it well past
    the lock's TTL waits (up to the lock's TTL here), is told to retry, and the effect is
    applied once."""
    client = redis_server().client()
    applied: list[str] = []
    refused: list[EffectInProgressError] = []

    def slow_effect() -> None:
        time.sleep(3.5)  # seven lock lifetimes of 0.5 s
        applied.append("first")

    holder = threading.Thread(
        target=applied_once, args=(client, "slow", slow_effect), kwargs={"lock_ttl_s": 0.5}
    )
    holder.start()
    time.sleep(2)
    try:
        applied_once(client, "slow", lambda: applied.append("second"), lock_ttl_s=0.5)
    except EffectInProgressError as exc:
        refused.append(exc)
    holder.join()
    assert applied == ["first"]
    (wait,) = refused
    assert 0 < wait.retry_after_s <= 0.5
    assert applied_once(client, "slow", lambda: applied.append("third")) is False


def test_long_task_reports_progress_and_its_result_expires(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    server = redis_server()
    client = server.client()
    app = publisher(server.port)
    seen: list[Any] = []
    with running(server.port, tmp_path, group="batch"):
        result = app.send_task("samples.build_report", args=["r-progress", 3, 0.5])
        deadline = time.monotonic() + 20
        while not result.ready() and time.monotonic() < deadline:
            if result.state == "PROGRESS":
                seen.append(result.info["done"])
            time.sleep(0.05)
        assert result.get(timeout=5) == "report r-progress: 3 sections"
    assert set(seen) >= {1, 2}
    ttl = results_client(client).ttl(f"celery-task-meta-{result.id}")
    assert 0 < ttl <= TEST_CATALOG["result_expires_s"]
    app.close()


def test_chord_of_a_group_then_a_callback(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    server = redis_server()
    app = publisher(server.port)
    with running(server.port, tmp_path):
        squares = group(app.signature("samples.square", args=[n]) for n in range(1, 6))
        workflow = chord(squares, app.signature("samples.total"))
        assert workflow.apply_async().get(timeout=30) == 1 + 4 + 9 + 16 + 25
        chained = app.signature("samples.square", args=[3]) | app.signature("samples.square")
        assert chained.apply_async().get(timeout=30) == 81
    app.close()


def test_rate_limit_from_the_catalog_spaces_out_tasks(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    server = redis_server()
    client = server.client()
    catalog = {
        **TEST_CATALOG,
        "tasks": {
            **TEST_CATALOG["tasks"],
            "samples.send_welcome_email": {"queue": "default", "rate_limit": "4/s"},
        },
    }
    app = publisher(server.port, catalog)
    with running(server.port, tmp_path, catalog=catalog):
        started = time.monotonic()
        for user_id in range(12):
            app.send_task("samples.send_welcome_email", args=[user_id])
        wait_for(lambda: client.llen(EMAILS_SENT_KEY) == 12, 30, "twelve emails")
        took = time.monotonic() - started
    # A token bucket of 4/s lets the first few through, then one every 0.25 s.
    assert took >= 1.5, f"12 tasks at 4/s took only {took:.2f} s"
    app.close()
