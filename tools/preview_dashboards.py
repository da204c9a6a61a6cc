"""`make preview-dashboards ENV=<env>`: the environment's CloudWatch dashboard and Datadog
dashboard as one local HTML page, so a reviewer sees the layout without an AWS account.

The CloudWatch body and alarms are read from the synthesized monitoring template (CDK tokens
shown as `${LogicalId}`), the Datadog dashboard and monitors from the same generator the
stacks and `make datadog-push` use. The page holds its data as JSON and draws it with a few
lines of JavaScript: no network, no external file.
"""

from __future__ import annotations

import argparse
import html
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from config import CONFIG_DIR, ConfigError, EnvironmentConfig, load_environment
from stacks import datadog_definitions as dd

ROOT = Path(__file__).resolve().parent.parent


def resolve(value: Any) -> Any:
    """A template value with CloudFormation functions turned into readable text."""
    if isinstance(value, dict) and len(value) == 1:
        (function, argument), *_ = value.items()
        if function == "Ref":
            return f"${{{argument}}}"
        if function == "Fn::GetAtt":
            return "${" + ".".join(map(str, argument)) + "}"
        if function == "Fn::Join":
            separator, parts = argument
            return separator.join(str(resolve(part)) for part in parts)
        if function == "Fn::ImportValue":
            return f"${{import {resolve(argument)}}}"
        if function == "Fn::Select":
            index, items = argument
            return f"${{{resolve(items)}[{index}]}}"
        if function == "Fn::Split":
            return f"${{split {resolve(argument[1])}}}"
    if isinstance(value, dict):
        return {key: resolve(item) for key, item in value.items()}
    if isinstance(value, list):
        return [resolve(item) for item in value]
    return value


def _metric_keys(alarm: dict[str, Any]) -> list[tuple[str, str, tuple[str, ...]]]:
    """(namespace, name, dimension values) of every metric an alarm watches."""
    keys = []
    stats = [alarm] if "MetricName" in alarm else []
    stats += [q["MetricStat"]["Metric"] for q in alarm.get("Metrics", []) if "MetricStat" in q]
    for metric in stats:
        dims = tuple(sorted(str(d["Value"]) for d in metric.get("Dimensions", [])))
        keys.append((metric["Namespace"], metric["MetricName"], dims))
    return keys


def _widget_keys(widget: dict[str, Any]) -> list[tuple[str, str, tuple[str, ...]]]:
    keys = []
    for line in widget.get("properties", {}).get("metrics", []):
        fields = [item for item in line if not isinstance(item, dict)]
        if len(fields) >= 2 and fields[0] != "...":
            namespace, name, *pairs = fields
            dims = tuple(sorted(str(v) for v in pairs[1::2]))
            keys.append((str(namespace), str(name), dims))
    return keys


def cloudwatch_view(template: dict[str, Any]) -> dict[str, Any]:
    """The dashboard's widgets, each with its metrics and the alarms on them."""
    resources = template["Resources"]
    (board,) = [r for r in resources.values() if r["Type"] == "AWS::CloudWatch::Dashboard"]
    body = json.loads(resolve(board["Properties"]["DashboardBody"]))
    alarms = []
    for logical_id, resource in sorted(resources.items()):
        if resource["Type"] != "AWS::CloudWatch::Alarm":
            continue
        props = resolve(resource["Properties"])
        alarms.append(
            {
                "id": logical_id,
                "description": props.get("AlarmDescription", ""),
                "threshold": props.get("Threshold"),
                "comparison": props.get("ComparisonOperator"),
                "missing": props.get("TreatMissingData"),
                "keys": _metric_keys(props),
            }
        )
    widgets = []
    for index, widget in enumerate(body["widgets"]):
        props = widget.get("properties", {})
        keys = _widget_keys(widget)
        title = props.get("title") or props.get("markdown", "").lstrip("# ") or widget["type"]
        on_widget = [a for a in alarms if set(map(tuple, a["keys"])) & set(keys)]
        if widget["type"] == "alarm":
            ids = set(map(str, props.get("alarms", [])))
            on_widget = [a for a in alarms if any(a["id"] in arn for arn in ids)]
        widgets.append(
            {
                "id": f"cw-{index}",
                "type": widget["type"],
                "x": widget.get("x", 0),
                "y": widget.get("y", 0),
                "width": widget.get("width", 6),
                "height": widget.get("height", 6),
                "title": title,
                "metrics": [f"{ns} {name} {' '.join(dims)}".strip() for ns, name, dims in keys],
                "alarms": [a["id"] for a in on_widget],
            }
        )
    return {
        "widgets": widgets,
        "alarms": [{k: v for k, v in a.items() if k != "keys"} for a in alarms],
    }


def datadog_view(config: EnvironmentConfig) -> dict[str, Any]:
    board = dd.dashboard(config)
    groups = []
    counter = 0
    for group in board["widgets"]:
        definition = group["definition"]
        widgets = []
        for widget in definition.get("widgets", []):
            inner = widget["definition"]
            counter += 1
            widgets.append(
                {
                    "id": f"dd-{counter}",
                    "type": inner["type"],
                    "title": inner.get("title", inner["type"]),
                    "queries": [r["q"] for r in inner.get("requests", [])]
                    + ([inner["query"]] if "query" in inner else []),
                }
            )
        groups.append({"title": definition["title"], "widgets": widgets})
    monitors = [
        {"name": m.name, "query": m.query, "no_data": m.notify_no_data} for m in dd.monitors(config)
    ]
    return {"title": board["title"], "groups": groups, "monitors": monitors}


# The page: its data as JSON in a script element, drawn by a few lines of JavaScript.
PAGE = (Path(__file__).resolve().parent / "dashboards_preview.html").read_text()


def render(
    config: EnvironmentConfig, monitoring_template: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    """The page, and the data it draws (for tests to compare with what the browser shows)."""
    data = {"cloudwatch": cloudwatch_view(monitoring_template), "datadog": datadog_view(config)}
    # "</" cannot end the script element early once escaped.
    payload = json.dumps(data, sort_keys=True).replace("</", "<\\/")
    title = html.escape(f"Celery platform {config.name}: dashboards preview")
    return PAGE.replace("__TITLE__", title).replace("__DATA__", payload), data


def synthesize_monitoring(config: EnvironmentConfig) -> dict[str, Any]:
    from aws_cdk import App

    from stacks.platform import build_platform

    context = json.loads((ROOT / "cdk.json").read_text())["context"]
    with tempfile.TemporaryDirectory() as outdir:
        app = App(outdir=outdir, context=context)
        platform = build_platform(app, config)
        assembly = app.synth()
        template: dict[str, Any] = assembly.get_stack_by_name(
            platform.monitoring.stack_name
        ).template
    return template


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--config-dir", type=Path, default=CONFIG_DIR, help="the app's config")
    parser.add_argument("--env", default="dev")
    parser.add_argument("--out", type=Path, help="default: cdk.out/dashboards-<env>.html")
    args = parser.parse_args(argv)
    try:
        config = load_environment(args.env, args.config_dir)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2
    page, data = render(config, synthesize_monitoring(config))
    out = args.out or ROOT / "cdk.out" / f"dashboards-{config.name}.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    widgets = len(data["cloudwatch"]["widgets"])
    dd_widgets = sum(len(g["widgets"]) for g in data["datadog"]["groups"])
    print(f"{out}: {widgets} CloudWatch widgets, {dd_widgets} Datadog widgets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
