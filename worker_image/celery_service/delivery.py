"""How the worker takes a message from Redis without a moment in which only it holds it.

kombu's Redis transport BRPOPs a message and records it in `unacked` in a second round
trip. A worker whose main process dies between the two (SIGKILL, out of memory, host loss)
loses the message: it is in no queue and not in `unacked`, so no restore sweep brings it
back (celery#4354, celery#7950, kombu#305; `make chaos` lost 7 of 10,000 tasks that way).

Here a Lua script pops and records in one atomic step: RPOP from the consumed keys in
BRPOP's order, then the same ZADD `unacked_index` / HSET `unacked` entry kombu's QoS writes.
Redis runs a script as one unit, and its effects reach the append-only file and replicas as
one transaction. A script cannot block, so an idle channel waits on keyspace notifications
of its queue keys instead (`notify-keyspace-events` must include `K` and `l`: the data
stack's parameter group and the local redis-server set contract.KEYSPACE_EVENTS) and pops when a
message is pushed; without them it polls every `idle_poll_interval` seconds.

A pop whose reply is lost with its connection (a silent peer, a reset, a failover) may
still have run: each channel's pop writes a receipt naming its message, and after such a
loss the worker puts that message back at once (`_restore_lost_pop`) instead of leaving
it in `unacked` for the visibility timeout. A pop unanswered for a command's socket timeout
drops its connection (DeliveryPoller).

Acks are a script too (FORGET): kombu's MULTI is refused by a full server. Everything else
is kombu's: queue keys and priorities, the `unacked` format that the restore sweep and the
autoscaler read, requeues and restores (a requeue whose entry a failover lost pushes the
worker's own copy). The channel, QoS and poller below override kombu
5.7 internals (`_brpop_start`, `_brpop_read`, `close`, `subclient`, `_connparams`, QoS
`ack`/`reject`/`restore_by_tag`, the poller's registration and read paths); a kombu
upgrade must re-run tests/worker/test_delivery.py, `make chaos` and `make failover`.
"""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path
from queue import Empty
from time import monotonic, time
from typing import Any
from uuid import uuid4

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.encoding import bytes_to_str
from kombu.utils.json import loads
from redis.exceptions import NoScriptError, OutOfMemoryError

from celery_service import contract
from celery_service.redis_client import (
    PrimaryConnection,
    PrimarySSLConnection,
    call_script,
    write_replicated,
)

log = logging.getLogger(__name__)

#: Seconds between polls of an idle channel, in case a notification is missed or the
#: server does not send them.
IDLE_POLL_INTERVAL_S = 1.0
#: Seconds between two touches of the heartbeat file by the event loop.
HEARTBEAT_EVERY_S = 1.0

# KEYS: unacked hash, unacked_index zset, the deliveries hash, the channel's pop receipt,
# then per queue key its queue key and its queue's list of malformed entries. ARGV: the time
# to index the entry at (the worker's clock, as kombu's QoS uses), the most deliveries a
# message may have, this pop's number, the receipt's lifetime (seconds), then per queue key
# its queue's name (the routing key when a message has none). Returns false, or
# {key, item, tag}, and the receipt then reads `<pop number>:<tag>`. An item that is not a
# message envelope with a delivery tag is moved to the malformed list instead (tag ""), for
# the worker to put in the DLQ; so is a message delivered more than the most times without
# an ack (its task ended its process each time), with its count as a fourth element. A key
# that holds no list is skipped, and named ({key}) if nothing was popped; any other error of
# RPOP is the script's error. RPOP comes first: once a script has written, Redis lets it
# finish its writes even on a full `noeviction` server, so a popped message is always
# recorded.
POP_AND_RECORD = """
local skipped = nil
for i = 5, #KEYS, 2 do
  local item = redis.pcall('RPOP', KEYS[i])
  if type(item) == 'table' and item.err then
    if string.sub(item.err, 1, 9) ~= 'WRONGTYPE' then
      return redis.error_reply(item.err)
    end
    skipped = KEYS[i]
  elseif item then
    local ok, message = pcall(cjson.decode, item)
    local tag, exchange, routing_key
    if ok and type(message) == 'table' and type(message.properties) == 'table' then
      local properties = message.properties
      tag = properties.delivery_tag
      if type(properties.delivery_info) == 'table' then
        exchange = properties.delivery_info.exchange
        routing_key = properties.delivery_info.routing_key
      end
    end
    if type(tag) ~= 'string' or tag == '' then
      redis.call('LPUSH', KEYS[i + 1], item)
      return {KEYS[i], item, ''}
    end
    local deliveries = redis.call('HINCRBY', KEYS[3], tag, 1)
    if deliveries > tonumber(ARGV[2]) then
      redis.call('HDEL', KEYS[3], tag)
      redis.call('LPUSH', KEYS[i + 1], item)
      return {KEYS[i], item, '', deliveries - 1}
    end
    if type(exchange) ~= 'string' then exchange = '' end
    if type(routing_key) ~= 'string' then routing_key = ARGV[(i - 5) / 2 + 5] end
    redis.call('ZADD', KEYS[2], ARGV[1], tag)
    redis.call('HSET', KEYS[1], tag,
      '[' .. item .. ',' .. cjson.encode(exchange) .. ',' .. cjson.encode(routing_key) .. ']')
    redis.call('SET', KEYS[4], ARGV[3] .. ':' .. tag, 'EX', ARGV[4])
    return {KEYS[i], item, tag}
  end
end
if skipped then
  return {skipped}
end
return false
"""

