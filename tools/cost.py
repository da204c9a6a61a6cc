"""`make cost`: each environment's monthly cost at AWS list prices, read from its synthesized
CloudFormation templates, so the table in docs/cost.md cannot drift from what is deployed.

Every resource of every template ends up somewhere: priced, billed only by use (named, not
counted), free of its own, or listed as not priced; nothing is skipped silently. Prices are
us-east-1 on-demand list prices, all in PRICES, each with its source page and date.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from config import (
    CONFIG_DIR,
    ConfigError,
    EnvironmentConfig,
    available_environments,
    load_environment,
)

if TYPE_CHECKING:
    from aws_cdk import cx_api

    from stacks.platform import Platform

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "cost.md"

HOURS_PER_MONTH = 730  # AWS's own convention for monthly estimates
PRICED_REGION = "us-east-1"
PRICES_AS_OF = "2026-12-02"

FARGATE_URL = "https://aws.amazon.com/fargate/pricing/"
ELASTICACHE_URL = "https://aws.amazon.com/elasticache/pricing/"
VPC_URL = "https://aws.amazon.com/vpc/pricing/"
PRIVATELINK_URL = "https://aws.amazon.com/privatelink/pricing/"
ELB_URL = "https://aws.amazon.com/elasticloadbalancing/pricing/"
LAMBDA_URL = "https://aws.amazon.com/lambda/pricing/"
CLOUDWATCH_URL = "https://aws.amazon.com/cloudwatch/pricing/"
SECRETS_URL = "https://aws.amazon.com/secrets-manager/pricing/"
KMS_URL = "https://aws.amazon.com/kms/pricing/"
SSM_URL = "https://aws.amazon.com/systems-manager/pricing/"


@dataclass(frozen=True)
class Price:
    usd: float
    unit: str
    url: str
    as_of: str = PRICES_AS_OF


# us-east-1, on demand, USD. ElastiCache node-hours are Redis OSS prices; Valkey nodes cost
# the stated share less.
PRICES: dict[str, Price] = {
    "fargate.vcpu.ARM64": Price(0.03238, "vCPU-hour, Linux/ARM64", FARGATE_URL),
    "fargate.gb.ARM64": Price(0.00356, "GB-hour, Linux/ARM64", FARGATE_URL),
    "fargate.vcpu.X86_64": Price(0.04048, "vCPU-hour, Linux/x86_64", FARGATE_URL),
    "fargate.gb.X86_64": Price(0.004445, "GB-hour, Linux/x86_64", FARGATE_URL),
    "fargate.storage": Price(0.000111, "GB-hour of ephemeral storage above 20 GB", FARGATE_URL),
    "elasticache.cache.t4g.micro": Price(0.016, "node-hour", ELASTICACHE_URL),
    "elasticache.cache.t4g.small": Price(0.032, "node-hour", ELASTICACHE_URL),
    "elasticache.cache.t4g.medium": Price(0.065, "node-hour", ELASTICACHE_URL),
    "elasticache.cache.t3.micro": Price(0.017, "node-hour", ELASTICACHE_URL),
    "elasticache.cache.t3.small": Price(0.034, "node-hour", ELASTICACHE_URL),
    "elasticache.cache.t3.medium": Price(0.068, "node-hour", ELASTICACHE_URL),
    "elasticache.cache.m6g.large": Price(0.149, "node-hour", ELASTICACHE_URL),
    "elasticache.cache.m7g.large": Price(0.158, "node-hour", ELASTICACHE_URL),
    "elasticache.cache.m7g.xlarge": Price(0.315, "node-hour", ELASTICACHE_URL),
    "elasticache.cache.r6g.large": Price(0.206, "node-hour", ELASTICACHE_URL),
    "elasticache.cache.r7g.large": Price(0.219, "node-hour", ELASTICACHE_URL),
    "elasticache.cache.r7g.xlarge": Price(0.437, "node-hour", ELASTICACHE_URL),
    "elasticache.valkey_discount": Price(
        0.20, "share off the node-hour price for the Valkey engine", ELASTICACHE_URL
    ),
    "nat_gateway": Price(0.045, "NAT gateway-hour", VPC_URL),
    "public_ipv4": Price(0.005, "public IPv4 address-hour", VPC_URL),
    "interface_endpoint": Price(0.01, "interface endpoint-hour per AZ", PRIVATELINK_URL),
    "alb": Price(0.0225, "Application Load Balancer-hour", ELB_URL),
    "alb_lcu": Price(0.008, "LCU-hour", ELB_URL),
    "lambda.gb_second.arm64": Price(0.0000133334, "GB-second, arm64", LAMBDA_URL),
    "lambda.gb_second.x86_64": Price(0.0000166667, "GB-second, x86_64", LAMBDA_URL),
    "lambda.requests": Price(0.20, "million requests", LAMBDA_URL),
    "cloudwatch.alarm": Price(0.10, "alarm metric-month, standard resolution", CLOUDWATCH_URL),
    "cloudwatch.alarm_high_resolution": Price(
        0.30, "alarm metric-month, high resolution", CLOUDWATCH_URL
    ),
    "cloudwatch.composite_alarm": Price(0.50, "composite alarm-month", CLOUDWATCH_URL),
    "cloudwatch.dashboard": Price(3.00, "dashboard-month", CLOUDWATCH_URL),
    "logs.ingestion": Price(0.50, "GB of logs ingested", CLOUDWATCH_URL),
    "secretsmanager.secret": Price(0.40, "secret-month", SECRETS_URL),
    "kms.key": Price(1.00, "customer managed key-month", KMS_URL),
    "ssm.advanced_parameter": Price(0.05, "advanced parameter-month", SSM_URL),
}

# What a template cannot say, stated in docs/cost.md.
ASSUMED_LOG_GB_PER_GROUP = 1.0  # GB ingested per log group per month
# Flower's load balancer serves a few people's page views; one LCU is 25 new connections/s
# or 1 GB of traffic an hour.
ASSUMED_ALB_LCU = 0.1
# One autoscaler run with one decision lasts about a second (docs/autoscaler.md).
ASSUMED_DECISION_RUN_S = 1.0
FARGATE_FREE_STORAGE_GB = 20
SSM_STANDARD_MAX_CHARS = 4096  # a longer value needs the advanced tier

# Resource types with no charge of their own (some are priced with another resource).
FREE = {
    "AWS::CDK::Metadata": "",
    "AWS::Chatbot::SlackChannelConfiguration": "",
    "AWS::EC2::FlowLog": "its records are log ingestion",
    "AWS::EC2::InternetGateway": "",
    "AWS::EC2::Route": "",
    "AWS::EC2::RouteTable": "",
    "AWS::EC2::SecurityGroup": "",
    "AWS::EC2::SecurityGroupEgress": "",
    "AWS::EC2::SecurityGroupIngress": "",
    "AWS::EC2::Subnet": "",
    "AWS::EC2::SubnetRouteTableAssociation": "",
    "AWS::EC2::VPC": "",
    "AWS::EC2::VPCGatewayAttachment": "",
    "AWS::ECS::ClusterCapacityProviderAssociations": "",
    "AWS::ECS::TaskDefinition": "priced with the service that runs it",
    "AWS::ElastiCache::ParameterGroup": "",
    "AWS::ElastiCache::SubnetGroup": "",
    "AWS::ElasticLoadBalancingV2::Listener": "",
    "AWS::ElasticLoadBalancingV2::ListenerRule": "",
    "AWS::ElasticLoadBalancingV2::TargetGroup": "",
    "AWS::Events::Rule": "scheduled rules and AWS service events; a Lambda they run is priced",
    "AWS::IAM::ManagedPolicy": "",
    "AWS::IAM::Policy": "",
    "AWS::IAM::Role": "",
    "AWS::Lambda::Permission": "",
    "AWS::S3::BucketPolicy": "",
    "AWS::SNS::TopicPolicy": "",
}
# Resource types billed only by use, which no template states.
USAGE = {
    "AWS::ECS::Cluster": "Container Insights metrics and performance logs",
    "AWS::S3::Bucket": "storage and requests",
    "AWS::SNS::Topic": "notifications published and delivered",
    "AWS::SNS::Subscription": "notifications delivered",
    "Datadog::Dashboards::Dashboard": "Datadog's own bill",
    "Datadog::Monitors::Monitor": "Datadog's own bill",
}
CUSTOM_RESOURCE = "a Lambda run at deploy"

# The parts of the summary table, in its order.
PARTS = ("Redis", "Fargate", "Network", "Load balancer", "Lambda", "CloudWatch", "Logs", "Secrets")


@dataclass(frozen=True)
class TaskCount:
    """A worker service's count when its template fixes none: the config's scaling bounds."""

    min_tasks: int
    max_tasks: int
    source: str  # the config setting, e.g. worker_groups.general


@dataclass(frozen=True)
class Inputs:
    """What the pricing reads: the templates by stack name and what they cannot carry."""

    env: str
    templates: Mapping[str, Mapping[str, Any]]
    region: str | None = PRICED_REGION
    # "<stack>/<logical id>" of an ECS service -> its bounds from the config
    task_counts: Mapping[str, TaskCount] = field(default_factory=dict)
    lambda_run_s: float = ASSUMED_DECISION_RUN_S


@dataclass(frozen=True)
class Line:
    part: str
    what: str
    quantity: str
    rate: str
    usd: float


@dataclass
class Estimate:
    env: str
    region: str | None
    lines: list[Line] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # The Fargate lines' cost on the other CPU architecture: (architecture, USD a month).
    other_architecture: list[tuple[str, float]] = field(default_factory=list)
    not_priced: list[str] = field(default_factory=list)
    usage: Counter[str] = field(default_factory=Counter)  # "type: billed for" -> count
    free: Counter[str] = field(default_factory=Counter)  # "type (why)" -> count

    @property
    def total(self) -> float:
        return round(sum(line.usd for line in self.lines), 2)

    def part_total(self, part: str) -> float:
        return round(sum(line.usd for line in self.lines if line.part == part), 2)


@dataclass(frozen=True)
class Resource:
    stack: str
    logical_id: str
    type: str
    props: Mapping[str, Any]
    template: Mapping[str, Any]

    @property
    def where(self) -> str:
        return f"{self.stack}/{self.logical_id}"

    def ref(self, value: Any) -> Mapping[str, Any] | None:
        """The resource of this template that `{"Ref": id}` or `{"Fn::GetAtt": [id, ...]}`
        names, if any."""
        if isinstance(value, dict) and len(value) == 1:
            target = value.get("Ref") or (value.get("Fn::GetAtt") or [None])[0]
            found = self.template["Resources"].get(target) if isinstance(target, str) else None
            return found if isinstance(found, dict) else None
        return None


class NotPricedError(Exception):
    """A resource of a priced type that this estimate cannot price; the message says why."""


def number(props: Mapping[str, Any], key: str, default: int) -> int:
    """A count or size the template states literally (not a token resolved at deploy)."""
    value = props.get(key, default)
    if isinstance(value, str) and value.isdigit():
        return int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise NotPricedError(f"its {key} is not a number in the template")
    return value


def items(props: Mapping[str, Any], key: str) -> list[Any]:
    """A list the template states literally, such as an endpoint's subnets."""
    value = props.get(key, [])
    if not isinstance(value, list):
        raise NotPricedError(f"its {key} is not a list in the template")
    return value


