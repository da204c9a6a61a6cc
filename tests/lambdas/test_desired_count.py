"""Desired-count custom resource: the live count survives deploys, within the configured bounds."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.exceptions import EndpointConnectionError
from botocore.stub import Stubber
from moto import mock_aws

from lambdas.desired_count import handler as module
from tests.conftest import use_fake_aws_credentials

if TYPE_CHECKING:
    from mypy_boto3_ecs.client import ECSClient

CLUSTER = "platform"
SERVICE = "worker-default"
PHYSICAL_ID = f"{CLUSTER}/{SERVICE}"


def props(**overrides: str) -> dict[str, str]:
    # As CloudFormation sends them: every value a string, plus update-only triggers.
    base = {
        "ServiceToken": "arn:aws:lambda:us-east-1:123456789012:function:provider",
        "Cluster": CLUSTER,
        "Service": SERVICE,
        "MinTasks": "1",
        "MaxTasks": "10",
        "InitialCount": "2",
        "TaskDefinition": "arn:aws:ecs:us-east-1:123456789012:task-definition/worker:3",
        "ConfigHash": "0f3a",
    }
    base.update(overrides)
    return base


def event(request_type: str, properties: dict[str, str] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "RequestType": request_type,
        "RequestId": "b6a9c1d2",
        "StackId": "arn:aws:cloudformation:us-east-1:123456789012:stack/workers/1",
        "LogicalResourceId": "WorkerDesiredCount",
        "ResourceType": "Custom::DesiredCount",
        "ResourceProperties": props() if properties is None else properties,
    }
    if request_type != "Create":
        body["PhysicalResourceId"] = PHYSICAL_ID
    return body


def logged(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "desired_count"]


@pytest.fixture(autouse=True)
def fake_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fake credentials and a fresh client inside moto, so no test can reach AWS."""
    use_fake_aws_credentials(monkeypatch)
    monkeypatch.setattr(module, "_ecs", None)
    with mock_aws():
        yield


@pytest.fixture
def ecs() -> ECSClient:
    """A cluster whose service runs 7 tasks (as if the autoscaler had set it)."""
    client = boto3.client("ecs", region_name="us-east-1")
    client.create_cluster(clusterName=CLUSTER)
    client.register_task_definition(
        family="worker",
        containerDefinitions=[{"name": "worker", "image": "busybox", "memory": 128}],
    )
    client.create_service(
        cluster=CLUSTER, serviceName=SERVICE, taskDefinition="worker", desiredCount=7
    )
    return client


# ---------------------------------------------------------------- handler against moto


def test_create_returns_clamped_initial_count_without_calling_ecs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_ecs() -> None:
        raise AssertionError("Create must not call ECS")

    monkeypatch.setattr(module, "_client", no_ecs)
    assert module.handler(event("Create", props(InitialCount="0", MinTasks="3")), None) == {
        "PhysicalResourceId": PHYSICAL_ID,
        "Data": {"DesiredCount": 3},
    }
    assert module.handler(event("Create", props(InitialCount="50")), None)["Data"] == {
        "DesiredCount": 10
    }
    assert module.handler(event("Create"), None)["Data"] == {"DesiredCount": 2}


def test_update_keeps_the_live_count(ecs: ECSClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="desired_count")
    assert module.handler(event("Update"), None) == {
        "PhysicalResourceId": PHYSICAL_ID,
        "Data": {"DesiredCount": 7},
    }
    assert logged(caplog) == [
        {
            "request_type": "Update",
            "cluster": CLUSTER,
            "service": SERVICE,
            "live_count": 7,
            "desired_count": 7,
        }
    ]


def test_update_honours_a_lowered_max(ecs: ECSClient) -> None:
    assert module.handler(event("Update", props(MaxTasks="5")), None)["Data"] == {"DesiredCount": 5}


