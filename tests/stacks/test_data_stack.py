"""The broker's template: the properties that keep queued work safe and private."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aws_cdk import App, Environment, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_lambda as lambda_
from aws_cdk.assertions import Match

from celery_service.contract import KEYSPACE_EVENTS
from config import load_environment
from stacks.parts.redis_broker import MAXMEMORY_POLICY
from stacks.platform import Platform
from tests.conftest import RedisServer
from tests.synth import Synth, resources, synthesize


def only(template: dict[str, Any], kind: str) -> tuple[str, dict[str, Any]]:
    found = resources(template, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return next(iter(found.items()))


def replication_group(synth: Synth) -> dict[str, Any]:
    return only(synth.template_json(synth.platform.data), "AWS::ElastiCache::ReplicationGroup")[1]


def test_tls_required_and_encrypted_at_rest(env_synth: Synth) -> None:
    props = replication_group(env_synth)["Properties"]
    assert props["TransitEncryptionEnabled"] is True
    assert props["TransitEncryptionMode"] == "required"
    assert props["AtRestEncryptionEnabled"] is True


def test_cluster_mode_disabled(env_synth: Synth) -> None:
    """Celery needs multi-key commands in one slot: no node groups, no shards."""
    props = replication_group(env_synth)["Properties"]
    cfg = env_synth.config.redis
    assert props["NumCacheClusters"] == 1 + cfg.replicas
    for sharding in ("NumNodeGroups", "ReplicasPerNodeGroup", "NodeGroupConfiguration"):
        assert sharding not in props
    params = only(
        env_synth.template_json(env_synth.platform.data), "AWS::ElastiCache::ParameterGroup"
    )
    assert "cluster-enabled" not in params[1]["Properties"]["Properties"]


def test_auth_token_is_a_reference_to_the_generated_secret(env_synth: Synth) -> None:
    template = env_synth.template_json(env_synth.platform.data)
    secret_id, secret = only(template, "AWS::SecretsManager::Secret")
    generate = secret["Properties"]["GenerateSecretString"]
    assert generate["PasswordLength"] >= 32
    assert generate["ExcludePunctuation"] is True
    assert "SecretString" not in secret["Properties"], "the token must be generated, not written"
    token = replication_group(env_synth)["Properties"]["AuthToken"]
    assert token == {
        "Fn::Join": ["", ["{{resolve:secretsmanager:", {"Ref": secret_id}, ":SecretString:::}}"]]
    }


def test_engine_and_eviction_policy(env_synth: Synth) -> None:
    cfg = env_synth.config.redis
    props = replication_group(env_synth)["Properties"]
    assert (props["Engine"], props["EngineVersion"]) == (cfg.engine, cfg.engine_version)
    _, params = only(
        env_synth.template_json(env_synth.platform.data), "AWS::ElastiCache::ParameterGroup"
    )
    assert params["Properties"]["Properties"] == {
        "maxmemory-policy": "noeviction",
        "notify-keyspace-events": KEYSPACE_EVENTS,
    }
    assert params["Properties"]["CacheParameterGroupFamily"] == cfg.parameter_group_family
    assert MAXMEMORY_POLICY == "noeviction"


def test_the_local_redis_server_notifies_as_the_broker_does(
    redis_server: Callable[..., RedisServer],
) -> None:
    """Tests and `make local` see the keyspace events idle workers wait on, as in AWS."""
    config: dict[str, str] = redis_server().client().config_get("notify-keyspace-events")  # type: ignore[assignment]
    flags = config["notify-keyspace-events"]
    assert set(flags) == set(KEYSPACE_EVENTS) == {"K", "l"}, flags


def broker_groups(data_template: dict[str, Any]) -> tuple[str, str]:
    """Logical ids of the broker's own security group and of its clients group."""
    groups = resources(data_template, "AWS::EC2::SecurityGroup")

    def named(prefix: str) -> str:
        (found,) = [
            k for k, g in groups.items() if g["Properties"]["GroupDescription"].startswith(prefix)
        ]
        return found

    return named("Celery broker:"), named("Celery broker clients")


def joins_the_clients_group(group_ids: list[Any]) -> bool:
    """A consumer's security groups include the broker's clients group (by export)."""
    return any("BrokerClientSecurityGroup" in json.dumps(g) for g in group_ids)


def own_ingress(data_template: dict[str, Any]) -> list[dict[str, Any]]:
    """The broker's only ingress: one rule, from the clients group, in the data stack, so a
    replaced group of either side updates it in the same deploy."""
    broker, clients = broker_groups(data_template)
    rules = [
        r["Properties"] for r in resources(data_template, "AWS::EC2::SecurityGroupIngress").values()
    ]
    assert [(r["GroupId"], r["SourceSecurityGroupId"]) for r in rules] == [
        ({"Fn::GetAtt": [broker, "GroupId"]}, {"Fn::GetAtt": [clients, "GroupId"]})
    ]
    return rules


def test_security_group_admits_only_its_clients_and_has_no_egress(env_synth: Synth) -> None:
    template = env_synth.template_json(env_synth.platform.data)
    (rule,) = own_ingress(template)
    port = env_synth.config.redis.port
    assert (rule["IpProtocol"], rule["FromPort"], rule["ToPort"]) == ("tcp", port, port)
    broker, _ = broker_groups(template)
    group = resources(template, "AWS::EC2::SecurityGroup")[broker]
    assert "SecurityGroupIngress" not in group["Properties"]
    # CDK's placeholder for "no egress": a rule that matches no traffic.
    assert group["Properties"]["SecurityGroupEgress"] == [
        {
            "CidrIp": "255.255.255.255/32",
            "Description": "Disallow all traffic",
            "FromPort": 252,
            "IpProtocol": "icmp",
            "ToPort": 86,
        }
    ]


