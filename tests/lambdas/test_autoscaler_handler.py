"""The autoscaler's handler against a real redis-server, a dry-run ECS and moto's ECS."""

from __future__ import annotations

import base64
import json
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from botocore.retries import standard
from moto import mock_aws

from bench import autoscaler_run
from celery_service.contract import PRIORITY_SEPARATOR as SEP
from celery_service.contract import UNACKED_KEY, autoscaler_state_key, completed_key, dlq_index_key
from lambdas.autoscaler import handler as scaler
from lambdas.autoscaler.ecs import BotoEcs, ServiceCounts
from lambdas.autoscaler.handler import GroupResult, run_once
from lambdas.autoscaler.observe import read_all
from lambdas.autoscaler.settings import Settings
from tests.conftest import (
    FakeLambdaContext,
    RedisServer,
    ecs_cluster_with,
    free_port,
    use_fake_aws_credentials,
)
from tests.lambdas.ecs_faults import error_kinds, throttle
from tools.autoscale_once import DryRunEcs

CONFIG: dict[str, Any] = {
    "environment": "test",
    "cluster": "celery-test",
    "interval_s": 300,
    "targets": {
        "general": {
            "service": "celery-test-worker-general",
            "queues": ["default", "priority"],
            "min_tasks": 1,
            "max_tasks": 20,
            "concurrency": 4,
            "target_wait_s": 30,
        },
        "batch": {
            "service": "celery-test-worker-batch",
            "queues": ["reports"],
            "min_tasks": 0,
            "max_tasks": 5,
            "concurrency": 2,
            "target_wait_s": 600,
        },
    },
    "dlq_queues": ["default", "priority", "reports"],
}


def settings_for(port: int, **overrides: Any) -> Settings:
    return Settings.model_validate(
        {**CONFIG, "redis_host": "127.0.0.1", "redis_port": port, "redis_tls": False, **overrides}
    )


def unacked(routing_key: str) -> str:
    return json.dumps([{"body": "...", "properties": {}}, routing_key, routing_key])


@pytest.fixture
def seeded(redis_server: Callable[..., RedisServer]) -> RedisServer:
    server = redis_server()
    client = server.client()
    client.lpush("default", *["m"] * 5)
    client.lpush(f"default{SEP}3", *["m"] * 3)
    client.lpush(f"priority{SEP}9", *["m"] * 2)
    client.hset(UNACKED_KEY, mapping={f"tag{i}": unacked("default") for i in range(4)})
    client.hset(UNACKED_KEY, "tag-r", unacked("reports"))
    client.hset(UNACKED_KEY, "garbage", "not json")
    client.set(completed_key("default"), 100)
    client.set(completed_key("priority"), 10)
    client.set(completed_key("reports"), 7)
    client.zadd(dlq_index_key("reports"), {"a": 1.0, "b": 2.0})
    return server


