"""Everything the autoscaler reads from Redis, in one pipelined round trip, and the policy's
observation of each worker group made from it.

Key layout (the wire contract, celery_service.contract, and kombu's Redis transport):
a queue `q` holds its messages in `q`, `q\\x06\\x163`, `q\\x06\\x166`, `q\\x06\\x169` (one list
per priority step); reserved and running messages sit in the `unacked` hash as JSON
`[message, exchange, routing_key]`; workers count finished attempts in
`celery:completed:<queue>`; dead letters in `celery:dlq:<queue>:index`; beat writes the epoch
seconds of its last tick to `celery:beat:heartbeat`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from celery_service.contract import (
    BEAT_HEARTBEAT_KEY,
    UNACKED_KEY,
    autoscaler_state_key,
    completed_key,
    dlq_index_key,
    queue_keys,
)

from .ecs import ServiceCounts
from .policy import Observation
from .settings import Target


@dataclass(frozen=True)
class QueueReading:
    waiting: int  # all priority lists
    in_flight: int  # unacked messages routed to this queue
    completed_total: int | None  # None when the counter does not exist yet
    dlq_depth: int
    error: str | None = None  # a queue key Redis could not read: its group holds


# KEYS: the unacked hash. Returns {routing key, count, ...} and, last, the number of entries
# whose routing key could not be read. Only the end of each entry is looked at (kombu writes
# `[message, exchange, routing_key]`; queue names are at most 63 plain characters), and the
# hash is scanned 100 entries at a time: a reading costs Redis and the Lambda a few bytes per
# in-flight message, however large the messages are.
COUNT_UNACKED = """
local counts, unparsed, cursor = {}, 0, '0'
repeat
  local page = redis.call('HSCAN', KEYS[1], cursor, 'COUNT', 100)
  cursor = page[1]
  for i = 2, #page[2], 2 do
    local key = string.match(string.sub(page[2][i], -80), ',%s*"([%w_.%-]+)"%]$')
    if key then counts[key] = (counts[key] or 0) + 1 else unparsed = unparsed + 1 end
  end
