"""The soak's results: bench/results/chaos.json and the markdown table also printed."""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.chaos.model import (
    ACK_GRACE_S,
    RECONNECT_SLACK_S,
    REDIS_DOWN_S,
    SHUTDOWN_BUDGET_S,
    VISIBILITY_TIMEOUT_S,
    Options,
    Report,
)


def run_meta(opts: Options) -> dict[str, Any]:
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "options": {k: v for k, v in asdict(opts).items() if k != "verbose"},
        "visibility_timeout_s": VISIBILITY_TIMEOUT_S,
        "shutdown_budget_s": SHUTDOWN_BUDGET_S,
        "redis_down_s": REDIS_DOWN_S,
        "ack_grace_s": ACK_GRACE_S,
        "reconnect_slack_s": RECONNECT_SLACK_S,
    }


def write_results(report: Report, meta: dict[str, Any], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    data = {**meta, "ok": report.ok, "report": asdict(report)}
    (directory / "chaos.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (directory / "chaos.md").write_text(markdown(report, meta))


def markdown(report: Report, meta: dict[str, Any]) -> str:
    actions = ", ".join(f"{k} {v}" for k, v in sorted(report.actions.items()))
    rows = [
        ("submitted (publish acknowledged)", report.submitted),
        ("not submitted (publish gave up)", report.not_submitted),
        ("completed", report.completed),
        ("lost", report.lost),
        ("lost without ever starting", report.lost_never_started),
        ("dead-lettered", report.dead_lettered),
        ("executions", report.executions),
        ("retries (task-requested)", report.retries),
        ("tasks executed more than once", report.executed_more_than_once),
        ("duplicate executions of one delivery", report.duplicate_executions),
        ("bound: in flight at the kills + publish retries", report.duplicate_bound),
        ("duplicates not explained by a kill", report.unexplained_duplicates),
        ("most executions of one task", report.max_executions),
        ("tasks with an effect (applied_once)", report.effect_tasks),
        ("effects applied", report.effects_applied),
        ("effects applied twice", report.effects_applied_twice),
        ("effects missing on completed tasks", report.effects_missing),
        ("publish retries", report.publish_retries),
        ("longest end-to-kill gap of a re-run task (s)", report.max_ack_lag_s),
        ("wall time (s)", report.wall_s),
    ]
    lines = [
        "# Chaos soak",
        "",
        f"{meta['when']}, {meta['cpus']} CPUs. Verdict: **{'PASS' if report.ok else 'FAIL'}**.",
        f"Actions: {actions}. Visibility timeout {meta['visibility_timeout_s']} s, "
        f"SIGTERM budget {meta['shutdown_budget_s']} s, Redis down {meta['redis_down_s']} s "
        "(appendonly, appendfsync always).",
        "",
        "| count | value |",
        "|---|---:|",
        *(f"| {name} | {value} |" for name, value in rows),
        "",
        "## Events",
        "",
        "| at (s) | action | worker | running | in flight | duplicates it caused |",
        "|---:|---|---|---:|---:|---:|",
    ]
    start = min((e.t0 for e in report.events), default=0.0)
    for e in report.events:
        lines.append(
            f"| {e.t0 - start:.1f} | {e.kind} | {e.worker} | {e.running} | {e.in_flight} "
            f"| {e.duplicates} |"
        )
    lines += ["", f"Broker at the end: {report.broker_left}", ""]
    if report.dead_letter_reasons:
        lines += ["Dead letters by reason:", ""]
        lines += [f"- {n} x `{reason}`" for reason, n in report.dead_letter_reasons.items()]
        lines.append("")
    return "\n".join(lines)
