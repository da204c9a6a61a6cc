"""Each part's metrics, graphs and alarms, from the environment's config: declared once,
rendered to CloudWatch (the monitoring stack) and Datadog (monitors and a dashboard).

Metric sources, named once in the wire contract (celery_service/contract.py):

* the workers' and beat's task metrics: EMF lines in CloudWatch when Datadog is off,
  DogStatsD (`celery.task.*`, tagged `env`, `queue` by the image) when it is on;
* the autoscaler's CeleryPlatform metrics, which Datadog's AWS integration collects from
  CloudWatch when its custom-metric collection includes that namespace (dimensions become
  tags: `environment`, `queue`, `worker_group`);
* AWS metrics of ElastiCache, ECS, Lambda and the ALB; Datadog selects them by the stacks'
  resource tags (`project`, `environment`) or the services' fixed names.
"""

from __future__ import annotations

import math
from dataclasses import replace

from celery_service import contract as m
from config import EnvironmentConfig
from config.services import ecs_service_name, worker
from stacks.monitoring.model import (
    AUTOSCALER_FUNCTION,
    FLOWER_LOAD_BALANCER,
    REDIS_NODES,
    REDIS_REPLICAS,
    Alarm,
    Comparison,
    Graph,
    Marker,
    Metric,
    MissingData,
    Resource,
    Segment,
    worker_service,
)

AWS_PERIOD_MINUTES = 5  # ElastiCache, ECS and ALB metrics, at their basic resolution
PERCENTILES = ("p50", "p95", "p99")


class Metrics:
    """The metric factories of one environment, one per source."""

    def __init__(self, config: EnvironmentConfig) -> None:
        self.config = config
        self.interval = config.autoscaler.schedule_minutes
        self.resource_tags = f"project:{config.project},environment:{config.name}"

    def platform(self, name: str, statistic: str = "Maximum", **dims: str) -> Metric:
        """The autoscaler's, published once per run."""
        return Metric(
            namespace=m.AUTOSCALER_NAMESPACE,
            name=name,
            statistic=statistic,
            period_minutes=self.interval,
            dimensions=(
                ("environment", self.config.name),
                ("service", m.AUTOSCALER_SERVICE),
                *dims.items(),
            ),
            datadog_name=m.datadog_name(name),
            datadog_scope=",".join(
                [f"environment:{self.config.name}", *(f"{k}:{v}" for k, v in dims.items())]
            ),
        )

    def task(self, name: str, statistic: str, queue: str | None = None) -> Metric:
        """A worker's or beat's."""
        dims = {"environment": self.config.name} | ({"queue": queue} if queue else {})
        return Metric(
            namespace=m.TASK_NAMESPACE,
            name=name,
            statistic=statistic,
            period_minutes=AWS_PERIOD_MINUTES,
            dimensions=tuple(dims.items()),
            label=f"{name} {statistic}",
            datadog_name=name,
            # The image's unified `env` tag.
            datadog_scope=f"env:{self.config.name}" + (f",queue:{queue}" if queue else ""),
            from_agent=True,
        )

    def aws(
        self,
        namespace: str,
        name: str,
        statistic: str,
        resource: Resource,
        datadog_name: str,
        *,
        scope: str = "",
        period_minutes: int = AWS_PERIOD_MINUTES,
    ) -> Metric:
        per_node = resource.per_node
        return Metric(
            namespace=namespace,
            name=name,
            statistic=statistic,
            period_minutes=period_minutes,
            resource=resource,
            datadog_name=datadog_name,
            datadog_scope=",".join(filter(None, [self.resource_tags, scope])),
            datadog_by="cacheclusterid" if per_node else None,
        )

    def redis(
        self, name: str, statistic: str, datadog_name: str, *, replicas: bool = False
    ) -> Metric:
        nodes = REDIS_REPLICAS if replicas else REDIS_NODES
        return self.aws(
            "AWS/ElastiCache", name, statistic, nodes, f"aws.elasticache.{datadog_name}"
        )

    def autoscaler_function(self, name: str, *, period_minutes: int | None = None) -> Metric:
        # The autoscaler stack tags its function with the service name; Datadog's AWS
        # integration carries the tag onto aws.lambda.* metrics.
        return self.aws(
            "AWS/Lambda",
            name,
            "Sum",
            AUTOSCALER_FUNCTION,
            f"aws.lambda.{name.lower()}",
            scope=f"service:{m.AUTOSCALER_SERVICE}",
            period_minutes=period_minutes or self.interval,
        )