def monthly(hourly_usd: float, count: float = 1) -> float:
    return round(hourly_usd * count * HOURS_PER_MONTH, 2)


def dollars(value: float) -> str:
    return f"{value:,.2f}"


def figure(value: float) -> str:
    """A price as written on AWS's pages: 0.0000133334, not 1.33334e-05."""
    return f"{value:.10f}".rstrip("0").rstrip(".")


def rate(*keys: str) -> str:
    return " + ".join(f"{figure(PRICES[k].usd)} / {PRICES[k].unit.split(',')[0]}" for k in keys)


# ---------------------------------------------------------------- pricing by resource type


def price_replication_group(r: Resource, inputs: Inputs, est: Estimate) -> None:
    node_type = str(r.props.get("CacheNodeType"))
    engine = str(r.props.get("Engine", "redis")).lower()
    if "NumCacheClusters" in r.props:
        nodes = number(r.props, "NumCacheClusters", 1)
    else:  # cluster mode: shards x (primary + replicas)
        shards = number(r.props, "NumNodeGroups", 1)
        nodes = shards * (1 + number(r.props, "ReplicasPerNodeGroup", 0))
    price = PRICES.get(f"elasticache.{node_type}")
    if price is None:
        raise NotPricedError(f"node type {node_type} is not in the price table")
    hourly = price.usd
    if engine == "valkey":
        hourly *= 1 - PRICES["elasticache.valkey_discount"].usd
    est.lines.append(
        Line(
            part="Redis",
            what=f"ElastiCache {engine} {node_type} x {nodes} node{'s' * (nodes != 1)}",
            quantity=f"{nodes * HOURS_PER_MONTH:,} node-hours",
            rate=f"{hourly:.4g} / node-hour",
            usd=monthly(hourly, nodes),
        )
    )


