"""The queue-depth autoscaler: a Lambda in the VPC, run by EventBridge on a schedule."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aws_cdk import Duration, Stack, Tags
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk.aws_ecr_assets import DockerImageAssetInvalidationOptions, Platform
from constructs import Construct

from celery_service import contract
from config.model import AutoscalerConfig
from stacks.checks import acknowledge
from stacks.parts.app_image import IMAGE_DIR, runtime_fingerprint
from stacks.parts.redis_broker import RedisBroker
from stacks.retention import log_retention

CODE_DIR = Path(__file__).resolve().parents[2] / "lambdas" / "autoscaler"
METRICS_NAMESPACE = contract.AUTOSCALER_NAMESPACE


class Autoscaler(Construct):
    """Sets the desired count of the worker services it is given, and of no other."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: AutoscalerConfig,
        settings: Mapping[str, Any],  # AUTOSCALER_CONFIG: what each run reads
        cluster_name: str,
        worker_services: Mapping[str, str],  # the ECS services it may scale, by worker group
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        broker: RedisBroker,
        architecture: str,
        log_retention_days: int,
    ) -> None:
        super().__init__(scope, construct_id)
        arm = architecture == "arm64"
        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            description="Celery autoscaler: Redis and AWS APIs",
            allow_all_outbound=True,
        )
        self.function = lambda_.DockerImageFunction(
            self,
            "Function",
            code=lambda_.DockerImageCode.from_image_asset(
                str(CODE_DIR),
                platform=Platform.LINUX_ARM64 if arm else Platform.LINUX_AMD64,
                # The runtime package, for its wire contract. Only the primary directory is
                # fingerprinted by CDK: the runtime's own digest makes its changes rebuild too.
                # The context's path stays out of the hash: a checkout elsewhere (another CI
                # runner, a laptop) would otherwise rebuild and redeploy the same function.
                build_contexts={"runtime": str(IMAGE_DIR)},
                extra_hash=runtime_fingerprint(),
                invalidation=DockerImageAssetInvalidationOptions(build_contexts=False),
            ),
            architecture=lambda_.Architecture.ARM_64 if arm else lambda_.Architecture.X86_64,
            description="Sets each Celery worker service's desired count from queue depth",
            vpc=vpc,
            vpc_subnets=subnets,
            security_groups=[self.security_group],
            timeout=Duration.seconds(config.timeout_s),
            memory_size=256,
            # No reserved concurrency: it fails stack creation in accounts whose quota is
            # the default 10. Runs never overlap because each takes a lock in Redis first.
            environment={
                "AUTOSCALER_CONFIG": json.dumps(settings),
                "REDIS_HOST": broker.endpoint_address,
                "REDIS_PORT": str(broker.port),
                "REDIS_TLS": "true",
                "REDIS_AUTH_SECRET_ARN": broker.auth_secret.secret_arn,
                "POWERTOOLS_SERVICE_NAME": contract.AUTOSCALER_SERVICE,
                "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
            },
            log_group=logs.LogGroup(self, "Logs", retention=log_retention(log_retention_days)),
        )
        broker.grant_connect(self.function)
        broker.auth_secret.grant_read(self.function)
        # Worker services only: the autoscaler cannot touch beat or Flower.
        self.function.add_to_role_policy(
            iam.PolicyStatement(
                actions=["ecs:DescribeServices", "ecs:UpdateService"],
                resources=[
                    Stack.of(self).format_arn(
                        service="ecs", resource="service", resource_name=f"{cluster_name}/{name}"
                    )
                    for name in worker_services.values()
                ],
            )
        )
        self.rule = events.Rule(
            self,
            "Schedule",
            schedule=events.Schedule.rate(Duration.minutes(config.schedule_minutes)),
            targets=[
                targets.LambdaFunction(
                    self.function,
                    retry_attempts=0,  # the next scheduled run is the retry
                    max_event_age=Duration.minutes(config.schedule_minutes),
                )
            ],
        )
        # Datadog's errors monitor finds the function's aws.lambda.* metrics by this resource tag.
        Tags.of(self.function).add("service", contract.AUTOSCALER_SERVICE)
        role = self.function.role
        assert role is not None
        acknowledge(
            role,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
            "AWSLambdaBasicExecutionRole]",
            "The AWS managed basic execution role only lets the function write its own logs.",
        )
        acknowledge(
            role,
            "AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/service-role/"
            "AWSLambdaVPCAccessExecutionRole]",
            "The AWS managed VPC access role only manages the function's network interfaces, "
            "which a Lambda in the VPC needs to reach Redis.",
        )

    @property
    def metric_dimensions(self) -> dict[str, str]:
        """The CloudWatch dimensions of the function's Lambda metrics (invocations, errors)."""
        return {"FunctionName": self.function.function_name}
