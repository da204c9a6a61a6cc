"""The Datadog dashboard and monitors of one environment, generated from its config.

Pure data (no CDK, no network): the monitoring stack turns it into the
`Datadog::Dashboards::Dashboard` / `Datadog::Monitors::Monitor` registry resources, and
`tools/datadog_push.py` sends the same definitions through Datadog's API.

Metric sources, named once in the wire contract (celery_service/contract.py):

* the workers' and beat's DogStatsD metrics (`celery.task.*`, tagged `env`, `service`,
  `queue`, `task` by the image);
* the autoscaler's CeleryPlatform metrics (queue depth, tasks, estimated wait, runs, errors,
  beat heartbeat age), which Datadog's AWS integration collects from CloudWatch when the
  integration's custom-metric collection includes the CeleryPlatform namespace; their
  dimensions become tags (`environment`, `queue`, `worker_group`);
* AWS integration metrics of ElastiCache, ECS and the ALB, selected by the stacks' own
  resource tags (`project`, `environment`) or the services' fixed names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery_service import contract as m
from config import EnvironmentConfig
from config.services import ecs_service_name, worker
from stacks.missing_data import MissingData

MANAGED_BY_TAG = "managed-by:celery-platform"


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


class _Filters:
    """Tag filters of one environment for each metric source."""

    def __init__(self, config: EnvironmentConfig) -> None:
        self.config = config
        self.statsd = f"env:{config.name}"  # DogStatsD: the image's unified `env` tag
        self.platform = f"environment:{config.name}"  # CeleryPlatform dimensions
        self.aws = f"project:{config.project},environment:{config.name}"  # resource tags

    def autoscaler_function(self) -> str:
        # The autoscaler stack tags its function with the service name; Datadog's AWS
        # integration carries the tag onto aws.lambda.* metrics.
        return f"{self.aws},service:{m.AUTOSCALER_SERVICE}"

    def worker_service(self, group: str) -> str:
        return f"servicename:{ecs_service_name(self.config, worker(group))}"


def _platform(metric: str, scope: str, aggregation: str = "max") -> str:
    return f"{aggregation}:{m.datadog_name(metric)}{{{scope}}}"


def _zero(query: str) -> str:
    """A count that is published only when something happens: no data reads as 0, as FILL
    does in the CloudWatch alarm."""
    return f"default_zero({query})"


def _timeseries(
    title: str, queries: list[str], display: str = "line", markers: list[float] | None = None
) -> dict[str, Any]:
    definition: dict[str, Any] = {
        "type": "timeseries",
        "title": title,
        "show_legend": True,
        "requests": [{"q": query, "display_type": display} for query in queries],
    }
    if markers:
        definition["markers"] = [
            {"value": f"y = {value:g}", "display_type": "error dashed"} for value in markers
        ]
    return {"definition": definition}


def _group(title: str, widgets: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "definition": {
            "type": "group",
            "title": title,
            "layout_type": "ordered",
            "widgets": widgets,
        }
    }


def dashboard(config: EnvironmentConfig) -> dict[str, Any]:
    """The dashboard body of Datadog's dashboards API (and of the registry type)."""
    f = _Filters(config)
    w = m
    queues: list[dict[str, Any]] = []
    for queue in sorted(config.queues):
        statsd_scope = f"{f.statsd},queue:{queue}"
        platform_scope = f"{f.platform},queue:{queue}"
        queues += [
            _timeseries(
                f"Queue {queue}: waiting, in flight, dead letters",
                [
                    _platform(m.QUEUE_WAITING, platform_scope),
                    _platform(m.QUEUE_IN_FLIGHT, platform_scope),
                    _platform(m.DLQ_DEPTH, platform_scope),
                ],
            ),
            _timeseries(
                f"Queue {queue}: tasks succeeded, failed, retried, dead-lettered, deferred",
                [
                    f"sum:{w.TASK_SUCCEEDED}{{{statsd_scope}}}.as_count()",
                    f"sum:{w.TASK_FAILED}{{{statsd_scope}}}.as_count()",
                    f"sum:{w.TASK_RETRIED}{{{statsd_scope}}}.as_count()",
                    f"sum:{w.DLQ_WRITTEN}{{{statsd_scope}}}.as_count()",
                    f"sum:{w.TASK_ETA_DEFERRED}{{{statsd_scope}}}.as_count()",
                ],
                display="bars",
            ),
            _timeseries(
                f"Queue {queue}: run time p50 / p95 / p99 (ms)",
                [f"{p}:{w.TASK_RUNTIME_MS}{{{statsd_scope}}}" for p in ("p50", "p95", "p99")],
            ),
            _timeseries(
                f"Queue {queue}: wait before start p50 / p95 / p99 (ms)",
                [f"{p}:{w.TASK_QUEUE_WAIT_MS}{{{statsd_scope}}}" for p in ("p50", "p95", "p99")],
            ),
        ]
    groups: list[dict[str, Any]] = []
    for name, group in sorted(config.worker_groups.items()):
        scope = f"{f.platform},worker_group:{name}"
        service = f"{f.aws},{f.worker_service(name)}"
        groups += [
            _timeseries(
                f"Group {name}: desired, running, pending tasks",
                [
                    _platform(m.DESIRED_TASKS, scope),
                    _platform(m.RUNNING_TASKS, scope),
                    _platform(m.PENDING_TASKS, scope),
                    _platform(m.SCALING_CHANGES, scope, "sum"),
                ],
                markers=[group.max_tasks],
            ),
            _timeseries(
                f"Group {name}: waiting and in flight",
                [_platform(m.GROUP_WAITING, scope), _platform(m.GROUP_IN_FLIGHT, scope)],
            ),
            _timeseries(
                f"Group {name}: estimated wait (s)",
                [_platform(m.GROUP_ESTIMATED_WAIT_S, scope)],
                markers=[group.target_wait_s],
            ),
            _timeseries(
                f"Group {name}: ECS CPU and memory (%)",
                [
                    f"avg:aws.ecs.service.cpuutilization{{{service}}}",
                    f"avg:aws.ecs.service.memory_utilization{{{service}}}",
                ],
            ),
        ]
    settings = config.monitoring

    def node(metric: str, aggregation: str = "max", suffix: str = "") -> list[str]:
        return [f"{aggregation}:aws.elasticache.{metric}{{{f.aws}}} by {{cacheclusterid}}{suffix}"]

    redis = [
        _timeseries("Redis host CPU (%)", node("cpuutilization")),
        _timeseries(
            "Redis engine CPU (%)",
            node("engine_cpuutilization"),
            markers=[settings.redis_engine_cpu_percent],
        ),
        _timeseries(
            "Redis memory used (%)",
            node("database_memory_usage_percentage"),
            markers=[settings.redis_memory_percent],
        ),
        _timeseries("Redis evictions", node("evictions", "sum", ".as_count()"), display="bars"),
        _timeseries("Redis connections", node("curr_connections")),
        _timeseries("Redis replication lag (s)", node("replication_lag")),
    ]
    operations = [
        _timeseries(
            "Autoscaler runs, skipped runs and errors",
            [
                _platform(m.RUNS, f.platform, "sum"),
                _platform(m.RUNS_SKIPPED, f.platform, "sum"),
                _platform(m.AUTOSCALER_ERRORS, f.platform, "sum"),
            ],
            display="bars",
        ),
        _timeseries("Autoscaler run duration (ms)", [_platform(m.RUN_DURATION, f.platform)]),
        _timeseries(
            "Beat: heartbeat age (s) and ticks",
            [
                _platform(m.BEAT_HEARTBEAT_AGE_S, f.platform),
                f"sum:{w.BEAT_HEARTBEAT}{{{f.statsd}}}.as_count()",
            ],
            markers=[settings.beat_heartbeat_max_age_s],
        ),
        _timeseries(
            "Flower load balancer 5xx",
            [
                f"sum:aws.applicationelb.httpcode_elb_5xx{{{f.aws}}}.as_count()",
                f"sum:aws.applicationelb.httpcode_target_5xx{{{f.aws}}}.as_count()",
            ],
            display="bars",
        ),
        {
            "definition": {
                "type": "manage_status",
                "title": "Monitors",
                "query": f"tag:{MANAGED_BY_TAG} tag:environment:{config.name}",
                "summary_type": "monitors",
                "display_format": "countsAndList",
            }
        },
    ]
    return {
        "title": f"Celery platform {config.name}",
        "description": (
            "Generated from the queue catalog by the celery platform's stacks; "
            "changes made here are overwritten by the next deploy or push."
        ),
        "layout_type": "ordered",
        "widgets": [
            _group("Queues", queues),
            _group("Worker groups", groups),
            _group("Redis broker", redis),
            _group("Autoscaler, beat and Flower", operations),
        ],
    }


