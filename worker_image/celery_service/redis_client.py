"""One Redis client per process for the platform's own keys (DLQ, counters, heartbeats),
and the connections the worker's Redis clients use.

The client is created lazily and re-created after a fork, so prefork children never share
a socket.
"""

from __future__ import annotations

import logging
import os
import ssl
import time
from typing import Any

import redis
from celery import states
from celery.backends.redis import RedisBackend
from celery.exceptions import BackendStoreError
from kombu.utils.encoding import bytes_to_str
from redis.exceptions import NoScriptError, ReadOnlyError

from celery_service import contract
from celery_service.settings import Settings

log = logging.getLogger(__name__)


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


def call_script(script: Any, client: Any, keys: list[Any], args: list[Any]) -> Any:
    """A registered script (redis-py's Script) by EVALSHA on `client`, which redis-py loads
    when the server lacks it. A cache flushed again between that load and the call (a
    failover or a restart right then) would fail the caller, a worker's ack among them:
    then EVAL sends the script's text."""
    try:
        return script(keys=keys, args=args, client=client)
    except NoScriptError:
        return client.eval(script.script, len(keys), *keys, *args)


class PrimaryConnection(_PrimaryOnly, redis.Connection):
    pass


class PrimarySSLConnection(_PrimaryOnly, redis.SSLConnection):
    pass


# KEYS: a task's result key; ARGV: its new meta (JSON), its lifetime in seconds (0: none).
# Celery's store reads the key first (a GET), then writes and publishes it in a MULTI (four
# more commands): two round trips from the pool process for every task. Here one, with the
# same rule: a stored SUCCESS is never overwritten (a redelivered run cannot undo it).
STORE_UNLESS_SUCCEEDED = """
local current = redis.call('GET', KEYS[1])
if current then
  local ok, meta = pcall(cjson.decode, current)
  if ok and type(meta) == 'table' and meta.status == 'SUCCESS' then
    return 0
  end
end
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1])
end
redis.call('PUBLISH', KEYS[1], ARGV[1])
return 1
"""


class ResultBackend(RedisBackend):  # type: ignore[misc]
    """Celery's Redis result backend on the connections above: a result written while the
    endpoint answers from a replica is retried (result_backend_always_retry) until the
    promoted primary takes it, instead of failing a task whose work is done. A task's
    state is stored in one round trip (STORE_UNLESS_SUCCEEDED)."""

    connection_class_ssl = PrimarySSLConnection
    _store_script: Any = None  # redis-py's Script: its SHA computed once

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.connparams.setdefault("connection_class", PrimaryConnection)

    def _store_result(
        self,
        task_id: str,
        result: Any,
        state: str,
        traceback: Any = None,
        request: Any = None,
        **kwargs: Any,
    ) -> Any:
        if self.serializer != "json" or self.compression:
            # The script reads the stored status as plain JSON; others take Celery's path.
            return super()._store_result(task_id, result, state, traceback, request, **kwargs)
        meta = self._get_result_meta(
            result=result, state=state, traceback=traceback, request=request
        )
        meta["task_id"] = bytes_to_str(task_id)
        value = self.encode(meta)
        if len(value) > self._MAX_STR_VALUE_SIZE:
            raise BackendStoreError(
                "value too large for Redis backend", state=state, task_id=task_id
            )
        expires = self.failure_expires if state == states.FAILURE else self.expires
        self.ensure(self._store_unless_succeeded, (self.get_key_for_task(task_id), value, expires))
        return result

    def _store_unless_succeeded(self, key: bytes, value: str, expires: int | None) -> None:
        if self._store_script is None:
            self._store_script = self.client.register_script(STORE_UNLESS_SUCCEEDED)
        call_script(self._store_script, self.client, [key], [value, int(expires or 0)])


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


# Written before WAIT when the writes to cover went through another connection (a publish).
REPLICA_PROBE_KEY = f"{contract.KEY_PREFIX}:replica-probe"
# How often the primary's count of connected replicas is read again (seconds), and how often
# at most a write that could not be confirmed is reported.
REPLICA_CHECK_EVERY_S = 10.0
SHORT_OF_REPLICAS_WARN_EVERY_S = 60.0
# (when read, monotonic; replicas connected to the primary): one broker per process.
_replicas_seen = (-REPLICA_CHECK_EVERY_S, 0)
_short_warned_at = -SHORT_OF_REPLICAS_WARN_EVERY_S


def write_replicated(
    client: redis.Redis, replicas: int, timeout_ms: int, *commands: tuple[Any, ...]
) -> list[Any]:
    """Run `commands` (writes, as tuples: ("SET", key, value)) and, when `replicas` > 0,
    Redis WAIT after them on the same connection, in one round trip: they return once that
    many replicas hold every write the primary has taken so far, or after `timeout_ms` with a
    warning (a replica far behind: then a failover may lose them). WAIT covers the writes
    of its own connection, and the primary's replication stream is one ordered log, so a
    write just before it covers what other connections wrote earlier (with no command, a
    probe key is written). It runs once, without redis-py's retry: a retry after a lost
    connection could confirm on a promoted replica that lacks the earlier writes, so a
    connection error is raised to the caller. A primary without replicas connected is not
    waited on (after a failover the promoted node has none until one is replaced: waiting
    would cost every write the whole timeout and protect nothing). The commands' replies."""
    wanted = min(replicas, _connected_replicas(client)) if replicas > 0 else 0
    if wanted <= 0:
        if replicas > 0:
            _warn_short(0, replicas, "the primary has no replica connected")
        pipe = client.pipeline(transaction=False)
        for command in commands:
            pipe.execute_command(*command)
        return list(pipe.execute())
    writes = list(commands) or [("SET", REPLICA_PROBE_KEY, "1", "PX", 60_000)]
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        packed = connection.pack_commands([*writes, ("WAIT", wanted, timeout_ms)])
        connection.send_packed_command(packed)
        *replies, reached = [connection.read_response() for _ in range(len(writes) + 1)]
    except BaseException:
        connection.disconnect()
        raise
    finally:
        pool.release(connection)
    if int(reached) < wanted:
        global _replicas_seen
        _replicas_seen = (-REPLICA_CHECK_EVERY_S, 0)  # one may be gone: count them again
        _warn_short(int(reached), wanted, f"not within {timeout_ms} ms")
    return replies if commands else []


def _connected_replicas(client: redis.Redis) -> int:
    global _replicas_seen
    checked_at, connected = _replicas_seen
    now = time.monotonic()
    if now - checked_at >= REPLICA_CHECK_EVERY_S:
        connected = int(client.info("replication").get("connected_slaves", 0))
        _replicas_seen = (now, connected)
    return connected


def _warn_short(reached: int, wanted: int, why: str) -> None:
    global _short_warned_at
    now = time.monotonic()
    if now - _short_warned_at >= SHORT_OF_REPLICAS_WARN_EVERY_S:
        _short_warned_at = now
        log.warning(
            "%d of %d replicas confirmed writes (%s): a failover now could lose the latest "
            "(warned at most every %.0f s)",
            reached,
            wanted,
            why,
            SHORT_OF_REPLICAS_WARN_EVERY_S,
        )
