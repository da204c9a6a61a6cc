"""The chaos soak's driver: its verdict on made-up ledgers, and a small real run."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from bench.chaos import Event, Options, analyse, run

T = 1_000.0  # an arbitrary epoch second


def rec(
    event: str, task_id: str, t: float, *, pid: int = 10, worker: str = "w-1"
) -> dict[str, Any]:
    return {"e": event, "id": task_id, "r": 0, "w": worker, "p": pid, "t": t}


def test_a_clean_ledger_passes() -> None:
    records = [rec("s", "a", T), rec("x", "a", T + 0.1), rec("d", "a", T + 0.2)]
    report = analyse(records, {"a": True}, [], dead_letters={})
    assert (report.submitted, report.completed, report.lost) == (1, 1, 0)
    assert report.effects_applied == 1
    assert report.ok


def test_a_task_that_never_finished_is_lost_unless_it_is_a_dead_letter() -> None:
    records = [rec("s", "a", T), rec("s", "b", T)]
    report = analyse(
        records, {"a": False, "b": False}, [], dead_letters={"b": "failed: TransientError: x"}
    )
    assert (report.completed, report.lost, report.dead_lettered) == (0, 1, 1)
    assert report.lost_ids == ["a"]
    assert report.dead_letter_reasons == {"failed: TransientError: x": 1}
    assert not report.ok


def test_an_effect_applied_twice_fails_the_soak() -> None:
    records = [
        rec("s", "a", T),
        rec("x", "a", T + 0.1),
        rec("s", "a", T + 30, pid=11, worker="w-2"),
        rec("x", "a", T + 30.1, pid=11, worker="w-2"),
        rec("d", "a", T + 30.2, pid=11, worker="w-2"),
    ]
    kill = Event("kill_worker", "w-1", T + 0.15, T + 0.15)
    report = analyse(records, {"a": True}, [kill], dead_letters={})
    assert report.effects_applied_twice == 1
    assert not report.ok


def test_duplicates_must_be_explained_by_work_in_flight_at_a_kill() -> None:
    # "a" was running on w-1 when it was killed: its second run is expected. "b" ended on
    # w-2 long before anything happened there: its second run is a redelivery bug.
    records = [
        rec("s", "a", T),
        rec("s", "a", T + 25, pid=20, worker="w-3"),
        rec("d", "a", T + 25.1, pid=20, worker="w-3"),
        rec("s", "b", T, pid=30, worker="w-2"),
        rec("d", "b", T + 0.1, pid=30, worker="w-2"),
        rec("s", "b", T + 40, pid=20, worker="w-3"),
        rec("d", "b", T + 40.1, pid=20, worker="w-3"),
    ]
    kill = Event("kill_worker", "w-1", T + 1, T + 1)
    report = analyse(records, {"a": False, "b": False}, [kill], dead_letters={})
    assert kill.in_flight == 1
    assert kill.duplicates == 1
    assert (report.duplicate_executions, report.duplicate_bound) == (2, 1)
    assert report.unexplained_duplicates == 1
    assert report.max_executions == 2
    assert not report.ok


def test_a_publish_retried_during_the_outage_may_run_twice() -> None:
    # Redis stored the first copy but its answer was lost: the retry enqueued a second one.
    records = [
        rec("s", "a", T),
        rec("d", "a", T + 0.1),
        rec("s", "a", T + 0.1, pid=11, worker="w-2"),
        rec("d", "a", T + 0.2, pid=11, worker="w-2"),
    ]
    report = analyse(records, {"a": False}, [], dead_letters={}, republished=frozenset({"a"}))
    assert (report.duplicate_executions, report.duplicate_bound) == (1, 1)
    assert report.unexplained_duplicates == 0
    assert report.ok


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_a_small_soak_loses_nothing(tmp_path: Path) -> None:
    """A short run of the real driver: two workers, SIGTERMs and pool-process kills (both
    requeue at once; a whole-worker kill waits for the visibility timeout, too long here)."""
    opts = Options(
        tasks=300,
        duration_s=10,
        drain_s=15,
        interactive_workers=1,
        batch_workers=1,
        actions=("sigterm", "kill_child"),
        action_every_s=(2.5, 3.5),
        redis_restart=False,
        verbose=False,
    )
    report = run(opts, tmp_path)
    assert report.submitted == 300
    assert report.completed == 300
    assert report.lost == 0
    assert report.effects_applied_twice == 0
    assert report.effects_applied == report.effect_tasks
    assert sum(report.actions.values()) >= 2
    assert report.duplicate_executions <= report.duplicate_bound
    assert report.unexplained_duplicates == 0
