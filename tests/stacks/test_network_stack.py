"""The VPC: AZs and NAT gateways per environment, flow logs, private endpoints, or an import."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from config import CONFIG_DIR, EnvironmentConfig, parse_environment
from stacks.network_stack import INTERFACE_ENDPOINTS, interface_endpoints
from tests.config.test_config import merged
from tests.synth import Synth, resources, synthesize


def network(synth: Synth) -> dict[str, Any]:
    return synth.template_json(synth.platform.network)


def variant(name: str, tmp_path: Path, context: dict[str, Any] | None = None, **top: Any) -> Synth:
    with (CONFIG_DIR / "catalog.toml").open("rb") as fh:
        data = tomllib.load(fh)
    data = {"region": "eu-west-1", **data}
    return synthesize(parse_environment(name, {**data, **top}), tmp_path, context=context)


def test_subnets_span_the_configured_azs(env_synth: Synth) -> None:
    net = env_synth.config.network
    subnets = list(resources(network(env_synth), "AWS::EC2::Subnet").values())
    public = [s for s in subnets if s["Properties"]["MapPublicIpOnLaunch"]]
    private = [s for s in subnets if not s["Properties"]["MapPublicIpOnLaunch"]]
    assert len(public) == len(private) == net.az_count
    zones = [s["Properties"]["AvailabilityZone"] for s in private]
    assert len({str(z) for z in zones}) == net.az_count
    if net.availability_zones:
        assert sorted(zones) == sorted(net.availability_zones)


def test_nat_gateways_per_environment(env_synth: Synth) -> None:
    nats = list(resources(network(env_synth), "AWS::EC2::NatGateway").values())
    assert len(nats) == env_synth.config.network.nat_gateways


def test_flow_logs_capture_all_traffic_with_retention(env_synth: Synth) -> None:
    template = network(env_synth)
    (flow_log,) = resources(template, "AWS::EC2::FlowLog").values()
    assert flow_log["Properties"]["TrafficType"] == "ALL"
    assert flow_log["Properties"]["LogDestinationType"] == "cloud-watch-logs"
    group_ref = flow_log["Properties"]["LogGroupName"]["Ref"]
    group = template["Resources"][group_ref]
    assert (
        group["Properties"]["RetentionInDays"] == env_synth.config.network.flow_log_retention_days
    )


def test_interface_endpoints_only_where_configured(env_synth: Synth) -> None:
    template = network(env_synth)
    endpoints = list(resources(template, "AWS::EC2::VPCEndpoint").values())
    interface = [e for e in endpoints if e["Properties"].get("VpcEndpointType") == "Interface"]
    gateway = [
        e for e in endpoints if e["Properties"].get("VpcEndpointType", "Gateway") == "Gateway"
    ]
    assert len(gateway) == 1, "the free S3 gateway endpoint is always there"
    if not env_synth.config.network.interface_endpoints:
        assert interface == []
        return
    assert len(interface) == len(interface_endpoints(env_synth.config))
    services = json.dumps([e["Properties"]["ServiceName"] for e in interface])
    for short in ("ecr.api", "ecr.dkr", "logs", "secretsmanager", "ecs", "ssm"):
        assert f".{short}" in services, short
    # Fargate needs no agent or telemetry endpoint; metrics are EMF log lines.
    for unused in ("ecs-agent", "ecs-telemetry", "monitoring"):
        assert f".{unused}" not in services, unused
    assert all(e["Properties"]["PrivateDnsEnabled"] is True for e in interface)


def test_ecs_exec_brings_its_endpoint() -> None:
    def short_names(config: EnvironmentConfig) -> set[str]:
        return {s.short_name for s in interface_endpoints(config).values()}

    base = short_names(parse_environment("qa", merged()))
    assert "ssmmessages" not in base
    exec_on = parse_environment("qa", merged(services={"enable_exec": True}))
    assert short_names(exec_on) - base == {"ssmmessages"}


def test_endpoint_security_group_admits_only_https_from_the_vpc(synth_env: Any) -> None:
    synth = synth_env("prod")
    groups = [
        g
        for g in resources(network(synth), "AWS::EC2::SecurityGroup").values()
        if "endpoints" in g["Properties"]["GroupDescription"]
    ]
    assert len(groups) == 1
    assert groups[0]["Properties"]["SecurityGroupIngress"] == [
        {
            "CidrIp": synth.config.network.cidr,
            "Description": "HTTPS from the VPC",
            "FromPort": 443,
            "IpProtocol": "tcp",
            "ToPort": 443,
        }
    ]


def test_no_nat_means_isolated_subnets_reached_through_endpoints(tmp_path: Path) -> None:
    synth = variant("qa", tmp_path, network={"nat_gateways": 0, "interface_endpoints": True})
    template = network(synth)
    assert not resources(template, "AWS::EC2::NatGateway")
    routes = list(resources(template, "AWS::EC2::Route").values())
    # Only the public subnets route to the internet gateway; private ones have no default route.
    assert all("GatewayId" in r["Properties"] for r in routes)
    assert len(resources(template, "AWS::EC2::VPCEndpoint")) == len(INTERFACE_ENDPOINTS) + 1


# What `cdk synth` caches in cdk.context.json after looking the VPC up with credentials.
LOOKUP_KEY = (
    "vpc-provider:account=123456789012:filter.vpc-id=vpc-0123456789abcdef0:"
    "region=eu-west-1:returnAsymmetricSubnets=true"
)
LOOKUP = {
    "vpcId": "vpc-0123456789abcdef0",
    "vpcCidrBlock": "10.99.0.0/16",
    "ownerAccountId": "123456789012",
    "availabilityZones": [],
    "subnetGroups": [
        {
            "name": "Private",
            "type": "Private",
            "subnets": [
                {
                    "subnetId": f"subnet-0000000000000000{i}",
                    "cidr": f"10.99.{i}.0/24",
                    "availabilityZone": f"eu-west-1{zone}",
                    "routeTableId": f"rtb-0000000000000000{i}",
                }
                for i, zone in ((1, "a"), (2, "b"))
            ],
        }
    ],
}


def test_existing_vpc_is_imported_not_created(tmp_path: Path) -> None:
    synth = variant(
        "qa",
        tmp_path,
        context={LOOKUP_KEY: LOOKUP},
        account="123456789012",
        region="eu-west-1",
        network={"vpc_id": "vpc-0123456789abcdef0", "interface_endpoints": True},
    )
    template = network(synth)
    assert not resources(template, "AWS::EC2::VPC")
    assert not resources(template, "AWS::EC2::FlowLog")
    endpoints = list(resources(template, "AWS::EC2::VPCEndpoint").values())
    assert {e["Properties"]["VpcId"] for e in endpoints} == {"vpc-0123456789abcdef0"}
    # The endpoints admit the imported VPC's own CIDR, as found by the lookup.
    ingress = [
        rule
        for group in resources(template, "AWS::EC2::SecurityGroup").values()
        for rule in group["Properties"].get("SecurityGroupIngress", [])
    ]
    assert [r["CidrIp"] for r in ingress] == ["10.99.0.0/16"]
    broker = synth.template_json(synth.platform.data)
    (subnet_group,) = resources(broker, "AWS::ElastiCache::SubnetGroup").values()
    assert subnet_group["Properties"]["SubnetIds"] == [
        "subnet-00000000000000001",
        "subnet-00000000000000002",
    ]
