"""What every Celery service shares (worker groups, beat, Flower): one Fargate task
definition running the app image, the broker's AUTH token as an ECS secret, logs, the
optional Datadog agent sidecar, what the team's code declares (its secrets and IAM grants),
and the deployment settings."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from aws_cdk import Duration, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from celery_service.contract import Env
from config.model import SecretRef, ServicesConfig, TaskAccess
from config.services import CeleryService
from stacks.checks import acknowledge, acknowledge_wildcard_resource
from stacks.parts.app_image import AppImage
from stacks.parts.redis_broker import RedisBroker
from stacks.retention import log_retention

APP_CONTAINER = "celery"
DOGSTATSD_PORT = 8125
# The worker's SIGTERM budget stays this far (seconds) below Fargate's stop timeout, so the
# requeue of unfinished tasks happens before the SIGKILL.
SHUTDOWN_MARGIN_S = 15


@dataclass(frozen=True)
class DatadogAgent:
    image: str
    site: str
    # Imported by name: the key is created outside the stack and never enters a template.
    api_key: secretsmanager.ISecret


@dataclass(frozen=True)
class CeleryRuntime:
    """What the Celery services of one environment run on and with."""

    environment_name: str  # Datadog's env tag
    cluster: ecs.ICluster
    subnets: ec2.SubnetSelection
    image: AppImage
    broker: RedisBroker
    settings: ServicesConfig
    emf_metrics: bool  # the log driver ships the EMF lines to CloudWatch
    datadog: DatadogAgent | None

    @property
    def shutdown_budget_s(self) -> int:
        return self.settings.stop_timeout_s - SHUTDOWN_MARGIN_S


@dataclass(frozen=True)
class Deployment:
    """How ECS replaces the service's tasks."""

    desired_count: int | None
    min_healthy_percent: int
    max_healthy_percent: int


