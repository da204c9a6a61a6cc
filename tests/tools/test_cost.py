"""The cost table: docs/cost.md is what the templates cost, and each resource is priced right."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from config import CONFIG_DIR
from tests.synth import Synth
from tools import cost
from tools.cost import HOURS_PER_MONTH, PRICES, Estimate, Inputs, TaskCount


def price(resources: dict[str, dict[str, Any]], **inputs: Any) -> Estimate:
    """The estimate of one hand-written template, stack `s`."""
    return cost.estimate(Inputs(env="test", templates={"s": {"Resources": resources}}, **inputs))


def only_line(est: Estimate, part: str) -> cost.Line:
    (line,) = [line for line in est.lines if line.part == part]
    return line


def test_cost_doc_matches_the_synthesized_templates(synth_env: Callable[[str], Synth]) -> None:
    estimates = []
    for name in cost.environment_names(CONFIG_DIR):
        synth = synth_env(name)
        estimates.append(
            cost.estimate(cost.inputs_from(synth.config, synth.platform, synth.assembly))
        )
    if cost.DOC.read_text() != cost.render(estimates, CONFIG_DIR):
        pytest.fail("docs/cost.md does not match the templates: run `make cost`", pytrace=False)


def test_every_resource_of_the_shipped_environments_is_classified(env_synth: Synth) -> None:
    est = cost.estimate(cost.inputs_from(env_synth.config, env_synth.platform, env_synth.assembly))
    assert est.not_priced == []


def test_replication_group_is_priced_per_node_with_the_valkey_discount() -> None:
    est = price(
        {
            "Broker": {
                "Type": "AWS::ElastiCache::ReplicationGroup",
                "Properties": {
                    "Engine": "valkey",
                    "CacheNodeType": "cache.t4g.micro",
                    "NumCacheClusters": 2,
                },
            }
        }
    )
    node_hour = PRICES["elasticache.cache.t4g.micro"].usd
    discount = PRICES["elasticache.valkey_discount"].usd
    assert only_line(est, "Redis").usd == round(2 * HOURS_PER_MONTH * node_hour * (1 - discount), 2)


def test_cluster_mode_counts_shards_times_primary_and_replicas() -> None:
    est = price(
        {
            "Broker": {
                "Type": "AWS::ElastiCache::ReplicationGroup",
                "Properties": {
                    "Engine": "redis",
                    "CacheNodeType": "cache.m7g.large",
                    "NumNodeGroups": 2,
                    "ReplicasPerNodeGroup": 1,
                },
            }
        }
    )
    expected = 4 * HOURS_PER_MONTH * PRICES["elasticache.cache.m7g.large"].usd
    assert only_line(est, "Redis").usd == round(expected, 2)


def test_unknown_node_type_is_listed_not_priced() -> None:
    est = price(
        {
            "Broker": {
                "Type": "AWS::ElastiCache::ReplicationGroup",
                "Properties": {"CacheNodeType": "cache.x9.huge", "NumCacheClusters": 1},
            }
        }
    )
    assert est.lines == []
    assert est.not_priced == [
        "s/Broker (AWS::ElastiCache::ReplicationGroup): node type cache.x9.huge is not in the "
        "price table"
    ]


def fargate_service(arch: str, **service: Any) -> dict[str, dict[str, Any]]:
    return {
        "Task": {
            "Type": "AWS::ECS::TaskDefinition",
            "Properties": {
                "Cpu": "512",
                "Memory": "1024",
                "RequiresCompatibilities": ["FARGATE"],
                "RuntimePlatform": {"CpuArchitecture": arch, "OperatingSystemFamily": "LINUX"},
            },
        },
        "Svc": {
            "Type": "AWS::ECS::Service",
            "Properties": {"ServiceName": "w", "TaskDefinition": {"Ref": "Task"}, **service},
        },
    }


def test_worker_without_desired_count_runs_its_min_tasks_and_notes_its_max() -> None:
    counts = {"s/Svc": TaskCount(min_tasks=2, max_tasks=5, source="worker_groups.general")}
    est = price(fargate_service("ARM64"), task_counts=counts)
    hourly = 0.5 * PRICES["fargate.vcpu.ARM64"].usd + 1 * PRICES["fargate.gb.ARM64"].usd
    line = only_line(est, "Fargate")
    assert line.usd == round(2 * HOURS_PER_MONTH * hourly, 2)
    assert "worker_groups.general.min_tasks" in line.what
    assert any("at 5 it would cost" in note for note in est.notes)


def test_desired_count_in_the_template_wins_over_the_config() -> None:
    counts = {"s/Svc": TaskCount(min_tasks=2, max_tasks=5, source="worker_groups.general")}
    est = price(fargate_service("ARM64", DesiredCount=1), task_counts=counts)
    assert only_line(est, "Fargate").what == "w: 1 task (DesiredCount in the template)"


def test_service_without_count_anywhere_starts_at_cloudformations_default_of_one() -> None:
    est = price(fargate_service("X86_64"))
    assert "1 task" in only_line(est, "Fargate").what


def test_count_decided_at_deploy_without_config_bounds_is_not_priced() -> None:
    est = price(fargate_service("ARM64", DesiredCount={"Fn::GetAtt": ["Counter", "DesiredCount"]}))
    assert est.lines == []
    assert len(est.not_priced) == 1
    assert est.not_priced[0].startswith("s/Svc (AWS::ECS::Service)")


def test_graviton_is_about_a_fifth_cheaper_than_x86() -> None:
    arm = only_line(price(fargate_service("ARM64")), "Fargate").usd
    x86 = only_line(price(fargate_service("X86_64")), "Fargate").usd
    assert 0.75 < arm / x86 < 0.85
    assert price(fargate_service("ARM64")).other_architecture == [("X86_64", x86)]


def test_interface_endpoints_are_billed_per_az_and_gateway_endpoints_are_free() -> None:
    est = price(
        {
            "Ecr": {
                "Type": "AWS::EC2::VPCEndpoint",
                "Properties": {
                    "VpcEndpointType": "Interface",
                    "ServiceName": "com.amazonaws.us-east-1.ecr.api",
                    "SubnetIds": ["a", "b", "c"],
                },
            },
            "S3": {"Type": "AWS::EC2::VPCEndpoint", "Properties": {"VpcEndpointType": "Gateway"}},
        }
    )
    line = only_line(est, "Network")
    assert line.usd == round(3 * HOURS_PER_MONTH * PRICES["interface_endpoint"].usd, 2)
    assert "ecr.api" in line.what
    assert est.free == {"AWS::EC2::VPCEndpoint (gateway endpoints)": 1}


def test_scheduled_lambda_is_runs_times_duration_times_memory() -> None:
    est = price(
        {
            "Fn": {
                "Type": "AWS::Lambda::Function",
                "Properties": {"MemorySize": 512, "Architectures": ["arm64"]},
            },
            "Idle": {"Type": "AWS::Lambda::Function", "Properties": {}},
            "Every10": {
                "Type": "AWS::Events::Rule",
                "Properties": {
                    "ScheduleExpression": "rate(10 minutes)",
                    "State": "ENABLED",
                    "Targets": [{"Arn": {"Fn::GetAtt": ["Fn", "Arn"]}, "Id": "t"}],
                },
            },
        },
        lambda_run_s=2.0,
    )
    runs = HOURS_PER_MONTH * 6
    expected = runs * 2.0 * 0.5 * PRICES["lambda.gb_second.arm64"].usd
    expected += runs / 1e6 * PRICES["lambda.requests"].usd
    assert only_line(est, "Lambda").usd == round(expected, 2)
    # The unscheduled one runs only when something invokes it: named, not counted.
    assert sum(n for key, n in est.usage.items() if key.startswith("AWS::Lambda::Function")) == 1


def test_metric_math_alarm_is_billed_per_metric_it_reads() -> None:
    metric = {"MetricStat": {"Metric": {"MetricName": "m", "Namespace": "n"}, "Stat": "Sum"}}
    est = price(
        {
            "Plain": {"Type": "AWS::CloudWatch::Alarm", "Properties": {"Period": 300}},
            "Math": {
                "Type": "AWS::CloudWatch::Alarm",
                "Properties": {
                    "Metrics": [
                        {"Id": "e", "Expression": "a+b"},
                        {"Id": "a", **metric},
                        {"Id": "b", **metric},
                    ]
                },
            },
        }
    )
    assert only_line(est, "CloudWatch").usd == round(3 * PRICES["cloudwatch.alarm"].usd, 2)


def test_unknown_resource_type_is_listed_not_priced_rather_than_ignored() -> None:
    est = price({"Db": {"Type": "AWS::RDS::DBInstance", "Properties": {}}})
    assert est.not_priced == [
        "s/Db (AWS::RDS::DBInstance): a resource type this estimate does not know"
    ]
    assert "Not priced: s/Db (AWS::RDS::DBInstance)" in cost.render([est], CONFIG_DIR)


def test_a_count_decided_at_deploy_is_listed_not_priced() -> None:
    est = price(
        {
            "Broker": {
                "Type": "AWS::ElastiCache::ReplicationGroup",
                "Properties": {
                    "CacheNodeType": "cache.t4g.micro",
                    "NumCacheClusters": {"Ref": "N"},
                },
            }
        }
    )
    assert est.lines == []
    assert est.not_priced == [
        "s/Broker (AWS::ElastiCache::ReplicationGroup): its NumCacheClusters is not a number in "
        "the template"
    ]
