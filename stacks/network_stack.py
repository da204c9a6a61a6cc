"""The VPC every other stack places its resources in: new (with flow logs) or imported."""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnResource, RemovalPolicy, Stack
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_logs as logs
from constructs import Construct

from config import EnvironmentConfig
from stacks.retention import log_retention

# What a private Fargate task or the autoscaler calls without a NAT gateway, and who calls it.
# Not here: the ECS agent and telemetry endpoints (EC2 container instances only; Fargate's
# agent is AWS's), and CloudWatch metrics (every metric is an EMF log line).
INTERFACE_ENDPOINTS: dict[str, ec2.InterfaceVpcEndpointAwsService] = {
    "EcrApi": ec2.InterfaceVpcEndpointAwsService.ECR,  # image pulls: auth and manifests
    "EcrDocker": ec2.InterfaceVpcEndpointAwsService.ECR_DOCKER,  # (layers: the S3 gateway)
    "Logs": ec2.InterfaceVpcEndpointAwsService.CLOUDWATCH_LOGS,  # container logs, EMF metrics
    "SecretsManager": ec2.InterfaceVpcEndpointAwsService.SECRETS_MANAGER,  # ECS secrets, token
    "Ecs": ec2.InterfaceVpcEndpointAwsService.ECS,  # the autoscaler's Describe/UpdateService
    # ECS secrets from SSM parameters: the producers' catalog (ProducerAccess), team secrets.
    "Ssm": ec2.InterfaceVpcEndpointAwsService.SSM,
}
# Only with services.enable_exec: ECS Exec's session channel.
EXEC_ENDPOINT = ("SsmMessages", ec2.InterfaceVpcEndpointAwsService.SSM_MESSAGES)


def interface_endpoints(config: EnvironmentConfig) -> dict[str, ec2.InterfaceVpcEndpointAwsService]:
    endpoints = dict(INTERFACE_ENDPOINTS)
    if config.services.enable_exec:
        endpoints.update([EXEC_ENDPOINT])
    return endpoints


class NetworkStack(Stack):
    """Owns the VPC. `vpc` and `app_subnets` are what the other stacks place resources in."""

    def __init__(
        self, scope: Construct, construct_id: str, *, config: EnvironmentConfig, **kwargs: Any
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        net = config.network
        self.vpc: ec2.IVpc
        if net.vpc_id is not None:
            # Looked up once with the deploying credentials and cached in cdk.context.json.
            self.vpc = ec2.Vpc.from_lookup(self, "Vpc", vpc_id=net.vpc_id)
            private_type = (
                ec2.SubnetType.PRIVATE_WITH_EGRESS
                if self.vpc.private_subnets
                else ec2.SubnetType.PRIVATE_ISOLATED
            )
        else:
            private_type = (
                ec2.SubnetType.PRIVATE_WITH_EGRESS
                if net.nat_gateways > 0
                else ec2.SubnetType.PRIVATE_ISOLATED
            )
            self.vpc = self._new_vpc(config, private_type)

        # Private subnets for tasks, Lambdas and Redis: nothing in them is publicly addressable.
        self.app_subnets = ec2.SubnetSelection(subnet_type=private_type)
        if net.vpc_id is None and config.redis.removal_policy == "retain":
            # A retained broker outlives the stacks: its subnets and VPC must outlive them too.
            subnets = self.vpc.select_subnets(subnet_type=private_type).subnets
            for construct in (self.vpc, *subnets):
                resource = construct.node.default_child
                assert isinstance(resource, CfnResource)
                resource.apply_removal_policy(RemovalPolicy.RETAIN)

        # S3 gateway endpoint: free, and ECR serves image layers from S3.
        self.vpc.add_gateway_endpoint(
            "S3", service=ec2.GatewayVpcEndpointAwsService.S3, subnets=[self.app_subnets]
        )
        if net.interface_endpoints:
            # One group for all endpoints: HTTPS from inside the VPC only. The CIDR is a
            # literal (from config or the lookup) so the rule is reviewable in the template.
            cidr = net.cidr if net.vpc_id is None else self.vpc.vpc_cidr_block
            endpoints_sg = ec2.SecurityGroup(
                self,
                "EndpointsSecurityGroup",
                vpc=self.vpc,
                description="AWS API interface endpoints: HTTPS from inside the VPC",
                allow_all_outbound=False,
            )
            endpoints_sg.add_ingress_rule(ec2.Peer.ipv4(cidr), ec2.Port.HTTPS, "HTTPS from the VPC")
            for name, service in interface_endpoints(config).items():
                self.vpc.add_interface_endpoint(
                    name,
                    service=service,
                    subnets=self.app_subnets,
                    private_dns_enabled=True,
                    security_groups=[endpoints_sg],
                    open=False,
                )

    def _new_vpc(self, config: EnvironmentConfig, private_type: ec2.SubnetType) -> ec2.Vpc:
        net = config.network
        vpc = ec2.Vpc(
            self,
            "Vpc",
            ip_addresses=ec2.IpAddresses.cidr(net.cidr),
            availability_zones=net.availability_zones,
            max_azs=None if net.availability_zones else net.az_count,
            nat_gateways=net.nat_gateways,
            subnet_configuration=[
                ec2.SubnetConfiguration(name="public", subnet_type=ec2.SubnetType.PUBLIC),
                ec2.SubnetConfiguration(name="private", subnet_type=private_type),
            ],
        )
        flow_logs = logs.LogGroup(
            self, "FlowLogs", retention=log_retention(net.flow_log_retention_days)
        )
        vpc.add_flow_log(
            "FlowLog",
            destination=ec2.FlowLogDestination.to_cloud_watch_logs(flow_logs),
            traffic_type=ec2.FlowLogTrafficType.ALL,
        )
        return vpc