class CeleryFargateService(Construct):
    """One Celery service: the worker group, beat and Flower parts are this construct with
    their own settings (and Flower with its load balancer)."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        runtime: CeleryRuntime,
        service: CeleryService,
        service_name: str,
        environment: Mapping[str, str],
        cpu: int,
        memory_mib: int,
        deployment: Deployment,
        access: TaskAccess | None = None,
        protect_from_scale_in: bool = False,
        capacity_provider: str | None = None,
        port: int | None = None,
        health_check: list[str] | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.runtime = runtime
        self.service_name = service_name
        self.task_definition = ecs.FargateTaskDefinition(
            self,
            "Task",
            cpu=cpu,
            memory_limit_mib=memory_mib,
            runtime_platform=runtime.image.platform,
        )
        self.log_group = logs.LogGroup(
            self, "Logs", retention=log_retention(runtime.settings.log_retention_days)
        )
        self.container = self._app_container(service, environment, access, port, health_check)
        if runtime.datadog is not None:
            self._datadog_agent(service, runtime.datadog)
        if access is not None:
            self._grant_team_access(access, service.config_section)
        if protect_from_scale_in:
            self._task_protection_policy()
        self.service = ecs.FargateService(
            self,
            "Service",
            cluster=runtime.cluster,
            service_name=service_name,
            task_definition=self.task_definition,
            desired_count=deployment.desired_count,
            vpc_subnets=runtime.subnets,
            assign_public_ip=False,
            capacity_provider_strategies=[
                ecs.CapacityProviderStrategy(capacity_provider=capacity_provider, weight=1)
            ]
            if capacity_provider
            else None,
            min_healthy_percent=deployment.min_healthy_percent,
            max_healthy_percent=deployment.max_healthy_percent,
            circuit_breaker=ecs.DeploymentCircuitBreaker(enable=True, rollback=True),
            enable_execute_command=runtime.settings.enable_exec,
            propagate_tags=ecs.PropagatedTagSource.SERVICE,
        )
        self._acknowledge()

    @property
    def metric_dimensions(self) -> dict[str, str]:
        """The CloudWatch dimensions of the service's ECS metrics (CPU, memory)."""
        return {"ClusterName": self.runtime.cluster.cluster_name, "ServiceName": self.service_name}

    def _app_container(
        self,
        service: CeleryService,
        environment: Mapping[str, str],
        access: TaskAccess | None,
        port: int | None,
        health_check: list[str] | None,
    ) -> ecs.ContainerDefinition:
        runtime = self.runtime
        env = {**environment, **_dd_variables(runtime, service)}
        if runtime.emf_metrics:
            env[Env.METRICS_EMF] = "true"
        if runtime.datadog is not None:
            env[Env.STATSD_HOST] = "127.0.0.1"  # the sidecar shares the task's network namespace
            env[Env.STATSD_PORT] = str(DOGSTATSD_PORT)
        team_secrets = {
            variable: _container_secret(self.task_definition, variable, ref)
            for variable, ref in (access.secrets.items() if access is not None else ())
        }
        return self.task_definition.add_container(
            APP_CONTAINER,
            image=runtime.image.image,
            command=[service.command],
            environment=env,
            secrets={
                **team_secrets,
                Env.BROKER_AUTH_TOKEN: ecs.Secret.from_secrets_manager(runtime.broker.auth_secret),
            },
            logging=ecs.LogDrivers.aws_logs(stream_prefix=service.name, log_group=self.log_group),
            stop_timeout=Duration.seconds(runtime.settings.stop_timeout_s),
            essential=True,
            health_check=ecs.HealthCheck(
                command=[
                    "CMD",
                    *(health_check or ["python", "-m", "celery_service", "healthcheck"]),
                ],
                interval=Duration.seconds(30),
                timeout=Duration.seconds(5),
                retries=3,
                start_period=Duration.seconds(60),
            ),
            port_mappings=[ecs.PortMapping(container_port=port)] if port else None,
            docker_labels={
                f"com.datadoghq.tags.{tag}": value
                for tag, value in _unified_tags(runtime, service).items()
            },
        )

    def _datadog_agent(self, service: CeleryService, agent: DatadogAgent) -> None:
        self.task_definition.add_container(
            "datadog-agent",
            image=ecs.ContainerImage.from_registry(agent.image),
            environment={
                "ECS_FARGATE": "true",
                "DD_SITE": agent.site,
                **_dd_variables(self.runtime, service),
                "DD_DOGSTATSD_NON_LOCAL_TRAFFIC": "false",
                "DD_APM_ENABLED": "false",
            },
            secrets={"DD_API_KEY": ecs.Secret.from_secrets_manager(agent.api_key)},
            logging=ecs.LogDrivers.aws_logs(
                stream_prefix=f"{service.name}-datadog", log_group=self.log_group
            ),
            # Metrics are not worth a task: if the agent dies the app keeps working.
            essential=False,
            port_mappings=[
                ecs.PortMapping(container_port=DOGSTATSD_PORT, protocol=ecs.Protocol.UDP)
            ],
            memory_reservation_mib=256,
        )

    def _grant_team_access(self, access: TaskAccess, where: str) -> None:
        """The IAM grants a worker group or beat declares, on its task role only."""
        role = self.task_definition.task_role
        stack = Stack.of(self)
        for grant in access.grants:
            bucket = stack.format_arn(service="s3", region="", account="", resource=grant.s3_bucket)
            objects = f"{bucket}/{grant.prefix or ''}*"
            if grant.access in ("read", "read_write"):
                listing = iam.PolicyStatement(actions=["s3:ListBucket"], resources=[bucket])
                if grant.prefix:
                    listing.add_condition("StringLike", {"s3:prefix": [f"{grant.prefix}*"]})
                role.add_to_principal_policy(listing)
                role.add_to_principal_policy(
                    iam.PolicyStatement(actions=["s3:GetObject"], resources=[objects])
                )
            if grant.access in ("write", "read_write"):
                role.add_to_principal_policy(
                    iam.PolicyStatement(
                        actions=["s3:PutObject", "s3:AbortMultipartUpload"], resources=[objects]
                    )
                )
            acknowledge_wildcard_resource(
                role,
                objects,
                f"{where}.grants: the objects of the bucket (under the prefix) the team grants "
                "its tasks in the environment config",
            )
        reason = f"{where}.policy_statements: declared by the team for its own tasks"
        for statement in access.policy_statements:
            role.add_to_principal_policy(
                iam.PolicyStatement(actions=statement.actions, resources=statement.resources)
            )
            # Written as the team wants them; the synth's `config warning:` names each wildcard.
            for action in statement.actions:
                if "*" in action:
                    acknowledge(role, f"AwsSolutions-IAM5[Action::{action}]", reason)
            for resource in statement.resources:
                if "*" in resource:
                    acknowledge_wildcard_resource(role, resource, reason)

    def _task_protection_policy(self) -> None:
        """Let a worker protect itself from scale-in: only tasks of its own cluster."""
        tasks = Stack.of(self).format_arn(
            service="ecs",
            resource="task",
            resource_name=f"{self.runtime.cluster.cluster_name}/*",
        )
        self.task_definition.add_to_task_role_policy(
            iam.PolicyStatement(
                actions=["ecs:UpdateTaskProtection", "ecs:GetTaskProtection"], resources=[tasks]
            )
        )
        acknowledge_wildcard_resource(
            self.task_definition.task_role,
            tasks,
            "A task learns its own ARN only at run time, so the statement names the tasks of "
            "this cluster; the ECS agent endpoint only ever acts on the calling task.",
        )

    def _acknowledge(self) -> None:
        task_definition = self.task_definition
        if self.runtime.settings.enable_exec:
            acknowledge(
                task_definition.task_role,
                "AwsSolutions-IAM5[Resource::*]",
                "ECS Exec (services.enable_exec) opens SSM message channels, whose actions "
                "have no resource-level permissions.",
            )
        acknowledge(
            task_definition.obtain_execution_role(),
            "AwsSolutions-IAM5[Resource::*]",
            "ecr:GetAuthorizationToken has no resource-level permissions (it must be '*'); "
            "image pulls, logs and secrets are granted on their own ARNs.",
        )
        acknowledge(
            task_definition.node.default_child,
            "AwsSolutions-ECS2",
            "The environment variables hold non-secret settings (broker host, queue catalog, "
            "service tags); the AUTH token and passwords are injected as ECS secrets.",
        )


