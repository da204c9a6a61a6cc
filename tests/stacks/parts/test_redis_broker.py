"""The broker built alone in a bare stack: what its consumers and its monitoring rely on."""

from __future__ import annotations

from aws_cdk import App, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_lambda as lambda_
from aws_cdk.assertions import Match, Template

from config.model import RedisConfig
from stacks.monitoring.model import REDIS_NODES, REDIS_REPLICAS
from stacks.parts.redis_broker import MAXMEMORY_POLICY, RedisBroker

TOKEN = "<group>"


def bare_broker(**settings: object) -> tuple[Stack, ec2.Vpc, RedisBroker]:
    stack = Stack(App(), "Bare")
    vpc = ec2.Vpc(stack, "Vpc", max_azs=2, nat_gateways=0)
    subnets = ec2.SubnetSelection(subnet_type=ec2.SubnetType.PRIVATE_ISOLATED)
    config = RedisConfig.model_validate(settings)
    return stack, vpc, RedisBroker(stack, "Broker", vpc=vpc, subnets=subnets, config=config)


def test_its_nodes_are_named_as_elasticache_names_them() -> None:
    stack, _, broker = bare_broker(replicas=2, multi_az=True)
    group = stack.resolve(broker.replication_group.ref)

    def ids(dimensions: list[dict[str, str]]) -> list[str]:
        names = []
        for d in dimensions:
            separator, parts = stack.resolve(d["CacheClusterId"])["Fn::Join"]
            names.append(separator.join(TOKEN if p == group else p for p in parts))
        return names

    every = [f"{TOKEN}-001", f"{TOKEN}-002", f"{TOKEN}-003"]
    assert ids(broker.node_dimensions([1, 2, 3])) == every
    # The monitoring model's node numbers: every node, or the replicas only.
    assert ids(broker.node_dimensions(REDIS_NODES.nodes(2))) == every
    assert ids(broker.node_dimensions(REDIS_REPLICAS.nodes(2))) == every[1:]


def test_it_never_evicts_and_requires_tls_and_auth() -> None:
    stack, _, _ = bare_broker()
    template = Template.from_stack(stack)
    template.has_resource_properties(
        "AWS::ElastiCache::ParameterGroup",
        {"Properties": Match.object_like({"maxmemory-policy": MAXMEMORY_POLICY})},
    )
    template.has_resource_properties(
        "AWS::ElastiCache::ReplicationGroup",
        {
            "TransitEncryptionEnabled": True,
            "TransitEncryptionMode": "required",
            "AtRestEncryptionEnabled": True,
            "AuthToken": Match.any_value(),
        },
    )


def test_a_granted_consumer_joins_the_clients_group_and_nothing_else_gets_in() -> None:
    stack, vpc, broker = bare_broker()
    function = lambda_.Function(
        stack,
        "Consumer",
        runtime=lambda_.Runtime.PYTHON_3_12,
        handler="index.handler",
        code=lambda_.Code.from_inline("def handler(*_): pass"),
        vpc=vpc,
    )
    broker.grant_connect(function)
    template = Template.from_stack(stack).to_json()
    ingress = [
        r["Properties"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::EC2::SecurityGroupIngress"
    ]
    # One rule: the clients group, on the broker's port only.
    assert len(ingress) == 1
    (rule,) = ingress
    assert (rule["FromPort"], rule["ToPort"]) == (broker.port, broker.port)
    clients = stack.resolve(broker.client_security_group.security_group_id)
    assert rule["SourceSecurityGroupId"] == clients
    (consumer,) = [
        r["Properties"]
        for r in template["Resources"].values()
        if r["Type"] == "AWS::Lambda::Function"
    ]
    assert clients in consumer["VpcConfig"]["SecurityGroupIds"]