class CountingClient:
    """Wraps a redis client and counts round trips (pipeline executions and commands)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.round_trips = 0

    def pipeline(self, transaction: bool = True) -> Any:
        pipe = self.client.pipeline(transaction=transaction)
        original = pipe.execute

        def execute(**options: Any) -> Any:
            self.round_trips += 1
            return original(**options)

        pipe.execute = execute  # type: ignore[method-assign,assignment]
        return pipe


def test_reads_every_priority_key_and_in_flight_per_queue_in_one_round_trip(
    seeded: RedisServer,
) -> None:
    client = CountingClient(seeded.client())
    reading = read_all(client, ["default", "priority", "reports"], ["general", "batch"])
    assert client.round_trips == 1
    assert reading.queues["default"].waiting == 8
    assert reading.queues["priority"].waiting == 2
    assert reading.queues["default"].in_flight == 4
    assert reading.queues["reports"].in_flight == 1
    assert reading.queues["reports"].dlq_depth == 2
    assert reading.queues["default"].completed_total == 100
    assert reading.unparsed_unacked == 1
    assert reading.states == {"general": None, "batch": None}


def test_a_backlog_scales_out_and_an_unchanged_count_is_not_written(seeded: RedisServer) -> None:
    client = seeded.client()
    client.lpush("reports", *["r"] * 40)  # 40 long reports, nobody running
    ecs = DryRunEcs({"celery-test-worker-general": 1, "celery-test-worker-batch": 0})
    results = {r.group: r for r in run_once(settings_for(seeded.port), client, ecs, now=1000.0)}
    batch = results["batch"]
    assert batch.before == 0
    assert batch.desired is not None
    assert batch.desired > 0, batch.reason
    assert batch.changed
    assert ("celery-test-worker-batch", batch.desired) in ecs.updates
    assert json.loads(client.get("celery:autoscaler:state:batch") or "{}")["last"]["waiting"] == 40
    writes = len(ecs.updates)
    again = {r.group: r for r in run_once(settings_for(seeded.port), client, ecs, now=1005.0)}
    unchanged = [g for g, r in again.items() if not r.changed]
    assert len(ecs.updates) == writes + (2 - len(unchanged))


def test_redis_down_changes_nothing_and_reports_an_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    ecs = DryRunEcs({"celery-test-worker-general": 3, "celery-test-worker-batch": 2})
    dead = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    results = run_once(settings_for(1), dead, ecs, now=1000.0)
    assert ecs.updates == []
    assert all(r.desired is None and not r.changed for r in results)
    assert "AutoscalerErrors" in capsys.readouterr().out


def test_one_missing_service_does_not_stop_the_others(
    seeded: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    client = seeded.client()
    client.lpush("reports", *["r"] * 40)
    ecs = DryRunEcs({"celery-test-worker-batch": 0})  # general's service is gone
    results = {r.group: r for r in run_once(settings_for(seeded.port), client, ecs, now=1000.0)}
    assert results["general"].error is not None
    assert results["batch"].changed
    emitted = capsys.readouterr().out
    assert '"kind": "service_missing"' in emitted or "service_missing" in emitted


@dataclass
class ThrottledEcs:
    counts: dict[str, int]

    def describe(self, services: list[str]) -> tuple[dict[str, ServiceCounts], dict[str, str]]:
        return {s: ServiceCounts(c, 0, c) for s, c in self.counts.items()}, {}

    def set_desired(self, service: str, count: int) -> None:
        raise RuntimeError("ThrottlingException: Rate exceeded")


def test_a_throttled_update_is_reported_and_holds(seeded: RedisServer) -> None:
    client = seeded.client()
    client.lpush("reports", *["r"] * 40)
    ecs = ThrottledEcs({"celery-test-worker-general": 1, "celery-test-worker-batch": 0})
    results = {r.group: r for r in run_once(settings_for(seeded.port), client, ecs, now=1000.0)}
    assert results["batch"].error is not None
    assert "Throttling" in results["batch"].error
    assert results["batch"].changed is False


@dataclass
class SlowEcs:
    """ECS whose every update takes `update_s` of the run's clock (a throttled API's retries)."""

    counts: dict[str, int]
    clock: list[float]
    update_s: float
    updates: list[tuple[str, int]] = field(default_factory=list)

    def describe(self, services: list[str]) -> tuple[dict[str, ServiceCounts], dict[str, str]]:
        return {s: ServiceCounts(c, 0, c) for s, c in self.counts.items()}, {}

    def set_desired(self, service: str, count: int) -> None:
        self.clock[0] += self.update_s
        self.updates.append((service, count))


def test_updates_stop_when_the_runs_time_is_spent_biggest_scale_out_first(
    redis_server: Callable[..., RedisServer], capsys: pytest.CaptureFixture[str]
) -> None:
    """Each update takes 16 s (retries of a throttled API): two start within the run's 30 s
    for updates, the biggest scale-outs; the last holds, is reported and is decided again
    next run, and the state is saved for every group all the same."""
    server = redis_server()
    client = server.client()
    targets = {
        name: {**CONFIG["targets"]["general"], "service": f"svc-{name}", "queues": [name]}
        for name in "abc"
    }
    for name, waiting in (("a", 30), ("b", 300), ("c", 100)):
        client.lpush(name, *["m"] * waiting)
    clock = [0.0]
    ecs = SlowEcs({f"svc-{n}": 1 for n in "abc"}, clock, update_s=16.0)
    settings = settings_for(server.port, targets=targets, dlq_queues=[])
    results = {
        r.group: r for r in run_once(settings, client, ecs, now=1000.0, clock=lambda: clock[0])
    }
    assert [service for service, _ in ecs.updates] == ["svc-b", "svc-c"]
    assert results["b"].changed
    assert results["c"].changed
    assert not results["a"].changed
    assert "the run's 30 s for updates are spent" in (results["a"].error or "")
    assert error_kinds(capsys.readouterr().out) == [("ecs_update", "a")]
    assert all(client.exists(autoscaler_state_key(g)) for g in "abc")


def test_scale_ins_are_sent_after_every_scale_out() -> None:
    clock = [0.0]
    ecs = SlowEcs({}, clock, update_s=1.0)
    changes = [
        GroupResult("in", "svc-in", 8, 2, "", changed=True),
        GroupResult("small", "svc-small", 1, 2, "", changed=True),
        GroupResult("big", "svc-big", 1, 9, "", changed=True),
    ]
    settings = settings_for(6379)
    scaler._apply(settings, ecs, changes, started=0.0, clock=lambda: clock[0])
    assert ecs.updates == [("svc-big", 9), ("svc-small", 2), ("svc-in", 2)]


def test_a_throttled_describe_batch_holds_only_its_services(
    redis_server: Callable[..., RedisServer],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """DescribeServices takes ten services a call: one call throttled past its retries leaves
    its ten unknown this run (one ecs_describe error, not a missing service each); the
    others are decided."""
    use_fake_aws_credentials(monkeypatch)
    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", lambda *_: 0.0)
    server = redis_server()
    names = [f"g{i:02d}" for i in range(12)]
    targets = {
        name: {**CONFIG["targets"]["general"], "service": f"svc-{name}", "queues": [name]}
        for name in names
    }
    for name in names:
        server.client().lpush(name, *["m"] * 50)
    settings = settings_for(server.port, targets=targets, dlq_queues=[])
    with mock_aws():
        ecs_cluster_with("celery-test", {f"svc-{n}": 1 for n in names})
        boto = BotoEcs("celery-test")
        throttle(boto, "DescribeServices", None, when=lambda call: "svc-g00" in call["services"])
        results = {r.group: r for r in run_once(settings, server.client(), boto, now=1000.0)}
    unknown = {g for g, r in results.items() if r.desired is None}
    assert unknown == set(names[:10]), "the first call's ten, in sorted order"
    assert all(results[g].changed for g in names[10:])
    assert all("describe failed" in (results[g].error or "") for g in unknown)
    assert error_kinds(capsys.readouterr().out) == [("ecs_describe", None)]


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    use_fake_aws_credentials(monkeypatch)
    with mock_aws():
        yield ecs_cluster_with(
            "celery-test", {"celery-test-worker-general": 2, "celery-test-worker-batch": 0}
        )


def test_boto_ecs_describes_and_updates_only_named_services(aws: Any) -> None:
    ecs = BotoEcs("celery-test")
    found, missing = ecs.describe(["celery-test-worker-general", "celery-test-worker-gone"])
    assert found["celery-test-worker-general"].desired == 2
    assert "celery-test-worker-gone" in missing
    ecs.set_desired("celery-test-worker-general", 5)
    (service,) = aws.describe_services(
        cluster="celery-test", services=["celery-test-worker-general"]
    )["services"]
    assert service["desiredCount"] == 5


@pytest.mark.parametrize(
    ("live", "bounds", "expected"),
    [
        (1, (2, 4), 2),  # a new service: CloudFormation started it with one task
        (9, (1, 4), 4),  # a deploy lowered max_tasks under the live count
        (0, (1, 4), 1),  # a deploy raised min_tasks
    ],
)
def test_the_next_run_brings_a_deployed_count_into_the_new_bounds(
    redis_server: Callable[..., RedisServer],
    aws: Any,
    live: int,
    bounds: tuple[int, int],
    expected: int,
) -> None:
    """The services carry no DesiredCount, so a deploy keeps the live count: the autoscaler
    clamps it into the bounds the deploy brought, with an empty queue."""
    service = "celery-test-worker-general"
    aws.update_service(cluster="celery-test", service=service, desiredCount=live)
    low, high = bounds
    targets = {"general": {**CONFIG["targets"]["general"], "min_tasks": low, "max_tasks": high}}
    server = redis_server()
    settings = settings_for(server.port, targets=targets)
    (result,) = run_once(settings, server.client(), BotoEcs("celery-test"), now=1000.0)
    assert (result.before, result.desired) == (live, expected)
    (described,) = aws.describe_services(cluster="celery-test", services=[service])["services"]
    assert described["desiredCount"] == expected


def test_handler_dry_run_reads_ecs_and_changes_nothing(
    seeded: RedisServer,
    aws: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seeded.client().lpush("reports", *["r"] * 40)
    monkeypatch.setenv("AUTOSCALER_CONFIG", json.dumps(CONFIG))
    monkeypatch.setenv("REDIS_HOST", "127.0.0.1")
    monkeypatch.setenv("REDIS_PORT", str(seeded.port))
    monkeypatch.setenv("REDIS_TLS", "false")
    reply = scaler.handler({"dry_run": True}, FakeLambdaContext())
    (run,) = reply["runs"]
    assert {r["group"] for r in run} == {"general", "batch"}
    batch = next(r for r in run if r["group"] == "batch")
    assert batch["desired"] > 0
    described = aws.describe_services(cluster="celery-test", services=["celery-test-worker-batch"])
    assert described["services"][0]["desiredCount"] == 0, "a dry run changes nothing"
    emitted = [json.loads(line) for line in capsys.readouterr().out.splitlines() if "_aws" in line]
    names = {
        m["Name"] for e in emitted for d in e["_aws"]["CloudWatchMetrics"] for m in d["Metrics"]
    }
    assert {"QueueWaiting", "QueueInFlight", "DlqDepth", "DesiredTasks", "RunDuration"} <= names


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ("not an object", "the event must be a JSON object"),
        ({"dry_run": "sometimes"}, "invalid input: dry_run"),
    ],
)
def test_malformed_events_get_a_clear_error(
    event: Any, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUTOSCALER_CONFIG", json.dumps(CONFIG))
    monkeypatch.setenv("REDIS_HOST", "127.0.0.1")
    with pytest.raises(ValueError, match=message):
        scaler.handler(event, FakeLambdaContext())


def test_malformed_settings_get_a_clear_error() -> None:
    with pytest.raises(ValueError, match="AUTOSCALER_CONFIG is not set"):
        Settings.from_env({})
    with pytest.raises(ValueError, match="not valid JSON"):
        Settings.from_env({"AUTOSCALER_CONFIG": "{"})
    with pytest.raises(ValueError, match="must fit in interval_s"):
        settings_for(6379, decisions_per_run=12, decision_interval_s=30)


def emitted_metrics(out: str) -> list[dict[str, Any]]:
    """Each EMF record printed: its dimension names, and its metrics' names and values."""
    records = [json.loads(line) for line in out.splitlines() if "_aws" in line]
    return [
        {
            "dimensions": set(d["Dimensions"][0]),
            "name": m["Name"],
            "value": record[m["Name"]],
            "worker_group": record.get("worker_group"),
        }
        for record in records
        for d in record["_aws"]["CloudWatchMetrics"]
        for m in d["Metrics"]
    ]