def _fargate_hourly(vcpu: float, gb: float, arch: str) -> float:
    return vcpu * PRICES[f"fargate.vcpu.{arch}"].usd + gb * PRICES[f"fargate.gb.{arch}"].usd


def _task_count(r: Resource, inputs: Inputs) -> tuple[int, str, TaskCount | None]:
    desired = r.props.get("DesiredCount")
    if isinstance(desired, int):
        return desired, "DesiredCount in the template", None
    known = inputs.task_counts.get(r.where)
    if known is not None:
        return known.min_tasks, f"{known.source}.min_tasks; the template fixes none", known
    if desired is None:
        return 1, "CloudFormation's default for a new service without DesiredCount", None
    raise NotPricedError("its DesiredCount is decided at deploy and no min_tasks is known")


def price_service(r: Resource, inputs: Inputs, est: Estimate) -> None:
    task = r.ref(r.props.get("TaskDefinition"))
    if task is None:
        raise NotPricedError("its task definition is not in the same template")
    td = task.get("Properties", {})
    if "FARGATE" not in td.get("RequiresCompatibilities", []):
        raise NotPricedError("not a Fargate task definition")
    vcpu, gb = number(td, "Cpu", 0) / 1024, number(td, "Memory", 0) / 1024
    if not vcpu or not gb:
        raise NotPricedError("its task definition sets no task-level Cpu and Memory")
    arch = str(td.get("RuntimePlatform", {}).get("CpuArchitecture", "X86_64")).upper()
    if f"fargate.vcpu.{arch}" not in PRICES:
        raise NotPricedError(f"CPU architecture {arch} is not in the price table")
    count, source, bounds = _task_count(r, inputs)
    hourly = _fargate_hourly(vcpu, gb, arch)
    storage_gb = number(td.get("EphemeralStorage", {}), "SizeInGiB", FARGATE_FREE_STORAGE_GB)
    hourly += max(0, storage_gb - FARGATE_FREE_STORAGE_GB) * PRICES["fargate.storage"].usd
    name = str(r.props.get("ServiceName", r.logical_id))
    est.lines.append(
        Line(
            part="Fargate",
            what=f"{name}: {count} task{'s' * (count != 1)} ({source})",
            quantity=f"{count} x {vcpu:g} vCPU, {gb:g} GB, {arch}",
            rate=rate(f"fargate.vcpu.{arch}", f"fargate.gb.{arch}"),
            usd=monthly(hourly, count),
        )
    )
    other = "X86_64" if arch == "ARM64" else "ARM64"
    est.other_architecture.append((other, monthly(_fargate_hourly(vcpu, gb, other), count)))
    strategy = r.props.get("CapacityProviderStrategy") or []
    if any(s.get("CapacityProvider") == "FARGATE_SPOT" for s in strategy):
        est.notes.append(
            f"{name} runs on Fargate Spot, billed at the Spot price of the hour (up to 70 % "
            "less); priced here at on-demand."
        )
    if bounds is not None and bounds.max_tasks > count:
        est.notes.append(
            f"{name} is autoscaled from {bounds.min_tasks} to {bounds.max_tasks} tasks: "
            f"at {bounds.max_tasks} it would cost {dollars(monthly(hourly, bounds.max_tasks))} "
            "USD a month."
        )
    network = r.props.get("NetworkConfiguration", {}).get("AwsvpcConfiguration", {})
    if network.get("AssignPublicIp") == "ENABLED":
        est.lines.append(
            Line(
                "Network",
                f"{name}: a public IPv4 address per task",
                f"{count} addresses",
                rate("public_ipv4"),
                monthly(PRICES["public_ipv4"].usd, count),
            )
        )


