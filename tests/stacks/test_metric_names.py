"""The dashboard and the alarms chart exactly the metrics the wire contract names.

The autoscaler and the workers emit through the same names (celery_service.contract); their
own tests check what they emit from a real run.
"""

from __future__ import annotations

import json
from typing import Any

from celery_service import contract as m
from tests.synth import Synth


def referenced(value: Any) -> set[str]:
    """CeleryPlatform metric names anywhere in a template fragment."""
    found: set[str] = set()
    if isinstance(value, dict):
        if value.get("Namespace") == m.AUTOSCALER_NAMESPACE and isinstance(
            value.get("MetricName"), str
        ):
            found.add(value["MetricName"])
        for item in value.values():
            found |= referenced(item)
    elif isinstance(value, list):
        for item in value:
            found |= referenced(item)
    return found


def test_alarms_and_dashboard_name_only_emitted_metrics(synth_env: Any) -> None:
    synth: Synth = synth_env("dev")
    template = synth.template_json(synth.platform.monitoring)
    alarms = [r for r in template["Resources"].values() if r["Type"] == "AWS::CloudWatch::Alarm"]
    in_alarms = referenced(alarms)
    assert in_alarms
    assert in_alarms <= m.AUTOSCALER_METRICS
    (board,) = [
        r for r in template["Resources"].values() if r["Type"] == "AWS::CloudWatch::Dashboard"
    ]
    body = board["Properties"]["DashboardBody"]
    separator, parts = body["Fn::Join"]
    text = separator.join(p if isinstance(p, str) else "TOKEN" for p in parts)
    widgets = json.loads(text)["widgets"]

    def charted(namespace: str) -> set[str]:
        return {
            line[1]
            for widget in widgets
            for line in widget["properties"].get("metrics", [])
            if line[0] == namespace
        }

    assert charted(m.AUTOSCALER_NAMESPACE) == set(m.AUTOSCALER_METRICS), (
        "every emitted metric has a widget, nothing else"
    )
    # Datadog is off in dev, so the workers' task metrics arrive as EMF and are charted.
    assert synth.config.task_metrics_in_cloudwatch
    assert charted(m.TASK_NAMESPACE) == set(m.TASK_METRICS)