# KEYS: unacked_index zset, unacked hash, deliveries hash, the message's queue's completion
# counter; ARGV: a delivery tag, "1" to count it. kombu acks with MULTI, and Redis refuses a
# transaction on a full `noeviction` server even when its commands only free memory; the
# worker then exits on the error and every replacement does the same. A script that only
# deletes runs there (an INCR of an existing counter needs no new memory). The message leaves
# the workers here, so the autoscaler's completion counter is counted here too, once per
# message that still had its entry: no round trip of its own per task.
FORGET = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
local removed = redis.call('HDEL', KEYS[2], ARGV[1])
if removed == 1 and ARGV[2] == '1' then
  redis.call('INCR', KEYS[4])
end
return removed
"""

# Keyspace events that may have put a message in a queue key.
_PUSH_EVENTS = frozenset({"lpush", "rpush", "linsert", "lset", "rename_to", "restore"})


# Pops whose reply was lost with their connection: (receipt key, pop number). The next pop
# of any channel of the process puts their messages back, so a channel closed meanwhile (the
# consumer restarts on a connection error) loses none.
_lost_pops: list[tuple[str, int]] = []


class RecordingQoS(kombu_redis.QoS):
    """kombu's QoS, except that a message the pop script already recorded in `unacked` is
    not written there a second time, and an ack is a script (FORGET) instead of a
    transaction, so it works on a full server."""

    def ack(self, delivery_tag: str) -> None:
        self._forget(delivery_tag)
        self._crashed.discard(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    def restore_by_tag(
        self, tag: str, client: Any = None, leftmost: bool = False, *, popped_only: bool = False
    ) -> None:
        """kombu's requeue (a rejection, a shutdown, a lost pop, the overdue sweep) from the
        `unacked` entry. A failover to a replica that never received this worker's pop
        leaves no entry: then the message this worker holds is pushed back, which kombu's
        restore would drop (lost for good when the replica missed its publish too). With
        the catalog's `wait_for_replicas`, the requeue is on the replicas before it returns.

        A message this worker holds and puts back itself (a task's `Reject(requeue=True)`,
        an ETA or reserved message at shutdown), or one it popped and never received
        (`popped_only`: a lost pop), gives its delivery count back: only a delivery whose
        run ended its process (`count_as_crash`) or whose worker vanished (the overdue
        sweep) counts towards `max_deliveries`."""
        if not self._still_holds(tag):
            return
        held = self._delivered.get(tag)
        uncount = popped_only or (held is not None and tag not in self._crashed)

        def restore(pipe: Any) -> None:
            entry = pipe.hget(self.unacked_key, tag)
            counted = pipe.hget(contract.DELIVERIES_KEY, tag) if uncount else None
            pipe.multi()
            self._remove_from_indices(tag, pipe)
            if counted is not None and int(counted) > 0:
                pipe.hincrby(contract.DELIVERIES_KEY, tag, -1)
            if entry:
                payload, exchange, routing_key = loads(bytes_to_str(entry))
            elif held is not None:
                log.warning("message %s has no unacked entry (a failover?): requeued as held", tag)
                info = held.delivery_info
                payload, exchange = held._raw, info.get("exchange") or ""
                routing_key = info.get("routing_key") or ""
            else:
                return
            self.channel._do_restore_message(payload, exchange, routing_key, pipe, leftmost)

        channel = self.channel
        with channel.conn_or_acquire(client) as conn:
            conn.transaction(restore, self.unacked_key)
            self._crashed.discard(tag)  # kept until requeued: a retry at close still counts
            if channel.wait_for_replicas:
                write_replicated(conn, channel.wait_for_replicas, channel.replica_wait_ms)

    def _still_holds(self, tag: str) -> bool:
        """Whether this channel may still ack or requeue `tag`. Once a consumer restart has
        closed it, what its close put back belongs to that message's redelivery (same tag,
        maybe running elsewhere); only what it still holds (the close could not put it
        back, Redis away then) is its own."""
        return not self.channel.closed or tag in self._delivered

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        if requeue:
            self.restore_by_tag(delivery_tag, leftmost=True)
        else:
            self._forget(delivery_tag)
            self._crashed.discard(delivery_tag)
        virtual.QoS.ack(self, delivery_tag)

    _forget_script: Any = None  # redis-py's Script: its SHA computed once, not per ack

    def _forget(self, delivery_tag: str) -> None:
        if not self._still_holds(delivery_tag):
            return
        held = self._delivered.get(delivery_tag)
        queue = str(held.delivery_info.get("routing_key") or "") if held is not None else ""
        with self.channel.conn_or_acquire() as client:
            if self._forget_script is None:
                self._forget_script = client.register_script(FORGET)
            keys = [
                self.unacked_index_key,
                self.unacked_key,
                contract.DELIVERIES_KEY,
                contract.completed_key(queue),
            ]
            call_script(self._forget_script, client, keys, [delivery_tag, "1" if queue else "0"])

    def restore_visible(self, *args: Any, **kwargs: Any) -> None:
        """kombu's sweep of messages left unacked past the visibility timeout, at every
        channel start and then periodically; it writes (a lock, the requeues), which a full
        server refuses: the sweep is skipped then, not the worker's start."""
        try:
            super().restore_visible(*args, **kwargs)
        except OutOfMemoryError as exc:
            log.warning("overdue unacked messages not restored now: %s", exc)

    @cached_property
    def _crashed(self) -> set[str]:
        return set()

    def count_as_crash(self, delivery_tag: str) -> None:
        """The next requeue of this message keeps its delivery count: its run ended its
        process (Celery requeues it on WorkerLostError, and on a hard time limit where the
        task says acks_on_timeout=False), which is what `max_deliveries` counts before the
        message is set aside as poison."""
        self._crashed.add(delivery_tag)

    def append(self, message: Any, delivery_tag: str) -> None:
        recorded: set[str] = getattr(self.channel, "_recorded_tags", set())
        if delivery_tag in recorded:
            recorded.discard(delivery_tag)
            virtual.QoS.append(self, message, delivery_tag)
        else:
            super().append(message, delivery_tag)


