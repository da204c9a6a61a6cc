"""The monitoring catalog rendered to Datadog: one dashboard and one monitor per alarm.

Pure data (no CDK, no network): the monitoring stack turns it into the
`Datadog::Dashboards::Dashboard` / `Datadog::Monitors::Monitor` registry resources, and
`tools/datadog_push.py` sends the same definitions through Datadog's API.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from config import EnvironmentConfig
from stacks.monitoring import catalog
from stacks.monitoring.model import (
    DATADOG_AGGREGATION,
    Alarm,
    Comparison,
    Graph,
    Metric,
    MissingData,
    Segment,
)

MANAGED_BY_TAG = "managed-by:celery-platform"
# Datadog's AWS integration crawls CloudWatch every few minutes; its guidance for monitors on
# crawled metrics is to evaluate 15 minutes late, so a window is not judged half-filled.
CRAWLER_EVALUATION_DELAY_S = 900
# Datadog's no-data timeframe is at least twice the evaluation window: a shorter one reports
# no data for a series that is only late.
NO_DATA_WINDOWS = 2


@dataclass(frozen=True)
class Monitor:
    """One Datadog monitor, in the API's field names."""

    key: str  # stable identifier within the environment (construct ids, API upserts)
    name: str
    query: str
    message: str
    tags: tuple[str, ...]
    critical: float
    missing: MissingData  # the same decision as the matching CloudWatch alarm
    no_data_minutes: int | None = None  # the no-data window, when a gap is the failure
    evaluation_delay_s: int = 0
    priority: int = 3
    type: str = "query alert"

    def __post_init__(self) -> None:
        if (self.no_data_minutes is not None) != self.notify_no_data:
            raise ValueError(f"monitor {self.key}: no_data_minutes is for IS_FAILURE only")

    @property
    def notify_no_data(self) -> bool:
        return self.missing is MissingData.IS_FAILURE

    def api_body(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "thresholds": {"critical": self.critical},
            "notify_no_data": self.notify_no_data,
            "require_full_window": False,
            "include_tags": True,
        }
        if self.no_data_minutes is not None:
            options["no_data_timeframe"] = self.no_data_minutes
        if self.evaluation_delay_s:
            options["evaluation_delay"] = self.evaluation_delay_s
        return {
            "name": self.name,
            "type": self.type,
            "query": self.query,
            "message": self.message,
            "tags": list(self.tags),
            "priority": self.priority,
            "options": options,
        }

    def cloudformation_properties(self) -> dict[str, Any]:
        """The same monitor as Datadog::Monitors::Monitor properties: the API's fields in
        PascalCase (notify_no_data -> NotifyNoData)."""
        converted: dict[str, Any] = _pascal(self.api_body())
        return converted


def _pascal(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            "".join(part.capitalize() for part in key.split("_")): _pascal(item)
            for key, item in value.items()
        }
    return value


# ---------------------------------------------------------------------------- monitors


def _term(metric: Metric, missing: MissingData) -> str:
    # One point per CloudWatch period, of the alarm's statistic, whatever the resolution
    # Datadog received the metric at (ElastiCache's crawled points are a minute apart).
    aggregation = DATADOG_AGGREGATION[metric.statistic]
    query = f"{metric.datadog_query()}.rollup({aggregation}, {metric.period_minutes * 60})"
    # A count published only when something happens: no data reads as 0, as FILL does in
    # the CloudWatch alarm.
    return f"default_zero({query})" if missing is MissingData.MEANS_ZERO else query


def _time_aggregation(alarm: Alarm) -> str:
    """How the window's per-period points become the one value compared with the threshold,
    as the CloudWatch alarm compares them."""
    if alarm.periods > 1:
        # CloudWatch: every period of the window breaches. Above: the least point is above.
        return "max" if alarm.comparison is Comparison.BELOW else "min"
    # One period: its statistic over the window (a window astride two rollup buckets sums,
    # or takes the extreme of, their parts as CloudWatch does over the period).
    (statistic,) = {metric.statistic for _, metric in alarm.metrics}
    return DATADOG_AGGREGATION[statistic]


def monitor_query(alarm: Alarm) -> str:
    window = alarm.periods * alarm.period_minutes
    terms = " + ".join(_term(metric, alarm.missing) for _, metric in alarm.metrics)
    return (
        f"{_time_aggregation(alarm)}(last_{window}m):{terms} "
        f"{alarm.comparison.value} {alarm.threshold:g}"
    )


def monitors(config: EnvironmentConfig) -> list[Monitor]:
    """One monitor per alarm of the catalog, with the same metric, threshold and gap rule."""
    notify = " ".join(config.datadog.notify)
    tags = (MANAGED_BY_TAG, f"environment:{config.name}", f"project:{config.project}")
    result = []
    for alarm in catalog.alarms(config):
        rule = alarm.datadog or alarm
        window = rule.periods * rule.period_minutes
        description = alarm.description.replace("{node}", "{{cacheclusterid.name}}")
        crawled = not all(metric.from_agent for _, metric in rule.metrics)
        result.append(
            Monitor(
                key=alarm.key,
                name=f"[{config.name}] {alarm.title}",
                query=monitor_query(rule),
                message=f"{description}.\n\n{notify}".strip(),
                tags=tags,
                critical=rule.threshold,
                missing=rule.missing,
                no_data_minutes=NO_DATA_WINDOWS * window
                if rule.missing is MissingData.IS_FAILURE
                else None,
                evaluation_delay_s=CRAWLER_EVALUATION_DELAY_S if crawled else 0,
                priority=alarm.priority,
            )
        )
    return result


# ---------------------------------------------------------------------------- dashboard


def _timeseries(graph: Graph) -> dict[str, Any]:
    display = "bars" if graph.bars else "line"
    requests: list[dict[str, Any]] = [
        {"q": metric.datadog_query(), "display_type": display} for metric in graph.left
    ]
    requests += [
        {"q": metric.datadog_query(), "display_type": display, "on_right_yaxis": True}
        for metric in graph.right
    ]
    definition: dict[str, Any] = {
        "type": "timeseries",
        "title": graph.title,
        "show_legend": True,
        "requests": requests,
    }
    if graph.markers:
        definition["markers"] = [
            {
                "value": f"y = {marker.value:g}",
                "display_type": "error dashed",
                **({"label": marker.label} if marker.label else {}),
            }
            for marker in graph.markers
        ]
    if graph.percent:
        definition["yaxis"] = {"min": "0", "max": "100"}
    return {"definition": definition}


def _group(segment: Segment) -> dict[str, Any]:
    return {
        "definition": {
            "type": "group",
            "title": segment.title,
            "layout_type": "ordered",
            "widgets": [_timeseries(graph) for row in segment.rows for graph in row],
        }
    }


def dashboard(config: EnvironmentConfig) -> dict[str, Any]:
    """The dashboard body of Datadog's dashboards API (and of the registry type)."""
    # With Datadog on, the agent beside every worker receives the task metrics.
    segments = catalog.segments(config, task_metrics=True)
    monitors_widget = {
        "definition": {
            "type": "manage_status",
            "title": "Monitors",
            "query": f"tag:{MANAGED_BY_TAG} tag:environment:{config.name}",
            "summary_type": "monitors",
            "display_format": "countsAndList",
        }
    }
    return {
        "title": f"Celery platform {config.name}",
        "description": (
            "Generated from the queue catalog by the celery platform's stacks; "
            "changes made here are overwritten by the next deploy or push."
        ),
        "layout_type": "ordered",
        "widgets": [*(_group(segment) for segment in segments), monitors_widget],
    }
