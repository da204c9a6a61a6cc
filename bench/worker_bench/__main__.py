"""`python -m bench.worker_bench [--variants A,B] [--tasks N] [--rate R] [--seconds S]
[--repeat N] [--max-wait-idle S] [--profile] [--output STEM]`: see the package's docstring;
exit status 1 if a variant failed."""

from __future__ import annotations

import argparse
import signal
import sys
import time

from bench import worker_bench
from bench.worker_bench.report import RESULTS_DIR, document, machine, write_results
from bench.worker_bench.runner import run_all
from bench.worker_bench.variants import DEFAULT_VARIANTS, VARIANTS, catalog


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.worker_bench",
        description=worker_bench.__doc__.splitlines()[0] if worker_bench.__doc__ else None,
    )
    parser.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated, from: {', '.join(VARIANTS)}",
    )
    parser.add_argument("--tasks", type=int, default=20_000, help="tasks to drain")
    parser.add_argument("--rate", type=float, default=200.0, help="latency run: tasks/s")
    parser.add_argument("--seconds", type=float, default=15.0, help="latency run: duration")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds over all variants (interleaved); medians are reported",
    )
    parser.add_argument(
        "--max-wait-idle",
        type=float,
        default=30.0,
        help="before each variant, wait up to this long for other load to drop under 10%%",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="cProfile each worker's main and pool processes into bench/results/ (not the "
        "`shipped` row, which runs the image's own entry point: profile `control`, the same "
        "configuration through bench_app)",
    )
    parser.add_argument(
        "--output", default="worker_bench", help="result file stem under bench/results/"
    )
    args = parser.parse_args(argv)
    # A plain SIGTERM would skip the `finally` blocks that stop the worker and redis-server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")

    bench_catalog = catalog()
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    info = machine()
    floor, runs = run_all(args, names, bench_catalog)
    doc = document(
        info,
        floor,
        runs,
        names,
        tasks=args.tasks,
        rate=args.rate,
        seconds=args.seconds,
        repeat=args.repeat,
        started=started,
    )
    text = write_results(doc, args.output)
    print()
    print(text)
    return 1 if any("error" in r for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
