"""Alarms and dashboard: every queue and worker group is watched, every alarm notifies."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from celery_service import contract as m
from config import EnvironmentConfig, load_environment
from tests.synth import Synth, resources, synthesize

TOKEN = "TOKEN"


def monitoring(synth: Synth) -> dict[str, Any]:
    return synth.template_json(synth.platform.monitoring)


def alarms(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Alarm properties by description."""
    found = resources(template, "AWS::CloudWatch::Alarm").values()
    return {a["Properties"]["AlarmDescription"]: a["Properties"] for a in found}


def joined(value: Any) -> str:
    """An Fn::Join's literal parts joined, every reference replaced by a placeholder."""
    if isinstance(value, str):
        return value
    separator, parts = value["Fn::Join"]
    return str(separator).join(p if isinstance(p, str) else TOKEN for p in parts)


def dashboard(template: dict[str, Any]) -> list[dict[str, Any]]:
    (board,) = resources(template, "AWS::CloudWatch::Dashboard").values()
    widgets: list[dict[str, Any]] = json.loads(joined(board["Properties"]["DashboardBody"]))[
        "widgets"
    ]
    return widgets


def charted(widgets: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, str]]]:
    """(namespace, metric, dimensions) of every metric line of every graph."""
    lines = []
    for widget in widgets:
        for line in widget["properties"].get("metrics", []):
            fields = [f for f in line if not isinstance(f, dict)]
            if fields[0] == "...":
                continue
            namespace, metric, *dims = fields
            lines.append((namespace, metric, dict(zip(dims[::2], dims[1::2], strict=True))))
    return lines


def dims(props: dict[str, Any]) -> dict[str, Any]:
    return {d["Name"]: d["Value"] for d in props.get("Dimensions", [])}


def test_every_queue_and_group_has_its_widgets(env_synth: Synth) -> None:
    config = env_synth.config
    lines = charted(dashboard(monitoring(env_synth)))
    ours = [(metric, d) for ns, metric, d in lines if ns == m.AUTOSCALER_NAMESPACE]
    for _, d in ours:
        assert (d["environment"], d["service"]) == (config.name, m.AUTOSCALER_SERVICE)
    for queue in config.queues:
        shown = {metric for metric, d in ours if d.get("queue") == queue}
        assert shown == set(m.QUEUE_METRICS), queue
    for group in config.worker_groups:
        shown = {metric for metric, d in ours if d.get("worker_group") == group}
        assert shown == set(m.GROUP_METRICS), group
    ecs = [(metric, d) for ns, metric, d in lines if ns == "AWS/ECS"]
    assert sorted(metric for metric, _ in ecs) == sorted(
        ["CPUUtilization", "MemoryUtilization"] * len(config.worker_groups)
    )
    assert all(set(d) == {"ClusterName", "ServiceName"} for _, d in ecs)
    shown_env = {metric for metric, d in ours if set(d) == {"environment", "service"}}
    assert shown_env == set(m.ENVIRONMENT_METRICS)


def test_redis_and_flower_panels_follow_the_topology(env_synth: Synth) -> None:
    config = env_synth.config
    lines = charted(dashboard(monitoring(env_synth)))
    redis = [(metric, d["CacheClusterId"]) for ns, metric, d in lines if ns == "AWS/ElastiCache"]
    nodes = 1 + config.redis.replicas
    for metric in ("CPUUtilization", "EngineCPUUtilization", "DatabaseMemoryUsagePercentage"):
        assert [n for name, n in redis if name == metric] == [
            f"{TOKEN}-{i:03d}" for i in range(1, nodes + 1)
        ]
    for metric in ("Evictions", "CurrConnections"):
        assert len([n for name, n in redis if name == metric]) == nodes
    lag = [n for name, n in redis if name == "ReplicationLag"]
    assert lag == [f"{TOKEN}-{i:03d}" for i in range(2, nodes + 1)]  # replicas only, if any
    alb = {metric for ns, metric, _ in lines if ns == "AWS/ApplicationELB"}
    assert alb == {"HTTPCode_ELB_5XX_Count", "HTTPCode_Target_5XX_Count"}


def test_every_alarm_notifies_the_topic_and_is_on_the_dashboard(env_synth: Synth) -> None:
    template = monitoring(env_synth)
    (topic_id,) = resources(template, "AWS::SNS::Topic")
    found = resources(template, "AWS::CloudWatch::Alarm")
    assert found
    for props in (a["Properties"] for a in found.values()):
        assert props["AlarmActions"] == [{"Ref": topic_id}], props["AlarmDescription"]
    widgets = dashboard(template)
    alarm_widgets = [w for w in widgets if "annotations" in w["properties"]]
    alarm_widgets = [w for w in alarm_widgets if "alarms" in w["properties"].get("annotations", {})]
    assert len(alarm_widgets) == len(found)


