"""The autoscaler built alone in a bare stack: one run at a time without reserved
concurrency, on its schedule, allowed to scale only the services it is given."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from aws_cdk import App, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk.assertions import Template

from config.model import AutoscalerConfig, RedisConfig
from stacks.parts import app_image, autoscaler
from stacks.parts.autoscaler import Autoscaler
from stacks.parts.redis_broker import RedisBroker
from tests.synth import resources


def bare_autoscaler() -> Stack:
    stack = Stack(App(), "Bare")
    vpc = ec2.Vpc(stack, "Vpc", max_azs=2, nat_gateways=0)
    subnets = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)
    broker = RedisBroker(stack, "Broker", vpc=vpc, subnets=subnets, config=RedisConfig())
    Autoscaler(
        stack,
        "Autoscaler",
        config=AutoscalerConfig(schedule_minutes=2),
        settings={"targets": {}},
        cluster_name="bare-cluster",
        worker_services={"io": "bare-worker-io"},
        vpc=vpc,
        subnets=subnets,
        broker=broker,
        architecture="arm64",
        log_retention_days=7,
    )
    return stack


def test_the_autoscaler_alone() -> None:
    stack = bare_autoscaler()
    template = Template.from_stack(stack).to_json()
    (function,) = resources(template, "AWS::Lambda::Function").values()
    # Reserved concurrency fails in accounts with the default quota: a Redis lock serializes.
    assert "ReservedConcurrentExecutions" not in function["Properties"]
    assert function["Properties"]["Architectures"] == ["arm64"]
    (rule,) = resources(template, "AWS::Events::Rule").values()
    assert rule["Properties"]["ScheduleExpression"] == "rate(2 minutes)"
    assert rule["Properties"]["Targets"][0]["RetryPolicy"]["MaximumRetryAttempts"] == 0
    statements = [
        statement
        for policy in resources(template, "AWS::IAM::Policy").values()
        for statement in policy["Properties"]["PolicyDocument"]["Statement"]
    ]
    (update,) = [s for s in statements if "ecs:UpdateService" in json.dumps(s["Action"])]
    assert "bare-cluster/bare-worker-io" in json.dumps(update["Resource"])
    assert "*" not in json.dumps(update["Resource"])


def image_of(stack: Stack) -> str:
    (function,) = resources(Template.from_stack(stack).to_json(), "AWS::Lambda::Function").values()
    return json.dumps(function["Properties"]["Code"]["ImageUri"])


def test_its_image_does_not_depend_on_where_the_repository_is_checked_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runtime build context's path stays out of the asset hash: the same code checked
    out elsewhere (another CI runner) deploys no new function; a change of the runtime's
    code does."""
    here = image_of(bare_autoscaler())
    elsewhere = tmp_path / "checkout" / "worker_image"
    shutil.copytree(app_image.IMAGE_DIR, elsewhere, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(app_image, "IMAGE_DIR", elsewhere)
    monkeypatch.setattr(autoscaler, "IMAGE_DIR", elsewhere)
    # The runtime's digest is cached per synthesis: each build here is a new one.
    fingerprint = app_image.runtime_fingerprint
    try:
        fingerprint.cache_clear()
        assert image_of(bare_autoscaler()) == here
        contract = elsewhere / "celery_service" / "contract.py"
        contract.write_text(contract.read_text() + "\n# changed\n")
        fingerprint.cache_clear()
        assert image_of(bare_autoscaler()) != here
    finally:
        fingerprint.cache_clear()  # no other test sees this copy's digest