def test_update_honours_a_raised_min(ecs: ECSClient) -> None:
    assert module.handler(event("Update", props(MinTasks="9", MaxTasks="12")), None)["Data"] == {
        "DesiredCount": 9
    }


def test_update_of_a_deleted_service_uses_initial_count(ecs: ECSClient) -> None:
    ecs.delete_service(cluster=CLUSTER, service=SERVICE, force=True)
    # The INACTIVE service still reports 7; that stale count must not be used.
    [stale] = ecs.describe_services(cluster=CLUSTER, services=[SERVICE])["services"]
    assert (stale["status"], stale["desiredCount"]) == ("INACTIVE", 7)
    assert module.handler(event("Update", props(InitialCount="3")), None)["Data"] == {
        "DesiredCount": 3
    }


def test_update_of_a_missing_service_uses_clamped_initial_count(ecs: ECSClient) -> None:
    result = module.handler(event("Update", props(Service="never-created", InitialCount="0")), None)
    assert result == {
        "PhysicalResourceId": f"{CLUSTER}/never-created",
        "Data": {"DesiredCount": 1},
    }


def test_update_in_a_missing_cluster_uses_initial_count(ecs: ECSClient) -> None:
    result = module.handler(event("Update", props(Cluster="new-cluster")), None)
    assert result["Data"] == {"DesiredCount": 2}


