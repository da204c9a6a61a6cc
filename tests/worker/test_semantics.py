"""The Celery behaviours the catalog promises, through the calls a team's code makes:
priorities on every publish path, one dead letter per failure, pool recycling, limits per
pool, fair rotation between queues, countdowns beyond the visibility timeout."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery, chain, chord, group

from celery_service import contract
from celery_service.contract import queue_keys
from celery_service.tasks.base import TaskOutOfMemory
from tests.conftest import RedisServer
from tests.worker import semantics_tasks as t
from tests.worker.harness import base_env, publisher, running, start, wait_for

MODULES = ("tests.worker.semantics_tasks",)
SEP = "\x06\x16"

# `work` and `side` are consumed by the running group, `parked` and `default` by a group no
# test starts, so what lands there stays where the publisher (or a worker, or beat) put it.
CATALOG: dict[str, Any] = {
    "visibility_timeout_s": 20,
    "default_queue": "default",
    "result_expires_s": 600,
    "retry_backoff_max_s": 1,
    "queues": ["default", "parked", "side", "work"],
    "worker_groups": {
        "runner": {
            "queues": ["work", "side"],
            "concurrency": 1,
            "pool": "prefork",
            "soft_time_limit_s": 2,
            "time_limit_s": 3,
        },
        "parked": {"queues": ["parked", "default"], "concurrency": 1, "time_limit_s": 3},
    },
    "tasks": {
        "semantics.urgent": {"queue": "work", "priority": "high"},
        "semantics.eventually": {"queue": "work", "priority": "bulk"},
        "semantics.step": {"queue": "work"},
        "semantics.parked_high": {"queue": "parked", "priority": "high"},
        "semantics.parked_low": {"queue": "parked", "priority": "low"},
        "semantics.patterned.*": {"queue": "parked", "priority": "bulk"},
        "semantics.limits.*": {"queue": "work", "soft_time_limit_s": 1, "time_limit_s": 2},
        "semantics.flaky": {"queue": "work", "max_retries": 1},
        "semantics.refused": {"queue": "work"},
        "semantics.broken": {"queue": "work"},
        "semantics.later": {"queue": "work"},
        "semantics.retry_later": {"queue": "work"},
        "semantics.decorated": {"queue": "work"},
        "semantics.whoami": {"queue": "work"},
        "semantics.hoard": {"queue": "work"},
        "semantics.exhausts_memory": {"queue": "work"},
        "semantics.quiet": {"queue": "work"},
        "semantics.crash": {"queue": "work"},
        "semantics.nap": {"queue": "work"},
        "semantics.not_ready": {"queue": "work"},
    },
    "schedules": {},
}


@pytest.fixture
def server(redis_server: Callable[..., RedisServer]) -> RedisServer:
    return redis_server()


@pytest.fixture
def app(server: RedisServer) -> Iterator[Celery]:
    """The publisher a team's API would use: it imports the team's task modules."""
    celery = publisher(server.port, CATALOG, MODULES)
    celery.loader.import_default_modules()
    yield celery
    celery.close()


def where(client: Any, queue: str) -> dict[int, list[str]]:
    """Task names of the messages waiting in each priority key of `queue`."""
    found: dict[int, list[str]] = {}
    for step, key in zip((0, 3, 6, 9), queue_keys(queue), strict=True):
        for raw in client.lrange(key, 0, -1):
            found.setdefault(step, []).append(json.loads(raw)["headers"]["task"])
    return found


# ---------------------------------------------------------------- 1. priorities


def test_every_publish_path_lands_on_the_catalog_priority_key(
    app: Celery, server: RedisServer, tmp_path: Path
) -> None:
    client: Any = server.client()
    high, low = t.parked_high, t.parked_low
    high.delay()
    low.apply_async()
    high.s().apply_async()
    low.s().delay()
    group(high.s(), low.s()).apply_async()
    t.patterned_tick.delay()  # a pattern entry: queue and priority
    app.send_task("semantics.parked_high")  # by name, as a service without the code would
    low.apply_async(priority=0)  # an explicit priority still wins
    t.unlisted.delay()  # not in the catalog: the default queue, normal
    # Hops published by a worker: a chain's next task, a chord's body.
    chain(t.step.s(1), high.si()).apply_async()
    chord([t.step.s(2), t.step.s(3)], low.si()).apply_async()
    with running(server.port, tmp_path, "runner", catalog=CATALOG, task_modules=MODULES):
        wait_for(lambda: sum(map(len, where(client, "parked").values())) == 11, 30, "11")
    parked = where(client, "parked")
    assert sorted(parked[0]) == ["semantics.parked_high"] * 5 + ["semantics.parked_low"]
    assert sorted(parked[6]) == ["semantics.parked_low"] * 4
    assert parked[9] == ["semantics.patterned.tick"]
    assert where(client, "default") == {3: ["semantics.unlisted"]}


def test_beat_publishes_at_the_catalog_priority_of_a_pattern_entry(
    server: RedisServer, tmp_path: Path
) -> None:
    catalog = {
        **CATALOG,
        "schedules": {"tick": {"task": "semantics.patterned.tick", "every_s": 1}},
    }
    env = base_env(server.port, tmp_path, catalog, MODULES)
    beat = start(["beat"], "beat", env, tmp_path)
    client: Any = server.client()
    try:
        wait_for(lambda: client.llen(f"parked{SEP}9") >= 1, 30, "beat's first tick")
    finally:
        beat.stop()
    assert set(where(client, "parked")) == {9}


def test_a_mixed_backlog_runs_by_catalog_priority(
    app: Celery, server: RedisServer, tmp_path: Path
) -> None:
    """Published through delay() while no worker runs; `eventually`'s decorator asks for
    priority 0, the catalog says bulk, and the catalog wins."""
    for i in range(6):
        t.eventually.delay(f"bulk-{i}")
        t.urgent.delay(f"high-{i}")
    client: Any = server.client()
    with running(server.port, tmp_path, "runner", catalog=CATALOG, task_modules=MODULES):
        wait_for(lambda: client.llen(t.ORDER_KEY) == 12, 30, "the backlog")
    order = [label.decode() for label in client.lrange(t.ORDER_KEY, 0, -1)]
    assert [label.split("-")[0] for label in order] == ["high"] * 6 + ["bulk"] * 6


def test_a_worker_names_catalog_entries_that_match_no_task(
    server: RedisServer, tmp_path: Path
) -> None:
    catalog = {
        **CATALOG,
        "tasks": {
            **CATALOG["tasks"],
            "semantics.urgnet": {"queue": "work"},
            "nope.*": {"queue": "work"},
        },
    }
    with running(server.port, tmp_path, "runner", catalog=catalog, task_modules=MODULES) as w:
        wait_for(lambda: "no task module registers" in w.output(), 10, "the warning")
    [line] = [r for r in w.json_lines() if "no task module registers" in r.get("message", "")]
    assert line["level"] == "WARNING"
    assert (
        "nope.*, semantics.urgnet; CELERY_TASK_MODULES: tests.worker.semantics_tasks"
        in (line["message"])
    )


# ---------------------------------------------------------------- 2. one dead letter


def test_every_terminal_failure_leaves_exactly_one_dead_letter_under_its_queue(
    app: Celery, server: RedisServer, tmp_path: Path
) -> None:
    client: Any = server.client()
    # A real hard limit (from a pattern entry), published to another queue with queue=.
    hard = t.sleep_through_soft.apply_async((10,), queue="side")
    soft = t.sleep.delay(10)  # its soft limit (1 s) is not handled: a failure
    exhausted = t.flaky.delay()
    refused = t.refused.delay()
    broken = t.broken.delay()
    unknown = app.send_task("semantics.nobody", queue="side")
    with app.producer_or_acquire() as producer:  # an undecodable body
        producer.publish(
            b"{not json",
            exchange="work",
            routing_key="work",
            content_type="application/json",
            content_encoding="utf-8",
            headers={"task": "semantics.step", "id": "undecodable-1"},
        )
    with running(server.port, tmp_path, "runner", catalog=CATALOG, task_modules=MODULES) as w:
        for result in (hard, soft, exhausted, refused, broken, unknown):
            result.get(timeout=30, propagate=False)
        wait_for(lambda: client.zcard(contract.dlq_index_key("work")) >= 5, 15, "dead letters")
        time.sleep(2)  # a second report of any failure would land now
        assert "Hard time limit (2" in w.output()

    def entries(queue: str) -> dict[str, dict[str, Any]]:
        raw = client.hgetall(contract.dlq_entries_key(queue))
        by_task = {}
        for value in raw.values():
            entry = json.loads(value)
            key = entry["task_id"]
            assert key not in by_task, f"two dead letters for {entry['task_name']}"
            by_task[key] = entry
        assert client.zcard(contract.dlq_index_key(queue)) == len(by_task)
        return by_task

    side, work = entries("side"), entries("work")
    assert set(side) == {hard.id, unknown.id}
    assert "TimeLimitExceeded" in side[hard.id]["exception"]
    assert side[unknown.id]["kind"] == "unknown_task"
    assert set(work) == {soft.id, exhausted.id, refused.id, broken.id, "undecodable-1"}
    assert "SoftTimeLimitExceeded" in work[soft.id]["exception"]
    assert work[exhausted.id]["attempts"] == 2  # the first run and its one retry
    assert work["undecodable-1"]["kind"] == "undecodable"
    assert entries("default") == {}


def test_a_task_out_of_memory_fails_alone(app: Celery, server: RedisServer, tmp_path: Path) -> None:
    """Celery lets MemoryError end the pool process and the worker with it, and the message
    goes back to end the next worker. Here the task fails with one dead letter and the same
    worker (and pool process) goes on."""
    client: Any = server.client()
    with running(server.port, tmp_path, "runner", catalog=CATALOG, task_modules=MODULES) as w:
        before = t.whoami.delay("before").get(timeout=15)
        failed = t.exhausts_memory.delay()
        with pytest.raises(TaskOutOfMemory, match=r"semantics.exhausts_memory ran out of memory"):
            failed.get(timeout=15)
        assert t.whoami.delay("after").get(timeout=15) == before, "the same pool process"
        wait_for(lambda: client.zcard(contract.dlq_index_key("work")) >= 1, 10, "a dead letter")
        assert w.proc.poll() is None, "the worker still runs"
    (entry,) = [json.loads(v) for v in client.hvals(contract.dlq_entries_key("work"))]
    assert entry["task_id"] == failed.id
    assert "TaskOutOfMemory" in entry["exception"]


def test_a_task_that_ends_its_process_stops_in_the_dlq_after_max_deliveries(
    app: Celery, server: RedisServer, tmp_path: Path
) -> None:
    """Redelivered at once after each crash (reject on worker lost), it would kill a pool
    process for ever; the pop counts its deliveries and sets it aside after the catalog's
    max_deliveries, and the work around it goes on."""
    client: Any = server.client()
    # Limits long enough that the pool sees its process gone before a time limit fires.
    catalog = {**runner_with(soft_time_limit_s=20, time_limit_s=30), "max_deliveries": 3}
    catalog["visibility_timeout_s"] = 60
    with running(server.port, tmp_path, "runner", catalog=catalog, task_modules=MODULES) as w:
        poison = t.crash.delay("poison")
        wait_for(lambda: client.zcard(contract.dlq_index_key("work")) >= 1, 60, "a dead letter")
        assert t.whoami.delay("after").get(timeout=15) > 0, "the worker goes on"
        assert w.proc.poll() is None
    assert client.hget(t.RUNS_KEY, "poison") == b"3", "delivered exactly max_deliveries times"
    (entry,) = [json.loads(v) for v in client.hvals(contract.dlq_entries_key("work"))]
    assert entry["kind"] == "poison"
    assert "delivered 3 times without an ack" in entry["exception"]
    assert json.loads(base64.b64decode(entry["raw"]))["headers"]["id"] == poison.id
    assert client.hlen(contract.DELIVERIES_KEY) == 0, "counts end with their message"
    assert client.hlen("unacked") == 0


def test_a_task_requeued_at_each_hard_limit_stops_in_the_dlq_after_max_deliveries(
    app: Celery, server: RedisServer, tmp_path: Path
) -> None:
    """The hard limit kills the pool process, like a crash: with the task's
    acks_on_timeout=False each kill requeues it (Celery still reports the failure, so its
    attempt is recorded once), and the delivery count sets it aside as poison."""
    client: Any = server.client()
    catalog = {**runner_with(), "max_deliveries": 2}

    def kinds() -> list[str]:
        entries = client.hvals(contract.dlq_entries_key("work"))
        return sorted(json.loads(entry)["kind"] for entry in entries)

    with running(server.port, tmp_path, "runner", catalog=catalog, task_modules=MODULES):
        t.requeued_at_hard_limit.delay("stuck")
        wait_for(lambda: "poison" in kinds(), 60, "the poison entry")
    assert client.hget(t.RUNS_KEY, "stuck") == b"2", "run max_deliveries times"
    assert kinds() == ["failed", "poison"]


def test_requeues_that_end_no_process_never_make_a_message_poison(
    app: Celery, server: RedisServer, tmp_path: Path
) -> None:
    """Only a delivery whose task ended its process counts towards max_deliveries: a task's
    own Reject(requeue=True), and an ETA message its workers hand back at each warm
    shutdown (a deploy, a scale-in), go back to their queue as often as they need."""
    client: Any = server.client()
    catalog = {**runner_with(), "max_deliveries": 2, "visibility_timeout_s": 60}
    held = t.later.apply_async(("held",), countdown=20)
    not_ready = t.not_ready.delay("not-ready", 4)  # handed back 3 times, then done
    for restart in range(3):
        with running(server.port, tmp_path, "runner", catalog=catalog, task_modules=MODULES):
            if restart == 0:
                assert not_ready.get(timeout=30) == 4
            wait_for(lambda: client.hlen("unacked") == 1, 10, "the ETA message held")
        assert client.hget(t.RUNS_KEY, "held") is None, "not due yet"
    with running(server.port, tmp_path, "runner", catalog=catalog, task_modules=MODULES):
        held.get(timeout=30)
    assert client.hget(t.RUNS_KEY, "held") == b"1"
    assert client.hget(t.RUNS_KEY, "not-ready") == b"4"
    assert client.zcard(contract.dlq_index_key("work")) == 0, "nothing set aside as poison"
    assert client.hlen(contract.DELIVERIES_KEY) == 0


# ---------------------------------------------------------------- 3. recycling


def runner_with(**settings: Any) -> dict[str, Any]:
    runner = {**CATALOG["worker_groups"]["runner"], **settings}
    return {**CATALOG, "worker_groups": {**CATALOG["worker_groups"], "runner": runner}}


def test_a_pool_process_is_replaced_after_max_tasks_per_child(
    app: Celery, server: RedisServer, tmp_path: Path
) -> None:
    results = [t.whoami.delay(f"run-{i}") for i in range(7)]
    catalog = runner_with(max_tasks_per_child=3)
    with running(server.port, tmp_path, "runner", catalog=catalog, task_modules=MODULES):
        pids = [r.get(timeout=30) for r in results]
    assert len(set(pids[0:3])) == 1
    assert len(set(pids[3:6])) == 1
    assert pids[3] != pids[0]
    assert pids[6] not in (pids[0], pids[3])
    runs = server.client().hgetall(t.RUNS_KEY)
    assert sorted(runs.values()) == [b"1"] * 7  # nothing lost or run twice at a replacement


def test_a_pool_process_is_replaced_once_it_outgrows_max_memory_per_child(
    app: Celery, server: RedisServer, tmp_path: Path
) -> None:
    results = [t.hoard.delay(f"grow-{i}", 200) for i in range(3)]
    catalog = runner_with(max_memory_per_child_mib=150)
    with running(server.port, tmp_path, "runner", catalog=catalog, task_modules=MODULES):
        pids = [r.get(timeout=30) for r in results]
    assert len(set(pids)) == 3  # each process kept 200 MiB, over the bound: replaced
    runs = server.client().hgetall(t.RUNS_KEY)
    assert sorted(runs.values()) == [b"1"] * 3


# ---------------------------------------------------------------- 4. pools and limits


def test_a_gevent_group_enforces_its_hard_limit(
    app: Celery, server: RedisServer, tmp_path: Path
) -> None:
    catalog = runner_with(pool="gevent", concurrency=4, soft_time_limit_s=None, time_limit_s=3)
    catalog["worker_groups"]["runner"] = {
        k: v for k, v in catalog["worker_groups"]["runner"].items() if v is not None
    }
    catalog["tasks"] = {**CATALOG["tasks"], "semantics.limits.*": {"queue": "work"}}
    nap = t.sleep.delay(30)
    quick = [t.step.delay(i) for i in range(3)]
    started = time.monotonic()
    with running(server.port, tmp_path, "runner", catalog=catalog, task_modules=MODULES):
        assert [r.get(timeout=15) for r in quick] == [0, 1, 2]
        nap.get(timeout=20, propagate=False)
    assert nap.state == "FAILURE"
    assert time.monotonic() - started < 20
    dead = server.client().hvals(contract.dlq_entries_key("work"))
    assert [json.loads(d)["task_id"] for d in dead] == [nap.id]


# ---------------------------------------------------------------- 6. countdowns and ETAs


def test_countdowns_beyond_the_visibility_timeout_run_once_and_on_time(
    app: Celery, server: RedisServer, tmp_path: Path
) -> None:
    """Two workers. Held for its whole 25 s countdown, a message outlasts the 20 s visibility
    timeout and the other worker's restore sweep hands it out a second time. Both the
    caller's countdown and one set by a retry in task code."""
    client: Any = server.client()
    sent = time.time()
    t.later.apply_async(("by-caller",), countdown=25)
    t.retry_later.delay("by-retry", 25)
    with (
        running(server.port, tmp_path, "runner", "w1", CATALOG, MODULES) as w1,
        running(server.port, tmp_path, "runner", "w2", CATALOG, MODULES) as w2,
    ):
        wait_for(lambda: client.hlen(t.RUNS_KEY) == 2, 45, "both tasks")
        time.sleep(8)  # a second delivery would have run by now
        logs = w1.output() + w2.output()
    assert client.hgetall(t.RUNS_KEY) == {b"by-caller": b"1", b"by-retry": b"1"}
    ran_at = {k.decode(): float(v) for k, v in client.hgetall(t.RAN_AT_KEY).items()}
    assert all(at >= sent + 24 for at in ran_at.values()), ran_at
    assert "beyond what a worker may hold it" in logs


# ---------------------------------------------------------------- 9. fairness


def test_a_worker_alternates_between_its_queues(
    app: Celery, server: RedisServer, tmp_path: Path
) -> None:
    for i in range(10):
        t.step.apply_async((f"work-{i}",), queue="work")
    for i in range(10):
        t.step.apply_async((f"side-{i}",), queue="side")
    client: Any = server.client()
    with running(server.port, tmp_path, "runner", catalog=CATALOG, task_modules=MODULES):
        wait_for(lambda: client.llen(t.ORDER_KEY) == 20, 30, "both queues")
    labels = [label.decode() for label in client.lrange(t.ORDER_KEY, 0, -1)]
    order = [label.removeprefix("step:").split("-")[0] for label in labels]
    assert order[:10].count("work") == 5, order
    assert order[:10].count("side") == 5, order
