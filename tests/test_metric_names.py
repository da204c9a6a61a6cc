"""The dashboard's and alarms' metric names are exactly those the autoscaler emits.

The Lambda image cannot import the stacks' vocabulary, so the two are compared here: read
from the handler's source, and from the synthesized monitoring template.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

from lambdas.autoscaler import handler
from stacks import metric_names as m
from tests.synth import Synth

HANDLER = Path(handler.__file__)


def emitted_by_handler() -> set[str]:
    """Names passed to `_metric(settings, NAME, ...)`, `add_metric(name=NAME)`, and the keys
    of the `values` table (name -> value) `_group_metrics` loops over."""
    tree = ast.parse(HANDLER.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            named = isinstance(func, ast.Name) and func.id == "_metric" and len(node.args) > 1
            if named and isinstance(node.args[1], ast.Constant):
                names.add(str(node.args[1].value))
            if isinstance(func, ast.Attribute) and func.attr == "add_metric":
                for keyword in node.keywords:
                    if keyword.arg == "name" and isinstance(keyword.value, ast.Constant):
                        names.add(str(keyword.value.value))
        if isinstance(node, ast.FunctionDef) and node.name == "_group_metrics":
            for inner in ast.walk(node):
                if not (isinstance(inner, ast.Assign) and isinstance(inner.value, ast.Dict)):
                    continue
                if any(isinstance(t, ast.Name) and t.id == "values" for t in inner.targets):
                    keys = inner.value.keys
                    names |= {str(k.value) for k in keys if isinstance(k, ast.Constant)}
    return names


def test_the_vocabulary_is_what_the_handler_emits() -> None:
    emitted = emitted_by_handler()
    assert len(emitted) > 10, "the source reader found too little; has the handler changed?"
    assert emitted == set(m.ALL), (
        f"emitted, not in stacks/metric_names.py: {sorted(emitted - m.ALL)}; "
        f"named, never emitted: {sorted(m.ALL - emitted)}"
    )
    assert handler.NAMESPACE == m.NAMESPACE
    assert handler.SERVICE == m.SERVICE


def referenced(value: Any) -> set[str]:
    """CeleryPlatform metric names anywhere in a template fragment."""
    found: set[str] = set()
    if isinstance(value, dict):
        if value.get("Namespace") == m.NAMESPACE and isinstance(value.get("MetricName"), str):
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
    assert in_alarms <= m.ALL
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

    assert charted(m.NAMESPACE) == set(m.ALL), "every emitted metric has a widget, nothing else"
    # Datadog is off in dev, so the workers' task metrics arrive as EMF and are charted.
    assert synth.config.task_metrics_in_cloudwatch
    assert charted(m.TASK_NAMESPACE) == set(m.TASK_METRICS)


def emitted_by_worker() -> set[str]:
    """`names.X` passed to a metrics recorder's `count(...)`/`distribution(...)` anywhere in
    the image's code, resolved through the names module."""
    package = Path(str(m.worker.__file__)).parent
    found: set[str] = set()
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            if node.func.attr not in ("count", "distribution") or not node.args:
                continue
            first = node.args[0]
            named = isinstance(first, ast.Attribute) and isinstance(first.value, ast.Name)
            if named and first.value.id == "names":  # type: ignore[attr-defined]
                found.add(getattr(m.worker, first.attr))  # type: ignore[attr-defined]
    return found


def test_the_worker_emits_exactly_the_named_task_metrics() -> None:
    emitted = emitted_by_worker()
    assert emitted == set(m.TASK_METRICS), (
        f"emitted, without a unit in names.py: {sorted(emitted - m.TASK_METRICS)}; "
        f"named, never emitted: {sorted(m.TASK_METRICS - emitted)}"
    )