def _unified_tags(runtime: CeleryRuntime, service: CeleryService) -> dict[str, str]:
    """Datadog's unified service tags: set as DD_* variables (the app, the agent) and as
    com.datadoghq.tags.* container labels (read by the agent)."""
    return {
        "env": runtime.environment_name,
        "service": service.name,
        "version": runtime.image.version,
    }


def _dd_variables(runtime: CeleryRuntime, service: CeleryService) -> dict[str, str]:
    return {f"DD_{tag.upper()}": value for tag, value in _unified_tags(runtime, service).items()}


def _container_secret(scope: Construct, variable: str, ref: SecretRef) -> ecs.Secret:
    """A team secret as an ECS secret: ECS reads it at task start with the execution role
    (which CDK grants read on exactly this secret or parameter)."""
    if ref.ssm is not None:
        parameter = ssm.StringParameter.from_secure_string_parameter_attributes(
            scope, f"Parameter-{variable}", parameter_name=ref.ssm
        )
        return ecs.Secret.from_ssm_parameter(parameter)
    name = ref.secretsmanager
    assert name is not None
    if not name.startswith("arn:"):
        secret = secretsmanager.Secret.from_secret_name_v2(scope, f"Secret-{variable}", name)
    elif re.search(r"-[A-Za-z0-9]{6}$", name):  # Secrets Manager's random suffix: complete
        secret = secretsmanager.Secret.from_secret_complete_arn(scope, f"Secret-{variable}", name)
    else:
        secret = secretsmanager.Secret.from_secret_partial_arn(scope, f"Secret-{variable}", name)
    return ecs.Secret.from_secrets_manager(secret, field=ref.field)