def queues(config: EnvironmentConfig, metrics: Metrics) -> Segment:
    graphs, alarms = [], []
    for queue in sorted(config.queues):
        graphs.append(
            Graph(
                f"Queue {queue}: waiting, in flight, dead letters",
                left=tuple(metrics.platform(name, queue=queue) for name in m.QUEUE_METRICS),
            )
        )
        alarms.append(
            Alarm(
                key=f"dlq-{queue}",
                construct_id=f"DlqAlarm-{queue}",
                title=f"Queue {queue} has dead letters",
                description=f"Queue {queue} has dead letters to inspect or replay "
                "(python -m celery_service dlq list)",
                metrics=(("m", metrics.platform(m.DLQ_DEPTH, queue=queue)),),
                comparison=Comparison.ABOVE,
                threshold=0,
                periods=1,
                # Published every run: a gap is the autoscaler not running or not reading
                # Redis (its own alarms say so), no news about the dead letters.
                missing=MissingData.NO_NEWS,
            )
        )
    return Segment("Queues", rows=(tuple(graphs),), alarms=tuple(alarms))


def tasks(config: EnvironmentConfig, metrics: Metrics) -> Segment:
    rows: list[tuple[Graph, ...]] = []
    counts = (m.TASK_SUCCEEDED, m.TASK_FAILED, m.TASK_RETRIED, m.DLQ_WRITTEN, m.TASK_ETA_DEFERRED)
    for queue in sorted(config.queues):
        rows.append(
            (
                Graph(
                    f"Queue {queue}: tasks succeeded, failed, retried, dead-lettered, deferred",
                    left=tuple(metrics.task(name, "Sum", queue) for name in counts),
                    bars=True,
                ),
                Graph(
                    f"Queue {queue}: run time (ms)",
                    left=tuple(metrics.task(m.TASK_RUNTIME_MS, p, queue) for p in PERCENTILES),
                ),
                Graph(
                    f"Queue {queue}: wait before start (ms)",
                    left=tuple(metrics.task(m.TASK_QUEUE_WAIT_MS, p, queue) for p in PERCENTILES),
                ),
            )
        )
    rows.append((Graph("Beat ticks", left=(metrics.task(m.BEAT_HEARTBEAT, "Sum"),), bars=True),))
    return Segment("Tasks", rows=tuple(rows))


def worker_groups(config: EnvironmentConfig, metrics: Metrics) -> Segment:
    rows, alarms = [], []
    minutes = config.monitoring.max_tasks_alarm_minutes
    for name, group in sorted(config.worker_groups.items()):

        def platform(metric: str, statistic: str = "Maximum", group: str = name) -> Metric:
            return metrics.platform(metric, statistic, worker_group=group)

        ecs_scope = f"servicename:{ecs_service_name(config, worker(name))}"
        rows.append(
            (
                Graph(
                    f"Group {name}: tasks",
                    left=(
                        platform(m.DESIRED_TASKS),
                        platform(m.RUNNING_TASKS),
                        platform(m.PENDING_TASKS),
                    ),
                    right=(platform(m.SCALING_CHANGES, "Sum"),),
                    markers=(Marker(group.max_tasks, "max"),),
                    width=6,
                ),
                Graph(
                    f"Group {name}: messages",
                    left=(platform(m.GROUP_WAITING), platform(m.GROUP_IN_FLIGHT)),
                    width=6,
                ),
                Graph(
                    f"Group {name}: estimated wait (s)",
                    left=(platform(m.GROUP_ESTIMATED_WAIT_S),),
                    markers=(Marker(group.target_wait_s, "target"),),
                    width=6,
                ),
                Graph(
                    f"Group {name}: ECS CPU and memory (%)",
                    left=tuple(
                        metrics.aws(
                            "AWS/ECS",
                            metric,
                            "Average",
                            worker_service(name),
                            f"aws.ecs.service.{datadog}",
                            scope=ecs_scope,
                        )
                        for metric, datadog in (
                            ("CPUUtilization", "cpuutilization"),
                            ("MemoryUtilization", "memory_utilization"),
                        )
                    ),
                    percent=True,
                    width=6,
                ),
            )
        )
        alarms += [
            Alarm(
                key=f"pinned-{name}",
                construct_id=f"PinnedAtMaxAlarm-{name}",
                title=f"Worker group {name}: pinned at max_tasks",
                description=f"Worker group {name} has wanted its max_tasks ({group.max_tasks}) "
                f"for {minutes} minutes: raise max_tasks or look at the work",
                metrics=(("m", platform(m.DESIRED_TASKS, "Minimum")),),
                comparison=Comparison.AT_LEAST,
                threshold=group.max_tasks,
                periods=math.ceil(minutes / config.autoscaler.schedule_minutes),
                # Published every run, idle or not: a gap is the autoscaler down (its alarms
                # say so) while the service keeps the count it had, so the state stays.
                missing=MissingData.NO_NEWS,
            ),
            Alarm(
                key=f"backlog-{name}",
                construct_id=f"BacklogAgeAlarm-{name}",
                title=f"Worker group {name}: backlog older than its target",
                description=f"Worker group {name}'s backlog takes longer than its target wait "
                f"({group.target_wait_s} s) to drain, two runs in a row",
                metrics=(("m", platform(m.GROUP_ESTIMATED_WAIT_S)),),
                comparison=Comparison.ABOVE,
                threshold=group.target_wait_s,
                periods=2,
                # Absent when no rate was measured (a group's first run, nothing completed
                # since the last run) or the autoscaler is down: no estimate, no news.
                missing=MissingData.NO_NEWS,
            ),
        ]
    return Segment("Worker groups", rows=tuple(rows), alarms=tuple(alarms))


