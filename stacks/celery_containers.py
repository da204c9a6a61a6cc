"""What every Celery task definition shares: the image (the team's app, built or prebuilt),
broker settings, the AUTH token as an ECS secret, logs, the optional Datadog agent sidecar,
and what the team's code needs (its environment, secrets and IAM grants)."""

from __future__ import annotations

import functools
import importlib.metadata
import re
from dataclasses import dataclass
from pathlib import Path

from aws_cdk import Duration, FileSystem, IgnoreMode, Stack
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_ssm as ssm
from aws_cdk.aws_ecr_assets import Platform
from constructs import Construct

from celery_service.contract import Env
from celery_service.settings import variables_for
from config import EnvironmentConfig
from config.model import ImageConfig, SecretRef, TaskAccess
from stacks.checks import acknowledge, acknowledge_wildcard_resource
from stacks.redis_broker import RedisBroker
from stacks.retention import log_retention

IMAGE_DIR = Path(__file__).resolve().parent.parent / "worker_image"
APP_CONTAINER = "celery"
DOGSTATSD_PORT = 8125
# The worker's SIGTERM budget stays this far (seconds) below Fargate's stop timeout, so the
# requeue of unfinished tasks happens before the SIGKILL.
SHUTDOWN_MARGIN_S = 15


@functools.cache  # the same files for every stack and environment of one synthesis
def runtime_fingerprint() -> str:
    """A digest of the runtime package's build context (worker_image/ minus what its
    .dockerignore leaves out): it changes exactly when the image built from it does."""
    ignore = (IMAGE_DIR / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in ignore if line.strip() and not line.startswith("#")]
    return FileSystem.fingerprint(str(IMAGE_DIR), exclude=patterns, ignore_mode=IgnoreMode.DOCKER)


# The base image a team's Dockerfile starts FROM (`ARG CELERY_PLATFORM_IMAGE`): this tag,
# built from worker_image/ on the deploying machine (`make base-image`), or an image the team
# pushed to its registry, named in app.image.build_args.
BASE_IMAGE_ARG = "CELERY_PLATFORM_IMAGE"
BASE_IMAGE_TAG = f"celery-platform-runtime:{importlib.metadata.version('celery-platform-runtime')}"
# `make base-image` labels the image with the runtime fingerprint it was built from, so the
# deploy preflight can tell a base image older than worker_image/ (same tag, older code).
BASE_IMAGE_LABEL = "org.celery-platform.runtime-fingerprint"


def base_image_build_options() -> list[str]:
    """`docker build` options of the base image: its tag and its fingerprint label."""
    return ["-t", BASE_IMAGE_TAG, "--label", f"{BASE_IMAGE_LABEL}={runtime_fingerprint()}"]


@dataclass(frozen=True)
class Runtime:
    """Shared inputs of the Celery task definitions of one environment."""

    config: EnvironmentConfig
    broker: RedisBroker
    image: ecs.ContainerImage
    platform: ecs.RuntimePlatform
    datadog_api_key: secretsmanager.ISecret | None
    version: str


def build_runtime(scope: Construct, config: EnvironmentConfig, broker: RedisBroker) -> Runtime:
    arm = config.services.architecture == "arm64"
    platform = ecs.RuntimePlatform(
        cpu_architecture=ecs.CpuArchitecture.ARM64 if arm else ecs.CpuArchitecture.X86_64,
        operating_system_family=ecs.OperatingSystemFamily.LINUX,
    )
    api_key = None
    if config.datadog.enabled:
        # Imported by name: the key is created outside the stack and never enters a template.
        api_key = secretsmanager.Secret.from_secret_name_v2(
            scope, "DatadogApiKey", config.datadog.api_key_secret_name
        )
    image, version = _app_image(
        scope, config.app.image, Platform.LINUX_ARM64 if arm else Platform.LINUX_AMD64
    )
    return Runtime(
        config=config,
        broker=broker,
        image=image,
        platform=platform,
        datadog_api_key=api_key,
        version=version,
    )


def _app_image(
    scope: Construct, source: ImageConfig, platform: Platform
) -> tuple[ecs.ContainerImage, str]:
    """The image and its version for Datadog's unified tags (the asset's hash or the digest,
    so it changes exactly when the image does; no git call at synth)."""
    image: ecs.ContainerImage
    if source.repository is not None and source.digest is not None:
        if source.repository.startswith("arn:"):
            repository = ecr.Repository.from_repository_arn(
                scope, "AppRepository", source.repository
            )
        else:
            repository = ecr.Repository.from_repository_name(
                scope, "AppRepository", source.repository
            )
        image = ecs.ContainerImage.from_ecr_repository(repository, tag=source.digest)
        return image, source.digest.removeprefix("sha256:")[:12]
    assert source.build_dir is not None  # one of the two, by validation
    asset = ecr_assets.DockerImageAsset(
        scope,
        "AppImage",
        directory=source.build_dir,
        platform=platform,
        build_args={BASE_IMAGE_ARG: BASE_IMAGE_TAG, **source.build_args},
        # The base it builds FROM is another directory: its changes must rebuild this too.
        extra_hash=runtime_fingerprint(),
    )
    # The asset's own hash: the files its .dockerignore keeps, the build arguments, the
    # platform and the base. A README or a __pycache__ changes nothing, so restarts nothing.
    return ecs.ContainerImage.from_docker_image_asset(asset), asset.asset_hash[:12]


