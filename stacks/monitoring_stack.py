"""CloudWatch alarms and the dashboard of one environment, built from the queue catalog.

Last stack of the platform: it reads the others (queues, worker services, Redis, Flower's
load balancer, the autoscaler) and nothing reads it, so it never creates a dependency cycle.
The autoscaler's own alarms live here too: they notify the topic and show on the dashboard,
which from the autoscaler's stack would make the two stacks depend on each other.
"""

from __future__ import annotations

import json
import math
from typing import Any

from aws_cdk import CfnResource, Duration, RemovalPolicy, Stack
from aws_cdk import aws_chatbot as chatbot
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from celery_service import contract as m
from config import EnvironmentConfig
from stacks import datadog_definitions as dd
from stacks.autoscaler_stack import AutoscalerStack
from stacks.data_stack import DataStack
from stacks.missing_data import MissingData
from stacks.services_stack import ServicesStack

GE = cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD
GT = cw.ComparisonOperator.GREATER_THAN_THRESHOLD
LT = cw.ComparisonOperator.LESS_THAN_THRESHOLD
FIVE_MINUTES = Duration.minutes(5)
WIDTH = 24  # dashboard grid width
PERCENTILES = ("p50", "p95", "p99")
TREAT_MISSING_DATA = {
    MissingData.MEANS_ZERO: cw.TreatMissingData.NOT_BREACHING,
    MissingData.NO_NEWS: cw.TreatMissingData.IGNORE,
    MissingData.IS_FAILURE: cw.TreatMissingData.BREACHING,
}


def redis_node_ids(replication_group_id: str, replicas: int) -> list[str]:
    """ElastiCache names a cluster-mode-disabled group's nodes <group id>-001, -002, ..."""
    return [f"{replication_group_id}-{index:03d}" for index in range(1, replicas + 2)]