def price_nat_gateways(rs: Sequence[Resource], est: Estimate) -> None:
    est.lines.append(
        Line(
            "Network",
            f"NAT gateway x {len(rs)} (data processed not counted)",
            f"{len(rs) * HOURS_PER_MONTH:,} gateway-hours",
            rate("nat_gateway"),
            monthly(PRICES["nat_gateway"].usd, len(rs)),
        )
    )


def price_eips(rs: Sequence[Resource], est: Estimate) -> None:
    est.lines.append(
        Line(
            "Network",
            f"Elastic IP addresses x {len(rs)} (public IPv4)",
            f"{len(rs) * HOURS_PER_MONTH:,} address-hours",
            rate("public_ipv4"),
            monthly(PRICES["public_ipv4"].usd, len(rs)),
        )
    )


def price_endpoints(rs: Sequence[Resource], est: Estimate) -> None:
    interface, azs = [], 0
    for r in rs:
        kind = r.props.get("VpcEndpointType", "Gateway")
        if kind == "Gateway":
            est.free[f"{r.type} (gateway endpoints)"] += 1
        elif kind != "Interface":
            est.not_priced.append(f"{r.where} ({r.type}): endpoint type {kind}")
        else:
            try:
                azs += len(items(r.props, "SubnetIds"))
                interface.append(r)
            except NotPricedError as exc:
                est.not_priced.append(f"{r.where} ({r.type}): {exc}")
    if not interface:
        return
    names = sorted(_endpoint_service(r) for r in interface)
    est.lines.append(
        Line(
            "Network",
            f"interface endpoints x {len(interface)} ({', '.join(names)})",
            f"{azs} endpoint-AZs, {azs * HOURS_PER_MONTH:,} hours",
            rate("interface_endpoint"),
            monthly(PRICES["interface_endpoint"].usd, azs),
        )
    )


