"""The command line: `simulate` one workload, `bench` them all, or export one as `csv`."""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import autoscaler_sim
from bench.autoscaler_sim.fargate import RunResult, simulate
from bench.autoscaler_sim.plot import plot
from bench.autoscaler_sim.policies import OURS, POLICIES, Service
from bench.autoscaler_sim.report import (
    HEADLINE_INTERVALS_S,
    HELD_OUT_SEEDS,
    RESULTS_DIR,
    SEEDS,
    WARMUP_S,
    Case,
    goals,
    render,
    run_case,
    run_cases,
    table,
)
from bench.workloads import DAY_S, SHAPES, generate, read_csv, write_csv
from config import CONFIG_DIR


def catalog_service(args: argparse.Namespace) -> Service:
    """The worker group's bounds, target and concurrency from the app's catalog (the first
    group unless --group names one); each flag given overrides its value."""
    from config import ConfigError, load_environment

    try:
        config = load_environment(args.env, args.config_dir)
    except ConfigError as exc:
        raise SystemExit(f"simulate: {exc}") from None
    name = args.group or next(iter(config.worker_groups))
    if name not in config.worker_groups:
        known = ", ".join(config.worker_groups)
        raise SystemExit(f"simulate: no worker group {name!r} in the catalog; groups: {known}")
    group = config.worker_groups[name]
    return Service(
        concurrency=args.concurrency or group.concurrency,
        min_tasks=group.min_tasks if args.min_tasks is None else args.min_tasks,
        max_tasks=args.max_tasks or group.max_tasks,
        target_wait_s=args.target or group.target_wait_s,
        protection=not args.no_protection,
    )


def main_simulate(args: argparse.Namespace) -> int:
    if args.csv:
        jobs, name = read_csv(args.csv), args.csv.stem
    else:
        jobs, name = generate(args.workload, args.seed), args.workload
    service = catalog_service(args)
    results = []
    started = time.monotonic()
    for policy in POLICIES:
        results.append(
            simulate(
                jobs,
                policy,
                service=service,
                interval_s=args.interval,
                seed=args.seed,
                warmup_s=args.warmup,
                workload=name,
                record=policy == args.plot_policy,
                duration_s=None if args.csv else DAY_S,
            )
        )
    print(
        f"{name}: {len(jobs)} jobs, decisions every {args.interval:g} s, target "
        f"{service.target_wait_s:g} s, {service.min_tasks}-{service.max_tasks} tasks x "
        f"{service.concurrency} slots, protection {'on' if service.protection else 'off'} "
        f"({time.monotonic() - started:.1f} s)\n"
    )
    print("\n".join(table(results)))
    plotted = next(r for r in results if r.policy == args.plot_policy)
    # Outside the repository by default: a plot per try is not something to commit.
    out = args.plot or Path(tempfile.gettempdir()) / (
        f"autoscaler_{name}_{args.interval:g}s{'' if service.protection else '_no_protection'}.png"
    )
    plot(
        plotted,
        out,
        target_wait_s=service.target_wait_s,
        title=f"{name}, {plotted.policy}, decisions every {args.interval:g} s",
    )
    print(f"\nplot: {out}")
    return 0