class ReadyOnlyPubSub(redis.client.PubSub):
    """A subscription read only for what has arrived. kombu reads the remote-control
    (pidbox) subscription with a blocking `parse_response()`, which redis-py 8 runs with no
    socket timeout; after a reset, redis-py reconnects, subscribes again and waits there:
    if that new connection never answers (a stall, a failover in progress), the worker's
    event loop stops for good. The poller calls again when the socket is readable."""

    def parse_response(self, block: bool = True, timeout: float = 0) -> Any:
        return super().parse_response(block=False, timeout=0)


class DeliveryChannel(kombu_redis.Channel):
    """kombu's Redis channel with the pop-and-record delivery above. kombu's poller drives
    it through the same three calls as BRPOP: `_brpop_start` sends the script (or nothing,
    while the channel is idle), `_brpop_read` reads its reply, and a WAKE registration
    reads the keyspace notifications."""

    QoS = RecordingQoS
    # READONLY (a demoted primary) is a lost connection: reconnect, not exit.
    connection_class = PrimaryConnection
    connection_class_ssl = PrimarySSLConnection
    from_transport_options = (  # type: ignore[assignment]  # three more options
        *kombu_redis.Channel.from_transport_options,
        "idle_poll_interval",
        "max_deliveries",
        "heartbeat_file",
        "wait_for_replicas",
        "replica_wait_ms",
    )
    idle_poll_interval = IDLE_POLL_INTERVAL_S
    max_deliveries = 5  # the catalog's, from the transport options
    wait_for_replicas = 0  # the catalog's, as the requeues above wait
    replica_wait_ms = 100
    heartbeat_file: str | None = None  # touched as the worker's event loop turns

    _wake_client: Any = None
    _script_sha: str | None = None
    _woken = True  # the first poll runs without waiting for a notification
    _idle_since: float | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._recorded_tags: set[str] = set()
        self._params: dict[bool, dict[str, Any]] = {}  # redis-py's pool parameters, last read
        self._receipt_key = contract.pop_receipt_key(uuid4().hex)
        self._pops = 0  # pops sent; the receipt names the last one that took a message
        self._not_lists: set[str] = set()  # queue keys reported as holding no list
        self._wake_channels: set[str] = set()  # keyspace channels subscribed to
        self._wake_queues: tuple[str, ...] = ()  # the queues they are for
        super().__init__(*args, **kwargs)
        if self.global_keyprefix:
            raise ValueError("the worker's delivery does not support global_keyprefix")
        self.handlers["WAKE"] = self._receive_wake

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        """kombu's, read from the transport; once a consumer restart has dropped the
        transport (Celery's `collect()`), the last ones read: the channel's close and its
        tasks' acks and requeues still reach Redis, where kombu raised AttributeError on
        the missing transport and the worker ended."""
        if getattr(self.connection, "client", None) is None and asynchronous in self._params:
            return dict(self._params[asynchronous])
        params: dict[str, Any] = super()._connparams(asynchronous)
        self._params[asynchronous] = params
        return params

    def _size(self, queue: str) -> int:
        """kombu counts a queue's priority lists in a transaction, which a full server
        refuses, at every queue declaration (a worker's start); a count needs none."""
        with self.conn_or_acquire() as client:
            pipe = client.pipeline(transaction=False)
            for pri in self.priority_steps:
                pipe.llen(self._q_for_pri(queue, pri))
            return sum(int(size) for size in pipe.execute())

    def _queue_bind(self, exchange: str, routing_key: str, pattern: str, queue: str) -> None:
        """A full server refuses the binding's write even when it is there already (any
        restart): the worker starts then, and only a binding never written is reported."""
        try:
            super()._queue_bind(exchange, routing_key, pattern, queue)
        except OutOfMemoryError:
            member = self.sep.join([routing_key or "", pattern or "", queue or ""])
            with self.conn_or_acquire() as client:
                bound = client.sismember(self.keyprefix_queue % (exchange,), member)
            if not bound:
                log.error("queue %r not bound to %r: Redis is full", queue, exchange)

    # Sending and reading the pop.

    def _brpop_start(self, timeout: float | None = None) -> None:
        idle_s = None if self._idle_since is None else monotonic() - self._idle_since
        if not self._woken and idle_s is not None and idle_s < self.idle_poll_interval:
            return  # idle: a notification or the next poll starts the next pop
        queues = self._queue_cycle.consume(len(self.active_queues))
        if not queues:
            return
        order = [
            (queue, self._q_for_pri(queue, pri)) for pri in self.priority_steps for queue in queues
        ]
        keys = [
            key for queue, queue_key in order for key in (queue_key, contract.malformed_key(queue))
        ]
        while _lost_pops:  # a connection error leaves the rest for the next pop
            self._restore_lost_pop(*_lost_pops[-1])
            _lost_pops.pop()
        connection = self.client.connection
        # No PING before the pop: a failed one reconnects inside send_command, and the
        # pop's fate would no longer follow its connection's. A silent peer is caught by
        # the poller instead, the pop's reply being overdue (DeliveryPoller).
        connection.health_check_interval = 0
        if self._script_sha is None:
            with self.conn_or_acquire() as client:
                self._script_sha = client.script_load(POP_AND_RECORD)
        self._woken = False  # a notification from now on may be for a newer message
        self._pops += 1
        self._in_poll = connection
        self._brpop_sent_at = monotonic()  # type: ignore[assignment]  # as kombu does
        connection.send_command(
            "EVALSHA",
            self._script_sha,
            4 + len(keys),
            self.unacked_key,
            self.unacked_index_key,
            contract.DELIVERIES_KEY,
            self._receipt_key,
            *keys,
            repr(time()),
            self.max_deliveries,
            self._pops,
            int(self.visibility_timeout),
            *(queue for queue, _ in order),
        )

    def _brpop_read(self, **options: Any) -> bool:
        try:
            try:
                reply = self.client.parse_response(self.client.connection, "EVALSHA", **options)
            except self.connection_errors:
                self.client.connection.disconnect()
                raise
            except NoScriptError:  # a failover, a restart or a flush: load it again
                self._script_sha = None
                self._woken = True
                raise Empty() from None
            if not reply or len(reply) == 1:
                if reply:
                    self._report_not_a_list(bytes_to_str(reply[0]))
                self._idle_since = monotonic()
                raise Empty()
            self._idle_since = None
            key, item, tag = bytes_to_str(reply[0]), reply[1], bytes_to_str(reply[2])
            queue = key.rsplit(self.sep, 1)[0]
            self._queue_cycle.rotate(queue)
            if len(reply) == 4:  # delivered too often without an ack: set aside for the DLQ
                self._move_to_dlq(queue, item, PoisonMessage(int(reply[3])), kind="poison")
                return True
            self._deliver_popped(queue, item, tag)
            return True
        finally:
            self._in_poll = None  # type: ignore[assignment]  # as kombu does
            self._flush_brpop_reauth()

    def _restore_lost_pop(self, receipt_key: str, pop: int) -> None:
        """Put back the message of a pop whose reply was lost with its connection (dropped as
        silent, reset, failed over): the script may have run and recorded it in `unacked`
        for this worker, which never got it. Without this it would wait there for the
        visibility timeout."""
        with self.conn_or_acquire() as client:
            receipt = client.getdel(receipt_key)
            number, _, tag = bytes_to_str(receipt or b"").partition(":")
            if number != str(pop) or tag in self.qos._delivered:
                return  # the lost pop took nothing, or its reply did arrive
            if not client.hexists(self.unacked_key, tag):
                return
            log.warning("message %s popped but its reply was lost: back to its queue", tag)
            try:
                self.qos.restore_by_tag(tag, client=client, leftmost=True, popped_only=True)
            except self.ResponseError as exc:  # a full server refuses MULTI: the sweep does it
                log.warning("message %s left to the visibility timeout: %s", tag, exc)

    def _report_not_a_list(self, key: str) -> None:
        if key not in self._not_lists:
            self._not_lists.add(key)
            log.error("queue key %r holds no list: skipped until it does", key)

    def _deliver_popped(self, queue: str, item: bytes, tag: str) -> None:
        if not tag:  # the script moved it to the queue's malformed list
            self._move_to_dlq(queue, item, ValueError("not a message envelope"))
            return
        self._recorded_tags.add(tag)
        try:
            self.connection._deliver(loads(bytes_to_str(item)), queue)
        except _BROKER_ERRORS:
            raise
        except Exception as exc:  # the entry, not the connection
            self._recorded_tags.discard(tag)
            if _record_malformed(queue, item, exc):
                self.qos._forget(tag)
            # else it stays in `unacked`, and the restore sweep puts it back in its queue

    def _move_to_dlq(
        self, queue: str, item: bytes, exc: Exception, kind: str = "undecodable"
    ) -> None:
        if _record_malformed(queue, item, exc, kind):
            with self.conn_or_acquire() as client:
                client.lrem(contract.malformed_key(queue), 1, item)
        # else it stays in the malformed list until the next start of a channel

    def _sweep_malformed(self) -> None:
        """Entries a worker moved aside but died before putting in the DLQ."""
        for queue in self.active_queues:
            with self.conn_or_acquire() as client:
                items = client.lrange(contract.malformed_key(queue), 0, -1)
            for item in items:
                # Not a message, or delivered too often: both were set aside by the pop.
                self._move_to_dlq(queue, item, ValueError("set aside by the pop script"))

    # Waiting while idle.

    def _wake_keys(self) -> list[str]:
        db = self.client.connection_pool.connection_kwargs.get("db", 0)
        return [
            f"__keyspace@{db}__:{self._q_for_pri(queue, pri)}"
            for queue in self.active_queues
            for pri in self.priority_steps
        ]

    @cached_property
    def subclient(self) -> Any:
        """kombu's fanout (remote control) subscription, read as ReadyOnlyPubSub."""
        return ReadyOnlyPubSub(self._create_client(asynchronous=True).connection_pool)

    @property
    def wake_client(self) -> Any:
        if self._wake_client is None:
            self._wake_client = self._create_client(asynchronous=True).pubsub()
        return self._wake_client

    def subscribe_wake(self) -> None:
        """Subscribe to the keyspace channels of the queue keys not subscribed to yet."""
        queues = tuple(self.active_queues)
        if queues == self._wake_queues:
            return
        new = [channel for channel in self._wake_keys() if channel not in self._wake_channels]
        if new:
            if not self._wake_channels:  # the channel's first consumption
                self._check_notifications()
                self._sweep_malformed()
            self.wake_client.subscribe(*new)
            self._wake_channels.update(new)
        self._wake_queues = queues

    def _receive_wake(self) -> bool:
        client = self.wake_client
        while client.connection is not None:
            response = client.parse_response(block=False, timeout=0)
            if response is None:
                break
            message = client.handle_message(response) or {}
            kind = bytes_to_str(message.get("type") or b"")
            if kind == "subscribe" or (
                kind == "message" and bytes_to_str(message.get("data") or b"") in _PUSH_EVENTS
            ):
                self._woken = True
        return False  # nothing delivered yet: the next poll pops

    def _poll_error(self, type: str, **options: Any) -> None:
        if type == "WAKE":
            self._receive_wake()
        else:
            super()._poll_error(type, **options)

    def _check_notifications(self) -> None:
        """Warn when the server is known not to send the notifications. ElastiCache
        refuses CONFIG; its parameter group sets them."""
        try:
            with self.conn_or_acquire() as client:
                reply = client.config_get("notify-keyspace-events")
        except self.ResponseError:
            return
        flags = bytes_to_str(reply.get("notify-keyspace-events", ""))
        if "K" not in flags or not ("l" in flags or "A" in flags):
            log.warning(
                "Redis does not publish keyspace events of lists (notify-keyspace-events=%r,"
                " wanted %r): idle workers poll every %s s instead of waking on a message",
                flags,
                contract.KEYSPACE_EVENTS,
                self.idle_poll_interval,
            )

    def _on_connection_disconnect(self, connection: Any) -> None:
        if connection is not None and self._in_poll is connection:
            _lost_pops.append((self._receipt_key, self._pops))
        if self._wake_client is not None and self._wake_client.connection is connection:
            self._woken = True  # what was pushed while disconnected sent no notification
        super()._on_connection_disconnect(connection)

    def close(self) -> None:
        """kombu's close reads a pending pop's reply first. When the connection is gone,
        that read raises and leaves the channel open; Celery's consumer then closes it
        again once the transport is gone, and the restore of its unacked messages meets a
        missing transport (AttributeError) and ends the worker. The lost pop is put back
        by its receipt (_on_connection_disconnect)."""
        if self._in_poll:
            try:
                self._brpop_read()
            except (Empty, *self.connection_errors):
                pass
        super().close()

    def _close_clients(self) -> None:
        super()._close_clients()
        if self._wake_client is not None:
            connection, self._wake_client.connection = self._wake_client.connection, None
            if connection is not None:
                connection.disconnect()