def _endpoint_service(r: Resource) -> str:
    """`ecr.api` of com.amazonaws.us-east-1.ecr.api."""
    service = r.props.get("ServiceName")
    if isinstance(service, str) and service.startswith("com.amazonaws."):
        return service.split(".", 3)[-1]
    return r.logical_id


def price_load_balancer(r: Resource, inputs: Inputs, est: Estimate) -> None:
    kind = r.props.get("Type", "application")
    if kind != "application":
        raise NotPricedError(f"a {kind} load balancer is not in the price table")
    hourly = PRICES["alb"].usd + ASSUMED_ALB_LCU * PRICES["alb_lcu"].usd
    est.lines.append(
        Line(
            "Load balancer",
            f"{r.where}: Application Load Balancer, {ASSUMED_ALB_LCU:g} LCU assumed",
            f"{HOURS_PER_MONTH} hours",
            rate("alb", "alb_lcu"),
            monthly(hourly),
        )
    )
    if r.props.get("Scheme") == "internet-facing":
        azs = len(items(r.props, "Subnets" if "Subnets" in r.props else "SubnetMappings"))
        est.lines.append(
            Line(
                "Load balancer",
                f"{r.where}: a public IPv4 address per AZ",
                f"{azs} addresses",
                rate("public_ipv4"),
                monthly(PRICES["public_ipv4"].usd, azs),
            )
        )


RATE = re.compile(r"^rate\((\d+) (minute|minutes|hour|hours|day|days)\)$")
MINUTES = {"minute": 1, "hour": 60, "day": 1440}


def _schedules(rules: Sequence[Resource]) -> dict[str, str]:
    """Logical id of each function an enabled rule runs on a schedule -> the expression."""
    scheduled = {}
    for rule in rules:
        expression = rule.props.get("ScheduleExpression")
        if not expression or rule.props.get("State", "ENABLED") != "ENABLED":
            continue
        for target in rule.props.get("Targets", []):
            arn = target.get("Arn")
            if isinstance(arn, dict) and "Fn::GetAtt" in arn:
                scheduled[f"{rule.stack}/{arn['Fn::GetAtt'][0]}"] = str(expression)
    return scheduled


def price_function(r: Resource, inputs: Inputs, est: Estimate, schedule: str | None) -> None:
    if schedule is None:
        est.usage[f"{r.type}: invocations (at deploy, or on events; none scheduled)"] += 1
        return
    match = RATE.match(schedule)
    if match is None:
        raise NotPricedError(f"schedule {schedule} is not a rate() the estimate reads")
    every_min = int(match[1]) * MINUTES[match[2].rstrip("s")]
    runs = HOURS_PER_MONTH * 60 // every_min
    gb = number(r.props, "MemorySize", 128) / 1024
    arch = (r.props.get("Architectures") or ["x86_64"])[0]
    gb_seconds = runs * inputs.lambda_run_s * gb
    cost = gb_seconds * PRICES[f"lambda.gb_second.{arch}"].usd
    cost += runs / 1e6 * PRICES["lambda.requests"].usd
    est.lines.append(
        Line(
            "Lambda",
            f"{r.where}: {schedule}, {inputs.lambda_run_s:g} s a run (assumed), {arch}",
            f"{runs:,} runs x {gb:g} GB = {gb_seconds:,.0f} GB-s",
            rate(f"lambda.gb_second.{arch}", "lambda.requests"),
            round(cost, 2),
        )
    )


def _alarm_metrics(props: Mapping[str, Any]) -> int:
    """A metric-math alarm is billed per metric it reads, expressions are free."""
    if "Metrics" in props:
        return sum(1 for query in props["Metrics"] if "MetricStat" in query)
    return 1


