"""`make bench-autoscaler-run`: what one autoscaler run costs at scale, against a real
redis-server and moto's ECS: 50 worker groups over 200 queues, a backlog in every queue and
in-flight messages of every size in `unacked`.

Reported per run of `handler.run_once` (the handler's whole work apart from the run lock):
Redis round trips counted on the connection (every packet of commands sent), wall and CPU
time here, the Python heap's peak, and an estimate of the Lambda's time at its configured
memory. Lambda gives a function CPU in proportion to its memory, one vCPU at 1,769 MB
(AWS Lambda developer guide, "Configure Lambda function memory"), so the estimate is this
machine's CPU time scaled by 1,769 / memory, plus the time spent waiting (wall - CPU), which
here includes moto's in-process ECS. The anchor in the same run is the same reading with 2
groups over 3 queues. Results: bench/results/autoscaler_run.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
import tracemalloc
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis
from moto import mock_aws

from celery_service.contract import (
    UNACKED_KEY,
    autoscaler_state_key,
    completed_key,
    dlq_index_key,
    queue_keys,
)
from lambdas.autoscaler.ecs import BotoEcs
from lambdas.autoscaler.handler import run_once
from lambdas.autoscaler.settings import Settings
from tools.local_redis import redis_server_binary, start_server

RESULTS = Path(__file__).resolve().parent / "results"
LAMBDA_MEMORY_MB = 256  # stacks/autoscaler_stack.py
ONE_VCPU_MB = 1769
GOAL_S = 5.0  # issue 17: one run within 5 s of Lambda time
CLUSTER = "celery-bench"
REGION = "us-east-1"


@dataclass(frozen=True)
class Scale:
    name: str
    groups: int
    queues_per_group: int
    waiting_per_queue: int
    in_flight: int  # unacked entries, spread over the queues
    large_in_flight_mb: int  # of which this many hold a 1 MB message each


SCALES = (
    Scale("anchor: 2 groups, 2 queues", 2, 1, 100, 20, 0),
    Scale("50 groups, 200 queues", 50, 4, 100, 2_000, 20),
)


class CountingConnection(redis.Connection):
    """Counts what is sent: one packet of commands is one round trip."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        super().send_packed_command(command, check_health)  # type: ignore[no-untyped-call]


def settings_for(scale: Scale, port: int) -> Settings:
    def queues_of(g: int) -> list[str]:
        return [f"q{g:02d}-{q}" for q in range(scale.queues_per_group)]

    targets = {
        f"g{g:02d}": {
            "service": f"celery-bench-worker-g{g:02d}",
            "queues": queues_of(g),
            "min_tasks": 1,
            "max_tasks": 50,
            "concurrency": 4,
            "target_wait_s": 300,
        }
        for g in range(scale.groups)
    }
    queues = [q for g in range(scale.groups) for q in queues_of(g)]
    return Settings.model_validate(
        {
            "environment": "bench",
            "cluster": CLUSTER,
            "targets": targets,
            "dlq_queues": queues,
            "redis_host": "127.0.0.1",
            "redis_port": port,
            "redis_tls": False,
        }
    )


def seed(client: redis.Redis, settings: Settings, scale: Scale) -> None:
    client.flushall()
    queues = sorted({q for t in settings.targets.values() for q in t.queues})
    small = json.dumps({"body": "x" * 1_000, "properties": {"delivery_tag": "t"}})
    large = json.dumps({"body": "x" * 1_000_000, "properties": {"delivery_tag": "t"}})
    pipe = client.pipeline(transaction=False)
    for i, queue in enumerate(queues):
        key = queue_keys(queue)[i % 4]
        pipe.lpush(key, *([small] * scale.waiting_per_queue))
        pipe.set(completed_key(queue), 1_000 + i)
        pipe.zadd(dlq_index_key(queue), {f"dead-{i}": 1.0})
    for n in range(scale.in_flight):
        queue = queues[n % len(queues)]
        body = large if n < scale.large_in_flight_mb else small
        pipe.hset(UNACKED_KEY, f"tag-{n}", f'[{body},"{queue}","{queue}"]')
    pipe.execute()


@dataclass
class Measured:
    scale: str
    groups: int
    queues: int
    round_trips: int
    wall_ms: float  # median of the repeats
    cpu_ms: float
    heap_peak_mb: float
    lambda_estimate_s: float
    decisions: int