def test_beat_heartbeat_is_read_in_the_same_round_trip_and_its_age_published(
    seeded: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from celery_service import contract

    client = seeded.client()
    client.set(contract.BEAT_HEARTBEAT_KEY, 900.5)
    counting = CountingClient(client)
    reading = read_all(counting, ["default"], ["general"])
    assert counting.round_trips == 1
    assert reading.beat_heartbeat == 900.5
    ecs = DryRunEcs({"celery-test-worker-general": 1, "celery-test-worker-batch": 0})
    run_once(settings_for(seeded.port), client, ecs, now=1000.0)
    (age,) = [
        m
        for m in emitted_metrics(capsys.readouterr().out)
        if m["name"] == "BeatHeartbeatAgeSeconds"
    ]
    assert age["value"] == [99.5]
    assert age["dimensions"] == {"environment", "service"}
    client.delete(contract.BEAT_HEARTBEAT_KEY)
    run_once(settings_for(seeded.port), client, ecs, now=1300.0)
    emitted = emitted_metrics(capsys.readouterr().out)
    assert not [m for m in emitted if m["name"] == "BeatHeartbeatAgeSeconds"], "absent: no data"


def test_estimated_wait_is_the_backlog_over_the_measured_completion_rate(
    seeded: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    client = seeded.client()
    ecs = DryRunEcs({"celery-test-worker-general": 1, "celery-test-worker-batch": 1})
    run_once(settings_for(seeded.port), client, ecs, now=1000.0)
    first = emitted_metrics(capsys.readouterr().out)
    waits = {m["worker_group"] for m in first if m["name"] == "GroupEstimatedWaitSeconds"}
    assert "general" not in waits, "no rate measured on the first run: nothing published"
    client.incrby(completed_key("default"), 30)  # 30 done in 300 s: 0.1 per second
    run_once(settings_for(seeded.port), client, ecs, now=1300.0)
    emitted = emitted_metrics(capsys.readouterr().out)
    waits_by_group = {
        m["worker_group"]: m["value"] for m in emitted if m["name"] == "GroupEstimatedWaitSeconds"
    }
    waiting = 10  # seeded: 5 + 3 in default, 2 in priority
    assert waits_by_group["general"] == [pytest.approx(waiting / 0.1)]
    assert all(
        m["dimensions"] >= {"environment", "service"} for m in emitted if m["name"] != "Runs"
    )


def test_in_flight_counts_cost_the_lambda_nothing_per_message_byte(
    redis_server: Callable[..., RedisServer],
) -> None:
    """The `unacked` hash holds whole messages; the reading brings back only a count per
    routing key, so 20 in-flight messages of 1 MB cost the Lambda no more than small ones.
    Both entry layouts count: kombu's (`json.dumps`, with spaces) and the pop script's."""
    client = redis_server().client()
    body = base64.b64encode(b"x" * 750_000).decode()  # about 1 MB of JSON per entry
    message = {"body": body, "properties": {}}
    for n in range(10):
        client.hset(UNACKED_KEY, f"kombu-{n}", json.dumps([message, "reports", "reports"]))
        compact = json.dumps(message, separators=(",", ":"))
        client.hset(UNACKED_KEY, f"script-{n}", f'[{compact},"default","default"]')
    client.hset(UNACKED_KEY, "damaged", "not json")
    tracemalloc.start()
    try:
        reading = read_all(client, ["default", "reports"], ["general"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (reading.queues["default"].in_flight, reading.queues["reports"].in_flight) == (10, 10)
    assert reading.unparsed_unacked == 1
    assert peak < 1_000_000, f"the reading held {peak} bytes"


def test_a_run_over_50_groups_and_200_queues_reads_redis_in_one_round_trip(
    redis_server: Callable[..., RedisServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scale of issue 17 through moto's ECS: a backlog in every queue and 2,000
    in-flight messages, 20 of them 1 MB. One pipelined reading and one write of the new
    states (counted on the connection), every group decided, and the run's heap stays far
    under the Lambda's 256 MB. Its time is a benchmark (`make bench-autoscaler-run`)."""
    use_fake_aws_credentials(monkeypatch)
    scale = autoscaler_run.SCALES[-1]
    assert (scale.groups, scale.groups * scale.queues_per_group) == (50, 200)
    measured = autoscaler_run.measure(scale, redis_server().port, repeats=1)
    assert measured.round_trips == 2
    assert measured.decisions == 50
    assert measured.heap_peak_mb < 64
