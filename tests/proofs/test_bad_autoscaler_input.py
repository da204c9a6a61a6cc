"""Bad input to the autoscaler: malformed events and settings through the Lambda handler,
and damaged keys in Redis through a run. Each gets a one-line error or a safe run (no count
lowered, every group answered); nothing queued is touched.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from moto import mock_aws

from celery_service.contract import (
    BEAT_HEARTBEAT_KEY,
    UNACKED_KEY,
    autoscaler_state_key,
    completed_key,
    dlq_index_key,
    queue_keys,
)
from lambdas.autoscaler import handler as scaler
from lambdas.autoscaler.ecs import ServiceCounts
from lambdas.autoscaler.handler import run_once
from tests.conftest import FakeLambdaContext, ecs_cluster_with, use_fake_aws_credentials
from tests.lambdas.ecs_faults import error_kinds
from tests.proofs.conftest import RestartableRedis
from tests.proofs.figures import FIGURES
from tests.proofs.test_autoscaler_faults import (
    CLUSTER,
    GROUPS,
    QUEUES,
    REGION,
    FrozenEcs,
    service_of,
    settings_for,
)

SECTION = "Bad input: autoscaler"
START_COUNTS = {"general": 4, "batch": 2, "bulk": 0}


def config_json(**overrides: Any) -> str:
    data = settings_for(6379).model_dump(
        exclude={"redis_host", "redis_port", "redis_tls", "redis_auth_secret_arn"}
    )
    data.update(overrides)
    return json.dumps(data)


@dataclass
class Setup:
    server: RestartableRedis
    ecs: Any
    monkeypatch: pytest.MonkeyPatch

    def desired(self) -> dict[str, int]:
        services = [service_of(g) for g in GROUPS]
        reply = self.ecs.describe_services(cluster=CLUSTER, services=services)
        return {s["serviceName"]: int(s["desiredCount"]) for s in reply["services"]}

    def queued(self) -> list[int]:
        client = self.server.client()
        return [int(client.llen(k)) for q in QUEUES for k in queue_keys(q)] + [
            int(client.hlen(UNACKED_KEY))
        ]

    def environ(self, **overrides: str | None) -> None:
        values: dict[str, str | None] = {
            "AUTOSCALER_CONFIG": config_json(),
            "REDIS_HOST": "127.0.0.1",
            "REDIS_PORT": str(self.server.port),
            "REDIS_TLS": "false",
        }
        values.update(overrides)
        for key, value in values.items():
            if value is None:
                self.monkeypatch.delenv(key, raising=False)
            else:
                self.monkeypatch.setenv(key, value)


@pytest.fixture
def setup(restartable_redis: RestartableRedis, monkeypatch: pytest.MonkeyPatch) -> Iterator[Setup]:
    use_fake_aws_credentials(monkeypatch, REGION)
    client = restartable_redis.client()
    client.flushall()
    client.rpush("default", *[b"m"] * 50)  # a backlog: a fault-free run wants more, not less
    with mock_aws():
        counts = {service_of(group): count for group, count in START_COUNTS.items()}
        ecs = ecs_cluster_with(CLUSTER, counts, REGION)
        found = Setup(restartable_redis, ecs, monkeypatch)
        found.environ()
        yield found


REJECT = "reject"
DRY = "dry run"
RUN = "run"
SCHEDULED = {
    "version": "0",
    "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
    "detail-type": "Scheduled Event",
    "source": "aws.events",
    "account": "123456789012",
    "time": "2026-11-22T12:00:00Z",
    "region": "us-east-1",
    "resources": ["arn:aws:events:us-east-1:123456789012:rule/autoscaler"],
    "detail": {},
}
EVENTS: list[tuple[str, Any, str]] = [
    ("null", None, REJECT),
    ("a string", "run please", REJECT),
    ("a number", 42, REJECT),
    ("a list", [{"dry_run": True}], REJECT),
    ("true", True, REJECT),
    ("dry_run a word", {"dry_run": "sometimes"}, REJECT),
    ("dry_run a list", {"dry_run": []}, REJECT),
    ("dry_run an object", {"dry_run": {"x": 1}}, REJECT),
    ("dry_run 2", {"dry_run": 2}, REJECT),
    ("dry_run huge", {"dry_run": 10**100}, REJECT),
    ("dry_run null", {"dry_run": None}, REJECT),
    ("dry_run 'true'", {"dry_run": "true"}, DRY),
    ("dry_run 1", {"dry_run": 1}, DRY),
    ("source a number", {"source": 5, "dry_run": True}, REJECT),
    ("detail-type a list", {"detail-type": [], "dry_run": True}, REJECT),
    ("unknown group named", {"groups": ["nonexistent"], "dry_run": True}, DRY),
    ("huge detail", {"dry_run": True, "detail": {"x": "y" * 1_000_000}}, DRY),
    ("deeply nested", {"dry_run": True, "detail": json.loads("[" * 200 + "]" * 200)}, DRY),
    ("empty object", {}, RUN),
    ("EventBridge schedule", SCHEDULED, RUN),
]


@pytest.mark.parametrize(("name", "event", "outcome"), EVENTS, ids=[e[0] for e in EVENTS])
def test_malformed_events_are_refused_in_one_line_and_change_nothing(
    setup: Setup, name: str, event: Any, outcome: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before, queued = setup.desired(), setup.queued()
    if outcome == REJECT:
        with pytest.raises(
            ValueError, match=r"^(the event must be a JSON object|invalid input: )[^\n]*\Z"
        ):
            scaler.handler(event, FakeLambdaContext())
        assert setup.desired() == before
    else:
        reply = scaler.handler(event, FakeLambdaContext())
        (run,) = reply["runs"]
        assert {r["group"] for r in run} == set(GROUPS)
        after = setup.desired()
        assert all(after[s] >= before[s] for s in before), "a backlog never lowers a count"
        if outcome == DRY:
            assert after == before, "a dry run changes nothing"
        assert error_kinds(capsys.readouterr().out) == []
    assert setup.queued() == queued
    FIGURES.count(SECTION, f"events: {outcome}")


SETTINGS: list[tuple[str, dict[str, str | None]]] = [
    ("AUTOSCALER_CONFIG unset", {"AUTOSCALER_CONFIG": None}),
    ("AUTOSCALER_CONFIG empty", {"AUTOSCALER_CONFIG": ""}),
    ("AUTOSCALER_CONFIG not JSON", {"AUTOSCALER_CONFIG": "{"}),
    ("AUTOSCALER_CONFIG a list", {"AUTOSCALER_CONFIG": "[]"}),
    ("AUTOSCALER_CONFIG null", {"AUTOSCALER_CONFIG": "null"}),
    ("no targets", {"AUTOSCALER_CONFIG": config_json(targets={})}),
    ("unknown key", {"AUTOSCALER_CONFIG": config_json(surprise=1)}),
    ("interval negative", {"AUTOSCALER_CONFIG": config_json(interval_s=-300)}),
    ("interval a string", {"AUTOSCALER_CONFIG": config_json(interval_s="5m")}),
    ("decisions_per_run 0", {"AUTOSCALER_CONFIG": config_json(decisions_per_run=0)}),
    ("decisions_per_run huge", {"AUTOSCALER_CONFIG": config_json(decisions_per_run=10**9)}),
    ("dlq_queues a string", {"AUTOSCALER_CONFIG": config_json(dlq_queues="default")}),
    (
        "target min above max",
        {
            "AUTOSCALER_CONFIG": config_json(
                targets={
                    "general": {
                        "service": service_of("general"),
                        "queues": ["default"],
                        "min_tasks": 9,
                        "max_tasks": 2,
                        "concurrency": 4,
                        "target_wait_s": 60,
                    }
                }
            )
        },
    ),
    (
        "target without queues",
        {
            "AUTOSCALER_CONFIG": config_json(
                targets={
                    "general": {
                        "service": service_of("general"),
                        "queues": [],
                        "min_tasks": 1,
                        "max_tasks": 2,
                        "concurrency": 4,
                        "target_wait_s": 60,
                    }
                }
            )
        },
    ),
    ("REDIS_PORT a word", {"REDIS_PORT": "six"}),
    ("REDIS_PORT out of range", {"REDIS_PORT": "99999"}),
    ("REDIS_PORT negative", {"REDIS_PORT": "-1"}),
    ("REDIS_TLS a typo", {"REDIS_TLS": "ture"}),
    ("REDIS_HOST unset", {"REDIS_HOST": None}),
]


@pytest.mark.parametrize(("name", "environ"), SETTINGS, ids=[s[0] for s in SETTINGS])
def test_malformed_settings_are_refused_in_one_line(
    setup: Setup, name: str, environ: dict[str, str | None]
) -> None:
    setup.environ(**environ)
    before, queued = setup.desired(), setup.queued()
    # One line that names the variable or the field: no multi-line validation dump.
    named = r"^(AUTOSCALER_CONFIG|invalid input: |REDIS_PORT|REDIS_TLS|REDIS_HOST)[^\n]*\Z"
    with pytest.raises(ValueError, match=named):
        scaler.handler({"dry_run": False}, FakeLambdaContext())
    assert setup.desired() == before
    assert setup.queued() == queued
    FIGURES.count(SECTION, "settings refused with one line")


# ---------------------------------------------------------------- damaged keys in Redis


def _state(value: Any) -> dict[str, Any]:
    return {autoscaler_state_key("general"): json.dumps(value)}


DAMAGE: list[tuple[str, dict[str, Any], set[str]]] = [
    ("state not JSON", {autoscaler_state_key("general"): "{nope"}, set()),
    ("state a list", _state([1, 2]), set()),
    ("state last not an object", _state({"last": "x", "policy": {}}), set()),
    ("state counts are text", _state({"last": {"waiting": "x", "in_flight": []}}), set()),
    ("state clock is text", _state({"last": {"now": "x", "completed_total": "y"}}), set()),
    ("state huge numbers", _state({"last": {"waiting": 10**40, "now": 1e308}}), set()),
    ("policy state garbage", _state({"policy": {"version": 99, "t": "x", "recent": 5}}), set()),
    ("state of an unknown group", {autoscaler_state_key("gpu"): "{}"}, set()),
    ("completed counter text", {completed_key("default"): "abc"}, set()),
    ("completed counter negative", {completed_key("default"): "-5"}, set()),
    ("completed counter huge", {completed_key("default"): "9" * 60}, set()),
    ("beat heartbeat text", {BEAT_HEARTBEAT_KEY: "yesterday"}, set()),
    ("unacked entry garbage", {UNACKED_KEY: {"t1": "not json", "t2": "[1]", "t3": "{}"}}, set()),
    ("DLQ index of the wrong type", {dlq_index_key("reports"): "a string"}, {"queue_unreadable"}),
    ("queue key of the wrong type", {"exports": {"not": "a list"}}, {"queue_unreadable"}),
    ("state nested too deep", {autoscaler_state_key("general"): "[" * 100_000}, set()),
]
# The group a damaged queue key holds (it consumes that queue); every other group decides.
HELD = {"DLQ index of the wrong type": "batch", "queue key of the wrong type": "bulk"}


@pytest.mark.parametrize(("name", "keys", "kinds"), DAMAGE, ids=[d[0] for d in DAMAGE])
def test_damaged_redis_keys_never_lower_a_count_or_stop_the_other_groups(
    restartable_redis: RestartableRedis,
    name: str,
    keys: dict[str, Any],
    kinds: set[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    client: redis.Redis = restartable_redis.client()
    client.flushall()
    client.rpush("default", *[b"m"] * 50)
    for queue in QUEUES:  # counters present, so the stored state is read for rates
        client.set(completed_key(queue), 10)
    for key, value in keys.items():
        if isinstance(value, dict):
            client.hset(key, mapping=value)
        else:
            client.set(key, value)
    counts = {
        service_of(g): ServiceCounts(n, 0, n) for g, n in START_COUNTS.items()
    }  # running = desired
    ecs = FrozenEcs(counts)
    capsys.readouterr()
    results = run_once(settings_for(restartable_redis.port), client, ecs, now=1_700_000_000.0)
    reported = {kind for kind, _ in error_kinds(capsys.readouterr().out)}
    assert reported == kinds, f"{name}: reported {reported}"
    assert {r.group for r in results} == set(GROUPS)
    for service, count in ecs.updates.items():
        assert count >= counts[service].desired, f"{name}: {service} lowered to {count}"
    held = {r.group: r for r in results if r.error is not None}
    assert set(held) == ({HELD[name]} if name in HELD else set()), f"{name}: held {set(held)}"
    for result in held.values():
        assert result.desired == result.before, f"{name}: a held group keeps its count"
        assert result.reason.startswith("queue unreadable: hold"), result.reason
    assert all(r.desired is not None for r in results), name
    assert client.llen("default") == 50
    FIGURES.count(
        SECTION, "damaged Redis keys: safe run" if not kinds else "damaged: held, reported"
    )
