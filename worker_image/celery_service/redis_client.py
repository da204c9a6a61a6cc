"""One Redis client per process for the platform's own keys (DLQ, counters, heartbeats),
and the connections the worker's Redis clients use.

The client is created lazily and re-created after a fork, so prefork children never share
a socket.
"""

from __future__ import annotations

import os
import ssl
from typing import Any

import redis
from celery.backends.redis import RedisBackend
from redis.exceptions import ReadOnlyError

from celery_service import contract
from celery_service.settings import Settings


class PrimaryGone(redis.ConnectionError):
    """The endpoint answered READONLY: it reached a replica (a failover demoted the node)."""


class _PrimaryOnly:
    """A connection that takes READONLY as a lost connection: it disconnects, so the next
    attempt resolves the endpoint name again and reaches the promoted primary, and every
    retry made for a lost connection (redis-py's, kombu's reconnect, Celery's consumer
    restart) applies, where a ReadOnlyError would end the worker."""

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        except ReadOnlyError as exc:
            self.disconnect()  # type: ignore[attr-defined]
            raise PrimaryGone(str(exc)) from None


class PrimaryConnection(_PrimaryOnly, redis.Connection):
    pass


class PrimarySSLConnection(_PrimaryOnly, redis.SSLConnection):
    pass


class ResultBackend(RedisBackend):  # type: ignore[misc]
    """Celery's Redis result backend on the connections above: a result written while the
    endpoint answers from a replica is retried (result_backend_always_retry) until the
    promoted primary takes it, instead of failing a task whose work is done."""

    connection_class_ssl = PrimarySSLConnection

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connparams.setdefault("connection_class", PrimaryConnection)


_clients: dict[tuple[int, str], redis.Redis] = {}


def client_for(settings: Settings) -> redis.Redis:
    key = (os.getpid(), settings.redis_url())
    client = _clients.get(key)
    if client is None:
        options = contract.redis_client_options()
        options["connection_class"] = PrimaryConnection
        if settings.broker_tls:
            options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
            options["connection_class"] = PrimarySSLConnection
        client = redis.Redis.from_url(settings.redis_url(), **options)
        _clients[key] = client
    return client
