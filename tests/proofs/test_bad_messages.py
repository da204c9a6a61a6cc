"""Bad messages against a real worker: each is kept (DLQ, result, or still queued), the worker
keeps running, and the valid messages queued alongside all complete.

Malformed messages are written into the queue's Redis list as raw kombu envelopes (what a
buggy or foreign publisher produces); wrong arguments and unknown task names go through
Celery's own publisher. Every message carries a `proof` header naming its case, so it can
be found wherever it ended up: nothing counts as handled unless it is found.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from celery_service.contract import queue_keys
from celery_service.dlq import DeadLetter, DeadLetterQueues
from tests.proofs.conftest import RestartableRedis
from tests.proofs.figures import EXHAUSTIVE, FIGURES
from tests.worker.harness import Process, publisher, results_client, running

SECTION = "Bad messages to a real worker"
QUEUE = "default"
VALID_PER_BATCH = 40 if EXHAUSTIVE else 12
OVERSIZED_BYTES = [2_000_000, 12_000_000] if EXHAUSTIVE else [2_000_000]


@dataclass
class Case:
    name: str
    category: str
    # Where the message may end up: "dlq:<kind>" (recorded dead letter), "result:<state>"
    # (ran; FAILURE also needs its dlq:failed), "kept" (still queued or unacked).
    allowed: set[str]
    body: bytes | None = None  # raw envelope cases
    headers: Callable[[dict[str, Any]], dict[str, Any]] = lambda h: h
    content_type: str = "application/json"
    content_encoding: str = "utf-8"
    send: tuple[str, list[Any], dict[str, Any]] | None = None  # published by Celery
    entry: Callable[[str], str] | None = None  # the whole queue entry, given the task id
    task_id: str = field(default_factory=lambda: str(uuid.uuid4()))


def envelope(case: Case) -> str:
    """A kombu envelope as the Redis transport stores it, with `case`'s defects."""
    headers = {
        "lang": "py",
        "task": "samples.square",
        "id": case.task_id,
        "root_id": case.task_id,
        "parent_id": None,
        "group": None,
        "retries": 0,
        "eta": None,
        "expires": None,
        "timelimit": [None, None],
        "argsrepr": "",
        "kwargsrepr": "",
        "origin": "proofs",
        "ignore_result": False,
        "proof": case.name,
    }
    return json.dumps(
        {
            "body": base64.b64encode(case.body or b"").decode(),
            "content-encoding": case.content_encoding,
            "content-type": case.content_type,
            "headers": case.headers(headers),
            "properties": {
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
                "delivery_info": {"exchange": "", "routing_key": QUEUE},
                "priority": 0,
                "correlation_id": case.task_id,
                "reply_to": None,
                "delivery_mode": 2,
            },
        }
    )


GOOD = b"[[3], {}, {}]"
FAILED = {"result:FAILURE"}
REJECTED = {"dlq:rejected"}
UNKNOWN = {"dlq:unknown_task"}
HEADERS = "malformed headers"


