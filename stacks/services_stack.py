"""Stateless services: one ECS worker service per worker group, the one beat, and Flower."""

from __future__ import annotations

from typing import Any

import jsii
from aws_cdk import (
    AspectPriority,
    Aspects,
    CfnOutput,
    Duration,
    IAspect,
    RemovalPolicy,
    SecretValue,
    Stack,
)
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct, IConstruct

from celery_service.contract import FLOWER_DEFAULT_USER, Env
from config import EnvironmentConfig, WorkerGroupConfig
from stacks.celery_containers import (
    Runtime,
    add_celery_container,
    build_runtime,
    grant_team_access,
    service_log_group,
)
from stacks.checks import acknowledge, acknowledge_wildcard_resource
from stacks.data_stack import DataStack
from stacks.network_stack import NetworkStack

FLOWER_PORT = 5555
BEAT_CPU, BEAT_MEMORY_MIB = 256, 512
FLOWER_CPU, FLOWER_MEMORY_MIB = 256, 512


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
        runtime = build_runtime(self, config, data.broker)
        prefix = f"{config.project}-{config.name}"
        self.workers: dict[str, WorkerService] = {}
        for name, group in config.worker_groups.items():
            self.workers[name] = WorkerService(
                self,
                f"Worker-{name}",
                runtime=runtime,
                cluster=self.cluster,
                subnets=network.app_subnets,
                group_name=name,
                group=group,
                service_name=f"{prefix}-worker-{name}",
            )
        self.beat = BeatService(
            self,
            "Beat",
            runtime=runtime,
            cluster=self.cluster,
            subnets=network.app_subnets,
            service_name=f"{prefix}-beat",
        )
        self.flower = FlowerService(
            self,
            "Flower",
            runtime=runtime,
            cluster=self.cluster,
            network=network,
            service_name=f"{prefix}-flower",
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

        scheme = "https" if config.flower.internet_facing else "http"
        CfnOutput(self, "FlowerUrl", value=f"{scheme}://{self.flower.alb.load_balancer_dns_name}/")
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


def _task_protection_policy(
    task_definition: ecs.FargateTaskDefinition, cluster: ecs.ICluster
) -> None:
    """Let a worker protect itself from scale-in: only tasks of its own cluster."""
    stack = Stack.of(task_definition)
    tasks = stack.format_arn(
        service="ecs", resource="task", resource_name=f"{cluster.cluster_name}/*"
    )
    task_definition.add_to_task_role_policy(
        iam.PolicyStatement(
            actions=["ecs:UpdateTaskProtection", "ecs:GetTaskProtection"], resources=[tasks]
        )
    )
    acknowledge_wildcard_resource(
        task_definition.task_role,
        tasks,
        "A task learns its own ARN only at run time, so the statement names the tasks of this "
        "cluster; the ECS agent endpoint only ever acts on the calling task.",
    )


class WorkerService(Construct):
    """The ECS service of one worker group: consumes only its catalog queues."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        runtime: Runtime,
        cluster: ecs.ICluster,
        subnets: ec2.SubnetSelection,
        group_name: str,
        group: WorkerGroupConfig,
        service_name: str,
    ) -> None:
        super().__init__(scope, construct_id)
        config = runtime.config
        self.group_name = group_name
        # Other stacks name the service by this literal, not by an export: removing a group
        # then needs no export to be released first.
        self.service_name = service_name
        self.task_definition = ecs.FargateTaskDefinition(
            self,
            "Task",
            cpu=group.cpu,
            memory_limit_mib=group.memory_mib,
            runtime_platform=runtime.platform,
        )
        self.container = add_celery_container(
            self.task_definition,
            runtime,
            service=f"worker-{group_name}",
            command=["worker"],
            log_group=service_log_group(self, "Logs", config),
            environment={Env.WORKER_GROUP: group_name},
            access=group,
        )
        grant_team_access(self.task_definition, group, f"worker_groups.{group_name}")
        _task_protection_policy(self.task_definition, cluster)
        capacity = "FARGATE_SPOT" if config.services.fargate_spot else "FARGATE"
        self.service = ecs.FargateService(
            self,
            "Service",
            cluster=cluster,
            service_name=service_name,
            task_definition=self.task_definition,
            # No DesiredCount: CloudFormation starts a new service with one task and keeps
            # the live count on every update, so a deploy never undoes the autoscaler, which
            # brings the count into min_tasks..max_tasks on its next run.
            desired_count=None,
            vpc_subnets=subnets,
            assign_public_ip=False,
            capacity_provider_strategies=[
                ecs.CapacityProviderStrategy(capacity_provider=capacity, weight=1)
            ],
            min_healthy_percent=100,
            max_healthy_percent=200,
            circuit_breaker=ecs.DeploymentCircuitBreaker(enable=True, rollback=True),
            enable_execute_command=config.services.enable_exec,
            propagate_tags=ecs.PropagatedTagSource.SERVICE,
        )
        _acknowledge_task_definition(self.task_definition, runtime.config)


class BeatService(Construct):
    """Exactly one beat: never scaled, and a deployment stops the old one first."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        runtime: Runtime,
        cluster: ecs.ICluster,
        subnets: ec2.SubnetSelection,
        service_name: str,
    ) -> None:
        super().__init__(scope, construct_id)
        self.task_definition = ecs.FargateTaskDefinition(
            self,
            "Task",
            cpu=BEAT_CPU,
            memory_limit_mib=BEAT_MEMORY_MIB,
            runtime_platform=runtime.platform,
        )
        add_celery_container(
            self.task_definition,
            runtime,
            service="beat",
            command=["beat"],
            log_group=service_log_group(self, "Logs", runtime.config),
            access=runtime.config.beat,
        )
        grant_team_access(self.task_definition, runtime.config.beat, "beat")
        self.service = ecs.FargateService(
            self,
            "Service",
            cluster=cluster,
            service_name=service_name,
            task_definition=self.task_definition,
            desired_count=1,
            vpc_subnets=subnets,
            assign_public_ip=False,
            # 0 % / 100 %: the old beat stops before the new one starts. The RedBeat lock
            # covers what ECS cannot (a task that looks dead but still runs).
            min_healthy_percent=0,
            max_healthy_percent=100,
            circuit_breaker=ecs.DeploymentCircuitBreaker(enable=True, rollback=True),
            enable_execute_command=runtime.config.services.enable_exec,
            propagate_tags=ecs.PropagatedTagSource.SERVICE,
        )
        _acknowledge_task_definition(self.task_definition, runtime.config)


