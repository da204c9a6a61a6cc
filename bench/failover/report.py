"""bench/results/failover.{md,json}: the modes explained, a summary, and a table per mode."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.failover.ledger import RESUME_GOAL_S, Figures
from bench.failover.modes import MODES
from bench.failover.run import ModeResult
from celery_service.__main__ import HEARTBEAT_MAX_AGE_S

COUNTING = f"""\
Counting uses the tasks' own ledger (`bench/chaos_tasks.py`), the publisher's acknowledged
publishes and the broker, never Celery's state. **Lost**: acknowledged, not completed, not
dead-lettered and no longer in the broker (no queue, not unacked). **Stuck**: not completed
by the drain deadline but still in the broker, typically unacked, where it would wait the
visibility timeout (3,960 s in the sample catalog). **Run twice**: one delivery executed
more than once. **Resumed**: every worker serving at the fault has started a task whose publish
began after the fault's end (the promotion, or the endpoint passing again), and beat's heartbeat
has reached the new primary. **Drained**: every task acknowledged before the fault's end has
completed. Goals (issue 15): working again within {RESUME_GOAL_S:.0f} s with no process
restart, 0 processes exited, 0 lost beyond the replication window, 0 stuck, 0 effects
applied twice."""


def _code(text: str) -> str:
    return text.replace("`", "'")  # a backtick would end the code span


def _s(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f}"


def summary_row(result: ModeResult) -> str:
    f = result.figures
    verdict = "PASS" if result.ok else "**FAIL**"
    if f is None:
        return f"| {result.mode} | {verdict} |" + " |" * 9
    lost = _with_window(f.lost, f.lost_in_window)
    twice = _with_window(f.effects_applied_twice, f.effects_twice_in_window)
    return (
        f"| {result.mode} | {verdict} | {f.submitted} | {f.completed} | {lost} | {f.stuck} "
        f"| {f.run_twice} | {twice} | {len(f.exits)} | {_s(f.resume_s)} "
        f"| {_s(f.drained_s)} |"
    )


def _with_window(count: int, in_window: int) -> str:
    return f"{count} ({in_window} in window)" if in_window else str(count)


def mode_table(f: Figures) -> list[str]:
    twice = _with_window(f.effects_applied_twice, f.effects_twice_in_window)
    window = [
        (
            "acknowledged in the replication window / lost of them",
            f"{f.acked_in_window} / {f.lost_in_window}",
        ),
    ]
    rows: list[tuple[str, object]] = [
        ("fault lasted (s)", f"{f.fault_s:.1f}"),
        ("submitted (publish acknowledged)", f.submitted),
        ("completed", f.completed),
        ("dead-lettered", f.dead_lettered),
        ("lost", f.lost),
        *(window if f.acked_in_window else []),
        ("stuck at the drain deadline", f.stuck),
        ("deliveries run twice", f.run_twice),
        ("tasks with an effect / applied twice", f"{f.effect_tasks} / {twice}"),
        ("processes that exited", ", ".join(f"{e.name} ({e.status})" for e in f.exits) or 0),
        ("publisher: first acknowledged publish (s)", _s(f.publisher_resume_s)),
        ("first completion of a task published after the fault (s)", _s(f.first_completion_s)),
        *((f"{name}: working again (s)", _s(t)) for name, t in f.worker_resume_s.items()),
        ("beat: heartbeat on the new primary (s)", _s(f.beat_resume_s)),
        ("backlog drained (s)", _s(f.drained_s)),
    ]
    return ["| count | value |", "|---|---:|", *(f"| {k} | {v} |" for k, v in rows)]


def _header(results: list[ModeResult], meta: dict[str, Any]) -> list[str]:
    ok = all(r.ok for r in results)
    timing = meta["timing"]
    return [
        "# Failover harness",
        "",
        f"{meta['when']}, {meta['cpus']} CPUs, `{meta['command']}`. "
        f"Verdict: **{'PASS' if ok else 'FAIL'}**.",
        "",
        f"A primary and a replica `redis-server` on 127.0.0.1, a TCP forwarder standing in "
        f"for the endpoint name, {meta['workers']} workers (prefork, concurrency "
        f"{meta['concurrency']}, all queues) started as the image starts them, beat (a task "
        f"every second) and a publisher under load; visibility timeout "
        f"{meta['visibility_timeout_s']} s. Phases: {meta['warmup_s']:.0f} s of load, the "
        f"fault, {meta['after_s']:.0f} s more publishing, drain deadline "
        f"{meta['drain_s']:.0f} s after the fault's end. Read-only time "
        f"{timing['read_only_s']:.0f} s, stall time {timing['stall_s']:.0f} s, detection "
        f"time {timing['detect_s']:.0f} s.",
        "",
        "## Modes",
        "",
        *(f"- **{r.mode}**: {MODES[r.mode].summary}" for r in results),
        "",
        COUNTING,
        "",
        "## Summary",
        "",
        "| mode | verdict | submitted | completed | lost | stuck | run twice | effects twice "
        "| exited | resumed (s) | drained (s) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(summary_row(r) for r in results),
        "",
    ]


def _section(result: ModeResult) -> list[str]:
    verdict = "PASS" if result.ok else "FAIL"
    lines = [
        f"## {result.mode}",
        "",
        f"Verdict: **{verdict}**{''.join(f'; {m}' for m in result.misses)}.",
        "",
    ]
    if result.figures is not None:
        lines += [*mode_table(result.figures), ""]
    if result.notes:
        lines += [", ".join(f"{k}: {v}" for k, v in result.notes.items()) + ".", ""]
    if result.heartbeat_max_age_s:
        ages = ", ".join(f"{k} {v:.0f} s" for k, v in result.heartbeat_max_age_s.items())
        lines += [
            f"Oldest heartbeat file seen (the health check fails at {HEARTBEAT_MAX_AGE_S} s): "
            f"{ages}.",
            "",
        ]
    if result.log_lines:
        lines += ["Warnings and errors in the logs (count, first occurrence):", ""]
        lines += [f"- {n} x `{_code(line)}`" for line, n in result.log_lines.items()]
        lines.append("")
    return lines


def markdown(results: list[ModeResult], meta: dict[str, Any]) -> str:
    lines = _header(results, meta)
    for result in results:
        lines += _section(result)
    return "\n".join(lines)


def write(results: list[ModeResult], meta: dict[str, Any], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    data = {
        **meta,
        "ok": all(r.ok for r in results),
        "modes": [{**asdict(r), "ok": r.ok, "misses": r.misses} for r in results],
    }
    (directory / "failover.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (directory / "failover.md").write_text(markdown(results, meta))
