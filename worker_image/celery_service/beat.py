"""RedBeat with a heartbeat: only the beat holding the lock ticks, and each tick says so."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import redis
from redbeat import RedBeatScheduler

from celery_service import contract
from celery_service.metrics import recorder
from celery_service.redis_client import client_for

log = logging.getLogger(__name__)


#: Seconds before a tick that could not reach Redis is tried again.
UNREACHABLE_RETRY_S = 1.0


#: Seconds a starting beat keeps trying to write its schedule before it gives up (exits).
SETUP_RETRY_S = 60.0


class HeartbeatScheduler(RedBeatScheduler):  # type: ignore[misc]
    def setup_schedule(self) -> None:
        """RedBeat writes the catalog's schedule at start; a beat started during a failover
        (the endpoint still on the read-only replica) tries again instead of exiting."""
        deadline = time.monotonic() + SETUP_RETRY_S
        while True:
            try:
                super().setup_schedule()
                return
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("beat could not write its schedule (%s): trying again", exc)
                time.sleep(UNREACHABLE_RETRY_S)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        settings = self.app.platform_settings
        try:
            interval: float = super().tick(*args, **kwargs)
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # Celery's beat exits on an error from a tick; a failover (READONLY included:
            # redis_client.PrimaryGone) is waited out instead, without a heartbeat, so a
            # beat that stays cut off turns unhealthy and is replaced.
            log.warning(
                "beat could not reach Redis (%s): next try in %.0f s", exc, UNREACHABLE_RETRY_S
            )
            return UNREACHABLE_RETRY_S
        try:
            client_for(settings).set(
                contract.BEAT_HEARTBEAT_KEY, time.time(), ex=contract.BEAT_HEARTBEAT_TTL_S
            )
        except Exception as exc:
            log.warning("beat heartbeat not written: %s", exc)
        Path(settings.heartbeat_file).touch()
        recorder(settings).count(contract.BEAT_HEARTBEAT, None, None)
        return interval