def redis(config: EnvironmentConfig, metrics: Metrics) -> Segment:
    settings = config.monitoring
    memory = metrics.redis(
        "DatabaseMemoryUsagePercentage", "Maximum", "database_memory_usage_percentage"
    )
    evictions = metrics.redis("Evictions", "Sum", "evictions")
    engine_cpu = metrics.redis("EngineCPUUtilization", "Average", "engine_cpuutilization")
    graphs = [
        Graph(
            "Redis host CPU (%)",
            left=(metrics.redis("CPUUtilization", "Average", "cpuutilization"),),
        ),
        Graph(
            "Redis engine CPU (%)",
            left=(engine_cpu,),
            markers=(Marker(settings.redis_engine_cpu_percent),),
        ),
        Graph(
            "Redis memory used (%)",
            left=(memory,),
            markers=(Marker(settings.redis_memory_percent),),
        ),
        Graph("Redis evictions", left=(evictions,), bars=True),
        Graph(
            "Redis connections",
            left=(metrics.redis("CurrConnections", "Maximum", "curr_connections"),),
        ),
    ]
    if config.redis.replicas >= 1:
        lag = metrics.redis("ReplicationLag", "Maximum", "replication_lag", replicas=True)
        graphs.append(Graph("Redis replication lag (s)", left=(lag,)))
    # ElastiCache reports each node every minute, zeros included: a gap is the node being
    # replaced or gone, no news about its memory, evictions or CPU (a broker the autoscaler
    # cannot read is its errors alarm's).
    node_gap = MissingData.NO_NEWS
    alarms = (
        Alarm(
            key="redis-memory",
            construct_id="RedisMemoryAlarm",
            title="Redis memory high",
            description=f"Redis node {{node}} uses more than {settings.redis_memory_percent} % "
            "of its memory; at 100 % publishing fails (the policy never evicts)",
            metrics=(("m", memory),),
            comparison=Comparison.ABOVE,
            threshold=settings.redis_memory_percent,
            periods=2,
            missing=node_gap,
        ),
        Alarm(
            key="redis-evictions",
            construct_id="RedisEvictionsAlarm",
            title="Redis evicted keys",
            description="Redis node {node} evicted keys: queued work may be lost",
            metrics=(("m", evictions),),
            comparison=Comparison.ABOVE,
            threshold=0,
            periods=1,
            missing=node_gap,
            priority=1,
        ),
        Alarm(
            key="redis-engine-cpu",
            construct_id="RedisEngineCpuAlarm",
            title="Redis engine CPU high",
            description="Redis node {node}'s engine thread is above "
            f"{settings.redis_engine_cpu_percent} % CPU",
            metrics=(("m", engine_cpu),),
            comparison=Comparison.ABOVE,
            threshold=settings.redis_engine_cpu_percent,
            periods=3,
            missing=node_gap,
        ),
    )
    return Segment("Redis broker", rows=(tuple(graphs),), alarms=alarms)


