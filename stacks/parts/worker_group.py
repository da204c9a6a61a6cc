"""A worker group: one ECS service whose workers consume only the group's catalog queues."""

from __future__ import annotations

from collections.abc import Mapping

from constructs import Construct

from config.model import WorkerGroupConfig
from config.services import worker
from stacks.parts.celery_fargate_service import CeleryFargateService, CeleryRuntime, Deployment


class WorkerGroup(CeleryFargateService):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        runtime: CeleryRuntime,
        group_name: str,
        group: WorkerGroupConfig,
        service_name: str,
        environment: Mapping[str, str],
    ) -> None:
        super().__init__(
            scope,
            construct_id,
            runtime=runtime,
            service=worker(group_name),
            service_name=service_name,
            environment=environment,
            cpu=group.cpu,
            memory_mib=group.memory_mib,
            # No DesiredCount: CloudFormation starts a new service with one task and keeps
            # the live count on every update, so a deploy never undoes the autoscaler, which
            # brings the count into min_tasks..max_tasks on its next run.
            deployment=Deployment(
                desired_count=None, min_healthy_percent=100, max_healthy_percent=200
            ),
            access=group,
            protect_from_scale_in=True,
            capacity_provider="FARGATE_SPOT" if runtime.settings.fargate_spot else "FARGATE",
        )
        self.group_name = group_name
