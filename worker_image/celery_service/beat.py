"""RedBeat with a heartbeat: only the beat holding the lock ticks, and each tick says so."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from redbeat import RedBeatScheduler

from celery_service import contract
from celery_service.metrics import recorder
from celery_service.redis_client import client_for

log = logging.getLogger(__name__)


class HeartbeatScheduler(RedBeatScheduler):  # type: ignore[misc]
    def tick(self, *args: Any, **kwargs: Any) -> float:
        interval: float = super().tick(*args, **kwargs)
        settings = self.app.platform_settings
        try:
            client_for(settings).set(
                contract.BEAT_HEARTBEAT_KEY, time.time(), ex=contract.BEAT_HEARTBEAT_TTL_S
            )
        except Exception as exc:
            log.warning("beat heartbeat not written: %s", exc)
        Path(settings.heartbeat_file).touch()
        recorder(settings).count(contract.BEAT_HEARTBEAT, None, None)
        return interval