def autoscaler(config: EnvironmentConfig, metrics: Metrics) -> Segment:
    graphs = (
        Graph(
            "Autoscaler runs, skipped runs and errors",
            left=(
                metrics.platform(m.RUNS, "Sum"),
                # Invocations that found another run holding the lock.
                metrics.platform(m.RUNS_SKIPPED, "Sum"),
                metrics.autoscaler_function("Invocations"),
            ),
            right=(
                metrics.platform(m.AUTOSCALER_ERRORS, "Sum"),
                metrics.autoscaler_function("Errors"),
            ),
            bars=True,
            width=12,
        ),
        Graph("Autoscaler run duration (ms)", left=(metrics.platform(m.RUN_DURATION),), width=12),
    )
    alarms = (
        Alarm(
            key="autoscaler-errors",
            construct_id="AutoscalerErrorsAlarm",
            title="Autoscaler errors",
            description="The Celery autoscaler failed or reported an error (Redis, ECS or a "
            "worker group): see its logs",
            # A run that crashes before the autoscaler reports counts only in Lambda's errors:
            # both counts are summed, each read as zero where it has no datapoint.
            metrics=(
                ("lambdaErrors", metrics.autoscaler_function("Errors")),
                ("reported", metrics.platform(m.AUTOSCALER_ERRORS, "Sum")),
            ),
            comparison=Comparison.AT_LEAST,
            threshold=1,
            periods=1,
            # Lambda counts errors only when invoked (no invocations: the not-running alarm),
            # the autoscaler only when one happens: a gap in either is no error.
            missing=MissingData.MEANS_ZERO,
        ),
        Alarm(
            key="autoscaler-not-running",
            construct_id="AutoscalerNotRunningAlarm",
            title="Autoscaler not running",
            description="The Celery autoscaler has not run for three intervals: worker counts "
            "are frozen",
            metrics=(
                (
                    "m",
                    metrics.autoscaler_function("Invocations", period_minutes=3 * metrics.interval),
                ),
            ),
            comparison=Comparison.BELOW,
            threshold=1,
            periods=1,
            # No invocations means no datapoints: that is exactly the failure.
            missing=MissingData.IS_FAILURE,
            priority=2,
        ),
    )
    return Segment("Autoscaler", rows=(graphs,), alarms=alarms)


def beat(config: EnvironmentConfig, metrics: Metrics) -> Segment:
    limit = config.monitoring.beat_heartbeat_max_age_s
    age = metrics.platform(m.BEAT_HEARTBEAT_AGE_S)
    # Datadog receives beat's own ticks from the agent within seconds, while the age would
    # reach it through the AWS integration's crawler, a quarter of an hour late: it counts
    # the ticks over the same limit instead. CloudWatch holds the ticks only without Datadog,
    # so its alarm keeps the age.
    ticks = replace(metrics.task(m.BEAT_HEARTBEAT, "Sum"), period_minutes=math.ceil(limit / 60))
    on_age = Alarm(
        key="beat-heartbeat",
        construct_id="BeatHeartbeatAlarm",
        title="Beat heartbeat missing",
        description=f"Celery beat has not ticked for more than {limit} s: schedules are skipped",
        metrics=(("m", age),),
        comparison=Comparison.ABOVE,
        threshold=limit,
        periods=1,
        # Absent when beat's key expired (no beat for minutes), and while the autoscaler that
        # reads it is down: either way no one vouches for beat.
        missing=MissingData.IS_FAILURE,
        priority=2,
    )
    on_ticks = replace(on_age, metrics=(("m", ticks),), comparison=Comparison.BELOW, threshold=1)
    alarm = replace(on_age, datadog=on_ticks)
    graph = Graph("Beat heartbeat age (s)", left=(age,), markers=(Marker(limit),), width=12)
    return Segment("Beat", rows=((graph,),), alarms=(alarm,))


def flower(config: EnvironmentConfig, metrics: Metrics) -> Segment:
    threshold = config.monitoring.flower_5xx_per_5_minutes
    responses, alarms = [], []
    for kind, source in (("ELB", "the load balancer"), ("Target", "Flower")):
        metric = metrics.aws(
            "AWS/ApplicationELB",
            f"HTTPCode_{kind}_5XX_Count",
            "Sum",
            FLOWER_LOAD_BALANCER,
            f"aws.applicationelb.httpcode_{kind.lower()}_5xx",
        )
        responses.append(metric)
        alarms.append(
            Alarm(
                key=f"flower-{kind.lower()}-5xx",
                construct_id=f"Flower{kind.capitalize()}5xxAlarm",
                title=f"Flower 5xx from {source}",
                description=f"{source} returned {threshold}+ 5xx responses in 5 minutes",
                metrics=(("m", metric),),
                comparison=Comparison.AT_LEAST,
                threshold=threshold,
                periods=1,
                # The load balancer publishes these counts only when they are non-zero.
                missing=MissingData.MEANS_ZERO,
            )
        )
    graph = Graph("Flower load balancer 5xx", left=tuple(responses), bars=True, width=12)
    return Segment("Flower", rows=((graph,),), alarms=tuple(alarms))


def segments(config: EnvironmentConfig, *, task_metrics: bool) -> list[Segment]:
    """The environment's monitoring, part by part. `task_metrics`: the backend receives the
    workers' task metrics (CloudWatch only through EMF, Datadog through its agent)."""
    metrics = Metrics(config)
    parts = [queues, tasks, worker_groups, redis, autoscaler, beat, flower]
    return [part(config, metrics) for part in parts if task_metrics or part is not tasks]


def alarms(config: EnvironmentConfig) -> list[Alarm]:
    return [alarm for segment in segments(config, task_metrics=False) for alarm in segment.alarms]
