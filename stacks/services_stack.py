"""Stateless services: one ECS worker service per worker group, the one beat, and Flower."""

from __future__ import annotations

from typing import Any

import jsii
from aws_cdk import AspectPriority, Aspects, CfnOutput, IAspect, Stack
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct, IConstruct

from config import EnvironmentConfig
from config.services import (
    BEAT,
    FLOWER,
    CeleryService,
    container_environment,
    ecs_service_name,
    worker,
)
from stacks.data_stack import DataStack
from stacks.network_stack import NetworkStack
from stacks.parts.app_image import app_image
from stacks.parts.beat import Beat
from stacks.parts.celery_fargate_service import CeleryRuntime, DatadogAgent
from stacks.parts.flower import Flower
from stacks.parts.worker_group import WorkerGroup


class ServicesStack(Stack):
    """Composes the services and grants each one access to the broker."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvironmentConfig,
        network: NetworkStack,
        data: DataStack,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.cluster = ecs.Cluster(
            self,
            "Cluster",
            vpc=network.vpc,
            container_insights_v2=ecs.ContainerInsights.ENHANCED,
            enable_fargate_capacity_providers=True,
        )
        datadog = config.datadog
        runtime = CeleryRuntime(
            environment_name=config.name,
            cluster=self.cluster,
            subnets=network.app_subnets,
            image=app_image(self, config.app.image, config.services.architecture),
            broker=data.broker,
            settings=config.services,
            emf_metrics=config.task_metrics_in_cloudwatch,
            datadog=DatadogAgent(
                image=datadog.agent_image,
                site=datadog.site,
                api_key=secretsmanager.Secret.from_secret_name_v2(
                    self, "DatadogApiKey", datadog.api_key_secret_name
                ),
            )
            if datadog.enabled
            else None,
        )

        def environment(service: CeleryService) -> dict[str, str]:
            return container_environment(
                config,
                service,
                broker_host=data.broker.endpoint_address,
                broker_port=data.broker.port,
                broker_tls=True,
                shutdown_budget_s=runtime.shutdown_budget_s,
            )

        self.workers = {
            name: WorkerGroup(
                self,
                f"Worker-{name}",
                runtime=runtime,
                group_name=name,
                group=group,
                service_name=ecs_service_name(config, worker(name)),
                environment=environment(worker(name)),
            )
            for name, group in config.worker_groups.items()
        }
        self.beat = Beat(
            self,
            "Beat",
            runtime=runtime,
            config=config.beat,
            service_name=ecs_service_name(config, BEAT),
            environment=environment(BEAT),
        )
        self.flower = Flower(
            self,
            "Flower",
            runtime=runtime,
            config=config.flower,
            vpc=network.vpc,
            allowed_cidrs=config.flower.allowed_cidrs
            or [
                config.network.cidr if config.network.vpc_id is None else network.vpc.vpc_cidr_block
            ],
            service_name=ecs_service_name(config, FLOWER),
            environment=environment(FLOWER),
        )

        services = [
            *(w.service for w in self.workers.values()),
            self.beat.service,
            self.flower.service,
        ]
        Aspects.of(self.cluster).add(
            _AfterCapacityProviders(services),
            priority=AspectPriority.DEFAULT,  # after CDK's own, which creates the association
        )
        CfnOutput(self, "FlowerUrl", value=self.flower.url)
        CfnOutput(self, "FlowerPasswordSecretArn", value=self.flower.password.secret_arn)
        CfnOutput(self, "ClusterName", value=self.cluster.cluster_name)

        for service in services:
            data.broker.grant_connect(service)


@jsii.implements(IAspect)
class _AfterCapacityProviders:
    """Makes the services depend on the cluster's capacity-provider association, so
    `cdk destroy` deletes them first: deleting the association while a service still uses
    it fails ("capacity provider is in use"). CDK creates the association in an aspect of
    its own, hence one here too."""

    def __init__(self, services: list[ecs.FargateService]) -> None:
        self.services = services

    def visit(self, node: IConstruct) -> None:
        if isinstance(node, ecs.CfnClusterCapacityProviderAssociations):
            for service in self.services:
                service.node.add_dependency(node)
