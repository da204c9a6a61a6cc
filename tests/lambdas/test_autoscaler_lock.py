"""One autoscaler run at a time: the run lock in a real redis-server (no reserved concurrency).

Two runs that overlap: one acts, the other skips without reading a queue or calling ECS and
says so (RunsSkipped, its reply). The lock expires by itself before the next scheduled run
when its run is killed, and is released at the end of a normal run.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from moto import mock_aws

from celery_service import contract
from config.model import AutoscalerConfig
from lambdas.autoscaler import handler as scaler
from lambdas.autoscaler import settings as autoscaler_settings
from lambdas.autoscaler.ecs import ServiceCounts
from lambdas.autoscaler.handler import GroupResult, run_exclusive
from tests.conftest import (
    FakeLambdaContext,
    RedisServer,
    ecs_cluster_with,
    free_port,
    use_fake_aws_credentials,
)
from tests.lambdas.test_autoscaler_handler import CONFIG, emitted_metrics, settings_for
from tests.synth import ROOT
from tools.autoscale_once import DryRunEcs

LOCK = contract.AUTOSCALER_LOCK_KEY
SERVICES = {"celery-test-worker-general": 1, "celery-test-worker-batch": 0}


class GatedEcs:
    """A dry-run ECS whose DescribeServices waits at a gate: the run that reaches it stays
    in the middle of its work, holding the lock, until the test opens the gate."""

    def __init__(self) -> None:
        self.inner = DryRunEcs(SERVICES)
        self.described = 0
        self.entered = threading.Event()
        self.gate = threading.Event()

    def describe(self, services: list[str]) -> tuple[dict[str, ServiceCounts], dict[str, str]]:
        self.described += 1
        self.entered.set()
        assert self.gate.wait(10), "the gate was never opened"
        return self.inner.describe(services)

    def set_desired(self, service: str, count: int) -> None:
        self.inner.set_desired(service, count)


class PipelineCounter:
    """A redis client that counts the pipelines it hands out: run_once reads and writes
    through pipelines only, the lock through plain commands."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.pipelines = 0

    def lock(self, *args: Any, **kwargs: Any) -> Any:
        return self.client.lock(*args, **kwargs)

    def pipeline(self, transaction: bool = True) -> Any:
        self.pipelines += 1
        return self.client.pipeline(transaction=transaction)


@pytest.fixture
def backlog(redis_server: Callable[..., RedisServer]) -> RedisServer:
    server = redis_server()
    server.client().lpush("reports", *["r"] * 40)  # a run that acts scales batch out
    return server


def skips(out: str) -> list[dict[str, Any]]:
    return [m for m in emitted_metrics(out) if m["name"] == contract.RUNS_SKIPPED]


def error_kinds(out: str) -> list[str | None]:
    """The kind of every AutoscalerErrors record (None: the environment's total)."""
    records = [json.loads(line) for line in out.splitlines() if '"_aws"' in line]
    return [r.get("kind") for r in records if contract.AUTOSCALER_ERRORS in r]


