"""The worker benchmark's goal line, judged round by round against Celery's defaults."""

from __future__ import annotations

from typing import Any

from bench.worker_bench.report import goal_line


def run(variant: str, round_: int, drain_per_s: float, p99_ms: float) -> dict[str, Any]:
    return {
        "variant": variant,
        "round": round_,
        "drain": {"tasks_per_s": drain_per_s},
        "latency": {"start_ms": {"p99": p99_ms}},
    }


def rounds(
    shipped: list[tuple[float, float]], defaults: list[tuple[float, float]]
) -> list[dict[str, Any]]:
    return [
        *(run("shipped", n, *figures) for n, figures in enumerate(shipped, 1)),
        *(run("defaults", n, *figures) for n, figures in enumerate(defaults, 1)),
    ]


def test_met_when_the_medians_drain_as_fast_and_start_no_later() -> None:
    line = goal_line(rounds([(1010, 2.0), (990, 2.5), (1050, 2.1)], [(1000, 2.2)] * 3))
    assert "Drain 1.01 of the defaults' (rounds 0.99-1.05, at or above in 2 of 3)" in line
    assert "median p99 2.10 against 2.20 ms (no worse in 2 of 3 rounds" in line
    assert line.endswith("**met**.")


def test_a_median_gap_inside_the_rounds_spread_is_reported_as_such() -> None:
    line = goal_line(rounds([(970, 2.0), (1020, 2.5), (980, 2.6)], [(1000, 2.2)] * 3))
    assert "Drain 0.98" in line
    assert line.endswith("**not met** by the medians, within the rounds' spread.")


def test_not_met_when_no_round_drains_as_fast() -> None:
    line = goal_line(rounds([(900, 2.0), (950, 2.0)], [(1000, 2.2), (1000, 2.2)]))
    assert line.endswith("**not met**.")


def test_failed_runs_and_rounds_without_a_partner_are_left_out() -> None:
    runs = rounds([(1000, 2.0), (500, 9.0)], [(1000, 2.2)])
    runs.append({"variant": "defaults", "round": 2, "error": "worker did not start"})
    assert "rounds 1.00-1.00, at or above in 1 of 1" in goal_line(runs)
    assert goal_line([run("defaults", 1, 1000, 2.0)]) == ""