def test_availability_follows_the_config(env_synth: Synth) -> None:
    cfg = env_synth.config.redis
    props = replication_group(env_synth)["Properties"]
    assert props["MultiAZEnabled"] is cfg.multi_az
    assert props["AutomaticFailoverEnabled"] is (cfg.replicas >= 1)
    assert props["SnapshotRetentionLimit"] == cfg.snapshot_retention_days
    assert props["CacheNodeType"] == cfg.node_type


def test_prod_is_multi_az_with_failover(synth_env: Any) -> None:
    props = replication_group(synth_env("prod"))["Properties"]
    assert props["MultiAZEnabled"] is True
    assert props["AutomaticFailoverEnabled"] is True
    assert props["NumCacheClusters"] >= 2


@pytest.mark.parametrize(
    ("env", "policy", "secret_policy"),
    [("dev", "Delete", "Delete"), ("staging", "Snapshot", "Retain"), ("prod", "Retain", "Retain")],
)
def test_removal_policy_keeps_data_outside_dev(
    synth_env: Any, env: str, policy: str, secret_policy: str
) -> None:
    synth = synth_env(env)
    group = replication_group(synth)
    assert (group["DeletionPolicy"], group["UpdateReplacePolicy"]) == (policy, policy)
    _, secret = only(synth.template_json(synth.platform.data), "AWS::SecretsManager::Secret")
    assert secret["DeletionPolicy"] == secret_policy


def test_broker_lives_in_private_subnets_of_the_network_stack(env_synth: Synth) -> None:
    _, subnet_group = only(
        env_synth.template_json(env_synth.platform.data), "AWS::ElastiCache::SubnetGroup"
    )
    subnet_ids = subnet_group["Properties"]["SubnetIds"]
    network = env_synth.template_json(env_synth.platform.network)
    private = {
        logical
        for logical, subnet in resources(network, "AWS::EC2::Subnet").items()
        if subnet["Properties"]["MapPublicIpOnLaunch"] is False
    }
    assert len(subnet_ids) == env_synth.config.network.az_count
    for ref in subnet_ids:
        # A cross-stack reference (Fn::ImportValue of an export) names the subnet.
        text = json.dumps(ref)
        assert any(logical in text for logical in private), f"{text} is not a private subnet"


def test_slow_and_engine_logs_are_delivered(env_synth: Synth) -> None:
    deliveries = replication_group(env_synth)["Properties"]["LogDeliveryConfigurations"]
    assert sorted(d["LogType"] for d in deliveries) == ["engine-log", "slow-log"]


def test_outputs_expose_endpoint_and_secret_arn_but_no_secret_value(env_synth: Synth) -> None:
    template = env_synth.template(env_synth.platform.data)
    template.has_output(
        "BrokerEndpoint", {"Value": {"Fn::GetAtt": [Match.any_value(), "PrimaryEndPoint.Address"]}}
    )
    template.has_output(
        "BrokerAuthSecretArn", {"Value": {"Ref": Match.string_like_regexp("AuthToken")}}
    )


class ConsumerStack(Stack):
    """Stands in for the services stack: one function in the VPC granted access."""

    def __init__(self, app: App, platform: Platform) -> None:
        super().__init__(app, "consumer", env=Environment(region=platform.data.region))
        self.function = lambda_.Function(
            self,
            "Consumer",
            runtime=lambda_.Runtime.PYTHON_3_13,
            handler="index.handler",
            code=lambda_.Code.from_inline("def handler(event, context): pass"),
            vpc=platform.network.vpc,
            vpc_subnets=platform.network.app_subnets,
        )
        platform.data.broker.grant_connect(self.function)
        # A group the consumer joins after the grant still reaches its template.
        self.function.connections.add_security_group(
            ec2.SecurityGroup(self, "Later", vpc=platform.network.vpc)
        )


def test_grant_connect_makes_the_consumer_a_member_of_the_clients_group(tmp_path: Path) -> None:
    def add_consumer(app: App, platform: Platform) -> None:
        ConsumerStack(app, platform)

    synth = synthesize(load_environment("dev"), tmp_path, extend=add_consumer, checks=False)
    consumer = synth.assembly.get_stack_by_name("consumer").template
    (function,) = resources(consumer, "AWS::Lambda::Function").values()
    groups = function["Properties"]["VpcConfig"]["SecurityGroupIds"]
    own = [{"Fn::GetAtt": [k, "GroupId"]} for k in resources(consumer, "AWS::EC2::SecurityGroup")]
    assert len(own) == 2
    assert groups[:2] == own, "its own groups, the one joined later included, come first"
    assert joins_the_clients_group(groups[2:])
    assert "Fn::ImportValue" in groups[2], "an export: the data stack cannot drop it in use"
    assert not resources(consumer, "AWS::EC2::SecurityGroupIngress")
    # The stateful stack is unchanged: it gains no rule and no dependency on its consumer.
    own_ingress(synth.template_json(synth.platform.data))
    assert "consumer" not in {d.stack_name for d in synth.platform.data.dependencies}
