"""Dead-letter queues in Redis, one per Celery queue.

A task that exhausts its retries or fails for good, and a message no worker can decode or
route, is recorded here with what is needed to understand and replay it. Entries stay until
purged: the DLQ depth is alarmed on, never trimmed silently.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import redis

from celery_service import contract

MAX_TRACEBACK_CHARS = 16_000
MAX_RAW_BYTES = 256 * 1024  # an oversized poison message is kept truncated, not dropped
REPLAY_NAMESPACE = uuid.UUID("8d9e6c52-2b37-4d43-9a59-8a8f6cb3f0a1")
ENTRY_NAMESPACE = uuid.UUID("3f1c8a4e-6d0b-4e55-9c1a-2b7f0e9d4c21")


def entry_id_for(kind: str, task_id: str, attempt: int | None) -> str:
    """One id per failure of one delivery: Celery reports a hard time limit twice (the
    pool's result and the request's timeout handler), and a message redelivered after its
    failure was recorded fails again under the same id, so either leaves one entry."""
    return uuid.uuid5(ENTRY_NAMESPACE, f"{kind}:{task_id}:{attempt}").hex


@dataclass
class DeadLetter:
    queue: str
    kind: str  # "failed", "undecodable", "poison", "unknown_task" or "rejected"
    task_name: str | None = None
    task_id: str | None = None
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    exception: str | None = None
    traceback: str | None = None
    attempts: int | None = 1  # None when unknown (a hard time limit, seen by the main process)
    published_at: float | None = None
    failed_at: float = field(default_factory=time.time)
    raw: str | None = None  # base64 of the undecodable body
    headers: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    replayed_as: str | None = None

    @property
    def replayable(self) -> bool:
        return self.kind == "failed" and self.task_name is not None

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("replayed_as")
        if data["traceback"]:
            data["traceback"] = data["traceback"][-MAX_TRACEBACK_CHARS:]
        return json.dumps(data, default=repr)

    @classmethod
    def from_json(cls, text: str | bytes) -> DeadLetter:
        return cls(**json.loads(text))


def encode_raw(body: bytes | str | None) -> str | None:
    if body is None:
        return None
    data = body.encode() if isinstance(body, str) else bytes(body)
    return base64.b64encode(data[:MAX_RAW_BYTES]).decode()


class AlreadyReplayedError(Exception):
    pass


class DeadLetterQueues:
    """Record, list, show, replay and purge dead letters."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client

    def record(self, entry: DeadLetter) -> bool:
        """Store the entry; False when an entry with its id is already there (the same
        failure reported again), which is left as it was."""
        pipe = self.client.pipeline(transaction=True)
        pipe.hsetnx(contract.dlq_entries_key(entry.queue), entry.id, entry.to_json())
        pipe.zadd(contract.dlq_index_key(entry.queue), {entry.id: entry.failed_at}, nx=True)
        added, _ = pipe.execute()
        return bool(added)

    def queues(self) -> list[str]:
        prefix, suffix = contract.dlq_index_key("\0").split("\0")
        found = {
            _text(key)[len(prefix) : -len(suffix)]
            for key in self.client.scan_iter(match=f"{prefix}*{suffix}")
        }
        return sorted(found)

    def depth(self, queue: str) -> int:
        return int(self.client.zcard(contract.dlq_index_key(queue)))

    def entries(self, queue: str, limit: int = 50) -> list[DeadLetter]:
        """The newest `limit` entries of `queue`, newest first."""
        newest = self.client.zrevrange(contract.dlq_index_key(queue), 0, limit - 1)
        ids = [_text(i) for i in newest if isinstance(i, bytes | str)]
        if not ids:
            return []
        raw = self.client.hmget(contract.dlq_entries_key(queue), ids)
        replayed = self.client.hmget(contract.dlq_replayed_key(queue), ids)
        found = []
        for text, marker in zip(raw, replayed, strict=True):
            if text is None:
                continue
            entry = DeadLetter.from_json(text)
            entry.replayed_as = _text(marker) if marker else None
            found.append(entry)
        return found

    def get(self, queue: str, entry_id: str) -> DeadLetter | None:
        text = self.client.hget(contract.dlq_entries_key(queue), entry_id)
        if text is None:
            return None
        entry = DeadLetter.from_json(text)
        marker = self.client.hget(contract.dlq_replayed_key(queue), entry_id)
        entry.replayed_as = _text(marker) if marker else None
        return entry

    def replay(self, queue: str, entry_id: str, send: Callable[[DeadLetter, str], None]) -> str:
        """Re-enqueue the entry's task with the same arguments, at most once.

        The new task id is derived from the entry id and claimed before sending, so a
        repeated command, even a concurrent one, never enqueues a second copy. If sending
        fails, the claim is released and the replay can be tried again.
        """
        entry = self.get(queue, entry_id)
        if entry is None:
            raise KeyError(f"no dead letter {entry_id} in queue {queue!r}")
        if not entry.replayable:
            raise ValueError(f"a {entry.kind} message cannot be replayed; inspect it with `show`")
        new_id = str(uuid.uuid5(REPLAY_NAMESPACE, entry_id))
        if not self.client.hsetnx(contract.dlq_replayed_key(queue), entry_id, new_id):
            raise AlreadyReplayedError(f"{entry_id} was already replayed as task {new_id}")
        try:
            send(entry, new_id)
        except BaseException:
            self.client.hdel(contract.dlq_replayed_key(queue), entry_id)
            raise
        return new_id

    def purge(self, queue: str, entry_ids: list[str] | None = None) -> int:
        """Delete the given entries, or every entry of the queue; returns how many."""
        if entry_ids is None:
            count = self.depth(queue)
            self.client.delete(
                contract.dlq_entries_key(queue),
                contract.dlq_index_key(queue),
                contract.dlq_replayed_key(queue),
            )
            return count
        pipe = self.client.pipeline(transaction=True)
        pipe.hdel(contract.dlq_entries_key(queue), *entry_ids)
        pipe.zrem(contract.dlq_index_key(queue), *entry_ids)
        pipe.hdel(contract.dlq_replayed_key(queue), *entry_ids)
        deleted, _, _ = pipe.execute()
        return int(deleted)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
