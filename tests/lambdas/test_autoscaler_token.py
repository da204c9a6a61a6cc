"""The AUTH token across a rotation: a real redis-server whose password changes between
invocations of one process (no cold start), the secret in moto's Secrets Manager."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
import redis
from aws_lambda_powertools.utilities import parameters
from moto import mock_aws

from celery_service import contract
from lambdas.autoscaler import handler as scaler
from lambdas.autoscaler import redis_access
from tests.conftest import (
    FakeLambdaContext,
    RedisServer,
    ecs_cluster_with,
    use_fake_aws_credentials,
)
from tests.lambdas.test_autoscaler_handler import CONFIG

SERVICES = {"celery-test-worker-general": 1, "celery-test-worker-batch": 0}


@dataclass
class Rotation:
    server: RedisServer
    ecs: Any
    secrets: Any
    arn: str

    def admin(self, password: str) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.server.port, password=password)

    def update_secret(self, token: str) -> None:
        self.secrets.put_secret_value(SecretId=self.arn, SecretString=token)

    def desired(self) -> dict[str, int]:
        reply = self.ecs.describe_services(cluster="celery-test", services=list(SERVICES))
        return {s["serviceName"]: int(s["desiredCount"]) for s in reply["services"]}


@pytest.fixture(autouse=True)
def no_cached_secret() -> Iterator[None]:
    """Each test starts as a fresh sandbox: nothing in Powertools' cache."""
    parameters.clear_caches()  # type: ignore[no-untyped-call]  # unannotated in Powertools
    yield
    parameters.clear_caches()  # type: ignore[no-untyped-call]


@pytest.fixture
def rotation(
    redis_server: Callable[..., RedisServer], monkeypatch: pytest.MonkeyPatch
) -> Iterator[Rotation]:
    server = redis_server(requirepass="A")
    use_fake_aws_credentials(monkeypatch)
    with mock_aws():
        ecs = ecs_cluster_with("celery-test", SERVICES)
        secrets = boto3.client("secretsmanager", region_name="us-east-1")
        arn = secrets.create_secret(Name="celery-test/broker-auth", SecretString="A")["ARN"]
        monkeypatch.setenv("AUTOSCALER_CONFIG", json.dumps(CONFIG))
        monkeypatch.setenv("REDIS_HOST", "127.0.0.1")
        monkeypatch.setenv("REDIS_PORT", str(server.port))
        monkeypatch.setenv("REDIS_TLS", "false")
        monkeypatch.setenv("REDIS_AUTH_SECRET_ARN", arn)
        found = Rotation(server, ecs, secrets, arn)
        found.admin("A").lpush("reports", *["r"] * 40)  # work to scale out for
        yield found


def refused_logins(client: redis.Redis) -> int:
    """AUTH attempts the server refused (its ACL log)."""
    entries: list[dict[str, Any]] = client.acl_log()
    return sum(int(e["count"]) for e in entries if e["reason"] == "auth")


def error_kinds(out: str) -> list[str | None]:
    records = [json.loads(line) for line in out.splitlines() if '"_aws"' in line]
    return [r.get("kind") for r in records if contract.AUTOSCALER_ERRORS in r]


def acted(reply: dict[str, Any]) -> bool:
    (run,) = reply["runs"]
    return not reply["skipped"] and all(r["desired"] is not None for r in run)


def test_a_token_rotated_between_invocations_is_read_again_without_a_cold_start(
    rotation: Rotation, capsys: pytest.CaptureFixture[str]
) -> None:
    assert acted(scaler.handler({}, FakeLambdaContext()))
    assert rotation.desired()["celery-test-worker-batch"] > 0

    # SET of the new token, and the secret updated: this sandbox still holds A.
    rotation.admin("A").config_set("requirepass", "B")
    rotation.update_secret("B")
    rotation.admin("B").lpush("default", *["m"] * 400)
    before = rotation.desired()
    capsys.readouterr()
    reply = scaler.handler({}, FakeLambdaContext())
    assert acted(reply), reply
    assert rotation.desired()["celery-test-worker-general"] > before["celery-test-worker-general"]
    assert error_kinds(capsys.readouterr().out) == [], "a rotation is not an error"
    assert refused_logins(rotation.admin("B")) > 0, "the cached token was tried first"


def test_a_token_still_refused_after_reading_the_secret_again_holds_and_reports(
    rotation: Rotation, capsys: pytest.CaptureFixture[str]
) -> None:
    rotation.admin("A").config_set("requirepass", "B")  # the secret was never updated
    before = rotation.desired()
    reply = scaler.handler({}, FakeLambdaContext())
    assert reply["skipped"] is False
    (run,) = reply["runs"]
    assert all(r["desired"] is None and r["reason"] == "redis unreadable: hold" for r in run)
    assert rotation.desired() == before
    assert error_kinds(capsys.readouterr().out) == ["redis", None]


def test_the_token_is_read_again_once_older_than_its_max_age(
    rotation: Rotation, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # One second instead of fifteen minutes; Powertools counts max ages in whole seconds.
    monkeypatch.setattr(redis_access, "TOKEN_MAX_AGE_S", 1)
    assert acted(scaler.handler({}, FakeLambdaContext()))
    rotation.update_secret("B")
    time.sleep(1.1)
    rotation.admin("A").config_set("requirepass", "B")
    assert acted(scaler.handler({}, FakeLambdaContext()))
    # Read before connecting: the old token was never offered to the server.
    assert refused_logins(rotation.admin("B")) == 0
    assert error_kinds(capsys.readouterr().out) == []