def monitors(config: EnvironmentConfig) -> list[Monitor]:
    """The monitors matching the CloudWatch alarms, with the same thresholds."""
    f = _Filters(config)
    settings = config.monitoring
    minutes = config.autoscaler.schedule_minutes
    notify = " ".join(config.datadog.notify)
    tags = (MANAGED_BY_TAG, f"environment:{config.name}", f"project:{config.project}")
    env = config.name
    result: list[Monitor] = []

    def add(key: str, name: str, query: str, text: str, critical: float, **kw: Any) -> None:
        message = f"{text}\n\n{notify}".strip()
        result.append(
            Monitor(
                key=key,
                name=f"[{env}] {name}",
                query=query,
                message=message,
                tags=tags,
                critical=critical,
                **kw,
            )
        )

    # The autoscaler publishes once per run: windows span two runs so one late run is no gap.
    window = f"last_{2 * minutes}m"
    for queue in sorted(config.queues):
        add(
            f"dlq-{queue}",
            f"Queue {queue} has dead letters",
            f"max({window}):max:{m.datadog_name(m.DLQ_DEPTH)}{{{f.platform},queue:{queue}}} > 0",
            f"Queue {queue} has dead letters to inspect or replay "
            "(`python -m celery_service dlq list`).",
            0,
            missing=MissingData.NO_NEWS,
        )
    for name, group in sorted(config.worker_groups.items()):
        scope = f"{f.platform},worker_group:{name}"
        add(
            f"backlog-{name}",
            f"Worker group {name}: backlog older than its target",
            f"min({window}):max:{m.datadog_name(m.GROUP_ESTIMATED_WAIT_S)}{{{scope}}} "
            f"> {group.target_wait_s}",
            f"Worker group {name}'s backlog takes longer than its target wait "
            f"({group.target_wait_s} s) to drain, two runs in a row.",
            group.target_wait_s,
            missing=MissingData.NO_NEWS,
        )
        add(
            f"pinned-{name}",
            f"Worker group {name}: pinned at max_tasks",
            f"min(last_{settings.max_tasks_alarm_minutes}m):"
            f"min:{m.datadog_name(m.DESIRED_TASKS)}{{{scope}}} >= {group.max_tasks}",
            f"Worker group {name} has wanted its max_tasks ({group.max_tasks}) for "
            f"{settings.max_tasks_alarm_minutes} minutes: raise max_tasks or look at the work.",
            group.max_tasks,
            missing=MissingData.NO_NEWS,
        )
    by_node = f"{{{f.aws}}} by {{cacheclusterid}}"
    add(
        "redis-memory",
        "Redis memory high",
        f"max(last_10m):max:aws.elasticache.database_memory_usage_percentage{by_node} "
        f"> {settings.redis_memory_percent}",
        "A Redis node uses more than the configured share of its memory; at 100 % "
        "publishing fails (the broker never evicts).",
        settings.redis_memory_percent,
        missing=MissingData.NO_NEWS,
    )
    add(
        "redis-evictions",
        "Redis evicted keys",
        f"sum(last_10m):sum:aws.elasticache.evictions{by_node}.as_count() > 0",
        "A Redis node evicted keys: queued work may be lost.",
        0,
        missing=MissingData.NO_NEWS,
        priority=1,
    )
    add(
        "redis-engine-cpu",
        "Redis engine CPU high",
        f"avg(last_15m):max:aws.elasticache.engine_cpuutilization{by_node} "
        f"> {settings.redis_engine_cpu_percent}",
        "A Redis node's engine thread is busy beyond the configured share.",
        settings.redis_engine_cpu_percent,
        missing=MissingData.NO_NEWS,
    )
    # A run that crashes counts only in Lambda's errors: the autoscaler reports nothing.
    crashed = _zero(f"sum:aws.lambda.errors{{{f.autoscaler_function()}}}.as_count()")
    reported = _zero(f"sum:{m.datadog_name(m.AUTOSCALER_ERRORS)}{{{f.platform}}}.as_count()")
    add(
        "autoscaler-errors",
        "Autoscaler errors",
        f"sum(last_{minutes}m):{crashed} + {reported} > 0",
        "The Celery autoscaler failed or reported an error (Redis, ECS or a worker group); "
        "see its logs.",
        0,
        missing=MissingData.MEANS_ZERO,
    )
    add(
        "autoscaler-not-running",
        "Autoscaler not running",
        f"sum(last_{3 * minutes}m):sum:{m.datadog_name(m.RUNS)}{{{f.platform}}}.as_count() < 1",
        "The Celery autoscaler has not run for three intervals: worker counts are frozen.",
        1,
        missing=MissingData.IS_FAILURE,
        no_data_minutes=3 * minutes,
        priority=2,
    )
    heartbeat_minutes = max(2, -(-settings.beat_heartbeat_max_age_s // 60))
    add(
        "beat-heartbeat",
        "Beat heartbeat missing",
        f"sum(last_{heartbeat_minutes}m):sum:{m.BEAT_HEARTBEAT}{{{f.statsd}}}.as_count() < 1",
        f"Celery beat has not ticked for more than {settings.beat_heartbeat_max_age_s} s: "
        "schedules are skipped.",
        1,
        missing=MissingData.IS_FAILURE,
        no_data_minutes=heartbeat_minutes,
        priority=2,
    )
    for key, metric, source in (
        ("flower-elb-5xx", "httpcode_elb_5xx", "the load balancer"),
        ("flower-target-5xx", "httpcode_target_5xx", "Flower"),
    ):
        responses = _zero(f"sum:aws.applicationelb.{metric}{{{f.aws}}}.as_count()")
        add(
            key,
            f"Flower 5xx from {source}",
            f"sum(last_5m):{responses} >= {settings.flower_5xx_per_5_minutes}",
            f"{source} returned {settings.flower_5xx_per_5_minutes}+ 5xx responses in 5 minutes.",
            settings.flower_5xx_per_5_minutes,
            missing=MissingData.MEANS_ZERO,
        )
    return result
