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
    charted = {
        line[1]
        for widget in json.loads(text)["widgets"]
        for line in widget["properties"].get("metrics", [])
        if line[0] == m.NAMESPACE
    }
    assert charted == set(m.ALL), "every emitted metric has a widget, and nothing else"
