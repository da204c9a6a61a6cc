"""Everything the autoscaler reads from Redis, in one pipelined round trip.

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
    PRIORITY_STEPS,
    UNACKED_KEY,
    autoscaler_state_key,
    completed_key,
    dlq_index_key,
    queue_keys,
)


@dataclass(frozen=True)
class QueueReading:
    waiting: int  # all priority lists
    in_flight: int  # unacked messages routed to this queue
    completed_total: int | None  # None when the counter does not exist yet
    dlq_depth: int


@dataclass(frozen=True)
class Reading:
    queues: dict[str, QueueReading]
    states: dict[str, dict[str, Any] | None]  # per worker group, as stored last run
    unparsed_unacked: int  # unacked entries whose queue could not be read
    beat_heartbeat: float | None = None  # epoch seconds of beat's last tick; None if absent


def read_all(client: Any, queues: list[str], groups: list[str]) -> Reading:
    """One round trip: list lengths, the unacked hash, counters, DLQ sizes, stored states,
    beat's heartbeat."""
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        for key in queue_keys(queue):
            pipe.llen(key)
    pipe.hvals(UNACKED_KEY)
    for queue in queues:
        pipe.get(completed_key(queue))
        pipe.zcard(dlq_index_key(queue))
    for group in groups:
        pipe.get(autoscaler_state_key(group))
    pipe.get(BEAT_HEARTBEAT_KEY)
    results = iter(pipe.execute())

    lengths = {q: sum(int(next(results)) for _ in PRIORITY_STEPS) for q in queues}
    in_flight, unparsed = _count_unacked(next(results), set(queues))
    readings = {}
    for queue in queues:
        raw_completed = next(results)
        dlq_depth = int(next(results))
        readings[queue] = QueueReading(
            waiting=lengths[queue],
            in_flight=in_flight.get(queue, 0),
            completed_total=_load_count(raw_completed),
            dlq_depth=dlq_depth,
        )
    states = {group: _load_state(next(results)) for group in groups}
    heartbeat = _load_float(next(results))
    return Reading(
        queues=readings, states=states, unparsed_unacked=unparsed, beat_heartbeat=heartbeat
    )


def _load_count(raw: Any) -> int | None:
    """A counter written by the workers; anything else reads as absent (no rate this run)
    rather than failing the whole reading, which would freeze every group's count."""
    if raw is None:
        return None
    try:
        value = int(raw)
    except (ValueError, TypeError):
        return None
    return value if value >= 0 else None


def _load_float(raw: Any) -> float | None:
    if raw is None:
        return None
    try:
        return float(raw)
    except (ValueError, TypeError):
        return None


def _count_unacked(values: list[Any], queues: set[str]) -> tuple[dict[str, int], int]:
    counts: dict[str, int] = {}
    unparsed = 0
    for value in values:
        try:
            routing_key = json.loads(value)[2]
        except (ValueError, TypeError, IndexError, KeyError):
            unparsed += 1
            continue
        if routing_key in queues:
            counts[routing_key] = counts.get(routing_key, 0) + 1
    return counts, unparsed


def _load_state(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        state = json.loads(raw)
    except (ValueError, TypeError):
        return None
    return state if isinstance(state, dict) else None
