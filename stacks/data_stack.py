"""Stateful resources, kept apart from the services so those can be replaced freely."""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, Stack
from constructs import Construct

from config import EnvironmentConfig
from stacks.network_stack import NetworkStack
from stacks.parts.redis_broker import RedisBroker
from stacks.producer_access import ProducerAccess


class DataStack(Stack):
    """Owns the broker and what producers need to reach it. Consumers get access with
    `broker.grant_connect(...)`, a producer with `producers.grant(...)`."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvironmentConfig,
        network: NetworkStack,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.broker = RedisBroker(
            self,
            "Broker",
            vpc=network.vpc,
            subnets=network.app_subnets,
            config=config.redis,
        )
        self.producers = ProducerAccess(self, "Producers", config=config, broker=self.broker)
        CfnOutput(self, "BrokerEndpoint", value=self.broker.endpoint_address)
        # What `aws elasticache modify-replication-group` takes, to rotate the AUTH token.
        CfnOutput(self, "BrokerReplicationGroupId", value=self.broker.replication_group.ref)
        CfnOutput(self, "BrokerPort", value=str(self.broker.port))
        CfnOutput(self, "BrokerAuthSecretArn", value=self.broker.auth_secret.secret_arn)
