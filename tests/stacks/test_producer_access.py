"""What a producer outside the platform's services gets: SSM parameters with stable names, a
security group to join, and inside a CDK app one call that grants a service all of it."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App, Environment, Stack
from aws_cdk import aws_ecs as ecs
from constructs import Construct

from celery_service.contract import PRODUCER_PARAMETERS, producer_parameter
from config import CONFIG_DIR, ConfigError, load_environment, parse_environment
from stacks.platform import Platform
from tests.stacks.test_data_stack import broker_groups, joins_the_clients_group, own_ingress
from tests.synth import Synth, synthesize


def of_type(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def test_broker_settings_and_catalog_are_ssm_parameters_with_stable_names(
    env_synth: Synth,
) -> None:
    config = env_synth.config
    template = env_synth.template_json(env_synth.platform.data)
    parameters = {
        p["Properties"]["Name"]: p["Properties"]
        for p in of_type(template, "AWS::SSM::Parameter").values()
    }
    expected = {producer_parameter(config.project, config.name, k) for k in PRODUCER_PARAMETERS}
    assert set(parameters) == expected
    prefix = f"/{config.project}/{config.name}/celery/"
    assert parameters[prefix + "catalog"]["Value"] == config.runtime_catalog_json()
    assert json.loads(parameters[prefix + "catalog"]["Value"]) == config.runtime_catalog()
    assert parameters[prefix + "broker-tls"]["Value"] == "true"
    assert parameters[prefix + "broker-port"]["Value"] == str(config.redis.port)
    host = parameters[prefix + "broker-host"]["Value"]
    assert host["Fn::GetAtt"][1] == "PrimaryEndPoint.Address"
    (secret_id,) = of_type(template, "AWS::SecretsManager::Secret")
    assert parameters[prefix + "broker-auth-secret-arn"]["Value"] == {"Ref": secret_id}
    for value in parameters.values():
        assert "SecretString" not in json.dumps(value), "the token's ARN, never its value"


def test_producers_join_the_clients_group_which_reaches_the_broker_port_only(
    env_synth: Synth,
) -> None:
    template = env_synth.template_json(env_synth.platform.data)
    broker, clients = broker_groups(template)
    name = producer_parameter(
        env_synth.config.project, env_synth.config.name, "producer-security-group-id"
    )
    parameters = {
        p["Properties"]["Name"]: p["Properties"]
        for p in of_type(template, "AWS::SSM::Parameter").values()
    }
    assert parameters[name]["Value"] == {"Fn::GetAtt": [clients, "GroupId"]}
    group = of_type(template, "AWS::EC2::SecurityGroup")[clients]
    assert "SecurityGroupEgress" not in group["Properties"], "no open egress"
    (egress,) = [
        r["Properties"] for r in of_type(template, "AWS::EC2::SecurityGroupEgress").values()
    ]
    port = env_synth.config.redis.port
    assert egress["GroupId"] == {"Fn::GetAtt": [clients, "GroupId"]}
    assert (egress["FromPort"], egress["ToPort"], egress["IpProtocol"]) == (port, port, "tcp")
    assert egress["DestinationSecurityGroupId"] == {"Fn::GetAtt": [broker, "GroupId"]}
    own_ingress(template)


class ApiStack(Stack):
    """A team's web API in its own stack of the same CDK app, publishing to the platform."""

    def __init__(self, scope: Construct, construct_id: str, platform: Platform) -> None:
        data = platform.data
        super().__init__(
            scope, construct_id, env=Environment(account=data.account, region=data.region)
        )
        cluster = ecs.Cluster(self, "Cluster", vpc=platform.network.vpc)
        task = ecs.FargateTaskDefinition(self, "Task")
        producers = platform.data.producers
        task.add_container(
            "api",
            image=ecs.ContainerImage.from_registry("public.ecr.aws/docker/library/python:3.13"),
            environment=producers.container_environment(),
            secrets=producers.container_secrets(),
        )
        self.service = ecs.FargateService(
            self, "Service", cluster=cluster, task_definition=task, desired_count=1
        )
        producers.grant(task.task_role, self.service)


def test_one_call_grants_a_producer_service_in_another_stack(tmp_path: Path) -> None:
    config = load_environment("dev")
    stacks: list[ApiStack] = []

    def add_api(app: App, platform: Platform) -> None:
        stacks.append(ApiStack(app, "team-api", platform))

    # cdk-nag is for the platform's stacks (checked everywhere else), not this stand-in API.
    synth = synthesize(config, tmp_path, extend=add_api, checks=False)
    template = synth.template_json(stacks[0])
    text = json.dumps(template)
    (service,) = of_type(template, "AWS::ECS::Service").values()
    assert joins_the_clients_group(
        service["Properties"]["NetworkConfiguration"]["AwsvpcConfiguration"]["SecurityGroups"]
    )
    assert "ssm:GetParameter" in text
    assert "secretsmanager:GetSecretValue" in text
    (task,) = of_type(template, "AWS::ECS::TaskDefinition").values()
    (container,) = task["Properties"]["ContainerDefinitions"]
    names = {e["Name"] for e in container["Environment"]} | {
        s["Name"] for s in container["Secrets"]
    }
    assert names == {
        "CELERY_BROKER_HOST",
        "CELERY_BROKER_PORT",
        "CELERY_BROKER_TLS",
        "CELERY_BROKER_AUTH_TOKEN",
        "CELERY_CATALOG",
    }
    own_ingress(synth.template_json(synth.platform.data))
    assert "team-api" not in {d.stack_name for d in synth.platform.data.dependencies}


def test_a_catalog_too_large_for_its_ssm_parameter_is_one_clear_line() -> None:
    with (CONFIG_DIR / "catalog.toml").open("rb") as fh:
        data = tomllib.load(fh)
    data["tasks"] = {f"shop.task_{n:04}": {"queue": "default"} for n in range(400)}
    with pytest.raises(ConfigError) as raised:
        parse_environment("qa", {**data, "region": "eu-west-1"})
    message = str(raised.value)
    assert "\n" not in message
    assert "producers read it from an SSM parameter, which holds at most 8192" in message