class DeliveryPoller(kombu_redis.MultiChannelPoller):
    """kombu's poller, with each consuming channel's notification connection registered
    too (as WAKE) and always read, even while the channel has no prefetch credit: a
    readable socket left unread would spin the event loop."""

    _beat_at = 0.0

    def on_poll_start(self) -> None:
        for channel in self._channels:
            if isinstance(channel, DeliveryChannel) and channel.active_queues:
                self._drop_if_overdue(channel)
                self._register_wake(channel)
                self._heartbeat(channel.heartbeat_file)
        super().on_poll_start()

    def _heartbeat(self, path: str | None) -> None:
        """The health check's file, touched from the worker's event loop itself (each poll
        of the queues, once a second at most): a loop blocked in a read stops touching it,
        and ECS replaces the worker (a thread beside the loop would keep it green)."""
        now = monotonic()
        if path is None or now - self._beat_at < HEARTBEAT_EVERY_S:
            return
        self._beat_at = now
        try:
            Path(path).touch()
        except OSError as exc:
            log.warning("heartbeat %s not written: %s", path, exc)

    def _drop_if_overdue(self, channel: DeliveryChannel) -> None:
        """kombu drops a BRPOP connection whose reply is overdue by the BRPOP's own timeout
        plus the health-check interval, checked every interval. The pop script never
        blocks, so its reply is overdue once a command's socket timeout has passed: the
        connection is dropped then, checked at every turn of the event loop."""
        connection, sent_at = channel._in_poll, channel._brpop_sent_at
        if not connection or sent_at is None:
            return
        waited = monotonic() - sent_at
        sock = getattr(connection, "_sock", None)
        if waited < contract.REDIS_SOCKET_TIMEOUT_S or sock is None:
            return
        if kombu_redis._socket_readable(sock):  # the reply is there, unread
            return
        log.warning("Redis sent no reply to a pop for %.0f s: reconnecting", waited)
        connection.disconnect()

    def maybe_check_subclient_health(self) -> None:
        """kombu's check of the remote-control subscription (dropped after two unanswered
        PINGs), and a tighter one of each channel's notification subscription: a PING is
        sent every contract.REDIS_HEALTH_CHECK_S, and a connection that has not answered
        it by the next check is dropped, then subscribed again."""
        super().maybe_check_subclient_health()
        for channel in self._channels:
            client = channel._wake_client if isinstance(channel, DeliveryChannel) else None
            if client is None or client.connection is None:
                continue
            try:
                if client.health_check_response_counter > 0:
                    log.warning(
                        "keyspace notification connection left a PING unanswered for %d s: "
                        "reconnecting",
                        contract.REDIS_HEALTH_CHECK_S,
                    )
                    client.health_check_response_counter = 0
                    client.connection.disconnect()
                else:  # at every check: redis-py's own waits out a quiet interval first
                    client.connection.send_command(
                        "PING", client.HEALTH_CHECK_MESSAGE, check_health=False
                    )
                    client.health_check_response_counter += 1
            except channel.connection_errors as exc:
                log.debug("notification connection check failed: %s", exc)

    def _register_wake(self, channel: DeliveryChannel) -> None:
        channel.subscribe_wake()
        client = channel.wake_client
        if not self._client_registered(channel, client, "WAKE"):
            self._register(channel, client, "WAKE")  # reconnects and resubscribes

    def on_readable(self, fileno: int) -> None:
        if not self._read_wake(fileno):
            super().on_readable(fileno)

    def handle_event(self, fileno: int, event: int) -> Any:
        # Without an event loop (drain_events) a wake delivered nothing: report no event,
        # so that the caller goes on waiting for the message.
        if self._read_wake(fileno):
            return None
        return super().handle_event(fileno, event)

    def _read_wake(self, fileno: int) -> bool:
        chan_type = self._fd_to_chan.get(fileno)
        if chan_type is None or chan_type[1] != "WAKE":
            return False
        chan_type[0].handlers["WAKE"]()
        return True