def main_bench(args: argparse.Namespace) -> int:
    started = time.monotonic()
    shapes = tuple(args.workload or SHAPES)
    seeds = tuple(args.seed or SEEDS)
    held_out_seeds = tuple(args.held_out or HELD_OUT_SEEDS)

    def on(seed_list: tuple[int, ...]) -> list[Case]:
        return [
            Case(w, p, i, True, seed)
            for seed in seed_list
            for i in HEADLINE_INTERVALS_S
            for w in shapes
            for p in POLICIES
        ]

    tuned = on(seeds) + [Case(w, p, 300, False, seeds[0]) for w in shapes for p in POLICIES]
    fresh = on(held_out_seeds)
    ran = run_cases(tuned + fresh, args.processes)
    results, held_out = ran[: len(tuned)], ran[len(tuned) :]
    output: Path = args.output
    output.mkdir(parents=True, exist_ok=True)
    plots = []
    shown = [Case(w, OURS, i, True, seeds[0]) for i in HEADLINE_INTERVALS_S for w in shapes]
    shown += [Case(w, OURS, 300, False, seeds[0]) for w in ("steady",) if w in shapes]
    for case in shown:
        r = run_case(case, record=True)
        suffix = "" if case.protection else "_no_protection"
        path = output / f"autoscaler_sim_{case.workload}_{case.interval_s:g}s{suffix}.png"
        title = (
            f"{case.workload}, {OURS}, decisions every {case.interval_s:g} s, scale-in "
            f"protection {'on' if case.protection else 'off'}"
        )
        plot(r, path, target_wait_s=300, title=title)
        plots.append(path.name)
    meta = {
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
        "elapsed_s": round(time.monotonic() - started, 1),
        "machine": f"Python {platform.python_version()}, {platform.machine()}",
        "seeds": list(seeds),
        "held_out_seeds": list(held_out_seeds),
        "service": asdict(Service()),
        "warmup_s": WARMUP_S,
    }
    markdown = render(results, held_out, meta, plots)
    print(markdown)
    (output / "autoscaler_sim.md").write_text(markdown)

    def rows(runs: list[RunResult]) -> list[dict[str, Any]]:
        return [
            {k: v for k, v in asdict(replace(r, series=None)).items() if k != "series"}
            for r in runs
        ]

    payload = {
        "meta": meta,
        "goals": [goals(results, i) for i in HEADLINE_INTERVALS_S],
        "goals_held_out": [goals(held_out, i) for i in HEADLINE_INTERVALS_S],
        "runs": rows(results),
        "runs_held_out": rows(held_out),
    }
    (output / "autoscaler_sim.json").write_text(json.dumps(payload, indent=1) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.autoscaler_sim",
        description=(autoscaler_sim.__doc__ or "").split("\n", 1)[0],
    )
    sub = parser.add_subparsers(dest="command", required=True)

    one = sub.add_parser("simulate", help="one workload under every policy, with a plot")
    source = one.add_mutually_exclusive_group()
    source.add_argument("--workload", choices=sorted(SHAPES), default="batch")
    source.add_argument("--csv", type=Path, help="a CSV of arrival_s,service_s")
    one.add_argument("--seed", type=int, default=1)
    one.add_argument("--interval", type=float, default=300.0, help="seconds between decisions")
    # The group's own values from the app's catalog, unless these say otherwise.
    one.add_argument("--config-dir", type=Path, default=CONFIG_DIR, help="the app's config")
    one.add_argument("--env", default="dev", help="an environment of the config directory")
    one.add_argument("--group", help="a worker group of the catalog (default: the first)")
    one.add_argument("--target", type=float, help="target wait, seconds (the group's)")
    one.add_argument("--min-tasks", type=int, help="the group's min_tasks")
    one.add_argument("--max-tasks", type=int, help="the group's max_tasks")
    one.add_argument("--concurrency", type=int, help="the group's concurrency")
    one.add_argument("--no-protection", action="store_true", help="scale-in protection off")
    one.add_argument("--warmup", type=float, default=0.0, help="seconds not measured")
    one.add_argument(
        "--plot",
        type=Path,
        help="PNG path (default: autoscaler_<name>_<interval>s.png in the temporary directory)",
    )
    one.add_argument("--plot-policy", choices=POLICIES, default=OURS)

    bench = sub.add_parser("bench", help="every shape, policy and cadence; the results table")
    bench.add_argument("--workload", action="append", choices=sorted(SHAPES))
    bench.add_argument("--seed", action="append", type=int, help=f"tuned on; default: {SEEDS}")
    bench.add_argument(
        "--held-out", action="append", type=int, help=f"never tuned on; default: {HELD_OUT_SEEDS}"
    )
    bench.add_argument("--processes", type=int, default=2)
    bench.add_argument("--output", type=Path, default=RESULTS_DIR)

    export = sub.add_parser("csv", help="write a generated workload as CSV")
    export.add_argument("--workload", choices=sorted(SHAPES), required=True)
    export.add_argument("--seed", type=int, default=1)
    export.add_argument("path", type=Path)

    args = parser.parse_args(argv)
    if args.command == "simulate":
        return main_simulate(args)
    if args.command == "bench":
        return main_bench(args)
    write_csv(generate(args.workload, args.seed), args.path)
    print(f"wrote {args.path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