class FlowerService(Construct):
    """Flower behind an ALB that never lets an unauthenticated request through."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        runtime: Runtime,
        cluster: ecs.ICluster,
        network: NetworkStack,
        service_name: str,
    ) -> None:
        super().__init__(scope, construct_id)
        config = runtime.config
        flower = config.flower
        self.password = secretsmanager.Secret(
            self,
            "Password",
            description=f"Flower basic auth password (user {FLOWER_DEFAULT_USER})",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                password_length=32, exclude_punctuation=True
            ),
        )
        acknowledge(
            self.password,
            "AwsSolutions-SMG4",
            "The Flower password is a second layer behind the load balancer; rotate it by "
            "changing the secret and redeploying the Flower service (it reads it at start).",
        )
        self.task_definition = ecs.FargateTaskDefinition(
            self,
            "Task",
            cpu=FLOWER_CPU,
            memory_limit_mib=FLOWER_MEMORY_MIB,
            runtime_platform=runtime.platform,
        )
        add_celery_container(
            self.task_definition,
            runtime,
            service="flower",
            command=["flower"],
            log_group=service_log_group(self, "Logs", config),
            environment={
                "FLOWER_PORT": str(FLOWER_PORT),
                "FLOWER_ADDRESS": "0.0.0.0",  # the task's own interface, behind the ALB
                Env.FLOWER_USER: FLOWER_DEFAULT_USER,
            },
            secrets={"FLOWER_PASSWORD": ecs.Secret.from_secrets_manager(self.password)},
            port=FLOWER_PORT,
            health_check=["python", "-m", "celery_service", "healthcheck", "flower"],
        )
        self.service = ecs.FargateService(
            self,
            "Service",
            cluster=cluster,
            service_name=service_name,
            task_definition=self.task_definition,
            desired_count=1,
            vpc_subnets=network.app_subnets,
            assign_public_ip=False,
            min_healthy_percent=100,
            max_healthy_percent=200,
            circuit_breaker=ecs.DeploymentCircuitBreaker(enable=True, rollback=True),
            enable_execute_command=config.services.enable_exec,
            propagate_tags=ecs.PropagatedTagSource.SERVICE,
        )
        _acknowledge_task_definition(self.task_definition, runtime.config)

        self.logs_bucket = s3.Bucket(
            self,
            "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,  # the only kind ALB logs accept
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            removal_policy=RemovalPolicy.RETAIN,
            lifecycle_rules=[s3.LifecycleRule(expiration=Duration.days(90))],
        )
        acknowledge(
            self.logs_bucket.node.default_child,
            "AwsSolutions-S1",
            "This bucket receives the ALB's access logs; logging its own reads would need "
            "another bucket for a log of logs.",
        )
        self.security_group = ec2.SecurityGroup(
            self,
            "AlbSecurityGroup",
            vpc=network.vpc,
            description="Flower load balancer",
            allow_all_outbound=False,
        )
        self.alb = elbv2.ApplicationLoadBalancer(
            self,
            "Alb",
            vpc=network.vpc,
            internet_facing=flower.internet_facing,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC)
            if flower.internet_facing
            else network.app_subnets,
            security_group=self.security_group,
            drop_invalid_header_fields=True,
        )
        self.alb.log_access_logs(self.logs_bucket, prefix="flower")
        target_group = elbv2.ApplicationTargetGroup(
            self,
            "Targets",
            vpc=network.vpc,
            port=FLOWER_PORT,
            protocol=elbv2.ApplicationProtocol.HTTP,
            targets=[self.service],
            # Flower exempts /healthcheck from its own auth: the ALB can check it.
            health_check=elbv2.HealthCheck(path="/healthcheck", healthy_http_codes="200"),
            deregistration_delay=Duration.seconds(10),
        )
        if flower.internet_facing:
            self.listener = self._https_listener(config, target_group)
        else:
            self.listener = self._internal_listener(config, network, target_group)
        # Flower serves Prometheus metrics without auth: never through the ALB.
        self.listener.add_action(
            "BlockMetrics",
            priority=1,
            conditions=[elbv2.ListenerCondition.path_patterns(["/metrics", "/metrics/*"])],
            action=elbv2.ListenerAction.fixed_response(
                403, content_type="text/plain", message_body="Forbidden"
            ),
        )

    def _https_listener(
        self, config: EnvironmentConfig, target_group: elbv2.ApplicationTargetGroup
    ) -> elbv2.ApplicationListener:
        flower = config.flower
        assert flower.certificate_arn  # validated with the config
        assert flower.oidc_client_secret_name
        self.alb.add_redirect(source_port=80, target_port=443)
        listener = self.alb.add_listener(
            "Https",
            port=443,
            protocol=elbv2.ApplicationProtocol.HTTPS,
            ssl_policy=elbv2.SslPolicy.RECOMMENDED_TLS,
            certificates=[elbv2.ListenerCertificate.from_arn(flower.certificate_arn)],
            default_action=elbv2.ListenerAction.authenticate_oidc(
                issuer=str(flower.oidc_issuer),
                authorization_endpoint=str(flower.oidc_authorization_endpoint),
                token_endpoint=str(flower.oidc_token_endpoint),
                user_info_endpoint=str(flower.oidc_user_info_endpoint),
                client_id=str(flower.oidc_client_id),
                client_secret=SecretValue.secrets_manager(flower.oidc_client_secret_name),
                next=elbv2.ListenerAction.forward([target_group]),
            ),
            open=True,
        )
        acknowledge(
            self.security_group,
            "AwsSolutions-EC23",
            "This environment's config makes Flower internet-facing: HTTPS only (HTTP "
            "redirects), and every request must sign in through OIDC before it is forwarded.",
        )
        return listener

    def _internal_listener(
        self,
        config: EnvironmentConfig,
        network: NetworkStack,
        target_group: elbv2.ApplicationTargetGroup,
    ) -> elbv2.ApplicationListener:
        listener = self.alb.add_listener(
            "Http",
            port=80,
            protocol=elbv2.ApplicationProtocol.HTTP,
            default_action=elbv2.ListenerAction.forward([target_group]),
            open=False,
        )
        cidrs = config.flower.allowed_cidrs or [
            config.network.cidr if config.network.vpc_id is None else network.vpc.vpc_cidr_block
        ]
        for cidr in cidrs:
            self.security_group.add_ingress_rule(
                ec2.Peer.ipv4(cidr), ec2.Port.tcp(80), "Flower from allowed networks"
            )
        return listener


def _acknowledge_task_definition(
    task_definition: ecs.FargateTaskDefinition, config: EnvironmentConfig
) -> None:
    if config.services.enable_exec:
        acknowledge(
            task_definition.task_role,
            "AwsSolutions-IAM5[Resource::*]",
            "ECS Exec (services.enable_exec) opens SSM message channels, whose actions have "
            "no resource-level permissions.",
        )
    acknowledge(
        task_definition.obtain_execution_role(),
        "AwsSolutions-IAM5[Resource::*]",
        "ecr:GetAuthorizationToken has no resource-level permissions (it must be '*'); image "
        "pulls, logs and secrets are granted on their own ARNs.",
    )
    acknowledge(
        task_definition.node.default_child,
        "AwsSolutions-ECS2",
        "The environment variables hold non-secret settings (broker host, queue catalog, "
        "service tags); the AUTH token and passwords are injected as ECS secrets.",
    )
