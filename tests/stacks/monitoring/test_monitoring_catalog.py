"""Monitoring declared once: each alarm of the catalog becomes CloudWatch alarms and a
Datadog monitor that watch the same metric, with the same threshold, window and gap rule."""

from __future__ import annotations

import re
from typing import Any

import pytest

from config import load_environment
from stacks.monitoring import catalog
from stacks.monitoring import datadog as dd
from stacks.monitoring.catalog import Metrics
from stacks.monitoring.model import Alarm, Comparison, MissingData
from tests.synth import ENVIRONMENTS, Synth

MONITOR_QUERY = re.compile(
    r"^(?P<agg>\w+)\(last_(?P<window>\d+)m\):(?P<terms>.+) (?P<op>[<>]=?) (?P<threshold>[\d.]+)$"
)

OPERATOR = {
    Comparison.ABOVE: "GreaterThanThreshold",
    Comparison.AT_LEAST: "GreaterThanOrEqualToThreshold",
    Comparison.BELOW: "LessThanThreshold",
}


def cloudwatch_alarms(synth: Synth) -> dict[str, dict[str, Any]]:
    """The monitoring stack's alarms, by construct id, as the template holds them."""
    stack = synth.platform.monitoring
    resources = synth.template_json(stack)["Resources"]
    found = {}
    for logical_id, resource in resources.items():
        if resource["Type"] == "AWS::CloudWatch::Alarm":
            (alarm,) = [
                a for a in stack.alarms if stack.resolve(a.alarm_name) == {"Ref": logical_id}
            ]
            found[alarm.node.id] = resource["Properties"]
    assert found, "the template's alarms were not read"
    return found


def test_each_alarm_is_rendered_alike_to_cloudwatch_and_datadog(env_synth: Synth) -> None:
    config = env_synth.config
    rendered = cloudwatch_alarms(env_synth)
    monitors = {monitor.key: monitor for monitor in dd.monitors(config)}
    declared = catalog.alarms(config)
    nodes = 1 + config.redis.replicas
    expected_ids = set()
    for alarm in declared:
        ids = (
            [f"{alarm.construct_id}{node}" for node in range(1, nodes + 1)]
            if alarm.per_node
            else [alarm.construct_id]
        )
        expected_ids |= set(ids)
        monitor = monitors[alarm.key]
        # The condition Datadog evaluates: the alarm's, or its timelier Datadog source's.
        rule = alarm.datadog or alarm
        match = MONITOR_QUERY.match(monitor.query)
        assert match, monitor.query
        assert int(match["window"]) == rule.periods * rule.period_minutes, alarm.key
        assert match["op"] == rule.comparison.value
        assert float(match["threshold"]) == monitor.critical == rule.threshold
        assert monitor.missing is rule.missing is alarm.missing
        # One point per CloudWatch period, of the alarm's statistic.
        assert f", {rule.period_minutes * 60})" in match["terms"], monitor.query
        for construct_id in ids:
            props = rendered[construct_id]
            assert props["Threshold"] == alarm.threshold, construct_id
            assert props["EvaluationPeriods"] == alarm.periods, construct_id
            assert props["ComparisonOperator"] == OPERATOR[alarm.comparison]
            assert props["TreatMissingData"] == alarm.missing.value
            periods = {props.get("Period")} | {
                query["MetricStat"]["Period"]
                for query in props.get("Metrics", [])
                if "MetricStat" in query
            }
            assert periods - {None} == {alarm.period_minutes * 60}, construct_id
    assert set(rendered) == expected_ids, "CloudWatch alarms the catalog does not declare"
    assert set(monitors) == {alarm.key for alarm in declared}


def an_alarm(comparison: Comparison, periods: int, statistic: str = "Maximum") -> Alarm:
    metric = Metrics(load_environment("dev")).platform("queue_waiting", statistic)
    return Alarm(
        key="k",
        construct_id="K",
        title="t",
        description="d",
        metrics=(("m", metric),),
        comparison=comparison,
        threshold=3,
        periods=periods,
        missing=MissingData.NO_NEWS,
    )


@pytest.mark.parametrize(
    ("comparison", "periods", "statistic", "aggregation"),
    [
        # Several periods must all breach: above, the window's least point is above.
        (Comparison.ABOVE, 3, "Maximum", "min"),
        (Comparison.AT_LEAST, 2, "Minimum", "min"),
        (Comparison.BELOW, 3, "Maximum", "max"),
        # One period: the statistic over it.
        (Comparison.ABOVE, 1, "Maximum", "max"),
        (Comparison.ABOVE, 1, "Average", "avg"),
        (Comparison.BELOW, 1, "Sum", "sum"),
    ],
)
def test_a_monitor_breaches_when_the_alarm_does(
    comparison: Comparison, periods: int, statistic: str, aggregation: str
) -> None:
    alarm = an_alarm(comparison, periods, statistic)
    match = MONITOR_QUERY.match(dd.monitor_query(alarm))
    assert match
    assert match["agg"] == aggregation
    assert int(match["window"]) == periods * alarm.period_minutes


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_monitors_on_crawled_metrics_wait_for_the_crawler(env: str) -> None:
    config = load_environment(env)
    from_agent = {
        alarm.key
        for alarm in catalog.alarms(config)
        if alarm.datadog and all(metric.from_agent for _, metric in alarm.datadog.metrics)
    }
    assert from_agent == {"beat-heartbeat"}
    for monitor in dd.monitors(config):
        options = monitor.api_body()["options"]
        if monitor.key in from_agent:
            assert "evaluation_delay" not in options
        else:
            # AWS or autoscaler metrics, which Datadog collects from CloudWatch.
            assert options["evaluation_delay"] == dd.CRAWLER_EVALUATION_DELAY_S