def price_alarms(rs: Sequence[Resource], est: Estimate) -> None:
    def high_resolution(r: Resource) -> bool:
        period = r.props.get("Period", 60)  # metric-math alarms set theirs per query
        return isinstance(period, int) and period < 60

    standard = sum(_alarm_metrics(r.props) for r in rs if not high_resolution(r))
    high = sum(_alarm_metrics(r.props) for r in rs if high_resolution(r))
    for key, metrics in (
        ("cloudwatch.alarm", standard),
        ("cloudwatch.alarm_high_resolution", high),
    ):
        if metrics:
            est.lines.append(
                Line(
                    "CloudWatch",
                    f"alarms x {len(rs)}",
                    f"{metrics} alarm metrics",
                    rate(key),
                    round(metrics * PRICES[key].usd, 2),
                )
            )


Together = Callable[[Sequence[Resource], Estimate], None]


def price_per_month(part: str, key: str, what: str) -> Together:
    """A resource billed a fixed amount a month each (dashboards, secrets, keys)."""

    def price(rs: Sequence[Resource], est: Estimate) -> None:
        est.lines.append(
            Line(
                part,
                f"{what} x {len(rs)}",
                f"{len(rs)}",
                rate(key),
                round(len(rs) * PRICES[key].usd, 2),
            )
        )

    return price


def price_log_groups(rs: Sequence[Resource], est: Estimate) -> None:
    gb = len(rs) * ASSUMED_LOG_GB_PER_GROUP
    est.lines.append(
        Line(
            "Logs",
            f"log groups x {len(rs)}, {ASSUMED_LOG_GB_PER_GROUP:g} GB each ingested (assumed)",
            f"{gb:g} GB",
            rate("logs.ingestion"),
            round(gb * PRICES["logs.ingestion"].usd, 2),
        )
    )


def price_parameters(rs: Sequence[Resource], est: Estimate) -> None:
    advanced = []
    for r in rs:
        tier = r.props.get("Tier", "Standard")
        value = r.props.get("Value")
        long_value = isinstance(value, str) and len(value) > SSM_STANDARD_MAX_CHARS
        if tier == "Advanced" or (tier == "Intelligent-Tiering" and long_value):
            advanced.append(r)
        else:
            est.free[f"{r.type} (standard tier)"] += 1
    if advanced:
        price_per_month("Secrets", "ssm.advanced_parameter", "SSM advanced parameters")(
            advanced, est
        )


# Types priced one resource at a time; NotPricedError lists that resource as not priced.
ONE_BY_ONE = {
    "AWS::ElastiCache::ReplicationGroup": price_replication_group,
    "AWS::ECS::Service": price_service,
    "AWS::ElasticLoadBalancingV2::LoadBalancer": price_load_balancer,
}
# Types priced together, one line for all resources of the type.
TOGETHER: dict[str, Together] = {
    "AWS::EC2::NatGateway": price_nat_gateways,
    "AWS::EC2::EIP": price_eips,
    "AWS::EC2::VPCEndpoint": price_endpoints,
    "AWS::CloudWatch::Alarm": price_alarms,
    "AWS::CloudWatch::CompositeAlarm": price_per_month(
        "CloudWatch", "cloudwatch.composite_alarm", "composite alarms"
    ),
    "AWS::CloudWatch::Dashboard": price_per_month(
        "CloudWatch", "cloudwatch.dashboard", "dashboards"
    ),
    "AWS::Logs::LogGroup": price_log_groups,
    "AWS::SecretsManager::Secret": price_per_month(
        "Secrets", "secretsmanager.secret", "Secrets Manager secrets"
    ),
    "AWS::KMS::Key": price_per_month("Secrets", "kms.key", "KMS keys"),
    "AWS::SSM::Parameter": price_parameters,
}