# Errors of the connection itself, which kombu's reconnection handles. kombu also counts
# KeyError as one; from an envelope missing a field it is not.
_BROKER_ERRORS = tuple(
    e
    for e in (*kombu_redis.Transport.connection_errors, *kombu_redis.Transport.channel_errors)
    if e is not KeyError
)


class PoisonMessage(Exception):  # noqa: N818 (what the message is, in the DLQ entry)
    def __init__(self, deliveries: int) -> None:
        super().__init__(
            f"delivered {deliveries} times without an ack: its task ended its worker process "
            "(a crash, an out-of-memory kill) or a shutdown stopped it each time"
        )


def _record_malformed(queue: str, item: bytes, exc: Exception, kind: str = "undecodable") -> bool:
    """Record a queue entry that is not a message, or a message delivered too often, in the
    DLQ; False if it cannot be."""
    from celery_service.dlq import DeadLetter, encode_raw
    from celery_service.signals import record_dead_letter

    entry = DeadLetter(
        queue=queue,
        kind=kind,
        exception=f"{type(exc).__name__}: {exc}",
        raw=encode_raw(item),
    )
    if record_dead_letter(entry) is not False:
        return True
    log.error("malformed queue entry not moved to the DLQ: it is unreachable")
    return False


def use_delivery(connection: Any) -> None:
    """Make a kombu Redis connection deliver through DeliveryChannel (before it opens its
    first channel and is registered with an event loop). Other transports, Sentinel's
    included, are left as they are."""
    transport = connection.transport
    if type(transport) is kombu_redis.Transport and not isinstance(transport.cycle, DeliveryPoller):
        transport.Channel = DeliveryChannel
        transport.cycle = DeliveryPoller()  # type: ignore[assignment]
