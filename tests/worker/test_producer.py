"""The producer client as a web API uses it: configured from the workers' environment, its
`shared_task` calls from request threads land on the catalog's queue at the catalog's
priority, and it polls state and progress while a real worker runs the task."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
from celery import shared_task
from moto import mock_aws

from celery_service import producer
from celery_service.contract import PRIORITIES, PRIORITY_SEPARATOR, Env, queue_keys
from celery_service.settings import SettingsError
from tests.conftest import RedisServer, use_fake_aws_credentials
from tests.worker.harness import base_env, running, wait_for


# The API's own declaration of a task the workers run: a name and a signature, no code.
@shared_task(name="samples.build_report")
def build_report(report_id: str, sections: int, seconds_per_section: float) -> str:
    raise NotImplementedError("runs on the platform's workers")


def message_keys(client: Any) -> dict[str, int]:
    return {
        key.decode(): int(client.llen(key))
        for key in client.keys("*")
        if client.type(key) == b"list" and not key.startswith(b"celery")
    }


def test_request_threads_publish_where_the_catalog_says_and_poll_progress(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    server = redis_server()
    client = server.client()
    producer.producer_app(base_env(server.port, tmp_path))

    def handle_request(n: int) -> str:  # what a FastAPI endpoint does: enqueue, return the id
        return str(build_report.delay(f"r{n}", 3, 0.3).id)

    with ThreadPoolExecutor(max_workers=4) as pool:
        ids = list(pool.map(handle_request, range(4)))
    ids.append(producer.send("samples.build_report", "by-name", 3, 0.3))
    # The catalog: samples.build_report -> queue reports, priority low (kombu step 6).
    low = f"reports{PRIORITY_SEPARATOR}{PRIORITIES['low']}"
    assert message_keys(client) == {low: 5}
    first = json.loads(client.lindex(low, -1) or b"{}")
    assert first["properties"]["priority"] == PRIORITIES["low"]
    assert producer.state_of(ids[0]).state == "PENDING"

    seen: set[str] = set()
    with running(server.port, tmp_path, group="batch"):
        deadline = time.monotonic() + 60
        while not all(producer.state_of(i).ready for i in ids) and time.monotonic() < deadline:
            state = producer.state_of(ids[-1])
            if state.state == "PROGRESS":
                seen.add(f"{state.info['done']}/{state.info['total']}")
            time.sleep(0.05)
    finals = [producer.state_of(i) for i in ids]
    assert [s.state for s in finals] == ["SUCCESS"] * 5
    assert finals[-1].info == "report by-name: 3 sections"
    assert seen >= {"1/3", "2/3"}, seen


def test_a_failure_reads_as_its_exception_text(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    server = redis_server()
    producer.producer_app(base_env(server.port, tmp_path))
    with running(server.port, tmp_path, group="batch"):
        task_id = producer.send("samples.build_report", "bad", 1, "not seconds")
        wait_for(lambda: producer.state_of(task_id).ready, 30, "the task to fail")
    state = producer.state_of(task_id)
    assert state.state == "FAILURE"
    assert isinstance(state.info, str)


def test_a_producer_without_the_broker_settings_is_one_clear_error() -> None:
    with pytest.raises(SettingsError) as raised:
        producer.producer_app({"CELERY_CATALOG": "{}"})
    assert "CELERY_BROKER_HOST: required" in str(raised.value)


def test_a_lambda_producer_reads_the_token_from_the_secret_arn(
    redis_server: Callable[..., RedisServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Lambda gets the AUTH secret's ARN (the SSM parameter broker-auth-secret-arn), not
    the token: the client reads it with the AWS SDK, against a server that requires it."""
    use_fake_aws_credentials(monkeypatch)
    server = redis_server()
    server.client().config_set("requirepass", "t0ken-from-secrets-manager")
    with mock_aws():
        arn = boto3.client("secretsmanager").create_secret(
            Name="celery/broker-auth", SecretString="t0ken-from-secrets-manager"
        )["ARN"]
        env = base_env(server.port, tmp_path) | {Env.BROKER_AUTH_SECRET_ARN: arn}
        producer.producer_app(env)
        producer.send("samples.send_welcome_email", 7)
        with pytest.raises(SettingsError, match=r"CELERY_BROKER_AUTH_SECRET_ARN: .* could not be"):
            producer.producer_app(env | {Env.BROKER_AUTH_SECRET_ARN: arn + "-gone"})
    client = redis.Redis(host="127.0.0.1", port=server.port, password="t0ken-from-secrets-manager")
    assert sum(int(client.llen(key)) for key in queue_keys("default")) == 1


def test_a_lambda_producer_reads_the_catalog_from_its_parameter(
    redis_server: Callable[..., RedisServer],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Lambda's variables hold 4 KB in all and a catalog may take 8: it names the SSM
    parameter `catalog` instead, and the client reads it at start."""
    use_fake_aws_credentials(monkeypatch)
    server = redis_server()
    env = base_env(server.port, tmp_path)
    catalog = env.pop(Env.CATALOG)
    with mock_aws():
        name = "/celery/qa/celery/catalog"
        boto3.client("ssm").put_parameter(Name=name, Value=catalog, Type="String", Tier="Advanced")
        producer.producer_app(env | {Env.CATALOG_PARAMETER: name})
        producer.send("samples.send_welcome_email", 7)
        with pytest.raises(SettingsError, match=r"^CELERY_CATALOG_PARAMETER: /gone could not be"):
            producer.producer_app(env | {Env.CATALOG_PARAMETER: "/gone"})
    keys = queue_keys("default")
    assert sum(int(server.client().llen(key)) for key in keys) == 1