until cursor == '0'
local reply = {}
for key, n in pairs(counts) do
  reply[#reply + 1] = key
  reply[#reply + 1] = n
end
reply[#reply + 1] = unparsed
return reply
"""


@dataclass(frozen=True)
class Reading:
    queues: dict[str, QueueReading]
    states: dict[str, dict[str, Any] | None]  # per worker group, as stored last run
    unparsed_unacked: int  # unacked entries whose queue could not be read
    beat_heartbeat: float | None = None  # epoch seconds of beat's last tick; None if absent


def read_all(client: Any, queues: list[str], groups: list[str]) -> Reading:
    """One round trip: list lengths, in-flight counts per routing key, counters, DLQ sizes,
    stored states, beat's heartbeat. A key Redis cannot read (a queue key holding another
    type, say) marks only its queue, so only the group that consumes it holds."""
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        for key in queue_keys(queue):
            pipe.llen(key)
    pipe.eval(COUNT_UNACKED, 1, UNACKED_KEY)
    for queue in queues:
        pipe.get(completed_key(queue))
        pipe.zcard(dlq_index_key(queue))
    for group in groups:
        pipe.get(autoscaler_state_key(group))
    pipe.get(BEAT_HEARTBEAT_KEY)
    results = iter(pipe.execute(raise_on_error=False))

    lengths: dict[str, int] = {}
    errors: dict[str, str] = {}
    for queue in queues:
        for key in queue_keys(queue):
            length = next(results)
            if isinstance(length, Exception):
                errors.setdefault(queue, f"{key!r}: {length}")
            else:
                lengths[queue] = lengths.get(queue, 0) + int(length)
    counted = next(results)
    if isinstance(counted, Exception):
        raise counted  # the in-flight counts of every group: no reading this run
    in_flight, unparsed = _in_flight(counted, set(queues))
    readings = {}
    for queue in queues:
        raw_completed = next(results)
        dlq_depth = next(results)
        if isinstance(dlq_depth, Exception):
            errors.setdefault(queue, f"{dlq_index_key(queue)!r}: {dlq_depth}")
        readings[queue] = QueueReading(
            waiting=lengths.get(queue, 0),
            in_flight=in_flight.get(queue, 0),
            completed_total=_load_count(raw_completed),
            dlq_depth=0 if isinstance(dlq_depth, Exception) else int(dlq_depth),
            error=errors.get(queue),
        )
    states = {group: _load_state(next(results)) for group in groups}
    heartbeat = _load_float(next(results))
    return Reading(
        queues=readings, states=states, unparsed_unacked=unparsed, beat_heartbeat=heartbeat
    )


def _load_count(raw: Any) -> int | None:
    """A counter written by the workers; anything else reads as absent (no rate this run)
    rather than failing the whole reading, which would freeze every group's count."""
    if raw is None or isinstance(raw, Exception):
        return None
    try:
        value = int(raw)
    except (ValueError, TypeError):
        return None
    return value if value >= 0 else None


def _load_float(raw: Any) -> float | None:
    if raw is None or isinstance(raw, Exception):
        return None
    try:
        return float(raw)
    except (ValueError, TypeError):
        return None


def _in_flight(reply: list[Any], queues: set[str]) -> tuple[dict[str, int], int]:
    """COUNT_UNACKED's reply: in-flight counts of these queues, and the entries it could not
    read (a routing key of no consumed queue counts toward neither)."""
    *pairs, unparsed = reply
    counts = {}
    for key, count in zip(pairs[::2], pairs[1::2], strict=True):
        name = key.decode() if isinstance(key, bytes) else str(key)
        if name in queues:
            counts[name] = int(count)
    return counts, int(unparsed)


def _load_state(raw: Any) -> dict[str, Any] | None:
    """A group's stored state; anything unreadable (an error reply, bad or deeply nested
    JSON) reads as none: that group starts afresh, the others are not held."""
    if raw is None or isinstance(raw, Exception):
        return None
    try:
        state = json.loads(raw)
    except (ValueError, TypeError, RecursionError):
        return None
    return state if isinstance(state, dict) else None


def observation_of(
    target: Target,
    reading: Reading,
    counts: ServiceCounts,
    stored: dict[str, Any],
    now: float,
) -> tuple[Observation, int | None]:
    """One group's observation for the policy: its queues summed, its service's counts, and
    what arrived and completed since the last run (from the state that run stored); with the
    completion counter's new total, which the next run's state keeps."""
    waiting = sum(reading.queues[q].waiting for q in target.queues)
    in_flight = sum(reading.queues[q].in_flight for q in target.queues)
    totals = [reading.queues[q].completed_total for q in target.queues]
    completed_total = None if any(t is None for t in totals) else sum(t or 0 for t in totals)
    last = stored.get("last") if isinstance(stored.get("last"), dict) else None
    completed = arrived = 0
    if last is not None and completed_total is not None:
        previous = last.get("completed_total")
        if isinstance(previous, int) and completed_total >= previous:
            completed = completed_total - previous
        # Arrivals are not counted anywhere: what changed in the queue, plus what left it.
        delta_queue = (waiting - _stored_int(last.get("waiting"), waiting)) + (
            in_flight - _stored_int(last.get("in_flight"), in_flight)
        )
        arrived = max(0, delta_queue + completed)
    observation = Observation(
        now=now,
        waiting=waiting,
        in_flight=in_flight,
        running_tasks=counts.running,
        pending_tasks=counts.pending,
        desired=counts.desired,
        arrived_since_last=arrived,
        completed_since_last=completed,
    )
    return observation, completed_total


def _stored_int(value: object, default: int) -> int:
    """A count from the stored state; a damaged one reads as "no change" instead of failing
    the run of every group."""
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def estimated_wait_s(observation: Observation, stored: dict[str, Any], now: float) -> float | None:
    """How long the backlog takes to drain at the completion rate measured since the last
    run; None when there is no rate to measure (first run, or nothing completed)."""
    waiting, completed = observation.waiting, observation.completed_since_last
    if waiting is None:
        return None
    if waiting == 0:
        return 0.0
    last = stored.get("last")
    if not isinstance(last, dict):
        return None
    try:
        elapsed = now - float(last.get("now", now))
    except (TypeError, ValueError):
        return None
    if elapsed <= 0 or completed is None or completed <= 0:
        return None
    return waiting * elapsed / completed
