"""`python -m bench.chaos [--tasks N] [--duration S] [--drain S] [--seed N] [--no-write]
[--keep DIR]`: one soak (see the package's docstring); exit status 1 if it fails."""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from bench import chaos
from bench.chaos.model import RESULTS_DIR, Options
from bench.chaos.report import markdown, run_meta, write_results
from bench.chaos.runner import run, work_directory


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos",
        description=chaos.__doc__.splitlines()[0] if chaos.__doc__ else None,
    )
    parser.add_argument("--tasks", type=int, default=Options.tasks)
    parser.add_argument("--duration", type=float, default=Options.duration_s, help="seconds")
    parser.add_argument("--drain", type=float, default=Options.drain_s, help="seconds")
    parser.add_argument("--seed", type=int, default=Options.seed)
    parser.add_argument("--no-write", action="store_true", help="do not write bench/results")
    parser.add_argument("--keep", type=Path, help="keep ledger, logs and Redis files here")
    args = parser.parse_args(argv)
    opts = Options(tasks=args.tasks, duration_s=args.duration, drain_s=args.drain, seed=args.seed)
    # SIGTERM and SIGHUP unwind like Ctrl-C, so the finally blocks stop every process
    # (SIGINT too: a shell starts background jobs with it ignored).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.default_int_handler)
    with work_directory(args.keep) as directory:
        report = run(opts, directory)
    meta = run_meta(opts)
    if not args.no_write:
        write_results(report, meta, RESULTS_DIR)
    print(markdown(report, meta))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
