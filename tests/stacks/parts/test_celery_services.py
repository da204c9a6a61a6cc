"""The Celery service parts, each built alone in a bare stack, and the one container
environment every way of running them shares."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk.assertions import Match, Template

from celery_service.contract import Env
from celery_service.settings import ENV_VARS
from config import load_environment, parse_environment
from config.model import BeatConfig, RedisConfig, ServicesConfig, WorkerGroupConfig
from config.services import BEAT, FLOWER, container_environment, services_of, worker
from stacks.parts.app_image import AppImage
from stacks.parts.beat import Beat
from stacks.parts.celery_fargate_service import APP_CONTAINER, CeleryRuntime
from stacks.parts.redis_broker import RedisBroker
from stacks.parts.worker_group import WorkerGroup
from tests.config.test_config import merged
from tools import run_local


def bare_runtime(stack: Stack, **settings: Any) -> CeleryRuntime:
    vpc = ec2.Vpc(stack, "Vpc", max_azs=2, nat_gateways=0)
    subnets = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)
    platform = ecs.RuntimePlatform(cpu_architecture=ecs.CpuArchitecture.ARM64)
    return CeleryRuntime(
        environment_name="test",
        cluster=ecs.Cluster(stack, "Cluster", vpc=vpc),
        subnets=subnets,
        image=AppImage(ecs.ContainerImage.from_registry("app"), "v1", platform),
        broker=RedisBroker(stack, "Broker", vpc=vpc, subnets=subnets, config=RedisConfig()),
        settings=ServicesConfig(**settings),
        emf_metrics=True,
        datadog=None,
    )


def app_container(template: Template) -> dict[str, Any]:
    (task,) = template.find_resources("AWS::ECS::TaskDefinition").values()
    containers: list[dict[str, Any]] = task["Properties"]["ContainerDefinitions"]
    (container,) = [c for c in containers if c["Name"] == APP_CONTAINER]
    return container


def test_a_worker_group_alone() -> None:
    stack = Stack(App(), "Bare")
    runtime = bare_runtime(stack, fargate_spot=True)
    group = WorkerGroupConfig(queues=["default"], cpu=1024, memory_mib=2048)
    WorkerGroup(
        stack,
        "Worker-io",
        runtime=runtime,
        group_name="io",
        group=group,
        service_name="bare-worker-io",
        environment={"ONLY": "this"},
    )
    template = Template.from_stack(stack)
    template.has_resource_properties(
        "AWS::ECS::Service",
        {
            "ServiceName": "bare-worker-io",
            "DesiredCount": Match.absent(),  # the autoscaler's, never the template's
            "CapacityProviderStrategy": [{"CapacityProvider": "FARGATE_SPOT", "Weight": 1}],
            "DeploymentConfiguration": Match.object_like(
                {"MinimumHealthyPercent": 100, "MaximumPercent": 200}
            ),
        },
    )
    template.has_resource_properties("AWS::ECS::TaskDefinition", {"Cpu": "1024", "Memory": "2048"})
    container = app_container(template)
    env = {item["Name"]: item["Value"] for item in container["Environment"]}
    assert env["ONLY"] == "this"
    assert env["DD_SERVICE"] == "worker-io"
    assert env[Env.METRICS_EMF] == "true"
    assert container["Command"] == ["worker"]
    assert container["StopTimeout"] == runtime.settings.stop_timeout_s
    assert [s["Name"] for s in container["Secrets"]] == [Env.BROKER_AUTH_TOKEN]
    template.has_resource_properties(
        "AWS::IAM::Policy",
        {
            "PolicyDocument": {
                "Statement": Match.array_with(
                    [
                        Match.object_like(
                            {"Action": ["ecs:UpdateTaskProtection", "ecs:GetTaskProtection"]}
                        )
                    ]
                )
            }
        },
    )  # a worker may protect itself from scale-in


def test_beat_alone_stops_the_old_beat_first_and_cannot_protect_itself() -> None:
    stack = Stack(App(), "Bare")
    Beat(
        stack,
        "Beat",
        runtime=bare_runtime(stack),
        config=BeatConfig(),
        service_name="bare-beat",
        environment={},
    )
    template = Template.from_stack(stack)
    template.has_resource_properties(
        "AWS::ECS::Service",
        {
            "DesiredCount": 1,
            "DeploymentConfiguration": Match.object_like(
                {"MinimumHealthyPercent": 0, "MaximumPercent": 100}
            ),
        },
    )
    assert app_container(template)["Command"] == ["beat"]
    assert "ecs:UpdateTaskProtection" not in str(template.to_json())


@pytest.mark.parametrize("env", ["dev", "prod"])
def test_stacks_local_and_compose_give_a_service_the_same_platform_variables(env: str) -> None:
    """One function renders every service's environment: the three ways differ only in
    where the broker is, and in the shutdown budget, log level and catalog reference."""
    config = load_environment(env)
    compose = run_local.compose_file(config)["services"]
    nowhere = Path("/nonexistent")  # nothing starts: only the environments are read
    platform = run_local.LocalPlatform(config, None, workdir=nowhere, log_dir=nowhere)
    differ = {
        ENV_VARS[name]
        for name in ("broker_host", "broker_port", "broker_tls", "shutdown_budget_s", "catalog")
    } | {ENV_VARS["log_level"], "FLOWER_ADDRESS", "FLOWER_PORT"}
    for service in services_of(config):
        on_aws = container_environment(
            config, service, broker_host="h", broker_port=1, broker_tls=True, shutdown_budget_s=9
        )
        local = platform.environment(service, nowhere / "heartbeat")
        composed = compose[service.name]["environment"]
        for name in set(on_aws) - differ:
            assert local[name] == on_aws[name] == composed[name], (service.name, name)
    assert container_environment(
        config, worker(next(iter(config.worker_groups))), broker_host="h", broker_port=1,
        broker_tls=True, shutdown_budget_s=9,
    )[Env.WORKER_GROUP]  # fmt: skip
    assert Env.WORKER_GROUP not in platform.environment(BEAT, nowhere / "heartbeat")
    assert platform.environment(FLOWER, nowhere / "heartbeat")["FLOWER_ADDRESS"] == "127.0.0.1"


def test_flower_imports_none_of_the_teams_modules() -> None:
    app = {"task_modules": ["samples.tasks"], "celery_config_module": "shop.celeryconfig"}
    config = parse_environment("dev", merged(app=app))
    variables = {
        service.command: container_environment(
            config, service, broker_host="h", broker_port=1, broker_tls=True, shutdown_budget_s=9
        )
        for service in (BEAT, FLOWER)
    }
    assert variables["beat"][Env.APP_CONFIG_MODULE] == "shop.celeryconfig"
    assert variables["beat"][Env.TASK_MODULES] == "samples.tasks"
    assert Env.APP_CONFIG_MODULE not in variables["flower"]
    assert Env.TASK_MODULES not in variables["flower"]
