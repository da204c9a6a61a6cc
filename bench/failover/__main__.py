"""`python -m bench.failover [--mode NAME ...] [--quick] [--no-write] [--keep DIR]`.

Runs the modes one after another, each on a fresh cluster with fresh processes; exit status
1 if a mode misses a goal. The full run writes bench/results/failover.{md,json}.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.chaos import work_directory
from bench.failover import report
from bench.failover.modes import MODES
from bench.failover.run import CATALOG, GROUP, QUICK, VISIBILITY_TIMEOUT_S, Phases, run_mode

RESULTS_DIR = Path(__file__).resolve().parents[1] / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.failover", description=__doc__)
    parser.add_argument("--mode", action="append", choices=list(MODES), help="repeatable")
    parser.add_argument("--quick", action="store_true", help="a short sample of each mode")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results")
    parser.add_argument("--keep", type=Path, help="keep logs, ledgers and Redis files here")
    args = parser.parse_args(argv)
    phases = QUICK if args.quick else Phases()
    names = args.mode or list(MODES)
    # SIGTERM and SIGHUP unwind like Ctrl-C, so the finally blocks stop every process
    # (SIGINT too: a shell starts background jobs with it ignored).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    results = []
    with work_directory(args.keep, prefix="failover-") as workdir:
        for name in names:
            result = run_mode(MODES[name], phases, workdir / name, args.seed, print)
            print(f"{name}: {'PASS' if result.ok else 'FAIL'} {'; '.join(result.misses)}")
            results.append(result)
    shown = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--no-write"]
    if args.keep is not None:  # a local path: not part of what was measured
        shown = [a for a in shown if a not in {"--keep", str(args.keep)}]
    meta = run_meta(phases, shown)
    if not args.no_write:
        report.write(results, meta, RESULTS_DIR)
    print(report.markdown(results, meta))
    return 0 if all(r.ok for r in results) else 1


def run_meta(phases: Phases, argv: list[str]) -> dict[str, Any]:
    return {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "command": " ".join(["python -m bench.failover", *argv]),
        "workers": phases.workers,
        "concurrency": CATALOG["worker_groups"][GROUP]["concurrency"],
        "visibility_timeout_s": VISIBILITY_TIMEOUT_S,
        **{k: v for k, v in asdict(phases).items() if k != "workers"},
    }


if __name__ == "__main__":
    sys.exit(main())
