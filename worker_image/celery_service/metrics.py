"""DogStatsD metrics to the local Datadog agent, and the per-queue completion counters.

A process without `DD_AGENT_HOST` sends nothing over UDP; the Redis counters are always kept
because the autoscaler reads them.
"""

from __future__ import annotations

import logging
import os

from datadog.dogstatsd.base import DogStatsd

from celery_service.settings import Settings

log = logging.getLogger(__name__)

_clients: dict[int, DogStatsd | None] = {}


def statsd(settings: Settings) -> DogStatsd | None:
    """This process's client (re-created after a fork), or None when no agent is set."""
    pid = os.getpid()
    if pid not in _clients:
        if settings.statsd_host is None:
            _clients[pid] = None
        else:
            _clients[pid] = DogStatsd(
                host=settings.statsd_host,
                port=settings.statsd_port,
                constant_tags=[f"{k}:{v}" for k, v in sorted(settings.service_tags.items())],
                # Send each metric at once: no flush thread to lose across a fork or a kill.
                disable_buffering=True,
                disable_telemetry=True,
            )
    return _clients[pid]


def tags(queue: str | None, task: str | None) -> list[str]:
    return [f"queue:{queue or 'unknown'}", f"task:{task or 'unknown'}"]
