"""Compose one environment's stacks. `app.py` and the tests both build through here."""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import App, Environment, Stack, Tags

from config import EnvironmentConfig
from stacks.autoscaler_stack import AutoscalerStack
from stacks.data_stack import DataStack
from stacks.monitoring_stack import MonitoringStack
from stacks.network_stack import NetworkStack
from stacks.services_stack import ServicesStack


@dataclass(frozen=True)
class Platform:
    network: NetworkStack
    data: DataStack
    services: ServicesStack
    autoscaler: AutoscalerStack
    monitoring: MonitoringStack

    @property
    def stacks(self) -> list[Stack]:
        return [self.network, self.data, self.services, self.autoscaler, self.monitoring]


def build_platform(app: App, config: EnvironmentConfig) -> Platform:
    prefix = f"{config.project}-{config.name}"
    env = Environment(account=config.account, region=config.region)
    # Where data must survive (removal policy snapshot or retain), deleting the stateful
    # stacks takes turning termination protection off first.
    protected = config.redis.removal_policy != "destroy"
    network = NetworkStack(
        app,
        f"{prefix}-network",
        config=config,
        env=env,
        description=f"Celery platform {config.name}: VPC, flow logs, endpoints",
        termination_protection=protected,
    )
    data = DataStack(
        app,
        f"{prefix}-data",
        config=config,
        network=network,
        env=env,
        description=f"Celery platform {config.name}: Redis broker (stateful)",
        termination_protection=protected,
    )
    services = ServicesStack(
        app,
        f"{prefix}-services",
        config=config,
        network=network,
        data=data,
        env=env,
        description=f"Celery platform {config.name}: workers, beat, Flower",
    )
    autoscaler = AutoscalerStack(
        app,
        f"{prefix}-autoscaler",
        config=config,
        network=network,
        data=data,
        services=services,
        env=env,
        description=f"Celery platform {config.name}: queue-depth autoscaler",
    )
    monitoring = MonitoringStack(
        app,
        f"{prefix}-monitoring",
        config=config,
        data=data,
        services=services,
        autoscaler=autoscaler,
        env=env,
        description=f"Celery platform {config.name}: alarms and dashboard",
    )
    platform = Platform(
        network=network,
        data=data,
        services=services,
        autoscaler=autoscaler,
        monitoring=monitoring,
    )
    for stack in platform.stacks:
        Tags.of(stack).add("project", config.project)
        Tags.of(stack).add("environment", config.name)
        for key, value in config.tags.items():
            Tags.of(stack).add(key, value)
    return platform