def measure(scale: Scale, port: int, repeats: int) -> Measured:
    settings = settings_for(scale, port)
    plain = redis.Redis(port=port)
    seed(plain, settings, scale)
    client = redis.Redis(
        connection_pool=redis.ConnectionPool(port=port, connection_class=CountingConnection)
    )
    client.ping()  # connected before counting, as a warm Lambda's client is
    with mock_aws():
        ecs_client = BotoEcs(CLUSTER)
        ecs_client.client.create_cluster(clusterName=CLUSTER)
        for target in settings.targets.values():
            ecs_client.client.create_service(
                cluster=CLUSTER, serviceName=target.service, desiredCount=1
            )
        walls, cpus, trips, peaks = [], [], [], []
        for n in range(repeats + 1):
            plain.delete(*[autoscaler_state_key(g) for g in settings.targets])
            CountingConnection.sent = 0
            traced = n == repeats  # the heap's peak in a run of its own: tracing costs CPU
            if traced:
                tracemalloc.start()
            wall0, cpu0 = time.perf_counter(), time.process_time()
            results = run_once(settings, client, ecs_client)
            if traced:
                peaks.append(tracemalloc.get_traced_memory()[1])
                tracemalloc.stop()
            else:
                walls.append(time.perf_counter() - wall0)
                cpus.append(time.process_time() - cpu0)
            trips.append(CountingConnection.sent)
            errors = [r.error for r in results if r.error]
            if errors:
                raise RuntimeError(f"{scale.name}: {errors[:3]}")
    wall, cpu = statistics.median(walls), statistics.median(cpus)
    estimate = cpu * ONE_VCPU_MB / LAMBDA_MEMORY_MB + max(0.0, wall - cpu)
    return Measured(
        scale=scale.name,
        groups=scale.groups,
        queues=scale.groups * scale.queues_per_group,
        round_trips=max(trips),
        wall_ms=round(wall * 1000, 1),
        cpu_ms=round(cpu * 1000, 1),
        heap_peak_mb=round(max(peaks) / 1e6, 1),
        lambda_estimate_s=round(estimate, 2),
        decisions=len(results),
    )


def markdown(rows: list[Measured], meta: dict[str, Any]) -> str:
    lines = [
        "# Autoscaler run cost",
        "",
        f"{meta['when']}, {meta['cpus']} CPUs, `{meta['command']}`; median of "
        f"{meta['repeats']} runs. Lambda estimate at {LAMBDA_MEMORY_MB} MB: CPU time x "
        f"{ONE_VCPU_MB} / {LAMBDA_MEMORY_MB} + time waiting (bench/autoscaler_run.py). "
        f"Goal: one pipelined read, and under {GOAL_S:.0f} s of Lambda time.",
        "",
        "| scale | groups | queues | Redis round trips | wall (ms) | CPU (ms) "
        "| heap peak (MB) | Lambda estimate (s) | verdict |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        verdict = "PASS" if r.lambda_estimate_s < GOAL_S else "**FAIL**"
        lines.append(
            f"| {r.scale} | {r.groups} | {r.queues} | {r.round_trips} | {r.wall_ms} "
            f"| {r.cpu_ms} | {r.heap_peak_mb} | {r.lambda_estimate_s} | {verdict} |"
        )
    lines += [
        "",
        "CPU time here includes moto's ECS, served in the same process, and the "
        "metrics and decision lines written to stdout, as the Lambda writes them: the "
        "estimate is an upper bound of the Lambda's own work.",
        "",
        "Round trips: the reading (every list length, the in-flight counts, counters, DLQ "
        "sizes, stored states, beat's heartbeat) is one pipeline; the new policy states are "
        "a second. The run lock (`run_exclusive`) adds its SET NX and its release. ECS: one "
        "DescribeServices per 10 services, one UpdateService per changed group.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.autoscaler_run", description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
        "POWERTOOLS_METRICS_NAMESPACE": "CeleryPlatform",
    }.items():
        os.environ[name] = value
    with tempfile.TemporaryDirectory(prefix="autoscaler-run-") as workdir:
        port, process = start_server(redis_server_binary(), Path(workdir), {})
        try:
            rows = [measure(scale, port, args.repeats) for scale in SCALES]
        finally:
            process.terminate()
            process.wait(timeout=10)
    meta = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpus": os.cpu_count(),
        "command": "python -m bench.autoscaler_run"
        + (f" --repeats {args.repeats}" if args.repeats != 5 else ""),
        "repeats": args.repeats,
    }
    report = markdown(rows, meta)
    print(report)
    if not args.no_write:
        (RESULTS / "autoscaler_run.md").write_text(report)
        data = {"meta": meta, "rows": [asdict(r) for r in rows]}
        (RESULTS / "autoscaler_run.json").write_text(json.dumps(data, indent=2) + "\n")
    return 0 if all(r.lambda_estimate_s < GOAL_S for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
