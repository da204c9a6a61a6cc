"""What a producer of tasks needs to publish to the broker: a security group to join, and
the broker's settings and the catalog as SSM parameters with stable names
(celery_service.contract.producer_parameter), for a web API outside this CDK app. Inside it,
`grant(...)` admits a service and lets its role read what it needs."""

from __future__ import annotations

from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_ssm as ssm
from constructs import Construct

from celery_service.contract import PRODUCER_PARAMETERS, Env, producer_parameter
from celery_service.settings import variables_for
from config import EnvironmentConfig
from stacks.parts.redis_broker import RedisBroker


class ProducerAccess(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: EnvironmentConfig,
        broker: RedisBroker,
    ) -> None:
        super().__init__(scope, construct_id)
        self.broker = broker
        values = {
            "broker-host": broker.endpoint_address,
            "broker-port": str(broker.port),
            "broker-tls": "true",
            "catalog": config.runtime_catalog_json(),
            "broker-auth-secret-arn": broker.auth_secret.secret_arn,
            # Producers in other stacks or accounts join the clients group by this id.
            "producer-security-group-id": broker.client_security_group.security_group_id,
        }
        assert set(values) == set(PRODUCER_PARAMETERS)
        self.parameters = {
            key: ssm.StringParameter(
                self,
                f"Parameter-{key}",
                parameter_name=producer_parameter(config.project, config.name, key),
                string_value=value,
                description=f"Celery platform {config.name}: {key} for producers",
                # A large catalog outgrows the standard tier's 4 KB.
                tier=ssm.ParameterTier.INTELLIGENT_TIERING,
            )
            for key, value in values.items()
        }

    def grant(
        self,
        producer: iam.IGrantable,
        connectable: ecs.FargateService | lambda_.Function | None = None,
    ) -> None:
        """Let `producer` read the broker settings and AUTH token, and admit `connectable`
        (its service or function) on the broker port."""
        for parameter in self.parameters.values():
            parameter.grant_read(producer)
        self.broker.auth_secret.grant_read(producer)
        if connectable is not None:
            self.broker.grant_connect(connectable)

    def container_environment(self) -> dict[str, str]:
        """The plain variables of a producer container in this CDK app (celery_service.producer
        reads them); pair them with `container_secrets()`."""
        return variables_for(
            broker_host=self.broker.endpoint_address, broker_port=self.broker.port, broker_tls=True
        )

    def container_secrets(self) -> dict[str, ecs.Secret]:
        """The AUTH token and the catalog, read by ECS at task start."""
        return {
            Env.BROKER_AUTH_TOKEN: ecs.Secret.from_secrets_manager(self.broker.auth_secret),
            Env.CATALOG: ecs.Secret.from_ssm_parameter(self.parameters["catalog"]),
        }
