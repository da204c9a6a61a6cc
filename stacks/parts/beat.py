"""Celery beat: exactly one, never scaled, and a deployment stops the old one first."""

from __future__ import annotations

from collections.abc import Mapping

from constructs import Construct

from config.model import BeatConfig
from config.services import BEAT
from stacks.parts.celery_fargate_service import CeleryFargateService, CeleryRuntime, Deployment

BEAT_CPU, BEAT_MEMORY_MIB = 256, 512


class Beat(CeleryFargateService):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        runtime: CeleryRuntime,
        config: BeatConfig,
        service_name: str,
        environment: Mapping[str, str],
    ) -> None:
        super().__init__(
            scope,
            construct_id,
            runtime=runtime,
            service=BEAT,
            service_name=service_name,
            environment=environment,
            cpu=BEAT_CPU,
            memory_mib=BEAT_MEMORY_MIB,
            # 0 % / 100 %: the old beat stops before the new one starts. The RedBeat lock
            # covers what ECS cannot (a task that looks dead but still runs).
            deployment=Deployment(desired_count=1, min_healthy_percent=0, max_healthy_percent=100),
            access=config,
        )
