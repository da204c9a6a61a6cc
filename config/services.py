"""The Celery services of one environment (a worker service per worker group, the one beat,
Flower): what each is called and what its container is given, derived here once for the
stacks, the local runner and the compose file.

Pure data (no CDK): the stacks add only what exists on AWS (Datadog's tags, the metrics
sinks, secrets), the local tools only what exists on a laptop (a heartbeat file, a port).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from celery_service.contract import FLOWER_DEFAULT_USER, Env
from celery_service.settings import variables_for
from config.model import EnvironmentConfig, TaskAccess

FLOWER_PORT = 5555
Command = Literal["worker", "beat", "flower"]


@dataclass(frozen=True)
class CeleryService:
    """One Celery process kind: `python -m celery_service <command>` in its own service."""

    command: Command
    worker_group: str | None = None  # workers only

    @property
    def name(self) -> str:
        """`worker-<group>`, `beat` or `flower`: Datadog's service tag, the log stream
        prefix, and the name of the compose service and local process."""
        return f"worker-{self.worker_group}" if self.worker_group else self.command

    @property
    def config_section(self) -> str:
        """Where the config declares the service: `worker_groups.<group>`, `beat` or
        `flower` (what a finding about the team's access names)."""
        return f"worker_groups.{self.worker_group}" if self.worker_group else self.command


def worker(group: str) -> CeleryService:
    return CeleryService("worker", group)


BEAT = CeleryService("beat")
FLOWER = CeleryService("flower")


def services_of(config: EnvironmentConfig) -> list[CeleryService]:
    return [*(worker(name) for name in config.worker_groups), BEAT, FLOWER]


def ecs_service_name(config: EnvironmentConfig, service: CeleryService) -> str:
    """The ECS service's fixed name, `<project>-<env>-<name>`. Other stacks and Datadog's
    queries name a service by it, not by an export: removing a group then needs no export to
    be released first."""
    return f"{config.project}-{config.name}-{service.name}"


def worker_service_names(config: EnvironmentConfig) -> dict[str, str]:
    """Each worker group's ECS service name: what the autoscaler scales."""
    return {name: ecs_service_name(config, worker(name)) for name in config.worker_groups}


def team_access(config: EnvironmentConfig, service: CeleryService) -> TaskAccess | None:
    """What the team's code declares for the service (environment, secrets, IAM grants):
    a worker group's or beat's own; Flower runs no team code (container_environment)."""
    if service.worker_group is not None:
        # A group the catalog lacks has none: its worker refuses to start, with one line.
        return config.worker_groups.get(service.worker_group)
    return config.beat if service.command == "beat" else None


def container_environment(
    config: EnvironmentConfig,
    service: CeleryService,
    *,
    broker_host: str,
    broker_port: int | str,
    broker_tls: bool,
    shutdown_budget_s: int,
    catalog: str | None = None,
    log_level: str | None = None,
    flower_address: str = "0.0.0.0",
    flower_port: int = FLOWER_PORT,
) -> dict[str, str]:
    """The plain variables of the service's container: the team's own, then the platform's
    (which the config refuses as team names). `catalog` replaces the catalog's JSON (compose
    reads it from its .env); broker values may be CDK tokens."""
    access = team_access(config, service)
    env = dict(access.environment) if access is not None else {}
    # Flower imports none of the team's modules: it reads the broker and task events, and
    # the app's settings module may need variables or secrets only workers and beat have.
    runs_team_code = service.command != "flower"
    env |= variables_for(
        broker_host=broker_host,
        broker_port=broker_port,
        broker_tls=broker_tls,
        catalog=config.runtime_catalog_json() if catalog is None else catalog,
        task_modules=config.app.task_modules if runs_team_code else [],
        app_config_module=config.app.celery_config_module if runs_team_code else None,
        shutdown_budget_s=shutdown_budget_s,
        log_level=log_level,
    )
    if service.worker_group is not None:
        env[Env.WORKER_GROUP] = service.worker_group
    if service.command == "flower":
        env |= {
            "FLOWER_PORT": str(flower_port),
            "FLOWER_ADDRESS": flower_address,
            Env.FLOWER_USER: FLOWER_DEFAULT_USER,
        }
    return env
