"""The failover harness: its verdict on made-up ledgers, and a short real sample."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from bench.failover.ledger import Exit, Figures, Observed, count
from bench.failover.modes import MODES
from bench.failover.run import QUICK, run_mode

END = 1_000.0  # the fault's end, an arbitrary epoch second


def rec(
    event: str, task_id: str, t: float, *, worker: str = "w-1", pid: int = 10
) -> dict[str, Any]:
    return {"e": event, "id": task_id, "r": 0, "w": worker, "p": pid, "t": t}


def run_of(
    task_id: str, start: float, *, worker: str = "w-1", effect: bool = False
) -> list[dict[str, Any]]:
    lines = [rec("s", task_id, start, worker=worker)]
    if effect:
        lines.append(rec("x", task_id, start + 0.01, worker=worker))
    return [*lines, rec("d", task_id, start + 0.02, worker=worker)]


def observed(acked_at: dict[str, float], **kwargs: Any) -> Observed:
    return Observed(
        acked_at=acked_at,
        effects=kwargs.pop("effects", {}),
        fault_start=END - 5,
        fault_end=END,
        workers=["w-1", "w-2"],
        **kwargs,
    )


# Before the fault, "a"; after it, "b" on w-1 and "c" on w-2, both working again within 2 s.
ACKED = {"a": END - 10, "b": END + 1, "c": END + 1.5}
CLEAN = [*run_of("a", END - 9.9), *run_of("b", END + 1.1), *run_of("c", END + 1.6, worker="w-2")]


def figures(records: list[dict[str, Any]], **kwargs: Any) -> Figures:
    return count(records, observed(dict(ACKED), beat_resumed_at=END + 3, **kwargs))


def test_a_clean_recovery_passes_with_its_resume_times() -> None:
    f = figures(CLEAN)
    assert (f.submitted, f.completed, f.lost, f.stuck) == (3, 3, 0, 0)
    assert f.worker_resume_s == pytest.approx({"w-1": 1.1, "w-2": 1.6})
    assert f.resume_s == pytest.approx(3.0)  # beat was the last
    assert f.first_completion_s == pytest.approx(1.12)
    assert f.ok, f.misses()


def test_a_task_gone_from_the_broker_is_lost_and_fails_the_mode() -> None:
    f = figures([r for r in CLEAN if r["id"] != "a"])
    assert (f.lost, f.stuck, f.lost_ids) == (1, 0, ["a"])
    assert f.drained_s is None
    assert not f.ok


def test_a_task_still_unacked_at_the_deadline_is_stuck_not_lost() -> None:
    f = figures([r for r in CLEAN if r["id"] != "a"], in_broker={"a"})
    assert (f.lost, f.stuck) == (0, 1)
    assert not f.ok


def test_a_loss_inside_the_replication_window_is_a_figure_not_a_failure() -> None:
    f = figures([r for r in CLEAN if r["id"] != "a"], window=(END - 10.1, END - 9.9))
    assert (f.lost, f.lost_in_window, f.acked_in_window) == (1, 1, 1)
    assert f.ok, f.misses()


def test_an_effect_applied_twice_fails_the_mode() -> None:
    records = [*CLEAN, *run_of("a", END + 2, worker="w-2", effect=True)]
    records += [rec("x", "a", END - 9.85)]
    f = figures(records, effects={"a": True})
    assert (f.effects_applied_twice, f.run_twice) == (1, 1)  # its delivery ran again
    assert not f.ok


def test_an_effect_first_applied_inside_the_replication_window_is_excused_with_it() -> None:
    """Its applied_once marker was written in the window, so the failover may have lost it."""
    records = [*CLEAN, *run_of("a", END + 2, worker="w-2", effect=True)]
    records += [rec("x", "a", END - 9.85)]
    f = figures(records, effects={"a": True}, window=(END - 10.1, END - 9.8))
    assert (f.effects_applied_twice, f.effects_twice_in_window) == (1, 1)
    assert f.ok, f.misses()
    late = figures(records, effects={"a": True}, window=(END - 10.1, END - 9.9))
    assert late.effects_twice_in_window == 0
    assert not late.ok


def test_a_run_of_an_earlier_publish_of_the_same_id_is_not_a_resumption() -> None:
    """A publish whose confirmation was cut off raised and was sent again after the fault;
    its first copy ran before the fault's end, which is not working again."""
    records = [*CLEAN, *run_of("b", END - 2)]  # "b" also ran from its first publish
    f = figures(records, sent_at={"b": END + 0.9})
    assert f.worker_resume_s["w-1"] == pytest.approx(1.1)


def test_a_process_that_exited_fails_the_mode() -> None:
    f = figures(CLEAN, exits=[Exit("w-2", 1, END + 0.5)])
    assert not f.ok
    assert "exited" in " ".join(f.misses())


def test_a_worker_that_never_takes_new_work_has_not_resumed() -> None:
    f = figures([r for r in CLEAN if r["w"] != "w-2"] + run_of("c", END + 1.6))
    assert f.worker_resume_s["w-2"] is None
    assert f.resume_s is None
    assert not f.ok


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
@pytest.mark.parametrize("mode", ["failover-silent"])  # the most in one sample: CI time
def test_a_short_sample_meets_the_goals(mode: str, tmp_path: Path) -> None:
    result = run_mode(MODES[mode], QUICK, tmp_path / mode, seed=7, say=lambda *_: None)
    assert result.figures is not None, result.error
    assert result.figures.submitted > 100
    assert result.ok, (result.misses, result.log_lines)