def test_of_two_overlapping_runs_one_acts_and_the_other_skips(
    backlog: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings_for(backlog.port)
    runs = {name: (PipelineCounter(backlog.client()), GatedEcs()) for name in ("a", "b")}
    outcomes: dict[str, list[list[GroupResult]] | None] = {}
    finished: queue.Queue[str] = queue.Queue()
    start = threading.Barrier(2)

    def run(name: str) -> None:
        client, ecs = runs[name]
        start.wait()
        outcomes[name] = run_exclusive(settings, client, ecs)
        finished.put(name)

    threads = [threading.Thread(target=run, args=(name,)) for name in runs]
    for thread in threads:
        thread.start()
    try:
        # The run that got the lock waits at its gate: only the other can finish meanwhile.
        skipper = finished.get(timeout=10)
    finally:
        for _, ecs in runs.values():
            ecs.gate.set()
        for thread in threads:
            thread.join(timeout=10)
    (actor,) = set(runs) - {skipper}
    assert outcomes[skipper] is None
    skipped_client, skipped_ecs = runs[skipper]
    assert skipped_client.pipelines == 0, "a skipped run reads no queue and writes no state"
    assert skipped_ecs.described == 0, "a skipped run calls no ECS API"
    assert skipped_ecs.inner.updates == []

    acted = outcomes[actor]
    assert acted is not None
    (decisions,) = acted
    batch = next(r for r in decisions if r.group == "batch")
    assert batch.changed
    assert runs[actor][1].inner.updates == [("celery-test-worker-batch", batch.desired)]

    (skip,) = skips(capsys.readouterr().out)
    assert skip["value"] == [1]
    assert skip["dimensions"] == {"environment", "service"}
    assert backlog.client().exists(LOCK) == 0, "released at the end of the run"


def test_a_normal_run_releases_the_lock_so_the_next_one_acts(
    backlog: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings_for(backlog.port)
    client = backlog.client()
    for _ in range(3):
        assert run_exclusive(settings, client, DryRunEcs(SERVICES)) is not None
        assert client.exists(LOCK) == 0
    assert skips(capsys.readouterr().out) == []


def test_the_lock_has_a_ttl_that_covers_the_run_and_ends_before_the_next(
    backlog: RedisServer,
) -> None:
    settings = settings_for(backlog.port, decisions_per_run=3, decision_interval_s=60)
    client = backlog.client()
    held_ms: list[int] = []

    def sleep(seconds: float) -> None:  # between decisions: the lock is still this run's
        assert seconds == 60
        held_ms.append(client.pttl(LOCK))

    assert run_exclusive(settings, client, DryRunEcs(SERVICES), sleep=sleep) is not None
    assert len(held_ms) == 2
    # A run lasts its two 60 s sleeps plus its work; the next one is due 300 s after it.
    assert settings.lock_ttl_s == 2 * 60 + autoscaler_settings.RUN_WORK_S
    assert all(
        (settings.lock_ttl_s - 5) * 1000 < ms <= settings.lock_ttl_s * 1000 for ms in held_ms
    )
    assert settings.lock_ttl_s < settings.interval_s
    assert client.exists(LOCK) == 0


# A run in its own process, killed (as Lambda kills a run at its timeout) while it holds
# the lock: no `finally` runs, the lock stays behind until its TTL.
KILLED_RUN = """
import sys, threading
from lambdas.autoscaler import handler, redis_access, settings as autoscaler_settings

class Hung:
    def describe(self, services):
        print("holding", flush=True)
        threading.Event().wait()

    def set_desired(self, service, count):
        raise AssertionError("never reached")

autoscaler_settings.RUN_WORK_S = int(sys.argv[2])
settings = autoscaler_settings.Settings.model_validate_json(sys.argv[1])
handler.run_exclusive(settings, redis_access.redis_client_for(settings, None), Hung())
"""


def test_a_killed_run_leaves_a_lock_that_expires_by_itself_before_the_next_run(
    backlog: RedisServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Two seconds of work instead of 45, so the expiry is seen within the test (and a busy
    # machine still sees the lock before it expires).
    monkeypatch.setattr(autoscaler_settings, "RUN_WORK_S", 2)
    settings = settings_for(backlog.port)
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            KILLED_RUN,
            settings.model_dump_json(),
            str(autoscaler_settings.RUN_WORK_S),
        ],
        cwd=ROOT,
        env=os.environ,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        # Its metric lines come first: it reads Redis, then waits in DescribeServices.
        for line in process.stdout:
            if line.strip() == "holding":
                break
        else:
            pytest.fail("the run never reached ECS")
    finally:
        process.kill()
        process.wait(timeout=10)
    client = backlog.client()
    ttl_ms = client.pttl(LOCK)
    assert 0 < ttl_ms <= settings.lock_ttl_s * 1000, "left behind, with a TTL"
    assert run_exclusive(settings, client, DryRunEcs(SERVICES)) is None, "held meanwhile"

    deadline = time.monotonic() + settings.lock_ttl_s + 1
    while client.exists(LOCK) and time.monotonic() < deadline:
        time.sleep(0.05)
    after = run_exclusive(settings, client, DryRunEcs(SERVICES))
    assert after is not None, "the next run acts once the killed run's lock expired"
    assert len(skips(capsys.readouterr().out)) == 1


def test_a_run_that_outlasts_its_lock_reports_it_and_leaves_the_next_runs_lock(
    backlog: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = settings_for(backlog.port)
    client = backlog.client()
    ecs = GatedEcs()
    thread = threading.Thread(target=run_exclusive, args=(settings, client, ecs))
    thread.start()
    try:
        assert ecs.entered.wait(10)
        # As if its TTL ran out and the next invocation took the lock.
        client.set(LOCK, "the next run's token", ex=60)
    finally:
        ecs.gate.set()
        thread.join(timeout=10)
    assert client.get(LOCK) == b"the next run's token", "only its own token is released"
    assert error_kinds(capsys.readouterr().out) == ["lock_expired", None]


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    use_fake_aws_credentials(monkeypatch)
    with mock_aws():
        yield ecs_cluster_with("celery-test", SERVICES)


def handler_environment(monkeypatch: pytest.MonkeyPatch, port: int) -> None:
    monkeypatch.setenv("AUTOSCALER_CONFIG", json.dumps(CONFIG))
    monkeypatch.setenv("REDIS_HOST", "127.0.0.1")
    monkeypatch.setenv("REDIS_PORT", str(port))
    monkeypatch.setenv("REDIS_TLS", "false")


def queue_reads(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{c}", {}).get("calls", 0)) for c in ("llen", "hvals"))


def test_the_handler_says_it_skipped_while_another_run_holds_the_lock(
    backlog: RedisServer,
    aws: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    handler_environment(monkeypatch, backlog.port)
    client = backlog.client()
    client.set(LOCK, "another run", ex=60)
    reads = queue_reads(client)
    reply = scaler.handler({}, FakeLambdaContext())
    assert reply == {"skipped": True, "runs": []}
    assert queue_reads(client) == reads, "no queue read"
    described = aws.describe_services(cluster="celery-test", services=list(SERVICES))
    assert {s["serviceName"]: s["desiredCount"] for s in described["services"]} == SERVICES
    assert client.get(LOCK) == b"another run", "the holder's lock is left alone"
    out = capsys.readouterr().out
    assert len(skips(out)) == 1
    assert not [m for m in emitted_metrics(out) if m["name"] == contract.RUNS]

    client.delete(LOCK)  # the other run ended
    again = scaler.handler({}, FakeLambdaContext())
    assert again["skipped"] is False
    assert queue_reads(client) > reads
    assert any(r["changed"] for r in again["runs"][0]), "the next invocation acts"


def test_redis_unreadable_while_taking_the_lock_holds_and_reports(
    aws: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    handler_environment(monkeypatch, free_port())  # nothing listens there
    reply = scaler.handler({}, FakeLambdaContext())
    assert reply["skipped"] is False
    (run,) = reply["runs"]
    assert all(r["desired"] is None and r["reason"] == "redis unreadable: hold" for r in run)
    described = aws.describe_services(cluster="celery-test", services=list(SERVICES))
    assert {s["serviceName"]: s["desiredCount"] for s in described["services"]} == SERVICES
    assert error_kinds(capsys.readouterr().out) == ["redis", None]


def test_every_schedule_the_config_accepts_fits_a_lock_shorter_than_its_interval() -> None:
    """The config bounds a run by its Lambda timeout (the sleeps plus the run's work) within
    the schedule; the lock's TTL then always covers the sleeps and ends before the next run."""
    for minutes in (1, 2, 5, 10, 15, 60):
        for decisions in range(1, 21):
            for interval in (5, 10, 30, 45, 60, 120, 300):
                try:
                    accepted = AutoscalerConfig(
                        schedule_minutes=minutes,
                        decisions_per_run=decisions,
                        decision_interval_s=interval,
                    )
                except ValueError:
                    continue
                settings = settings_for(
                    6379,
                    interval_s=minutes * 60,
                    decisions_per_run=decisions,
                    decision_interval_s=interval,
                )
                sleeps = (decisions - 1) * interval
                assert sleeps < settings.lock_ttl_s <= accepted.timeout_s
                assert settings.lock_ttl_s <= settings.interval_s - 15


@pytest.mark.parametrize(
    ("decisions", "interval", "fits"), [(6, 50, True), (7, 50, False), (12, 30, False)]
)
def test_a_lock_that_cannot_end_before_the_next_run_is_refused_in_one_line(
    decisions: int, interval: int, fits: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = {"decisions_per_run": decisions, "decision_interval_s": interval}
    if fits:
        assert settings_for(6379, **overrides).lock_ttl_s < 300
        return
    monkeypatch.setenv("AUTOSCALER_CONFIG", json.dumps({**CONFIG, **overrides}))
    monkeypatch.setenv("REDIS_HOST", "127.0.0.1")
    with pytest.raises(ValueError, match=r"^invalid input: AUTOSCALER_CONFIG: [^\n]*\Z") as err:
        scaler.handler({}, FakeLambdaContext())
    assert "must fit in interval_s (300 s)" in str(err.value)
