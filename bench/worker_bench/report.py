"""The worker benchmark's report: per-variant summaries, the table, and the results written
to bench/results/<stem>.{json,md}."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from statistics import median
from typing import Any

from bench.worker_bench.variants import CONCURRENCY

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"  # bench/results


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    redis_version = subprocess.run(
        ["redis-server", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "celery": version("celery"),
        "kombu": version("kombu"),
        "billiard": version("billiard"),
        "redis_py": version("redis"),
        "redis_server": redis_version,
        "load_avg_at_start": list(os.getloadavg()),
    }


def disturbance(run: dict[str, Any]) -> float:
    """The larger share of the CPUs other processes used during the drain or latency run."""
    return float(max(run["drain"]["other_cpu_share"], run["latency"]["other_cpu_share"]))


def resident(run: dict[str, Any]) -> dict[str, float]:
    """A run's memory columns: the main process's RSS and the largest pool process's, MiB."""
    rss = run["drain"]["rss_mib"]
    return {
        "worker_main": rss["worker_main"],
        "largest_pool_process": max(rss["pool_processes"]),
    }


def summarize(runs: list[dict[str, Any]], reference: list[dict[str, Any]]) -> dict[str, Any]:
    """One variant's runs: best of N (a shared or virtual machine only ever makes numbers
    worse, so the best run is the closest to an idle one), medians, and drain throughput
    relative to `reference` (Celery's defaults) run in the same rounds."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"variant": runs[0]["variant"], "runs": 0, "errors": len(runs)}
    cpu = [r["drain"]["cpu_ms_per_task"] for r in ok]
    rss = [resident(r) for r in ok]
    latency = min(ok, key=lambda r: float(r["latency"]["start_ms"]["p99"]))
    by_round = {r["round"]: r["drain"]["tasks_per_s"] for r in reference if "error" not in r}
    ratios = [
        r["drain"]["tasks_per_s"] / by_round[r["round"]] for r in ok if r["round"] in by_round
    ]
    return {
        "variant": ok[0]["variant"],
        "title": ok[0]["title"],
        "runs": len(ok),
        "errors": len(runs) - len(ok),
        "best": {
            "drain_tasks_per_s": max(r["drain"]["tasks_per_s"] for r in ok),
            "cpu_ms_per_task": {k: min(c[k] for c in cpu) for k in cpu[0]},
            "rss_mib": {k: min(m[k] for m in rss) for k in rss[0]},
            "start_ms": latency["latency"]["start_ms"],
        },
        "median": {
            "drain_tasks_per_s": median(r["drain"]["tasks_per_s"] for r in ok),
            "cpu_ms_per_task": {k: median(c[k] for c in cpu) for k in cpu[0]},
            "rss_mib": {k: median(m[k] for m in rss) for k in rss[0]},
            "start_ms_p99": median(r["latency"]["start_ms"]["p99"] for r in ok),
        },
        "drain_vs_defaults_same_round": round(median(ratios), 3) if ratios else None,
        "other_load_max": max(disturbance(r) for r in ok),
    }


COLUMNS = (
    "variant",
    "drain tasks/s",
    "vs defaults",
    "main CPU ms/task",
    "pool CPU ms/task",
    "Redis CPU ms/task",
    "main RSS MiB",
    "largest pool RSS MiB",
    "start p50 ms",
    "p95 ms",
    "p99 ms",
    "median p99 ms",
    "other load",
)


def table(summary: list[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for s in summary:
        if not s["runs"]:
            lines.append(f"| {s['variant']} | failed |" + " |" * (len(COLUMNS) - 2))
            continue
        best = s["best"]
        cpu, rss, start, ratio = (
            best["cpu_ms_per_task"],
            best["rss_mib"],
            best["start_ms"],
            s["drain_vs_defaults_same_round"],
        )
        lines.append(
            f"| {s['title']} | {best['drain_tasks_per_s']:.0f} "
            f"| {'' if ratio is None else f'{ratio:.2f}'} | {cpu['worker_main']:.2f} "
            f"| {cpu['pool_processes']:.2f} | {cpu['redis']:.2f} "
            f"| {rss['worker_main']:.1f} | {rss['largest_pool_process']:.1f} | {start['p50']:.2f} "
            f"| {start['p95']:.2f} | {start['p99']:.2f} | {s['median']['start_ms_p99']:.2f} "
            f"| {s['other_load_max']:.0%} |"
        )
    return "\n".join(lines)


def goal_line(runs: list[dict[str, Any]]) -> str:
    """The worker's goal, judged by the medians over the rounds: the shipped configuration
    drains at least as fast as Celery's defaults with a start p99 no worse. The rounds'
    spread shows how much of a gap is noise."""
    by_round: dict[str, dict[int, dict[str, Any]]] = {"shipped": {}, "defaults": {}}
    for r in runs:
        if r["variant"] in by_round and "error" not in r:
            by_round[r["variant"]][r["round"]] = r
    rounds = sorted(by_round["shipped"].keys() & by_round["defaults"].keys())
    if not rounds:
        return ""
    pairs = [(by_round["shipped"][n], by_round["defaults"][n]) for n in rounds]
    ratios = [s["drain"]["tasks_per_s"] / d["drain"]["tasks_per_s"] for s, d in pairs]
    p99s = [(s["latency"]["start_ms"]["p99"], d["latency"]["start_ms"]["p99"]) for s, d in pairs]
    ratio = median(ratios)
    shipped_p99, defaults_p99 = median(p for p, _ in p99s), median(p for _, p in p99s)
    faster = sum(r >= 1 for r in ratios)
    lower = sum(s <= d for s, d in p99s)
    if ratio >= 1 and shipped_p99 <= defaults_p99:
        verdict = "**met**"
    elif faster and lower:
        verdict = "**not met** by the medians, within the rounds' spread"
    else:
        verdict = "**not met**"
    return (
        f"Goal: the shipped configuration drains at least as fast as Celery's defaults, with "
        f"a start p99 no worse. Drain {ratio:.2f} of the defaults' (rounds {min(ratios):.2f}-"
        f"{max(ratios):.2f}, at or above in {faster} of {len(rounds)}); median p99 "
        f"{shipped_p99:.2f} against {defaults_p99:.2f} ms (no worse in {lower} of "
        f"{len(rounds)} rounds; the defaults' own p99 ranged "
        f"{min(d for _, d in p99s):.2f}-{max(d for _, d in p99s):.2f} ms): {verdict}."
    )


def floor_lines(floor: dict[str, Any]) -> str:
    if "error" in floor:
        return f"redis-benchmark: {floor['error']}"
    parts = [
        f"{name} {v['requests_per_s']:.0f}/s"
        + (f" (p50 {v['p50_ms']} ms)" if "p50_ms" in v else "")
        for name, v in floor.items()
    ]
    return "redis-benchmark floor: " + "; ".join(parts)


def document(
    info: dict[str, Any],
    floor: dict[str, Any],
    runs: list[dict[str, Any]],
    names: list[str],
    *,
    tasks: int,
    rate: float,
    seconds: float,
    repeat: int,
    started: float,
) -> dict[str, Any]:
    """The results as written to the JSON file: parameters, summaries and every run."""
    reference = [r for r in runs if r["variant"] == "defaults"]
    summary = [summarize([r for r in runs if r["variant"] == n], reference) for n in names]
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": info,
        "parameters": {
            "drain_tasks": tasks,
            "latency_rate_per_s": rate,
            "latency_seconds": seconds,
            "repeat": repeat,
            "pool": "prefork",
            "concurrency": CONCURRENCY,
        },
        "completion_counting": "one Unix datagram per finished task from the worker "
        "(bench/bench_tasks.py); the platform's Redis counter is kept as a cross-check",
        "redis_benchmark": floor,
        "summary": summary,
        "runs": runs,
        "wall_seconds": round(time.monotonic() - started, 1),
    }


def markdown(doc: dict[str, Any]) -> str:
    """The Markdown report of a `document`."""
    info, parameters, summary = doc["machine"], doc["parameters"], doc["summary"]
    busy = max((s["other_load_max"] for s in summary if s["runs"]), default=0.0)
    warning = ""
    if busy > 0.05:
        warning = (
            f"\n**Warning**: other processes used up to {busy:.0%} of the CPUs during the "
            "run; these are not the numbers of an idle machine.\n"
        )
    best_of = ""
    if parameters["repeat"] > 1:
        best_of = (
            f" With {parameters['repeat']} rounds: best of each column (throughput highest, CPU "
            "and memory lowest, latency from the run with the lowest p99), ratio and median p99 "
            "the medians of the rounds (a p99 over a few thousand starts is noisy: compare "
            "medians)."
        )
    return (
        f"# Worker benchmark, {doc['date']}\n\n"
        f"{info['cpu_count']} CPUs ({info['cpu_model']}), Python {info['python']}, "
        f"Celery {info['celery']}, kombu {info['kombu']}, "
        f"{info['redis_server'].split(' sha')[0]}. Prefork pool, {parameters['concurrency']} "
        f"processes. Drain: {parameters['drain_tasks']} no-op tasks queued before the worker "
        f"starts. Start latency: {parameters['latency_rate_per_s']:g} tasks/s for "
        f"{parameters['latency_seconds']:g} s, publish stamp to task body. CPU: per "
        f"task during the drain. RSS: resident memory (VmRSS) of the worker's main process and "
        f"of its largest pool process at the end of the drain; pages a pool process still "
        f"shares with the main process since the fork count in both. vs defaults: drain rate "
        f"over that of Celery's defaults in the same round. Other load: the largest CPU share "
        f"other processes used meanwhile."
        f"{best_of}\n\n"
        + (f"{goal}\n\n" if (goal := goal_line(doc["runs"])) else "")
        + f"{table(summary)}\n\n{floor_lines(doc['redis_benchmark'])}\n{warning}"
    )


def write_results(doc: dict[str, Any], stem: str) -> str:
    """Write bench/results/<stem>.json and .md; return the Markdown."""
    path = RESULTS_DIR / stem
    path.with_suffix(".json").write_text(json.dumps(doc, indent=2) + "\n")
    text = markdown(doc)
    path.with_suffix(".md").write_text(text)
    return text
