"""The queue-depth autoscaler's stack: the autoscaler of the environment's worker groups."""

from __future__ import annotations

from typing import Any

from aws_cdk import Stack
from constructs import Construct

from config import EnvironmentConfig
from stacks.data_stack import DataStack
from stacks.network_stack import NetworkStack
from stacks.parts.autoscaler import Autoscaler
from stacks.services_stack import ServicesStack


class AutoscalerStack(Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvironmentConfig,
        network: NetworkStack,
        data: DataStack,
        services: ServicesStack,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.add_stack_dependency(services)  # it names the worker services by their literal names
        cluster = services.cluster.cluster_name
        workers = {name: w.service_name for name, w in services.workers.items()}
        # "Default": CDK leaves the id out of logical IDs, so the resources keep the IDs they
        # had when this stack built them itself (a changed ID replaces the function).
        self.autoscaler = Autoscaler(
            self,
            "Default",
            config=config.autoscaler,
            settings=config.autoscaler_config(cluster, workers),
            cluster_name=cluster,
            worker_services=workers,
            vpc=network.vpc,
            subnets=network.app_subnets,
            broker=data.broker,
            architecture=config.services.architecture,
            log_retention_days=config.services.log_retention_days,
        )
        self.function = self.autoscaler.function
