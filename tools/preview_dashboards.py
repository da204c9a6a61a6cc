"""`make preview-dashboards ENV=<env>`: the environment's dashboards as one local HTML page,
so a reviewer sees them without an AWS account.

The page draws the monitoring catalog (stacks/monitoring/catalog.py), the declarations the
monitoring stack renders to CloudWatch and Datadog: each part's graphs as charts, every line
with its label, statistic, metric and dimensions, the thresholds, and the alarms on it; then
every alarm with its condition and missing-data rule. Names CloudFormation generates at
deploy (the broker's node ids, the cluster) are shown as `<what they name>`. The charts
draw sample data, marked as such: their shape, not measurements. The Datadog dashboard and
monitors are shown only where the environment turns Datadog on. The page holds its data as
JSON and draws it with a few lines of JavaScript: no network, no external file.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import random
import sys
from pathlib import Path
from typing import Any

from config import CONFIG_DIR, ConfigError, EnvironmentConfig, load_environment
from config.services import ecs_service_name, worker
from stacks.monitoring import catalog
from stacks.monitoring import datadog as dd
from stacks.monitoring.model import (
    AUTOSCALER_FUNCTION,
    FLOWER_LOAD_BALANCER,
    Graph,
    Metric,
    Resource,
)

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_POINTS = 36  # three hours of five-minute periods
PAGE = (Path(__file__).resolve().parent / "dashboards_preview.html").read_text()


class Names:
    """Readable dimension values of one environment's resources."""

    def __init__(self, config: EnvironmentConfig) -> None:
        self.config = config

    def dimensions(self, resource: Resource) -> list[dict[str, str]]:
        """One mapping per series, as the constructs give them to CloudWatch."""
        if resource.per_node:
            nodes = resource.nodes(self.config.redis.replicas)
            return [{"CacheClusterId": f"<broker>-{node:03d}"} for node in nodes]
        if resource == AUTOSCALER_FUNCTION:
            return [{"FunctionName": "<autoscaler function>"}]
        if resource == FLOWER_LOAD_BALANCER:
            return [{"LoadBalancer": "<Flower load balancer>"}]
        service = ecs_service_name(self.config, worker(resource.key))
        return [{"ClusterName": "<cluster>", "ServiceName": service}]

    def series(self, metric: Metric) -> list[dict[str, str]]:
        if metric.resource is None:
            return [dict(metric.dimensions)]
        return [dict(metric.dimensions) | d for d in self.dimensions(metric.resource)]


def sample(metric: Metric, seed: str, graph: Graph) -> list[float]:
    """A plausible series for the metric's kind (seeded: the same page every time)."""
    rng = random.Random(seed)
    levels = [marker.value for marker in graph.markers if marker.value > 0]
    top = 80.0 if graph.percent else (min(levels) if levels else 50.0)
    values = []
    for point in range(SAMPLE_POINTS):
        wave = 0.5 + 0.4 * math.sin(point / 5 + rng.random())
        if metric.statistic == "Sum":
            values.append(float(rng.randint(0, 4) if rng.random() < wave else 0))
        else:
            values.append(round(top * wave * rng.uniform(0.6, 1.0), 1))
    return values


def _series_key(metric: Metric) -> tuple[object, ...]:
    """What makes a metric the same series, whatever its statistic or period."""
    return (metric.namespace, metric.name, metric.dimensions, metric.resource)