def test_topic_is_encrypted_with_a_key_cloudwatch_may_use_and_requires_tls(
    env_synth: Synth,
) -> None:
    template = monitoring(env_synth)
    (topic,) = resources(template, "AWS::SNS::Topic").values()
    (key_id,) = resources(template, "AWS::KMS::Key")
    assert topic["Properties"]["KmsMasterKeyId"] == {"Fn::GetAtt": [key_id, "Arn"]}
    key = template["Resources"][key_id]["Properties"]
    assert key["EnableKeyRotation"] is True
    statements = key["KeyPolicy"]["Statement"]
    assert any(
        s.get("Principal") == {"Service": "cloudwatch.amazonaws.com"}
        and "kms:GenerateDataKey*" in s["Action"]
        for s in statements
    )
    (policy,) = resources(template, "AWS::SNS::TopicPolicy").values()
    assert '"aws:SecureTransport": "false"' in json.dumps(policy)
    subscriptions = resources(template, "AWS::SNS::Subscription")
    email = env_synth.config.monitoring.alarm_email
    assert len(subscriptions) == (1 if email else 0)


def test_thresholds_and_missing_data_follow_the_config(env_synth: Synth) -> None:
    config = env_synth.config
    settings = config.monitoring
    found = alarms(monitoring(env_synth))
    interval = config.autoscaler.schedule_minutes * 60
    for queue in config.queues:
        (dlq,) = [
            a
            for a in found.values()
            if a.get("MetricName") == m.DLQ_DEPTH and dims(a).get("queue") == queue
        ]
        assert (dlq["Threshold"], dlq["ComparisonOperator"]) == (0, "GreaterThanThreshold")
        assert dlq["TreatMissingData"] == "ignore"
    for name, group in config.worker_groups.items():
        by_metric = {
            a["MetricName"]: a
            for a in found.values()
            if dims(a).get("worker_group") == name and "MetricName" in a
        }
        pinned = by_metric[m.DESIRED_TASKS]
        assert pinned["Threshold"] == group.max_tasks
        assert pinned["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
        assert pinned["Statistic"] == "Minimum"
        assert (
            pinned["Period"] * pinned["EvaluationPeriods"] >= settings.max_tasks_alarm_minutes * 60
        )
        assert pinned["EvaluationPeriods"] == math.ceil(
            settings.max_tasks_alarm_minutes / config.autoscaler.schedule_minutes
        )
        assert pinned["TreatMissingData"] == "ignore"
        backlog = by_metric[m.GROUP_ESTIMATED_WAIT_S]
        assert backlog["Threshold"] == group.target_wait_s
        assert backlog["Period"] == interval
        assert backlog["TreatMissingData"] == "ignore"
    redis = [a for a in found.values() if a.get("Namespace") == "AWS/ElastiCache"]
    nodes = 1 + config.redis.replicas
    expected = {
        "DatabaseMemoryUsagePercentage": settings.redis_memory_percent,
        "Evictions": 0,
        "EngineCPUUtilization": settings.redis_engine_cpu_percent,
    }
    for metric, threshold in expected.items():
        matching = [a for a in redis if a["MetricName"] == metric]
        assert len(matching) == nodes, metric
        assert {a["Threshold"] for a in matching} == {threshold}
        assert {a["TreatMissingData"] for a in matching} == {"ignore"}
        assert len({json.dumps(a["Dimensions"]) for a in matching}) == nodes
    (beat,) = [a for a in found.values() if a.get("MetricName") == m.BEAT_HEARTBEAT_AGE_S]
    assert beat["Threshold"] == settings.beat_heartbeat_max_age_s
    assert beat["TreatMissingData"] == "breaching"
    flower = [a for a in found.values() if a.get("Namespace") == "AWS/ApplicationELB"]
    assert {a["MetricName"] for a in flower} == {
        "HTTPCode_ELB_5XX_Count",
        "HTTPCode_Target_5XX_Count",
    }
    for alarm in flower:
        assert alarm["Threshold"] == settings.flower_5xx_per_5_minutes
        assert alarm["TreatMissingData"] == "notBreaching"
        assert "LoadBalancer" in json.dumps(alarm["Dimensions"])


def test_an_alarm_email_and_a_slack_channel_receive_the_topic(tmp_path: Path) -> None:
    data = load_environment("dev").model_dump()
    data["monitoring"]["alarm_email"] = "ops@example.com"
    data["monitoring"]["slack"] = {"workspace_id": "T0123ABCD", "channel_id": "C0456EFGH"}
    config = EnvironmentConfig.model_validate(data)
    synth = synthesize(config, tmp_path)  # cdk-nag runs here: a finding would raise
    template = monitoring(synth)
    (subscription,) = resources(template, "AWS::SNS::Subscription").values()
    assert subscription["Properties"]["Protocol"] == "email"
    assert subscription["Properties"]["Endpoint"] == "ops@example.com"
    (slack,) = resources(template, "AWS::Chatbot::SlackChannelConfiguration").values()
    (topic_id,) = resources(template, "AWS::SNS::Topic")
    assert slack["Properties"]["SlackWorkspaceId"] == "T0123ABCD"
    assert slack["Properties"]["SlackChannelId"] == "C0456EFGH"
    assert slack["Properties"]["SnsTopicArns"] == [{"Ref": topic_id}]
    with pytest.raises(ValueError, match="workspace_id"):
        EnvironmentConfig.model_validate(
            {**data, "monitoring": {"slack": {"workspace_id": "x", "channel_id": "C0456EFGH"}}}
        )
