"""The Celery broker: an ElastiCache (Valkey or Redis) replication group, cluster mode off.

Cluster mode and ElastiCache Serverless break Celery (CROSSSLOT errors on multi-key
commands), so this is a classic primary/replica group: TLS required, AUTH token generated
in Secrets Manager and referenced dynamically (the value never enters the template),
encryption at rest, and `maxmemory-policy noeviction` so a full Redis refuses new writes
instead of silently dropping queued messages. It also publishes keyspace events of lists:
an idle worker waits on them for the next message (worker_image/celery_service/delivery.py).
"""

from __future__ import annotations

from collections.abc import Iterable

import jsii
from aws_cdk import CfnResource, IStableListProducer, Lazy, RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_elasticache as elasticache
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from celery_service.contract import KEYSPACE_EVENTS
from config.model import RedisConfig
from stacks.checks import acknowledge
from stacks.retention import log_retention

# Never evict: every key may be a queue, an unacked message or the beat lock.
MAXMEMORY_POLICY = "noeviction"
AUTH_TOKEN_LENGTH = 64  # ElastiCache accepts 16-128 printable characters

_REMOVAL = {
    "destroy": RemovalPolicy.DESTROY,
    "snapshot": RemovalPolicy.SNAPSHOT,
    "retain": RemovalPolicy.RETAIN,
}