def cloudwatch_view(config: EnvironmentConfig) -> dict[str, Any]:
    names = Names(config)
    segments = catalog.segments(config, task_metrics=config.task_metrics_in_cloudwatch)
    alarms = [alarm for segment in segments for alarm in segment.alarms]
    sections, counter = [], 0
    for segment in segments:
        widgets = []
        for graph in (graph for row in segment.rows for graph in row):
            counter += 1
            lines = []
            for axis, metrics in (("left", graph.left), ("right", graph.right)):
                for metric in metrics:
                    first = metric.resource.first_node if metric.resource else 1
                    for node, dims in enumerate(names.series(metric), start=first):
                        label = metric.line_label(node) or metric.name
                        lines.append(
                            {
                                "label": label,
                                "stat": metric.statistic,
                                "metric": f"{metric.namespace} {metric.name}",
                                "dimensions": " ".join(f"{k}={v}" for k, v in dims.items()),
                                "period_minutes": metric.period_minutes,
                                "axis": axis,
                                "values": sample(metric, f"{graph.title}/{label}/{axis}", graph),
                            }
                        )
            charted = {_series_key(metric) for metric in graph.left + graph.right}
            on_graph = [
                alarm.cloudwatch_id(node)
                for alarm in alarms
                if charted & {_series_key(metric) for _, metric in alarm.metrics}
                for node in alarm.nodes(config.redis.replicas)
            ]
            widgets.append(
                {
                    "id": f"cw-{counter}",
                    "title": graph.title,
                    "width": graph.width,
                    "bars": graph.bars,
                    "percent": graph.percent,
                    "markers": [{"value": m.value, "label": m.label or ""} for m in graph.markers],
                    "lines": lines,
                    "alarms": on_graph,
                }
            )
        sections.append({"title": segment.title, "widgets": widgets})
    rendered = [
        {
            "name": alarm.cloudwatch_id(node),
            "title": alarm.title,
            "description": alarm.text(node),
            "condition": (
                f"{' + '.join(f'{m.statistic} of {m.name}' for _, m in alarm.metrics)} "
                f"{alarm.comparison.value} {alarm.threshold:g} for {alarm.periods} x "
                f"{alarm.period_minutes} min"
            ),
            "missing": alarm.missing.value,
        }
        for alarm in alarms
        for node in alarm.nodes(config.redis.replicas)
    ]
    return {"sections": sections, "alarms": rendered}


def datadog_view(config: EnvironmentConfig) -> dict[str, Any] | None:
    """Datadog's dashboard and monitors, where the environment turns Datadog on."""
    if not config.datadog.enabled:
        return None
    board = dd.dashboard(config)
    groups, counter = [], 0
    for group in board["widgets"]:
        definition = group["definition"]
        widgets = []
        for widget in definition.get("widgets", [definition]):
            inner = widget.get("definition", widget)
            counter += 1
            widgets.append(
                {
                    "id": f"dd-{counter}",
                    "title": inner.get("title", inner["type"]),
                    "queries": [r["q"] for r in inner.get("requests", [])]
                    + ([inner["query"]] if "query" in inner else []),
                }
            )
        groups.append({"title": definition.get("title", ""), "widgets": widgets})
    monitors = [
        {"name": m.name, "query": m.query, "no_data": m.notify_no_data} for m in dd.monitors(config)
    ]
    return {"title": board["title"], "groups": groups, "monitors": monitors}


def render(config: EnvironmentConfig) -> tuple[str, dict[str, Any]]:
    """The page, and the data it draws (for tests to compare with what the browser shows)."""
    data = {"cloudwatch": cloudwatch_view(config), "datadog": datadog_view(config)}
    # "</" cannot end the script element early once escaped.
    payload = json.dumps(data, sort_keys=True).replace("</", "<\\/")
    title = html.escape(f"Celery platform {config.name}: dashboards preview")
    return PAGE.replace("__TITLE__", title).replace("__DATA__", payload), data


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
    page, data = render(config)
    out = args.out or ROOT / "cdk.out" / f"dashboards-{config.name}.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page)
    widgets = sum(len(section["widgets"]) for section in data["cloudwatch"]["sections"])
    datadog = data["datadog"]
    dd_widgets = sum(len(g["widgets"]) for g in datadog["groups"]) if datadog else 0
    print(
        f"{out}: {widgets} CloudWatch graphs, {len(data['cloudwatch']['alarms'])} alarms, "
        + (f"{dd_widgets} Datadog widgets" if datadog else "Datadog off")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