def estimate(inputs: Inputs) -> Estimate:
    est = Estimate(env=inputs.env, region=inputs.region)
    resources = [
        Resource(stack, logical_id, str(body["Type"]), body.get("Properties", {}), template)
        for stack, template in inputs.templates.items()
        for logical_id, body in template.get("Resources", {}).items()
    ]
    by_type: dict[str, list[Resource]] = {}
    for r in resources:
        by_type.setdefault(r.type, []).append(r)
    schedules = _schedules(by_type.get("AWS::Events::Rule", []))
    for kind, group in by_type.items():
        if kind in TOGETHER:
            TOGETHER[kind](group, est)
            continue
        for r in group:
            try:
                if kind in ONE_BY_ONE:
                    ONE_BY_ONE[kind](r, inputs, est)
                elif kind == "AWS::Lambda::Function":
                    price_function(r, inputs, est, schedules.get(r.where))
                elif kind in USAGE:
                    est.usage[f"{kind}: {USAGE[kind]}"] += 1
                elif kind in FREE:
                    est.free[f"{kind} ({FREE[kind]})" if FREE[kind] else kind] += 1
                elif kind.startswith("Custom::") or kind == "AWS::CloudFormation::CustomResource":
                    est.free[f"{kind} ({CUSTOM_RESOURCE})"] += 1
                else:
                    raise NotPricedError("a resource type this estimate does not know")
            except NotPricedError as exc:
                est.not_priced.append(f"{r.where} ({kind}): {exc}")
    est.lines.sort(key=lambda line: PARTS.index(line.part))
    return est


# ---------------------------------------------------------------- from a synthesized app


def inputs_from(
    config: EnvironmentConfig, platform: Platform, assembly: cx_api.CloudAssembly
) -> Inputs:
    """The pricing inputs of a synthesized platform: its templates, and each worker
    service's bounds from the config's catalog, since a template must not fix an autoscaled
    service's count."""
    from aws_cdk import Stack
    from aws_cdk import aws_ecs as ecs

    templates = {
        stack.stack_name: assembly.get_stack_by_name(stack.stack_name).template
        for stack in platform.stacks
    }
    counts = {}
    for name, worker in platform.services.workers.items():
        cfn = worker.service.node.default_child
        assert isinstance(cfn, ecs.CfnService)
        stack = Stack.of(cfn)
        group = config.worker_groups[name]
        counts[f"{stack.stack_name}/{stack.resolve(cfn.logical_id)}"] = TaskCount(
            min_tasks=group.min_tasks, max_tasks=group.max_tasks, source=f"worker_groups.{name}"
        )
    scaler = config.autoscaler
    return Inputs(
        env=config.name,
        templates=templates,
        region=config.region,
        task_counts=counts,
        lambda_run_s=ASSUMED_DECISION_RUN_S
        + (scaler.decisions_per_run - 1) * scaler.decision_interval_s,
    )


def synthesize(config: EnvironmentConfig) -> Inputs:
    """Synthesize one environment as `cdk synth` does (cdk.json's feature flags) into a
    temporary directory, and read its pricing inputs."""
    from aws_cdk import App

    from stacks.platform import build_platform

    context = json.loads((ROOT / "cdk.json").read_text())["context"]
    with tempfile.TemporaryDirectory() as outdir:
        app = App(outdir=outdir, context=context)
        platform = build_platform(app, config)
        return inputs_from(config, platform, app.synth())


# ---------------------------------------------------------------- the document


def environment_names(config_dir: Path) -> list[str]:
    """dev, staging, prod first, then any other environment of the config."""
    order = ("dev", "staging", "prod")
    names = available_environments(config_dir)
    return sorted(names, key=lambda n: (order.index(n) if n in order else len(order), n))


def _shown(config_dir: Path) -> str:
    path = config_dir.resolve()
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _counted(counter: Counter[str]) -> str:
    return "; ".join(f"{key} x {n}" for key, n in sorted(counter.items()))


def _environment_section(est: Estimate) -> list[str]:
    out = [f"## {est.env}", ""]
    if est.region != PRICED_REGION:
        out += [f"Deployed in {est.region}: priced at {PRICED_REGION} list prices.", ""]
    rows = [[ln.part, ln.what, ln.quantity, ln.rate, dollars(ln.usd)] for ln in est.lines]
    rows.append(["", "**total**", "", "", f"**{dollars(est.total)}**"])
    out += _table(["part", "what", "quantity", "USD per unit", "USD / month"], rows)
    out.append("")
    fargate = est.part_total("Fargate")
    for arch in sorted({arch for arch, _ in est.other_architecture}):
        other = round(sum(cost for a, cost in est.other_architecture if a == arch), 2)
        if fargate and other:
            cheaper, dearer = sorted((fargate, other))
            out.append(
                f"- The same Fargate tasks on {arch} would cost {dollars(other)} USD a month: "
                f"ARM64 (Graviton) costs {(1 - cheaper / dearer) * 100:.0f} % less than X86_64."
            )
    out += [f"- {note}" for note in est.notes]
    out.append(f"- Not priced: {'; '.join(est.not_priced) if est.not_priced else 'none'}.")
    if est.usage:
        out.append(f"- Billed only by use, not counted: {_counted(est.usage)}.")
    if est.free:
        out.append(f"- No charge of their own: {_counted(est.free)}.")
    return [*out, ""]


