"""One Redis client per process for the platform's own keys (DLQ, counters, heartbeats).

Created lazily and re-created after a fork, so prefork children never share a socket.
"""

from __future__ import annotations

import os
import ssl

import redis

from celery_service import contract
from celery_service.settings import Settings

_clients: dict[tuple[int, str], redis.Redis] = {}


def client_for(settings: Settings) -> redis.Redis:
    key = (os.getpid(), settings.redis_url())
    client = _clients.get(key)
    if client is None:
        options = contract.redis_client_options()
        if settings.broker_tls:
            options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
        client = redis.Redis.from_url(settings.redis_url(), **options)
        _clients[key] = client
    return client