def container_secret(scope: Construct, variable: str, ref: SecretRef) -> ecs.Secret:
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


def grant_team_access(
    task_definition: ecs.FargateTaskDefinition, access: TaskAccess, where: str
) -> None:
    """The IAM grants a worker group or beat declares, on its task role only."""
    role = task_definition.task_role
    stack = Stack.of(task_definition)
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


def add_celery_container(
    task_definition: ecs.FargateTaskDefinition,
    runtime: Runtime,
    *,
    service: str,
    command: list[str],
    log_group: logs.ILogGroup,
    environment: dict[str, str] | None = None,
    secrets: dict[str, ecs.Secret] | None = None,
    port: int | None = None,
    health_check: list[str] | None = None,
    access: TaskAccess | None = None,
) -> ecs.ContainerDefinition:
    """The app container of a worker, beat or Flower task, and the agent sidecar if enabled."""
    config = runtime.config
    env = {
        **variables_for(
            broker_host=runtime.broker.endpoint_address,
            broker_port=runtime.broker.port,
            broker_tls=True,
            catalog=config.runtime_catalog_json(),
            task_modules=config.app.task_modules,
            app_config_module=config.app.celery_config_module,
            shutdown_budget_s=config.services.stop_timeout_s - SHUTDOWN_MARGIN_S,
        ),
        "DD_ENV": config.name,
        "DD_SERVICE": service,
        "DD_VERSION": runtime.version,
        **(environment or {}),
    }
    if config.task_metrics_in_cloudwatch:
        env[Env.METRICS_EMF] = "true"  # the log driver ships the EMF lines to CloudWatch
    if config.datadog.enabled:
        env[Env.STATSD_HOST] = "127.0.0.1"  # the sidecar shares the task's network namespace
        env[Env.STATSD_PORT] = str(DOGSTATSD_PORT)
    team_secrets = {}
    if access is not None:
        env = {**access.environment, **env}  # the platform's names are refused in config
        team_secrets = {
            variable: container_secret(task_definition, variable, ref)
            for variable, ref in access.secrets.items()
        }
    container = task_definition.add_container(
        APP_CONTAINER,
        image=runtime.image,
        command=command,
        environment=env,
        secrets={
            **team_secrets,
            Env.BROKER_AUTH_TOKEN: ecs.Secret.from_secrets_manager(runtime.broker.auth_secret),
            **(secrets or {}),
        },
        logging=ecs.LogDrivers.aws_logs(stream_prefix=service, log_group=log_group),
        stop_timeout=Duration.seconds(config.services.stop_timeout_s),
        essential=True,
        health_check=ecs.HealthCheck(
            command=["CMD", *(health_check or ["python", "-m", "celery_service", "healthcheck"])],
            interval=Duration.seconds(30),
            timeout=Duration.seconds(5),
            retries=3,
            start_period=Duration.seconds(60),
        ),
        port_mappings=[ecs.PortMapping(container_port=port)] if port else None,
        docker_labels=_unified_tags(config.name, service, runtime.version),
    )
    if runtime.datadog_api_key is not None:
        _add_datadog_agent(task_definition, runtime, service=service, log_group=log_group)
    return container


def _add_datadog_agent(
    task_definition: ecs.FargateTaskDefinition,
    runtime: Runtime,
    *,
    service: str,
    log_group: logs.ILogGroup,
) -> None:
    config = runtime.config
    assert runtime.datadog_api_key is not None
    task_definition.add_container(
        "datadog-agent",
        image=ecs.ContainerImage.from_registry(config.datadog.agent_image),
        environment={
            "ECS_FARGATE": "true",
            "DD_SITE": config.datadog.site,
            "DD_ENV": config.name,
            "DD_SERVICE": service,
            "DD_VERSION": runtime.version,
            "DD_DOGSTATSD_NON_LOCAL_TRAFFIC": "false",
            "DD_APM_ENABLED": "false",
        },
        secrets={"DD_API_KEY": ecs.Secret.from_secrets_manager(runtime.datadog_api_key)},
        logging=ecs.LogDrivers.aws_logs(stream_prefix=f"{service}-datadog", log_group=log_group),
        # Metrics are not worth a task: if the agent dies the app keeps working.
        essential=False,
        port_mappings=[ecs.PortMapping(container_port=DOGSTATSD_PORT, protocol=ecs.Protocol.UDP)],
        memory_reservation_mib=256,
    )


def _unified_tags(env: str, service: str, version: str) -> dict[str, str]:
    """Datadog's unified service tags as container labels (read by the agent)."""
    return {
        "com.datadoghq.tags.env": env,
        "com.datadoghq.tags.service": service,
        "com.datadoghq.tags.version": version,
    }


def service_log_group(
    scope: Construct, construct_id: str, config: EnvironmentConfig
) -> logs.LogGroup:
    return logs.LogGroup(
        scope, construct_id, retention=log_retention(config.services.log_retention_days)
    )
