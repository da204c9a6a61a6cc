"""Flower behind an ALB that never lets an unauthenticated request through: OIDC sign-in
over HTTPS when internet-facing, else reachable only from the allowed networks; Flower's
own basic auth behind either."""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import Duration, RemovalPolicy, SecretValue
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticloadbalancingv2 as elbv2
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from celery_service.contract import FLOWER_DEFAULT_USER
from config.model import FlowerConfig
from config.services import FLOWER, FLOWER_PORT
from stacks.checks import acknowledge
from stacks.parts.celery_fargate_service import CeleryFargateService, CeleryRuntime, Deployment

FLOWER_CPU, FLOWER_MEMORY_MIB = 256, 512


class Flower(CeleryFargateService):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        runtime: CeleryRuntime,
        config: FlowerConfig,
        vpc: ec2.IVpc,
        allowed_cidrs: list[str],
        service_name: str,
        environment: Mapping[str, str],
    ) -> None:
        super().__init__(
            scope,
            construct_id,
            runtime=runtime,
            service=FLOWER,
            service_name=service_name,
            environment=environment,
            cpu=FLOWER_CPU,
            memory_mib=FLOWER_MEMORY_MIB,
            deployment=Deployment(
                desired_count=1, min_healthy_percent=100, max_healthy_percent=200
            ),
            port=FLOWER_PORT,
            health_check=["python", "-m", "celery_service", "healthcheck", "flower"],
        )
        self.internet_facing = config.internet_facing
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
        self.container.add_secret("FLOWER_PASSWORD", ecs.Secret.from_secrets_manager(self.password))

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
            vpc=vpc,
            description="Flower load balancer",
            allow_all_outbound=False,
        )
        self.alb = elbv2.ApplicationLoadBalancer(
            self,
            "Alb",
            vpc=vpc,
            internet_facing=config.internet_facing,
            vpc_subnets=ec2.SubnetSelection(subnet_type=ec2.SubnetType.PUBLIC)
            if config.internet_facing
            else runtime.subnets,
            security_group=self.security_group,
            drop_invalid_header_fields=True,
        )
        self.alb.log_access_logs(self.logs_bucket, prefix="flower")
        target_group = elbv2.ApplicationTargetGroup(
            self,
            "Targets",
            vpc=vpc,
            port=FLOWER_PORT,
            protocol=elbv2.ApplicationProtocol.HTTP,
            targets=[self.service],
            # Flower exempts /healthcheck from its own auth: the ALB can check it.
            health_check=elbv2.HealthCheck(path="/healthcheck", healthy_http_codes="200"),
            deregistration_delay=Duration.seconds(10),
        )
        if config.internet_facing:
            self.listener = self._https_listener(config, target_group)
        else:
            self.listener = self._internal_listener(allowed_cidrs, target_group)
        # Flower serves Prometheus metrics without auth: never through the ALB.
        self.listener.add_action(
            "BlockMetrics",
            priority=1,
            conditions=[elbv2.ListenerCondition.path_patterns(["/metrics", "/metrics/*"])],
            action=elbv2.ListenerAction.fixed_response(
                403, content_type="text/plain", message_body="Forbidden"
            ),
        )

    @property
    def load_balancer_dimensions(self) -> dict[str, str]:
        """The CloudWatch dimensions of the load balancer's metrics (its 5xx counts)."""
        return {"LoadBalancer": self.alb.load_balancer_full_name}

    @property
    def url(self) -> str:
        scheme = "https" if self.internet_facing else "http"
        return f"{scheme}://{self.alb.load_balancer_dns_name}/"

    def _https_listener(
        self, config: FlowerConfig, target_group: elbv2.ApplicationTargetGroup
    ) -> elbv2.ApplicationListener:
        assert config.certificate_arn  # validated with the config
        assert config.oidc_client_secret_name
        self.alb.add_redirect(source_port=80, target_port=443)
        listener = self.alb.add_listener(
            "Https",
            port=443,
            protocol=elbv2.ApplicationProtocol.HTTPS,
            ssl_policy=elbv2.SslPolicy.RECOMMENDED_TLS,
            certificates=[elbv2.ListenerCertificate.from_arn(config.certificate_arn)],
            default_action=elbv2.ListenerAction.authenticate_oidc(
                issuer=str(config.oidc_issuer),
                authorization_endpoint=str(config.oidc_authorization_endpoint),
                token_endpoint=str(config.oidc_token_endpoint),
                user_info_endpoint=str(config.oidc_user_info_endpoint),
                client_id=str(config.oidc_client_id),
                client_secret=SecretValue.secrets_manager(config.oidc_client_secret_name),
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
        self, allowed_cidrs: list[str], target_group: elbv2.ApplicationTargetGroup
    ) -> elbv2.ApplicationListener:
        listener = self.alb.add_listener(
            "Http",
            port=80,
            protocol=elbv2.ApplicationProtocol.HTTP,
            default_action=elbv2.ListenerAction.forward([target_group]),
            open=False,
        )
        for cidr in allowed_cidrs:
            self.security_group.add_ingress_rule(
                ec2.Peer.ipv4(cidr), ec2.Port.tcp(80), "Flower from allowed networks"
            )
        return listener