def without(key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda h: {k: v for k, v in h.items() if k != key}


def setting(key: str, value: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda h: {**h, key: value}


def with_envelope(change: Callable[[dict[str, Any]], None]) -> Callable[[str], str]:
    """A queue entry: a valid envelope for `samples.square(3)`, then `change` applied."""

    def build(task_id: str) -> str:
        data = json.loads(envelope(Case("envelope", "", set(), GOOD, task_id=task_id)))
        change(data)
        return json.dumps(data)

    return build


ENVELOPE = "malformed envelope"
DECODE = {"dlq:undecodable"}


def cases() -> list[Case]:
    found = [
        # queue entries that are not kombu envelopes at all
        Case("entry not JSON", ENVELOPE, DECODE, entry=lambda i: f"not an envelope {i}"),
        Case("entry a JSON list", ENVELOPE, DECODE, entry=lambda i: json.dumps([1, i])),
        Case("entry without fields", ENVELOPE, DECODE, entry=lambda i: json.dumps({"id": i})),
        Case(
            "headers not an object",
            ENVELOPE,
            DECODE,
            entry=with_envelope(lambda d: d.update(headers=f"zzz {d['headers']['id']}")),
        ),
        Case(
            "unknown body encoding",
            ENVELOPE,
            DECODE,
            entry=with_envelope(lambda d: d["properties"].update(body_encoding="rot13")),
        ),
        Case(
            "body not base64",
            ENVELOPE,
            DECODE,
            entry=with_envelope(lambda d: d.update(body="!!!not base64")),
        ),
        # undecodable bodies
        Case("body not JSON", "undecodable body", {"dlq:undecodable"}, b"{this is not json"),
        Case("body binary", "undecodable body", {"dlq:undecodable"}, bytes(range(256))),
        Case("body empty", "undecodable body", REJECTED, b""),
        Case("body a JSON object", "undecodable body", REJECTED, b'{"a": 1}'),
        Case("body a number", "undecodable body", REJECTED, b"42"),
        Case("body a short list", "undecodable body", REJECTED, b"[[3]]"),
        Case("callbacks garbage", "undecodable body", FAILED, b'[[3], {}, {"callbacks": 5}]'),
        # wrong content type or encoding
        Case(
            "pickle",
            "wrong content type",
            REJECTED,
            b"\x80\x04K\x03.",
            content_type="application/x-python-serialize",
            content_encoding="binary",
        ),
        Case("yaml", "wrong content type", REJECTED, GOOD, content_type="application/x-yaml"),
        Case("text/plain", "wrong content type", REJECTED, GOOD, content_type="text/plain"),
        Case(
            "unknown content-encoding",
            "wrong content type",
            {"result:SUCCESS"},
            GOOD,
            content_encoding="klingon",
        ),
        # malformed headers
        Case("no task header", HEADERS, REJECTED, GOOD, without("task")),
        Case("no id header", HEADERS, REJECTED, GOOD, without("id")),
        Case("id a number", HEADERS, REJECTED | FAILED, GOOD, setting("id", 7)),
        Case("task a number", HEADERS, UNKNOWN, GOOD, setting("task", 7)),
        Case("eta not a date", HEADERS, REJECTED, GOOD, setting("eta", "soon")),
        Case("expires not a date", HEADERS, REJECTED, GOOD, setting("expires", "x")),
        Case("timelimit strings", HEADERS, REJECTED, GOOD, setting("timelimit", ["a", "b"])),
        Case("timelimit a number", HEADERS, REJECTED, GOOD, setting("timelimit", 5)),
        Case("retries a string", HEADERS, REJECTED, GOOD, setting("retries", "many")),
        Case("unknown header", HEADERS, {"result:SUCCESS"}, GOOD, setting("zz", 1)),
        # unknown task names, raw and published
        Case("unknown task (raw)", "unknown task", UNKNOWN, GOOD, setting("task", "no.such")),
        Case("unknown task", "unknown task", UNKNOWN, send=("no.such.task", [1], {})),
        Case("empty task name", "unknown task", UNKNOWN, send=("", [1], {})),
        Case("long task name", "unknown task", UNKNOWN, send=("x" * 5000, [], {})),
        # wrong-typed or missing arguments
        Case("string for int", "wrong arguments", FAILED, send=("samples.square", ["x"], {})),
        Case("null for int", "wrong arguments", FAILED, send=("samples.square", [None], {})),
        Case("missing argument", "wrong arguments", FAILED, send=("samples.square", [], {})),
        Case("extra argument", "wrong arguments", FAILED, send=("samples.square", [1, 2], {})),
        Case("unknown keyword", "wrong arguments", FAILED, send=("samples.square", [], {"y": 1})),
        Case("string for list", "wrong arguments", FAILED, send=("samples.total", ["abc"], {})),
        Case("kwargs not an object", "wrong arguments", FAILED | REJECTED, b"[[3], [1], {}]"),
        Case("args an object", "wrong arguments", FAILED | REJECTED, b'[{"x": 3}, {}, {}]'),
    ]  # fmt: skip
    for size in OVERSIZED_BYTES:
        found.append(
            Case(
                f"oversized argument {size // 1_000_000} MB",
                "oversized",
                FAILED,
                send=("samples.square", ["x" * size], {}),
            )
        )
        body = json.dumps([["y" * size], {}, {}]).encode()
        found.append(Case(f"oversized raw body {size // 1_000_000} MB", "oversized", FAILED, body))
    return found


# ---------------------------------------------------------------- where a message ended up


def dlq_entries(client: Any) -> list[DeadLetter]:
    dlq = DeadLetterQueues(client)
    return [e for queue in dlq.queues() for e in dlq.entries(queue, limit=10_000)]


def fates(client: Any, batch: list[Case]) -> dict[str, set[str]]:
    """Every place each case's message is found: DLQ entries, results, queue, unacked."""
    found: dict[str, set[str]] = {case.name: set() for case in batch}
    by_id = {case.task_id: case.name for case in batch}
    for entry in dlq_entries(client):
        name = entry.headers.get("proof") or by_id.get(entry.task_id or "")
        if name is None and entry.raw:  # a whole queue entry, kept as it was
            raw = base64.b64decode(entry.raw).decode(errors="replace")
            name = next((n for i, n in by_id.items() if i in raw), None)
        if name in found:
            found[name].add(f"dlq:{entry.kind}")
    results = results_client(client)
    for case in batch:
        meta = results.get(f"celery-task-meta-{case.task_id}")
        if meta is not None:
            found[case.name].add(f"result:{json.loads(meta)['status']}")
    waiting = [raw for key in queue_keys(QUEUE) for raw in client.lrange(key, 0, -1)]
    for raw in waiting + list(client.hvals("unacked")):
        text = raw.decode(errors="replace")
        for case in batch:
            if case.task_id in text or f'"proof": "{case.name}"' in text:
                found[case.name].add("kept")
    return found


@pytest.fixture(scope="module")
def worker(
    restartable_redis: RestartableRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Process]:
    restartable_redis.client().flushall()
    with running(restartable_redis.port, tmp_path_factory.mktemp("worker")) as process:
        yield process


def test_bad_messages_are_kept_and_valid_ones_alongside_complete(
    worker: Process, restartable_redis: RestartableRedis
) -> None:
    client = restartable_redis.client()
    app = publisher(restartable_redis.port)
    batch = cases()
    valid = []
    for index, case in enumerate(batch):
        if case.send is not None:
            name, args, kwargs = case.send
            app.send_task(name, args=args, kwargs=kwargs, task_id=case.task_id)
        elif case.entry is not None:
            client.lpush(QUEUE, case.entry(case.task_id))
        else:
            client.lpush(QUEUE, envelope(case))
        if index % 3 == 0:  # valid work queued in between the bad
            valid.append(app.send_task("samples.square", args=[index]))
    valid += [app.send_task("samples.square", args=[n]) for n in range(VALID_PER_BATCH)]
    published = len(batch) + len(valid)

    results = [v.get(timeout=90) for v in valid]
    assert results[-VALID_PER_BATCH:] == [n * n for n in range(VALID_PER_BATCH)]
    # Settled: nothing left waiting or in flight (the largest messages finish last).
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        pending = sum(int(client.llen(k)) for k in queue_keys(QUEUE)) + client.hlen("unacked")
        if not pending:
            break
        time.sleep(0.2)
    located = fates(client, batch)
    assert worker.proc.poll() is None, f"the worker died:\n{worker.output()[-3000:]}"

    lost = [name for name, places in located.items() if not places]
    assert lost == [], f"not found anywhere (lost): {lost}"
    for case in batch:
        places = located[case.name]
        assert places & case.allowed, f"{case.name}: found in {places}, expected {case.allowed}"
        if "result:FAILURE" in places:
            dead = [p for p in places if p.startswith("dlq:")]
            assert dead, f"{case.name}: failed without a dead letter"
        FIGURES.count(SECTION, f"category: {case.category}")
        FIGURES.count(SECTION, f"outcome: {' + '.join(sorted(places))}")
    FIGURES.count(SECTION, "bad messages published", len(batch))
    FIGURES.count(SECTION, "valid messages published alongside, all completed", len(valid))
    FIGURES.count(SECTION, "messages published in total", published)
    FIGURES.count(
        SECTION, "messages found afterwards (DLQ, result or queue)", published - len(lost)
    )
    app.close()


def test_worker_log_names_each_rejected_message(worker: Process) -> None:
    """Runs after the batch: every rejection is logged with the reason, not silently."""
    rejected = [
        line for line in worker.json_lines() if line.get("message") == "dead letter recorded"
    ]
    assert rejected, "no dead letter logged"
    assert all(line.get("kind") for line in rejected)