class MonitoringStack(Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvironmentConfig,
        data: DataStack,
        services: ServicesStack,
        autoscaler: AutoscalerStack,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.config = config
        settings = config.monitoring
        self.interval = Duration.minutes(config.autoscaler.schedule_minutes)
        # CloudWatch cannot use the AWS managed aws/sns key (its policy cannot be changed to
        # admit CloudWatch), so alarms would never reach a topic encrypted with it.
        self.key = kms.Key(
            self,
            "AlarmTopicKey",
            description=f"Celery platform {config.name}: alarm notifications",
            enable_key_rotation=True,
            removal_policy=RemovalPolicy.DESTROY,  # encrypts only transient notifications
        )
        self.key.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=["*"],  # in a key policy, "*" is this key
            )
        )
        self.topic = sns.Topic(
            self,
            "AlarmTopic",
            display_name=f"Celery platform {config.name} alarms",
            master_key=self.key,
            enforce_ssl=True,
        )
        if settings.alarm_email:
            self.topic.add_subscription(subscriptions.EmailSubscription(settings.alarm_email))
        if settings.slack:
            chatbot.SlackChannelConfiguration(
                self,
                "AlarmSlackChannel",
                slack_channel_configuration_name=f"{config.project}-{config.name}-alarms",
                slack_workspace_id=settings.slack.workspace_id,
                slack_channel_id=settings.slack.channel_id,
                notification_topics=[self.topic],
                # Notifications only: the channel's members cannot act through Chatbot.
                guardrail_policies=[
                    iam.ManagedPolicy.from_aws_managed_policy_name("CloudWatchReadOnlyAccess")
                ],
            )
        self.alarms: list[cw.Alarm] = []
        self.dashboard = cw.Dashboard(
            self,
            "Dashboard",
            dashboard_name=f"{config.project}-{config.name}",
            default_interval=Duration.hours(3),
        )

        self._queues()
        if config.task_metrics_in_cloudwatch:
            self._tasks()
        self._worker_groups(services)
        self._redis(data)
        self._autoscaler(autoscaler)
        self._beat()
        self._flower(services)
        self._alarm_widgets()
        if config.datadog.resources == "cloudformation":
            self._datadog()

    # ----------------------------------------------------------------- helpers

    def _metric(self, name: str, statistic: str = "Maximum", **dims: str) -> cw.Metric:
        return cw.Metric(
            namespace=m.AUTOSCALER_NAMESPACE,
            metric_name=name,
            dimensions_map={
                "environment": self.config.name,
                "service": m.AUTOSCALER_SERVICE,
                **dims,
            },
            statistic=statistic,
            period=self.interval,
        )

    def _task_metric(self, name: str, statistic: str, queue: str | None = None) -> cw.Metric:
        """A worker's or beat's metric, from the EMF lines in their logs."""
        dims = {"environment": self.config.name}
        if queue is not None:
            dims["queue"] = queue
        return cw.Metric(
            namespace=m.TASK_NAMESPACE,
            metric_name=name,
            dimensions_map=dims,
            statistic=statistic,
            period=FIVE_MINUTES,
            label=f"{name} {statistic}",
        )

    def _alarm(self, construct_id: str, *, missing: MissingData, **props: Any) -> cw.Alarm:
        """An alarm that notifies the topic; `missing` says what a gap in its metric means
        (the matching Datadog monitor makes the same decision)."""
        alarm = cw.Alarm(
            self, construct_id, treat_missing_data=TREAT_MISSING_DATA[missing], **props
        )
        alarm.add_alarm_action(cw_actions.SnsAction(self.topic))
        self.alarms.append(alarm)
        return alarm

    def _header(self, text: str) -> None:
        self.dashboard.add_widgets(cw.TextWidget(markdown=f"## {text}", width=WIDTH, height=1))

    # ----------------------------------------------------------------- sections

    def _queues(self) -> None:
        self._header("Queues")
        widgets: list[cw.IWidget] = []
        for queue in sorted(self.config.queues):
            widgets.append(
                cw.GraphWidget(
                    title=f"Queue {queue}: waiting, in flight, dead letters",
                    left=[
                        self._metric(m.QUEUE_WAITING, queue=queue),
                        self._metric(m.QUEUE_IN_FLIGHT, queue=queue),
                        self._metric(m.DLQ_DEPTH, queue=queue),
                    ],
                    width=8,
                )
            )
            self._alarm(
                f"DlqAlarm-{queue}",
                alarm_description=f"Queue {queue} has dead letters to inspect or replay",
                metric=self._metric(m.DLQ_DEPTH, queue=queue),
                threshold=0,
                evaluation_periods=1,
                comparison_operator=GT,
                # Published every run: a gap is the autoscaler not running or not reading
                # Redis (its own alarms say so), no news about the dead letters.
                missing=MissingData.NO_NEWS,
            )
        self.dashboard.add_widgets(*widgets)

    def _tasks(self) -> None:
        self._header("Tasks (from the workers' EMF lines)")
        w = m
        for queue in sorted(self.config.queues):
            self.dashboard.add_widgets(
                cw.GraphWidget(
                    title=f"Queue {queue}: tasks succeeded, failed, retried, dead-lettered, "
                    "deferred",
                    left=[
                        self._task_metric(name, "Sum", queue)
                        for name in (
                            w.TASK_SUCCEEDED,
                            w.TASK_FAILED,
                            w.TASK_RETRIED,
                            w.DLQ_WRITTEN,
                            w.TASK_ETA_DEFERRED,
                        )
                    ],
                    width=8,
                ),
                cw.GraphWidget(
                    title=f"Queue {queue}: run time (ms)",
                    left=[self._task_metric(w.TASK_RUNTIME_MS, p, queue) for p in PERCENTILES],
                    width=8,
                ),
                cw.GraphWidget(
                    title=f"Queue {queue}: wait before start (ms)",
                    left=[self._task_metric(w.TASK_QUEUE_WAIT_MS, p, queue) for p in PERCENTILES],
                    width=8,
                ),
            )
        self.dashboard.add_widgets(
            cw.GraphWidget(
                title="Beat ticks",
                left=[self._task_metric(w.BEAT_HEARTBEAT, "Sum")],
                width=8,
            )
        )

    def _datadog(self) -> None:
        """The Datadog dashboard and monitors as CloudFormation registry resources. The types
        must be activated in the account with Datadog credentials in their configuration,
        so no key ever enters this template."""
        CfnResource(
            self,
            "DatadogDashboard",
            type="Datadog::Dashboards::Dashboard",
            properties={
                "DashboardDefinition": json.dumps(dd.dashboard(self.config), sort_keys=True)
            },
        )
        for monitor in dd.monitors(self.config):
            CfnResource(
                self,
                f"DatadogMonitor-{monitor.key}",
                type="Datadog::Monitors::Monitor",
                properties=monitor.cloudformation_properties(),
            )

    def _worker_groups(self, services: ServicesStack) -> None:
        self._header("Worker groups")
        pinned_periods = math.ceil(
            self.config.monitoring.max_tasks_alarm_minutes / self.config.autoscaler.schedule_minutes
        )
        for name, group in self.config.worker_groups.items():
            ecs_dimensions = {
                "ClusterName": services.cluster.cluster_name,
                "ServiceName": services.workers[name].service_name,
            }
            self.dashboard.add_widgets(
                cw.GraphWidget(
                    title=f"Group {name}: tasks",
                    left=[
                        self._metric(m.DESIRED_TASKS, worker_group=name),
                        self._metric(m.RUNNING_TASKS, worker_group=name),
                        self._metric(m.PENDING_TASKS, worker_group=name),
                    ],
                    right=[self._metric(m.SCALING_CHANGES, "Sum", worker_group=name)],
                    left_annotations=[cw.HorizontalAnnotation(value=group.max_tasks, label="max")],
                    width=6,
                ),
                cw.GraphWidget(
                    title=f"Group {name}: messages",
                    left=[
                        self._metric(m.GROUP_WAITING, worker_group=name),
                        self._metric(m.GROUP_IN_FLIGHT, worker_group=name),
                    ],
                    width=6,
                ),
                cw.GraphWidget(
                    title=f"Group {name}: estimated wait (s)",
                    left=[self._metric(m.GROUP_ESTIMATED_WAIT_S, worker_group=name)],
                    left_annotations=[
                        cw.HorizontalAnnotation(value=group.target_wait_s, label="target")
                    ],
                    width=6,
                ),
                cw.GraphWidget(
                    title=f"Group {name}: ECS CPU and memory (%)",
                    left=[
                        cw.Metric(
                            namespace="AWS/ECS",
                            metric_name=metric,
                            dimensions_map=ecs_dimensions,
                            statistic="Average",
                            period=FIVE_MINUTES,
                        )
                        for metric in ("CPUUtilization", "MemoryUtilization")
                    ],
                    left_y_axis=cw.YAxisProps(min=0, max=100),
                    width=6,
                ),
            )
            self._alarm(
                f"PinnedAtMaxAlarm-{name}",
                alarm_description=(
                    f"Worker group {name} has wanted its max_tasks ({group.max_tasks}) for "
                    f"{self.config.monitoring.max_tasks_alarm_minutes} minutes"
                ),
                metric=self._metric(m.DESIRED_TASKS, "Minimum", worker_group=name),
                threshold=group.max_tasks,
                evaluation_periods=pinned_periods,
                comparison_operator=GE,
                # Published every run, idle or not: a gap is the autoscaler down (its alarms
                # say so) while the service keeps the count it had, so the state stays.
                missing=MissingData.NO_NEWS,
            )
            self._alarm(
                f"BacklogAgeAlarm-{name}",
                alarm_description=(
                    f"Worker group {name}'s backlog takes longer than its target wait "
                    f"({group.target_wait_s} s) to drain, two runs in a row"
                ),
                metric=self._metric(m.GROUP_ESTIMATED_WAIT_S, worker_group=name),
                threshold=group.target_wait_s,
                evaluation_periods=2,
                comparison_operator=GT,
                # Absent when no rate was measured (a group's first run, nothing completed
                # since the last run) or the autoscaler is down: no estimate, no news.
                missing=MissingData.NO_NEWS,
            )

    def _redis(self, data: DataStack) -> None:
        self._header("Redis broker")
        settings = self.config.monitoring
        nodes = redis_node_ids(data.broker.replication_group.ref, self.config.redis.replicas)

        def per_node(
            name: str, statistic: str = "Average", *, labelled: bool = True
        ) -> list[cw.IMetric]:
            return [
                cw.Metric(
                    namespace="AWS/ElastiCache",
                    metric_name=name,
                    dimensions_map={"CacheClusterId": node},
                    statistic=statistic,
                    period=FIVE_MINUTES,
                    # A label would turn an alarm's metric into a metric-math form.
                    label=f"{name} node {index + 1}" if labelled else None,
                )
                for index, node in enumerate(nodes)
            ]

        widgets: list[cw.IWidget] = [
            cw.GraphWidget(title="Redis host CPU (%)", left=per_node("CPUUtilization"), width=8),
            cw.GraphWidget(
                title="Redis engine CPU (%)",
                left=per_node("EngineCPUUtilization"),
                left_annotations=[cw.HorizontalAnnotation(value=settings.redis_engine_cpu_percent)],
                width=8,
            ),
            cw.GraphWidget(
                title="Redis memory used (%)",
                left=per_node("DatabaseMemoryUsagePercentage", "Maximum"),
                left_annotations=[cw.HorizontalAnnotation(value=settings.redis_memory_percent)],
                width=8,
            ),
            cw.GraphWidget(title="Redis evictions", left=per_node("Evictions", "Sum"), width=8),
            cw.GraphWidget(
                title="Redis connections", left=per_node("CurrConnections", "Maximum"), width=8
            ),
        ]
        if self.config.redis.replicas >= 1:
            widgets.append(
                cw.GraphWidget(
                    title="Redis replication lag (s)",
                    left=per_node("ReplicationLag", "Maximum")[1:],  # replicas only
                    width=8,
                )
            )
        self.dashboard.add_widgets(*widgets)

        # ElastiCache reports each node every minute, zeros included: a gap is the node being
        # replaced or gone, no news about its memory, evictions or CPU (a broker the
        # autoscaler cannot read is its errors alarm's).
        node_gap = MissingData.NO_NEWS
        for index, (memory, evictions, engine_cpu) in enumerate(
            zip(
                per_node("DatabaseMemoryUsagePercentage", "Maximum", labelled=False),
                per_node("Evictions", "Sum", labelled=False),
                per_node("EngineCPUUtilization", labelled=False),
                strict=True,
            ),
            start=1,
        ):
            self._alarm(
                f"RedisMemoryAlarm{index}",
                alarm_description=(
                    f"Redis node {index} uses more than {settings.redis_memory_percent} % of "
                    "its memory; at 100 % publishing fails (the policy never evicts)"
                ),
                metric=memory,
                threshold=settings.redis_memory_percent,
                evaluation_periods=2,
                comparison_operator=GT,
                missing=node_gap,
            )
            self._alarm(
                f"RedisEvictionsAlarm{index}",
                alarm_description=f"Redis node {index} evicted keys: queued work may be lost",
                metric=evictions,
                threshold=0,
                evaluation_periods=1,
                comparison_operator=GT,
                missing=node_gap,
            )
            self._alarm(
                f"RedisEngineCpuAlarm{index}",
                alarm_description=(
                    f"Redis node {index}'s engine thread is above "
                    f"{settings.redis_engine_cpu_percent} % CPU"
                ),
                metric=engine_cpu,
                threshold=settings.redis_engine_cpu_percent,
                evaluation_periods=3,
                comparison_operator=GT,
                missing=node_gap,
            )

    def _autoscaler(self, autoscaler: AutoscalerStack) -> None:
        self._header("Autoscaler")
        function = autoscaler.function
        interval = self.interval
        self.dashboard.add_widgets(
            cw.GraphWidget(
                title="Autoscaler runs, skipped runs and errors",
                left=[
                    self._metric(m.RUNS, "Sum"),
                    # Invocations that found another run holding the lock.
                    self._metric(m.RUNS_SKIPPED, "Sum"),
                    function.metric_invocations(period=interval, statistic="Sum"),
                ],
                right=[
                    self._metric(m.AUTOSCALER_ERRORS, "Sum"),
                    function.metric_errors(period=interval, statistic="Sum"),
                ],
                width=12,
            ),
            cw.GraphWidget(
                title="Autoscaler run duration (ms)",
                left=[self._metric(m.RUN_DURATION)],
                width=12,
            ),
        )
        self.errors_alarm = self._alarm(
            "AutoscalerErrorsAlarm",
            alarm_description="The Celery autoscaler failed or reported an error",
            # A sum with an operand missing has no datapoint: a run that crashes before the
            # autoscaler reports (Lambda counts the error, the autoscaler publishes nothing)
            # would look like no error. Each count is zero where it has no datapoint.
            metric=cw.MathExpression(
                expression="FILL(lambdaErrors, 0) + FILL(reported, 0)",
                using_metrics={
                    "lambdaErrors": function.metric_errors(period=interval),
                    "reported": self._metric(m.AUTOSCALER_ERRORS, "Sum"),
                },
                period=interval,
            ),
            threshold=1,
            evaluation_periods=1,
            comparison_operator=GE,
            # Lambda counts errors only when invoked (no invocations: the not-running alarm),
            # the autoscaler only when one happens: a gap in either is no error.
            missing=MissingData.MEANS_ZERO,
        )
        self.not_running_alarm = self._alarm(
            "AutoscalerNotRunningAlarm",
            alarm_description="The Celery autoscaler has not run for three intervals",
            metric=function.metric_invocations(
                period=Duration.minutes(self.config.autoscaler.schedule_minutes * 3),
                statistic="Sum",
            ),
            threshold=1,
            evaluation_periods=1,
            comparison_operator=LT,
            # No invocations means no datapoints: that is exactly the failure.
            missing=MissingData.IS_FAILURE,
        )

    def _beat(self) -> None:
        limit = self.config.monitoring.beat_heartbeat_max_age_s
        self.dashboard.add_widgets(
            cw.GraphWidget(
                title="Beat heartbeat age (s)",
                left=[self._metric(m.BEAT_HEARTBEAT_AGE_S)],
                left_annotations=[cw.HorizontalAnnotation(value=limit)],
                width=12,
            )
        )
        self._alarm(
            "BeatHeartbeatAlarm",
            alarm_description=(
                f"Celery beat has not ticked for more than {limit} s: schedules are skipped"
            ),
            metric=self._metric(m.BEAT_HEARTBEAT_AGE_S),
            threshold=limit,
            evaluation_periods=1,
            comparison_operator=GT,
            # Absent when beat's key expired (no beat for minutes), and while the autoscaler
            # that reads it is down: either way no one vouches for beat.
            missing=MissingData.IS_FAILURE,
        )

    def _flower(self, services: ServicesStack) -> None:
        alb = services.flower.alb.metrics
        threshold = self.config.monitoring.flower_5xx_per_5_minutes
        elb_5xx = alb.http_code_elb(elbv2.HttpCodeElb.ELB_5XX_COUNT, period=FIVE_MINUTES)
        target_5xx = alb.http_code_target(
            elbv2.HttpCodeTarget.TARGET_5XX_COUNT, period=FIVE_MINUTES
        )
        self.dashboard.add_widgets(
            cw.GraphWidget(title="Flower load balancer 5xx", left=[elb_5xx, target_5xx], width=12)
        )
        for construct_id, metric, source in (
            ("FlowerElb5xxAlarm", elb_5xx, "the load balancer"),
            ("FlowerTarget5xxAlarm", target_5xx, "Flower"),
        ):
            self._alarm(
                construct_id,
                alarm_description=f"{source} returned {threshold}+ 5xx responses in 5 minutes",
                metric=metric,
                threshold=threshold,
                evaluation_periods=1,
                comparison_operator=GE,
                # The load balancer publishes these counts only when they are non-zero.
                missing=MissingData.MEANS_ZERO,
            )

    def _alarm_widgets(self) -> None:
        self._header("Alarms")
        self.dashboard.add_widgets(cw.AlarmStatusWidget(alarms=self.alarms, width=WIDTH))
        self.dashboard.add_widgets(
            *[cw.AlarmWidget(alarm=alarm, title=alarm.node.id, width=8) for alarm in self.alarms]
        )
