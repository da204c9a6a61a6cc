"""RedBeat: two beats running at once schedule each job once, and the holder heartbeats."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery_service.contract import BEAT_HEARTBEAT_KEY, queue_keys
from tests.conftest import RedisServer
from tests.worker.harness import TEST_CATALOG, base_env, start, wait_for

EVERY_S = 1
RUN_S = 12


def test_two_beats_never_double_schedule(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    server = redis_server()
    client = server.client()
    catalog: dict[str, Any] = {
        **TEST_CATALOG,
        "schedules": {"tick": {"task": "samples.square", "every_s": EVERY_S, "args": [2]}},
    }
    env = base_env(server.port, tmp_path, catalog)
    beats = [start(["beat"], f"beat-{i}", env, tmp_path) for i in (1, 2)]
    try:
        wait_for(lambda: any(b.heartbeat.exists() for b in beats), 30, "a beat to tick")
        started = time.monotonic()
        before = sum(client.llen(k) for k in queue_keys("default"))
        time.sleep(RUN_S)
        published = sum(client.llen(k) for k in queue_keys("default")) - before
        elapsed = time.monotonic() - started
        assert all(b.proc.poll() is None for b in beats), "both beats keep running"
        ticking = [b for b in beats if b.heartbeat.exists()]
    finally:
        for beat in beats:
            beat.stop()
    # One beat: about one message per second. Two unlocked beats would publish twice that.
    expected = elapsed / EVERY_S
    assert expected * 0.6 <= published <= expected * 1.3, (published, expected)
    assert len(ticking) == 1, "only the lock holder ticks"
    assert float(client.get(BEAT_HEARTBEAT_KEY) or 0) > time.time() - 10


def test_beat_names_a_schedule_whose_task_no_module_registers(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    """Beat publishes it on time all the same (a worker of another release may know it), but
    says at start that every run will go to the DLQ as an unknown task."""
    server = redis_server()
    catalog: dict[str, Any] = {
        **TEST_CATALOG,
        "schedules": {"typo": {"task": "samples.squre", "every_s": 60}},
    }
    beat = start(["beat"], "beat-typo", base_env(server.port, tmp_path, catalog), tmp_path)
    try:
        wait_for(lambda: "no task module registers" in beat.output(), 30, "the warning")
    finally:
        beat.stop()
    (line,) = [line for line in beat.output().splitlines() if "no task module registers" in line]
    assert "schedules name tasks no task module registers" in line
    assert "typo (samples.squre)" in line