class RedisBroker(Construct):
    """Exposes what consumers need: `endpoint_address`, `port`, `auth_secret`,
    `client_security_group`, and `grant_connect()` to let a consumer in."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        vpc: ec2.IVpc,
        subnets: ec2.SubnetSelection,
        config: RedisConfig,
    ) -> None:
        super().__init__(scope, construct_id)
        self.port = config.port
        data_removal = _REMOVAL[config.removal_policy]
        # Secrets and log groups cannot be snapshotted: they are kept unless data is destroyed.
        keep_or_destroy = (
            RemovalPolicy.DESTROY if data_removal == RemovalPolicy.DESTROY else RemovalPolicy.RETAIN
        )

        # Redis never initiates connections. Its only ingress is from the clients group, and
        # that rule lives here: replacing the broker's group updates the rule in the same
        # deploy, and no other stack references it. The clients group is exported, so
        # CloudFormation refuses to replace it while a consumer still uses it.
        self.security_group = ec2.SecurityGroup(
            self,
            "SecurityGroup",
            vpc=vpc,
            description="Celery broker: ingress only from granted consumers",
            allow_all_outbound=False,
        )
        # Every consumer (workers, beat, Flower, the autoscaler, a team's producers) joins
        # this group in addition to its own; its only egress is the broker port.
        self.client_security_group = ec2.SecurityGroup(
            self,
            "ClientSecurityGroup",
            vpc=vpc,
            description="Celery broker clients: members reach the broker port",
            allow_all_outbound=False,
        )
        self.client_security_group.add_egress_rule(
            self.security_group, ec2.Port.tcp(config.port), "clients to the broker"
        )
        self.security_group.add_ingress_rule(
            self.client_security_group, ec2.Port.tcp(config.port), "members of the clients group"
        )

        self.auth_secret = secretsmanager.Secret(
            self,
            "AuthToken",
            description="AUTH token of the Celery broker (ElastiCache)",
            generate_secret_string=secretsmanager.SecretStringGenerator(
                password_length=AUTH_TOKEN_LENGTH,
                # ElastiCache allows letters, digits and !&#$^<>- only: letters and digits will do.
                exclude_punctuation=True,
                include_space=False,
            ),
            removal_policy=keep_or_destroy,
        )
        acknowledge(
            self.auth_secret,
            "AwsSolutions-SMG4",
            "Rotating an ElastiCache AUTH token needs a two-step ROTATE/SET update of the "
            "replication group and a restart of every worker, beat and Flower task; it is a "
            "planned operation (docs/operations.md), not an automatic rotation.",
        )

        subnet_group = elasticache.CfnSubnetGroup(
            self,
            "SubnetGroup",
            description="Private subnets of the Celery broker",
            subnet_ids=vpc.select_subnets(
                subnet_type=subnets.subnet_type, subnets=subnets.subnets
            ).subnet_ids,
        )
        parameters = elasticache.CfnParameterGroup(
            self,
            "Parameters",
            cache_parameter_group_family=config.parameter_group_family,
            description="Celery broker: never evict queue data, notify queue pushes",
            properties={
                "maxmemory-policy": MAXMEMORY_POLICY,
                # A push to a queue wakes its idle workers.
                "notify-keyspace-events": KEYSPACE_EVENTS,
            },
        )

        retention = log_retention(config.log_retention_days)
        slow_log = logs.LogGroup(
            self, "SlowLog", retention=retention, removal_policy=keep_or_destroy
        )
        engine_log = logs.LogGroup(
            self, "EngineLog", retention=retention, removal_policy=keep_or_destroy
        )

        self.replication_group = elasticache.CfnReplicationGroup(
            self,
            "ReplicationGroup",
            replication_group_description="Celery broker",
            engine=config.engine,
            engine_version=config.engine_version,
            cache_node_type=config.node_type,
            num_cache_clusters=1 + config.replicas,
            automatic_failover_enabled=config.replicas >= 1,
            multi_az_enabled=config.multi_az,
            port=config.port,
            transit_encryption_enabled=True,
            transit_encryption_mode="required",
            at_rest_encryption_enabled=True,
            auth_token=self.auth_secret.secret_value.unsafe_unwrap(),  # a {{resolve:...}} reference
            cache_subnet_group_name=subnet_group.ref,
            cache_parameter_group_name=parameters.ref,
            security_group_ids=[self.security_group.security_group_id],
            snapshot_retention_limit=config.snapshot_retention_days,
            snapshot_window=config.snapshot_window,
            preferred_maintenance_window=config.maintenance_window,
            auto_minor_version_upgrade=True,
            log_delivery_configurations=[
                _log_delivery("slow-log", slow_log),
                _log_delivery("engine-log", engine_log),
            ],
        )
        self.replication_group.apply_removal_policy(data_removal)
        if data_removal == RemovalPolicy.RETAIN:
            # A kept broker keeps what it stands on, or the stack's deletion fails on them.
            # (Its subnets and VPC are kept by the network stack; a snapshot needs neither.)
            for kept in (subnet_group, parameters, self.security_group.node.default_child):
                assert isinstance(kept, CfnResource)
                kept.apply_removal_policy(RemovalPolicy.RETAIN)

        acknowledge(
            self.replication_group,
            "AwsSolutions-AEC5",
            "The port is not the access control: the security group admits only granted "
            "consumers, and TLS plus AUTH are required. Clients take the port from config.",
        )
        if not config.multi_az:
            acknowledge(
                self.replication_group,
                "AwsSolutions-AEC4",
                "This environment's config sets multi_az = false to save cost; environments "
                "that need failover (staging, prod) set replicas >= 1 and multi_az = true.",
            )

        self.endpoint_address: str = self.replication_group.attr_primary_end_point_address
        self.reader_endpoint_address: str = self.replication_group.attr_reader_end_point_address

    def node_dimensions(self, nodes: Iterable[int]) -> list[dict[str, str]]:
        """The CloudWatch dimensions of the metrics of these nodes (1 is the primary):
        ElastiCache names a cluster-mode-disabled group's nodes `<group id>-001`, `-002`..."""
        return [{"CacheClusterId": f"{self.replication_group.ref}-{node:03d}"} for node in nodes]

    def grant_connect(self, consumer: ecs.FargateService | lambda_.Function) -> None:
        """Admit `consumer` on the broker port, and only on it: it joins the clients group.

        The group is attached to the service's or function's network configuration, not added
        to its `connections`, so rules that others add there (the load balancer's to Flower)
        stay on the consumer's own group. The consumer's stack references the group (an
        export); the stateful stack gains no rule and no dependency per consumer.
        """
        path = (
            "NetworkConfiguration.AwsvpcConfiguration.SecurityGroups"
            if isinstance(consumer, ecs.FargateService)
            else "VpcConfig.SecurityGroupIds"
        )
        cfn = consumer.node.default_child
        assert isinstance(cfn, CfnResource)
        cfn.add_property_override(path, Lazy.list(_MemberOf(consumer, self.client_security_group)))


@jsii.implements(IStableListProducer)
class _MemberOf:
    """The consumer's own groups, as CDK renders them at synthesis (a group added to its
    connections later is included), then the clients group."""

    def __init__(self, consumer: ec2.IConnectable, group: ec2.ISecurityGroup) -> None:
        self.consumer = consumer
        self.group = group

    def produce(self) -> list[str]:
        own = [g.security_group_id for g in self.consumer.connections.security_groups]
        return [*own, self.group.security_group_id]


def _log_delivery(
    log_type: str, group: logs.LogGroup
) -> elasticache.CfnReplicationGroup.LogDeliveryConfigurationRequestProperty:
    return elasticache.CfnReplicationGroup.LogDeliveryConfigurationRequestProperty(
        destination_type="cloudwatch-logs",
        destination_details=elasticache.CfnReplicationGroup.DestinationDetailsProperty(
            cloud_watch_logs_details=elasticache.CfnReplicationGroup.CloudWatchLogsDestinationDetailsProperty(
                log_group=group.log_group_name
            )
        ),
        log_format="json",
        log_type=log_type,
    )