def test_delete_is_a_no_op_returning_the_same_physical_id(
    ecs: ECSClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_ecs() -> None:
        raise AssertionError("Delete must not call ECS")

    monkeypatch.setattr(module, "_client", no_ecs)
    # Even broken properties must not block a rollback or a stack deletion.
    assert module.handler(event("Delete", {"MinTasks": "x"}), None) == {
        "PhysicalResourceId": PHYSICAL_ID
    }
    [service] = ecs.describe_services(cluster=CLUSTER, services=[SERVICE])["services"]
    assert service["desiredCount"] == 7


@pytest.mark.parametrize(
    ("overrides", "missing", "message"),
    [
        ({}, "Cluster", "Cluster is required"),
        ({}, "Service", "Service is required"),
        ({}, "MinTasks", "MinTasks is required"),
        ({}, "MaxTasks", "MaxTasks is required"),
        ({}, "InitialCount", "InitialCount is required"),
        ({"MaxTasks": "ten"}, None, "MaxTasks must be a whole number, got 'ten'"),
        ({"MinTasks": "1.5"}, None, "MinTasks must be a whole number, got '1.5'"),
        ({"InitialCount": ""}, None, "InitialCount must be a whole number, got ''"),
        ({"InitialCount": "-1"}, None, "InitialCount must not be negative, got -1"),
        ({"MinTasks": "-2"}, None, "MinTasks must not be negative, got -2"),
        ({"MinTasks": "6", "MaxTasks": "4"}, None, "MinTasks (6) must not be greater than"),
        ({"Cluster": " "}, None, "Cluster is required"),
    ],
)
@pytest.mark.parametrize("request_type", ["Create", "Update"])
def test_bad_properties_fail_the_deploy_naming_the_property(
    ecs: ECSClient,
    caplog: pytest.LogCaptureFixture,
    request_type: str,
    overrides: dict[str, str],
    missing: str | None,
    message: str,
) -> None:
    properties = props(**overrides)
    if missing is not None:
        del properties[missing]
    with pytest.raises(ValueError, match=rf"^{re.escape(message)}"):
        module.handler(event(request_type, properties), None)
    [line] = logged(caplog)
    assert line["error"].startswith(message)
    assert "desired_count" not in line


def test_missing_resource_properties_and_unknown_request_type_are_rejected() -> None:
    with pytest.raises(ValueError, match="ResourceProperties is required"):
        module.handler({"RequestType": "Update", "PhysicalResourceId": PHYSICAL_ID}, None)
    with pytest.raises(ValueError, match="RequestType must be Create, Update or Delete"):
        module.handler({"RequestType": "Replace", "ResourceProperties": props()}, None)


def test_client_retries_throttling_with_backoff() -> None:
    client = module._client()
    # The stubs do not declare Config's settings as attributes.
    config: Any = client.meta.config
    # botocore counts the first call too: 8 retries are 9 attempts in all.
    assert config.retries == {"mode": "standard", "total_max_attempts": 9}
    assert config.connect_timeout == 5
    assert config.read_timeout == 10
    assert client.meta.region_name == "us-east-1"
    assert module._client() is client


def test_client_prefers_the_lambda_region(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert module._client().meta.region_name == "eu-west-1"


def test_throttled_ecs_stops_the_deploy_instead_of_resetting_the_count(
    ecs: ECSClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="desired_count")
    client = module._client()
    with Stubber(client) as stub:
        stub.add_client_error(
            "describe_services",
            service_error_code="ThrottlingException",
            service_message="Rate exceeded",
            http_status_code=400,
        )
        with pytest.raises(RuntimeError) as raised:
            module.handler(event("Update"), None)
    text = str(raised.value)
    assert "Could not read the live desired count" in text
    assert f"{SERVICE!r} in cluster {CLUSTER!r}" in text
    assert "ThrottlingException" in text
    assert "the deploy is stopped rather than resetting the count" in text
    [line] = logged(caplog)
    assert "desired_count" not in line
    assert "ThrottlingException" in line["error"]


def test_unreachable_ecs_stops_the_deploy(ecs: ECSClient, monkeypatch: pytest.MonkeyPatch) -> None:
    client = module._client()

    def unreachable(**kwargs: object) -> None:
        raise EndpointConnectionError(endpoint_url="https://ecs.us-east-1.amazonaws.com/")

    monkeypatch.setattr(client, "describe_services", unreachable)
    with pytest.raises(RuntimeError, match="the deploy is stopped rather than resetting"):
        module.handler(event("Update"), None)


# ---------------------------------------------------------------- pure rules


@pytest.mark.parametrize(
    ("request_type", "min_tasks", "max_tasks", "initial", "live", "expected"),
    [
        ("Create", "1", "10", "2", None, 2),
        ("Create", "3", "10", "0", None, 3),
        ("Create", "1", "4", "9", None, 4),
        # Create ignores any live count: the service cannot exist yet.
        ("Create", "1", "10", "2", 8, 2),
        ("Update", "1", "10", "2", 7, 7),
        ("Update", "1", "5", "2", 7, 5),
        ("Update", "9", "12", "2", 7, 9),
        ("Update", "1", "10", "2", None, 2),
        ("Update", "3", "10", "0", None, 3),
        ("Update", "0", "10", "2", 0, 0),
        ("Update", "0", "0", "5", 4, 0),
        ("Update", "4", "4", "1", 9, 4),
    ],
)
def test_decide(
    request_type: str,
    min_tasks: str,
    max_tasks: str,
    initial: str,
    live: int | None,
    expected: int,
) -> None:
    properties = props(MinTasks=min_tasks, MaxTasks=max_tasks, InitialCount=initial)
    assert module.decide(request_type, properties, live) == expected


def test_decide_accepts_integers_and_padded_strings() -> None:
    properties: dict[str, object] = {
        "Cluster": CLUSTER,
        "Service": SERVICE,
        "MinTasks": 2,
        "MaxTasks": " 6 ",
        "InitialCount": "3",
    }
    assert module.decide("Update", properties, 10) == 6


@pytest.mark.parametrize("value", [True, 1.0, None, ["1"]])
def test_decide_rejects_values_that_are_not_whole_numbers(value: object) -> None:
    properties: dict[str, object] = {**props(), "MaxTasks": value}
    with pytest.raises(ValueError, match=r"^MaxTasks "):
        module.decide("Create", properties, None)


def test_decide_has_no_count_for_delete() -> None:
    with pytest.raises(ValueError, match="RequestType must be Create or Update"):
        module.decide("Delete", props(), None)
