"""Keep an autoscaled ECS service's live desired count across deploys.

A literal `DesiredCount` in the template resets the service to that number on every stack
update, undoing the autoscaler. Instead the service's `DesiredCount` is this custom
resource's `DesiredCount` attribute: on create it is the configured initial count, on every
later update the live count read from ECS (clamped into the configured min..max), as AWS
Copilot does. Its properties include the task definition and the service settings, so any
deploy that updates the service re-reads the live count first.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from aws_cdk import CustomResource, Duration, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import custom_resources as cr
from constructs import Construct

from stacks.checks import acknowledge, acknowledge_wildcard_resource

HANDLER_DIR = Path(__file__).resolve().parent.parent / "lambdas" / "desired_count"


class DesiredCountProvider(Construct):
    """One Lambda (and provider) per stack, shared by every kept service."""

    def __init__(self, scope: Construct, construct_id: str, *, cluster_name: str) -> None:
        super().__init__(scope, construct_id)
        stack = Stack.of(self)
        self.function = lambda_.Function(
            self,
            "Function",
            runtime=lambda_.Runtime.PYTHON_3_14,
            handler="handler.handler",
            code=lambda_.Code.from_asset(str(HANDLER_DIR)),
            timeout=Duration.minutes(5),  # ECS reads retry with backoff for up to ~4 min
            memory_size=128,
            description="Reads the live desired count of ECS services before each deploy",
            log_retention=None,
            log_group=logs.LogGroup(self, "Logs", retention=logs.RetentionDays.ONE_MONTH),
        )
        # Read-only, and only on this cluster's services.
        self._services_arn = stack.format_arn(
            service="ecs", resource="service", resource_name=f"{cluster_name}/*"
        )
        self.function.add_to_role_policy(
            iam.PolicyStatement(actions=["ecs:DescribeServices"], resources=[self._services_arn])
        )
        self.provider = cr.Provider(
            self,
            "Provider",
            on_event_handler=self.function,
            log_group=logs.LogGroup(self, "ProviderLogs", retention=logs.RetentionDays.ONE_MONTH),
        )
        self._acknowledge()

    def _acknowledge(self) -> None:
        role = self.function.role
        assert role is not None
        basic_role = (
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
            "AWSLambdaBasicExecutionRole]"
        )
        why_basic = (
            "The AWS managed basic execution role only lets the function write its own logs."
        )
        acknowledge(role, basic_role, why_basic)
        acknowledge_wildcard_resource(
            role,
            self._services_arn,
            "DescribeServices is read-only and limited to the services of this cluster; the "
            "services are named after this role is created, so they are matched by prefix.",
        )
        framework = self.provider.node.find_child("framework-onEvent")
        framework_role = framework.node.find_child("ServiceRole")
        acknowledge(framework_role, basic_role, why_basic)
        acknowledge_wildcard_resource(
            framework_role,
            f"{self.function.function_arn}:*",
            "CDK's provider framework invokes the keeper function and its versions; the "
            "wildcard is the version suffix of that one function.",
        )
        acknowledge(
            framework.node.default_child,
            "AwsSolutions-L1",
            "CDK's provider framework picks its own Node.js runtime; it only relays the "
            "CloudFormation request to the keeper function, which runs the latest Python.",
        )


class KeptDesiredCount(Construct):
    """The `DesiredCount` to give one service: `desired_count` (a token)."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        provider: DesiredCountProvider,
        cluster_name: str,
        service_name: str,
        min_tasks: int,
        max_tasks: int,
        initial: int,
        task_definition_arn: str,
        service_settings: dict[str, object],
    ) -> None:
        super().__init__(scope, construct_id)
        settings_hash = hashlib.sha256(
            json.dumps(service_settings, sort_keys=True, default=str).encode()
        ).hexdigest()[:16]
        self.resource = CustomResource(
            self,
            "Resource",
            service_token=provider.provider.service_token,
            resource_type="Custom::KeptDesiredCount",
            properties={
                "Cluster": cluster_name,
                "Service": service_name,
                "MinTasks": min_tasks,
                "MaxTasks": max_tasks,
                "InitialCount": initial,
                # Changes whenever the service is about to be updated: re-read the live count.
                "TaskDefinition": task_definition_arn,
                "ConfigHash": settings_hash,
            },
        )
        self.desired_count = self.resource.get_att_string("DesiredCount")
