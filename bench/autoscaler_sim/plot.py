"""One run as a PNG: queue depth, desired and running tasks, and waits over the day."""

from __future__ import annotations

import statistics
from pathlib import Path

from bench.autoscaler_sim.fargate import RunResult


def plot(result: RunResult, path: Path, *, target_wait_s: float, title: str) -> None:
    """Queue depth, desired/running tasks and waits over time, as one PNG."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    series = result.series
    if series is None:
        raise ValueError("run the simulation with record=True to plot it")
    hours = [t / 3600 for t in series.t]
    fig, (ax_queue, ax_tasks, ax_wait) = plt.subplots(3, 1, figsize=(10, 7.5), sharex=True)
    ax_queue.plot(hours, series.waiting, lw=0.8, label="waiting")
    ax_queue.plot(hours, series.in_flight, lw=0.8, label="in flight")
    ax_queue.set_ylabel("messages")
    ax_queue.legend(loc="upper right", fontsize=8)
    ax_tasks.step(hours, series.desired, where="post", lw=0.9, label="desired")
    ax_tasks.plot(hours, series.running, lw=0.8, label="running")
    ax_tasks.plot(
        hours,
        [r + p for r, p in zip(series.running, series.pending, strict=True)],
        lw=0.6,
        ls=":",
        label="running + starting",
    )
    ax_tasks.set_ylabel("ECS tasks")
    ax_tasks.legend(loc="upper right", fontsize=8)
    # Waits per 5-minute bin of publish time: median and worst.
    bins: dict[int, list[float]] = {}
    for arrival, wait in zip(series.arrivals, series.waits, strict=True):
        bins.setdefault(int(arrival // 300), []).append(wait)
    keys = sorted(bins)
    ax_wait.plot(
        [(k * 300 + 150) / 3600 for k in keys],
        [statistics.median(bins[k]) for k in keys],
        lw=0.8,
        label="median wait (5 min bins)",
    )
    ax_wait.plot(
        [(k * 300 + 150) / 3600 for k in keys],
        [max(bins[k]) for k in keys],
        lw=0.8,
        label="longest wait",
    )
    ax_wait.axhline(target_wait_s, color="red", lw=0.8, ls="--", label="target")
    ax_wait.set_ylabel("wait s (by publish time)")
    ax_wait.set_xlabel("hours")
    ax_wait.legend(loc="upper right", fontsize=8)
    fig.suptitle(
        f"{title}\np50/p95/p99 wait {result.p50_wait_s:.0f}/{result.p95_wait_s:.0f}/"
        f"{result.p99_wait_s:.0f} s, late {result.late:.1%}, "
        f"{result.task_hours:.0f} task-h = {result.cost_x:.2f} x lower bound, "
        f"killed {result.killed}",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
