"""The benchmark: every shape, policy and cadence on the seeds tuned on and on held-out ones;
the goals and the tables of `bench/results/autoscaler_sim.md`."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.autoscaler_sim.fargate import RunResult, simulate
from bench.autoscaler_sim.policies import OURS, POLICIES, Service
from bench.workloads import DAY_S, generate

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"
HEADLINE_INTERVALS_S = (300, 60)
SEEDS = (1, 2, 3)  # the seeds the policy was tuned on; the tables show the first
# Seeds never tuned on: the same shapes, freshly generated (bench --held-out to change them).
HELD_OUT_SEEDS = (1001, 1002, 1003)
BACKLOG_PER_TASK = "AWS backlog/task"


@dataclass(frozen=True)
class Goal:
    """The policy's goal at one cadence: a late share and a cost (task-hours / the work's
    lower bound), each absolute or relative to an anchor's on the same runs; no job killed."""

    late: float  # a share of jobs, or of the anchor's share
    cost_x: float | None  # a multiple of the lower bound; None: at most the anchor's
    anchor: str | None = None


GOALS = {
    # At most 60 % of backlog-per-task's late share, at no more than its cost.
    300: Goal(late=0.6, cost_x=None, anchor=BACKLOG_PER_TASK),
    # At most 1 % late at no more than 1.20 x the lower bound (the clairvoyant's cost).
    60: Goal(late=0.01, cost_x=1.20),
}
WARMUP_S = 1800.0  # every policy starts at min_tasks; the first half hour is not measured


@dataclass(frozen=True)
class Case:
    workload: str
    policy: str
    interval_s: float
    protection: bool
    seed: int = 1


def run_case(case: Case, *, record: bool = False) -> RunResult:
    jobs = generate(case.workload, case.seed)
    return simulate(
        jobs,
        case.policy,
        service=Service(protection=case.protection),
        interval_s=case.interval_s,
        seed=case.seed,
        warmup_s=WARMUP_S,
        workload=case.workload,
        record=record,
        duration_s=DAY_S,
    )


def _run_plain(case: Case) -> RunResult:
    return run_case(case)


def run_cases(cases: Sequence[Case], processes: int) -> list[RunResult]:
    if processes <= 1:
        return [_run_plain(c) for c in cases]
    # Slow cases first (short cadences, many jobs), so the processes finish together.
    order = sorted(cases, key=lambda c: (c.interval_s, c.workload))
    with ProcessPoolExecutor(max_workers=processes) as pool:
        done = dict(zip(order, pool.map(_run_plain, order, chunksize=1), strict=True))
    return [done[c] for c in cases]


def goals(results: Sequence[RunResult], interval_s: float) -> dict[str, Any]:
    """Per policy over the shapes (and seeds): mean late share, geometric-mean cost, kills;
    and whether the policy meets its goal at this cadence (GOALS)."""
    by_policy: dict[str, list[RunResult]] = {}
    for r in results:
        if r.interval_s == interval_s and r.protection:
            by_policy.setdefault(r.policy, []).append(r)
    summary = {
        policy: {
            "mean_late": statistics.fmean(r.late for r in runs),
            "worst_late": max(r.late for r in runs),
            "geomean_cost_x": _geomean_cost(runs),
            "killed": sum(r.killed for r in runs),
        }
        for policy, runs in by_policy.items()
    }
    anchors = {p: m for p, m in summary.items() if p != OURS}
    best = min(anchors, key=lambda p: anchors[p]["mean_late"]) if anchors else None
    verdict: dict[str, Any] = {}
    goal = GOALS.get(int(interval_s))
    if OURS in summary and goal is not None and (goal.anchor is None or goal.anchor in anchors):
        if goal.anchor:
            anchor = anchors[goal.anchor]
            late_limit = goal.late * anchor["mean_late"]
            cost_limit = anchor["geomean_cost_x"] if goal.cost_x is None else goal.cost_x
        else:
            late_limit, cost_limit = goal.late, goal.cost_x or math.inf
        ours = summary[OURS]
        verdict = {
            "late_limit": late_limit,
            "cost_limit": cost_limit,
            "met": ours["mean_late"] <= late_limit
            and ours["geomean_cost_x"] <= cost_limit
            and ours["killed"] == 0,
        }
        if goal.anchor:
            verdict["cost_vs_anchor_by_shape"] = _cost_ratio_by_shape(
                by_policy[OURS], by_policy[goal.anchor]
            )
    return {"interval_s": interval_s, "policies": summary, "best_anchor": best, **verdict}


