"""What every Celery task definition shares: the image, broker settings, the AUTH token as
an ECS secret, logs, and the optional Datadog agent sidecar."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from aws_cdk import Duration
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk.aws_ecr_assets import Platform
from constructs import Construct

from config import EnvironmentConfig
from stacks.redis_broker import RedisBroker
from stacks.retention import log_retention

IMAGE_DIR = Path(__file__).resolve().parent.parent / "worker_image"
APP_CONTAINER = "celery"
DOGSTATSD_PORT = 8125
# The worker's SIGTERM budget stays this far (seconds) below Fargate's stop timeout, so the
# requeue of unfinished tasks happens before the SIGKILL.
SHUTDOWN_MARGIN_S = 15


def image_version() -> str:
    """A version for Datadog's unified tags: a digest of the image's build context, so it
    changes exactly when the image does (computed from files, no git call at synth)."""
    digest = hashlib.sha256()
    for path in sorted(IMAGE_DIR.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
            digest.update(str(path.relative_to(IMAGE_DIR)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


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
    image = ecs.ContainerImage.from_asset(
        str(IMAGE_DIR),
        platform=Platform.LINUX_ARM64 if arm else Platform.LINUX_AMD64,
    )
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
    return Runtime(
        config=config,
        broker=broker,
        image=image,
        platform=platform,
        datadog_api_key=api_key,
        version=image_version(),
    )


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
) -> ecs.ContainerDefinition:
    """The app container of a worker, beat or Flower task, and the agent sidecar if enabled."""
    config = runtime.config
    env = {
        "CELERY_BROKER_HOST": runtime.broker.endpoint_address,
        "CELERY_BROKER_PORT": str(runtime.broker.port),
        "CELERY_BROKER_TLS": "true",
        "CELERY_CATALOG": json.dumps(config.runtime_catalog(), sort_keys=True),
        "CELERY_SHUTDOWN_BUDGET_S": str(config.services.stop_timeout_s - SHUTDOWN_MARGIN_S),
        "DD_ENV": config.name,
        "DD_SERVICE": service,
        "DD_VERSION": runtime.version,
        **(environment or {}),
    }
    if config.task_metrics_in_cloudwatch:
        env["CELERY_METRICS_EMF"] = "true"  # the log driver ships the EMF lines to CloudWatch
    if config.datadog.enabled:
        env["DD_AGENT_HOST"] = "127.0.0.1"  # the sidecar shares the task's network namespace
        env["DD_DOGSTATSD_PORT"] = str(DOGSTATSD_PORT)
    container = task_definition.add_container(
        APP_CONTAINER,
        image=runtime.image,
        command=command,
        environment=env,
        secrets={
            "CELERY_BROKER_AUTH_TOKEN": ecs.Secret.from_secrets_manager(runtime.broker.auth_secret),
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