def render(estimates: Sequence[Estimate], config_dir: Path) -> str:
    parts = [p for p in PARTS if any(ln.part == p for e in estimates for ln in e.lines)]
    out = [
        "# Monthly cost per environment",
        "",
        f"Generated by `make cost` from the synthesized templates of `{_shown(config_dir)}`; do "
        "not edit by hand (a test fails when this file no longer matches the templates). "
        f"AWS list prices in {PRICED_REGION}, on demand, in USD, {HOURS_PER_MONTH} hours a "
        "month, before taxes, without the free tier, credits, savings plans or reserved "
        "nodes. Your bill will differ: this is the fixed cost of the platform at its "
        "minimum scale, and what it leaves out is listed below.",
        "",
    ]
    rows = [
        [e.env] + [dollars(e.part_total(p)) for p in parts] + [dollars(e.total)] for e in estimates
    ]
    out += _table(["environment", *parts, "total"], rows)
    out.append("")
    for est in estimates:
        out += _environment_section(est)
    out += [
        "## Assumptions",
        "",
        "- Every resource runs the whole month. Services count the tasks the template fixes "
        "(`DesiredCount`); a worker service, whose count the template leaves to the "
        "autoscaler, counts its worker group's `min_tasks` from the config, and its cost at "
        "`max_tasks` is noted.",
        f"- Logs: {ASSUMED_LOG_GB_PER_GROUP:g} GB ingested per log group a month (workers, "
        "beat, Flower, the Lambdas, Redis's slow and engine logs, VPC flow logs). Busy workers "
        "and flow logs of a busy VPC ingest far more; storage after ingestion is not counted.",
        f"- The load balancer uses {ASSUMED_ALB_LCU:g} LCU on average (Flower's page views).",
        f"- A scheduled Lambda run lasts {ASSUMED_DECISION_RUN_S:g} s, plus "
        "`autoscaler.decision_interval_s` for each extra decision when "
        "`autoscaler.decisions_per_run` > 1.",
        "- Alarms are billed per metric they read (a metric-math alarm per metric in its "
        "expression); dashboards at the full price (the first three of an account are free).",
        "- ElastiCache node-hours for the Valkey engine are the Redis OSS price less the Valkey "
        "discount; Fargate Spot services are priced at on-demand.",
        "",
        "## Not counted",
        "",
        "- Data transfer: NAT gateway and interface endpoint data processing (per GB), "
        "cross-AZ traffic between tasks and Redis replicas, traffic to the internet.",
        "- The team's own usage: tasks above the minimum while the autoscaler scales out, "
        "Redis backup storage beyond the free allowance, ECR image storage, S3 requests and "
        "storage, CloudWatch custom metrics (the autoscaler's and the workers' EMF metrics, "
        "0.30 USD per metric a month), Container Insights, API requests to Secrets Manager, "
        "KMS and SSM, SNS notifications, Datadog's own bill.",
        "- Resources outside these stacks: the CDK bootstrap stack, secrets the config names "
        "by name (Datadog keys, team secrets), the team's web API.",
        "",
        "## Prices",
        "",
        f"All in `tools/cost.py`: {PRICED_REGION}, on demand, each as listed on its source page "
        "on the date shown. Check a figure there before relying on it.",
        "",
    ]
    out += _table(
        ["price", "USD", "per", "as of", "source"],
        [[f"`{k}`", figure(p.usd), p.unit, p.as_of, p.url] for k, p in PRICES.items()],
    )
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config-dir", type=Path, default=CONFIG_DIR, help="the app's config")
    parser.add_argument(
        "--env", action="append", help="an environment (repeatable); default: all of the config"
    )
    parser.add_argument("--out", type=Path, default=DOC, help=f"default: {DOC.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    names = args.env or environment_names(args.config_dir)
    estimates = []
    for name in names:
        try:
            config = load_environment(name, args.config_dir)
        except ConfigError as exc:
            for line in str(exc).splitlines():
                print(f"config error: {line}", file=sys.stderr)
            return 2
        estimates.append(estimate(synthesize(config)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(estimates, args.config_dir))
    for est in estimates:
        unpriced = f", {len(est.not_priced)} resources not priced" if est.not_priced else ""
        print(f"{est.env}: {dollars(est.total)} USD a month{unpriced}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