def _geomean_cost(runs: Sequence[RunResult]) -> float:
    return math.exp(statistics.fmean(math.log(r.cost_x) for r in runs))


def _cost_ratio_by_shape(
    ours: Sequence[RunResult], anchor: Sequence[RunResult]
) -> dict[str, float]:
    """The policy's geometric-mean cost over the anchor's, per shape: where a cost gap is."""
    shapes = dict.fromkeys(r.workload for r in ours)
    return {
        shape: _geomean_cost([r for r in ours if r.workload == shape])
        / _geomean_cost([r for r in anchor if r.workload == shape])
        for shape in shapes
        if any(r.workload == shape for r in anchor)
    }


def table(results: Sequence[RunResult]) -> list[str]:
    lines = [
        "| workload | policy | p50 s | p95 s | p99 s | late | task-h | lower bound h | "
        "x bound | killed | max waiting |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        label = f"**{r.policy}**" if r.policy == OURS else r.policy
        lines.append(
            f"| {r.workload} | {label} | {r.p50_wait_s:.0f} | {r.p95_wait_s:.0f} | "
            f"{r.p99_wait_s:.0f} | {r.late:.1%} | {r.task_hours:.1f} | "
            f"{r.lower_bound_hours:.1f} | {r.cost_x:.2f} | {r.killed} | {r.max_waiting} |"
        )
    return lines


def _goal_lines(g: dict[str, Any]) -> list[str]:
    lines = [
        "| policy | mean late over shapes | worst shape | geo-mean x bound | killed |",
        "|---|---|---|---|---|",
    ]
    for policy, m in g["policies"].items():
        label = f"**{policy}**" if policy == OURS else policy
        lines.append(
            f"| {label} | {m['mean_late']:.1%} | {m['worst_late']:.1%} | "
            f"{m['geomean_cost_x']:.2f} | {m['killed']} |"
        )
    return lines


def _late_and_cost(runs: Sequence[RunResult]) -> str:
    return f"{statistics.fmean(r.late for r in runs):.1%} / {_geomean_cost(runs):.2f}"


def compact(
    results: Sequence[RunResult], interval_s: float, held_out: Sequence[RunResult] = ()
) -> list[str]:
    """Late share / cost multiple per shape and policy, means over the seeds tuned on; the
    policy and backlog-per-task on the held-out seeds in the last columns."""
    runs = [r for r in results if r.interval_s == interval_s and r.protection]
    fresh = [r for r in held_out if r.interval_s == interval_s and r.protection]
    shapes = list(dict.fromkeys(r.workload for r in runs))
    columns = [(policy, runs) for policy in POLICIES]
    if fresh:
        columns += [(OURS, fresh), (BACKLOG_PER_TASK, fresh)]
    header = [*POLICIES, *([f"{OURS}, held out", f"{BACKLOG_PER_TASK}, held out"] if fresh else [])]
    lines = ["| shape | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for shape in [*shapes, "mean"]:  # the last row: mean late share, geometric-mean cost
        cells = [
            _late_and_cost(
                [r for r in pool if r.policy == policy and shape in (r.workload, "mean")]
            )
            for policy, pool in columns
        ]
        lines.append(f"| {shape} | " + " | ".join(cells) + " |")
    return lines


def goal_text(g: dict[str, Any], label: str) -> str:
    """One line: the goal, the policy's figures, met or the distance to it."""
    if "met" not in g:
        return ""
    ours = g["policies"][OURS]
    goal = GOALS[int(g["interval_s"])]
    if goal.anchor:
        anchor = g["policies"][goal.anchor]
        target = (
            f"at most {goal.late:.0%} of {goal.anchor}'s late share ({anchor['mean_late']:.2%}) "
            f"= {g['late_limit']:.2%}, at no more than its cost ({g['cost_limit']:.3f} x)"
        )
    else:
        target = f"at most {g['late_limit']:.0%} late at no more than {g['cost_limit']:g} x"
    verdict = "**met**" if g["met"] else "**not met**"
    distance = []
    if ours["mean_late"] > g["late_limit"]:
        distance.append(f"late share {ours['mean_late'] - g['late_limit']:+.2%} over")
    if ours["geomean_cost_x"] > g["cost_limit"]:
        over = ours["geomean_cost_x"] / g["cost_limit"] - 1
        distance.append(f"cost {over:+.1%} over")
    if ours["killed"]:
        distance.append(f"{ours['killed']} killed")
    text = (
        f"{label}: goal {target}; the policy {ours['mean_late']:.2%} late at "
        f"{ours['geomean_cost_x']:.3f} x, {ours['killed']} killed: {verdict}"
        + (f" ({', '.join(distance)})" if distance else "")
        + "."
    )
    by_shape = g.get("cost_vs_anchor_by_shape", {})
    if ours["geomean_cost_x"] > g["cost_limit"] and by_shape:
        ratios = ", ".join(
            f"{shape} {ratio:.2f} x"
            for shape, ratio in sorted(by_shape.items(), key=lambda item: -item[1])
        )
        text += (
            f" Its cost over {goal.anchor}'s, per shape: {ratios}. Why, and the levers "
            "measured: bench/README.md, Autoscaler simulation."
        )
    return text


def render(
    results: Sequence[RunResult],
    held_out: Sequence[RunResult],
    meta: dict[str, Any],
    plots: list[str],
) -> str:
    lines = [
        "# Autoscaler simulation",
        "",
        f"{meta['generated']}, {meta['elapsed_s']:.0f} s on {meta['machine']}. Regenerate with "
        "`make bench-autoscaler`; one workload with a plot: `make simulate WORKLOAD=batch`.",
        "",
        f"Each shape is one day (`bench/workloads.py`); seeds {meta['seeds']} (tuned on) and "
        f"{meta['held_out_seeds']} (held out: never tuned on); the first "
        f"{WARMUP_S / 60:.0f} min are not measured. Service: target wait 300 s, 1-50 tasks of 4 "
        "slots, start-up 45-90 s, stop timeout 120 s. 'x bound' = task-hours / (sum of "
        "service seconds / 4). 'late' = share of jobs waiting longer than 300 s. Model: "
        "`bench/autoscaler_sim/`'s docstring.",
        "",
    ]
    seed = meta["seeds"][0]
    for interval in HEADLINE_INTERVALS_S:
        g = goals(results, interval)
        lines += [f"## Decisions every {interval:g} s, scale-in protection on", ""]
        lines += [goal_text(g, "Seeds tuned on"), ""]
        if held_out:
            lines += [goal_text(goals(held_out, interval), "Held-out seeds"), ""]
        lines += _goal_lines(g)
        lines += ["", "Late share / cost (x lower bound) per shape, means over the seeds:", ""]
        lines += compact(results, interval, held_out)
        lines += ["", f"Seed {seed}:", ""]
        lines += table(
            [r for r in results if r.interval_s == interval and r.protection and r.seed == seed]
        )
        lines += [""]
    off = [r for r in results if not r.protection]
    if off:
        lines += ["## Decisions every 300 s, scale-in protection off", ""]
        lines += table(off)
        lines += [""]
    if plots:
        lines += ["Plots of the policy's runs: " + ", ".join(f"`{p}`" for p in plots), ""]
    return "\n".join(lines)
