"""The alarm topic, the CloudWatch dashboard and alarms, and (where an environment asks)
the Datadog dashboard and monitors of one environment, rendered from the monitoring catalog.

Last stack of the platform: it reads the others (queues, worker services, Redis, Flower's
load balancer, the autoscaler) and nothing reads it, so it never creates a dependency cycle.
The autoscaler's own alarms live here too: they notify the topic and show on the dashboard,
which from the autoscaler's stack would make the two stacks depend on each other.
"""

from __future__ import annotations

import json
from typing import Any

from aws_cdk import CfnResource, Duration, RemovalPolicy, Stack
from aws_cdk import aws_chatbot as chatbot
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from config import EnvironmentConfig
from stacks.autoscaler_stack import AutoscalerStack
from stacks.data_stack import DataStack
from stacks.monitoring import catalog
from stacks.monitoring import datadog as dd
from stacks.monitoring.cloudwatch import CloudWatchRenderer, Dimensions
from stacks.monitoring.model import (
    AUTOSCALER_FUNCTION,
    FLOWER_LOAD_BALANCER,
    REDIS_NODES,
    REDIS_REPLICAS,
    worker_service,
)
from stacks.services_stack import ServicesStack


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
        dashboard = cw.Dashboard(
            self,
            "Dashboard",
            dashboard_name=f"{config.project}-{config.name}",
            default_interval=Duration.hours(3),
        )
        broker, replicas = data.broker, config.redis.replicas
        dimensions: Dimensions = {
            REDIS_NODES: broker.node_dimensions(REDIS_NODES.nodes(replicas)),
            REDIS_REPLICAS: broker.node_dimensions(REDIS_REPLICAS.nodes(replicas)),
            AUTOSCALER_FUNCTION: [autoscaler.autoscaler.metric_dimensions],
            FLOWER_LOAD_BALANCER: [services.flower.load_balancer_dimensions],
            **{
                worker_service(name): [group.metric_dimensions]
                for name, group in services.workers.items()
            },
        }
        cloudwatch = CloudWatchRenderer(
            self, dashboard=dashboard, topic=self.topic, dimensions=dimensions
        )
        for segment in catalog.segments(config, task_metrics=config.task_metrics_in_cloudwatch):
            cloudwatch.segment(segment)
        cloudwatch.alarm_widgets()
        self.dashboard = dashboard
        self.alarms = cloudwatch.alarms
        if config.datadog.resources == "cloudformation":
            self._datadog()

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
