"""At-least-once on a real Redis: retries, dead letters, replay, crashes and stops."""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from celery.result import AsyncResult

from celery_service.contract import DELIVERIES_KEY, completed_key, dlq_entries_key, queue_keys
from celery_service.dlq import DeadLetterQueues
from tests.conftest import RedisServer
from tests.worker.harness import (
    IMAGE_DIR,
    TEST_CATALOG,
    base_env,
    publisher,
    running,
    wait_for,
)
from tools.http_standin import standin


def dlq_cli(port: int, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery_service", "dlq", *args],
        cwd=IMAGE_DIR,
        env=base_env(port, tmp),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_transient_errors_are_retried_then_succeed(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    server = redis_server()
    app = publisher(server.port)
    with (
        standin([(503, {}), (503, {}), (200, {"EUR": 1.0})]) as rates,
        running(server.port, tmp_path),
    ):
        result = app.send_task("samples.fetch_exchange_rates", args=[rates.url])
        assert result.get(timeout=30) == {"EUR": 1.0}
        assert len(rates.requests) == 3
    assert DeadLetterQueues(server.client()).depth("priority") == 0
    app.close()


def test_exhausted_retries_go_to_the_dlq_and_replay_runs_once(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    server = redis_server()
    client = server.client()
    app = publisher(server.port)
    dlq = DeadLetterQueues(client)
    with standin([(503, {})]) as rates, running(server.port, tmp_path):
        result = app.send_task("samples.fetch_exchange_rates", args=[rates.url])
        with pytest.raises(Exception, match="rates service answered 503"):
            result.get(timeout=30)
        assert len(rates.requests) == 3  # first try + max_retries (2) from the catalog
        wait_for(lambda: dlq.depth("priority") == 1, 10, "the dead letter")
        (entry,) = dlq.entries("priority")
        assert entry.kind == "failed"
        assert entry.task_name == "samples.fetch_exchange_rates"
        assert entry.task_id == result.id
        assert entry.args == [rates.url]
        assert entry.attempts == 3
        assert "TransientError" in (entry.exception or "")
        assert "urlopen" in (entry.traceback or "")
        assert entry.published_at is not None
        assert entry.published_at <= entry.failed_at

        listing = dlq_cli(server.port, tmp_path, "list", "priority")
        assert entry.id in listing.stdout
        assert "attempts=3" in listing.stdout
        shown = json.loads(dlq_cli(server.port, tmp_path, "show", "priority", entry.id).stdout)
        assert shown["args"] == [rates.url]

        rates.answers = [(200, {"EUR": 1.1})]  # the partner is back
        first = dlq_cli(server.port, tmp_path, "replay", "priority", entry.id)
        assert first.returncode == 0, first.stderr
        new_id = first.stdout.split()[-1]
        assert AsyncResult(new_id, app=app).get(timeout=30) == {"EUR": 1.1}
        again = dlq_cli(server.port, tmp_path, "replay", "priority", entry.id)
        assert again.returncode == 0
        assert "already replayed" in again.stdout
        time.sleep(1)
        assert len(rates.requests) == 4, "the replay ran exactly once"

    purged = dlq_cli(server.port, tmp_path, "purge", "priority", "--all")
    assert "purged 1" in purged.stdout
    assert dlq.depth("priority") == 0
    app.close()


def test_permanent_error_skips_retries(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    server = redis_server()
    app = publisher(server.port)
    dlq = DeadLetterQueues(server.client())
    with standin([(404, {})]) as rates, running(server.port, tmp_path):
        result = app.send_task("samples.fetch_exchange_rates", args=[rates.url])
        with pytest.raises(Exception, match="refused the request: 404"):
            result.get(timeout=30)
        wait_for(lambda: dlq.depth("priority") == 1, 10, "the dead letter")
    assert len(rates.requests) == 1
    assert dlq.entries("priority")[0].attempts == 1
    app.close()


def test_a_failure_whose_dead_letter_cannot_be_written_is_requeued_not_acked(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    """While the DLQ cannot be written (here its hash key holds a string), the failed task's
    message stays unacked, then goes back to its queue and runs again; once the DLQ can be
    written the failure is recorded and only then acked."""
    server = redis_server()
    client = server.client()
    app = publisher(server.port)
    dlq = DeadLetterQueues(client)
    client.set(dlq_entries_key("priority"), "not a hash")
    with standin([(404, {})]) as rates, running(server.port, tmp_path):
        result = app.send_task("samples.fetch_exchange_rates", args=[rates.url])
        wait_for(lambda: len(rates.requests) == 1, 20, "the first run")
        time.sleep(2)
        assert client.hlen("unacked") == 1, "not acked: its fate is not recorded"
        client.delete(dlq_entries_key("priority"))
        wait_for(lambda: len(dlq.entries("priority")) == 1, 30, "the dead letter")
        wait_for(lambda: client.hlen("unacked") == 0, 10, "the ack")
        with pytest.raises(Exception, match="refused the request: 404"):
            result.get(timeout=10)
    assert len(rates.requests) == 2, "requeued once, run again"
    (entry,) = dlq.entries("priority")
    assert (entry.task_id, entry.kind, entry.attempts) == (result.id, "failed", 1)
    assert sum(client.llen(k) for k in queue_keys("priority")) == 0
    assert client.hlen(DELIVERIES_KEY) == 0
    app.close()


def test_worker_killed_mid_task_the_task_is_redelivered_and_completes(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    """kill -9 of the whole worker (main process and pool): after the visibility timeout
    (20 s here) another worker's restore sweep puts the message back and it completes."""
    server = redis_server()
    client = server.client()
    app = publisher(server.port)
    with running(server.port, tmp_path, group="batch", name="doomed") as doomed:
        result = app.send_task("samples.build_report", args=["r-kill", 4, 1.0])
        wait_for(lambda: result.state == "PROGRESS", 20, "the report to start")
        doomed.kill_all()
    assert client.hlen("unacked") == 1, "the message waits in the unacked hash"
    with running(server.port, tmp_path, group="batch", name="rescuer"):
        assert result.get(timeout=60) == "report r-kill: 4 sections"
        # The result is stored just before the late ack: wait for the ack.
        wait_for(lambda: client.hlen("unacked") == 0, 10, "the ack")
    app.close()


def test_sigterm_lets_a_running_task_finish(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    server = redis_server()
    app = publisher(server.port)
    with running(server.port, tmp_path, group="batch") as worker:
        result = app.send_task("samples.build_report", args=["r-term", 3, 1.0])
        wait_for(lambda: result.state == "PROGRESS", 20, "the report to start")
        worker.signal(signal.SIGTERM)
        assert worker.proc.wait(timeout=30) == 0
        assert result.state == "SUCCESS"
        assert result.get(timeout=1) == "report r-term: 3 sections"
    client = server.client()
    assert client.hlen("unacked") == 0, "acked before exit: it will not run again"
    assert sum(client.llen(k) for k in queue_keys("reports")) == 0
    app.close()


def test_sigterm_requeues_what_cannot_finish_in_the_budget(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    """A task longer than the shutdown budget goes back to its queue at exit, at once,
    instead of waiting in `unacked` for the crash-recovery sweep."""
    server = redis_server()
    client = server.client()
    app = publisher(server.port)
    with running(server.port, tmp_path, group="batch", CELERY_SHUTDOWN_BUDGET_S="2") as worker:
        result = app.send_task("samples.build_report", args=["r-long", 8, 1.0])
        wait_for(lambda: result.state == "PROGRESS", 20, "the report to start")
        stopped_at = time.monotonic()
        worker.signal(signal.SIGTERM)
        worker.proc.wait(timeout=30)
        took = time.monotonic() - stopped_at
    assert took < 10, f"exit took {took:.1f} s with a 2 s budget"
    assert sum(client.llen(k) for k in queue_keys("reports")) == 1, "the message is requeued"
    assert client.hlen("unacked") == 0
    app.close()


def test_undecodable_and_unknown_messages_are_kept_and_the_worker_goes_on(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    server = redis_server()
    client = server.client()
    app = publisher(server.port)
    dlq = DeadLetterQueues(client)

    def envelope(body: bytes, task: str) -> str:
        return json.dumps(
            {
                "body": base64.b64encode(body).decode(),
                "content-encoding": "utf-8",
                "content-type": "application/json",
                "headers": {"task": task, "id": f"poison-{task}", "lang": "py"},
                "properties": {
                    "body_encoding": "base64",
                    "delivery_tag": f"tag-{task}",
                    "delivery_info": {"exchange": "default", "routing_key": "default"},
                    "priority": 0,
                },
            }
        )

    with running(server.port, tmp_path) as worker:
        client.lpush("default", envelope(b"{this is not json", "samples.square"))
        client.lpush("default", envelope(b"[[2], {}, {}]", "no.such.task"))
        oversized = "x" * 2_000_000
        client.lpush(
            "default", envelope(json.dumps([[oversized], {}, {}]).encode(), "samples.square")
        )
        wrong_type = app.send_task("samples.square", args=["not a number"])
        with pytest.raises(TypeError):
            wrong_type.get(timeout=20)
        assert app.send_task("samples.square", args=[9]).get(timeout=20) == 81
        wait_for(lambda: dlq.depth("default") == 4, 20, "four dead letters")
        assert worker.proc.poll() is None
    kinds = sorted(entry.kind for entry in dlq.entries("default"))
    assert kinds == ["failed", "failed", "undecodable", "unknown_task"]
    undecodable = next(e for e in dlq.entries("default") if e.kind == "undecodable")
    assert base64.b64decode(undecodable.raw or "") == b"{this is not json"
    assert client.hlen("unacked") == 0
    assert int(client.get(completed_key("default")) or 0) >= 3
    app.close()


def test_time_limits_from_the_catalog_stop_a_task_and_record_it(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    server = redis_server()
    catalog = {
        **TEST_CATALOG,
        "tasks": {
            **TEST_CATALOG["tasks"],
            "samples.build_report": {
                "queue": "reports",
                "soft_time_limit_s": 1,
                "time_limit_s": 2,
            },
        },
    }
    app = publisher(server.port, catalog)
    dlq = DeadLetterQueues(server.client())
    with running(server.port, tmp_path, group="batch", catalog=catalog):
        result = app.send_task("samples.build_report", args=["r-slow", 10, 0.5])
        with pytest.raises(Exception, match=r"TimeLimitExceeded"):
            result.get(timeout=20)
        wait_for(lambda: dlq.depth("reports") == 1, 10, "the dead letter")
        # Enforced by the platform's prefork pool (celery_service.pool), not a timer per task.
        stats = app.control.inspect(timeout=5).stats() or {}
        assert [s["pool"]["implementation"] for s in stats.values()] == [
            "celery_service.pool:TaskPool"
        ]
    assert "TimeLimitExceeded" in (dlq.entries("reports")[0].exception or "")
    app.close()
