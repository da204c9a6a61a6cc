"""How long a high-priority task waits behind rate-limited ones in the same worker group.

`make bench-rate-limits` runs this. Celery holds a rate-limited message in the worker
(unacknowledged, in its token bucket) until a token frees, and that message keeps its place
in the prefetch window: with late acks and prefetch x1, `concurrency` such messages fill the
window and the worker fetches nothing else, however urgent, while its pool sits idle.

Two layouts, each with one worker (prefork, 2 processes) and the same work: 20 rate-limited
low-priority tasks (`10/m`) are queued, then a high-priority task is published 1 s after the
worker is ready. Measured: publish to completion of the high-priority task.

1. shared: both tasks in one queue of one group (what the config now warns about);
2. split: the rate-limited task in its own queue and group, as docs/configuration.md lays it out.

Results go to bench/results/rate_limit_tiers.md.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median
from typing import Any

import redis

from celery_service.factory import create_app
from celery_service.settings import Settings, variables_for
from tools.local_redis import redis_server_binary, start_server

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "rate_limit_tiers.md"


THROTTLED = "samples.send_welcome_email"
URGENT = "samples.square"
BACKLOG = 20
RATE = "10/m"  # a token every 6 s
ROUNDS = 5


def catalog(split: bool) -> dict[str, Any]:
    group = {"concurrency": 2, "pool": "prefork", "soft_time_limit_s": 8, "time_limit_s": 9}
    groups = {"general": {**group, "queues": ["default", "urgent"]}}
    if split:
        groups["throttled"] = {**group, "queues": ["throttled"]}
    return {
        "visibility_timeout_s": 30,
        "default_queue": "default",
        "retry_backoff_max_s": 1,
        "queues": ["default", "throttled", "urgent"] if split else ["default", "urgent"],
        "worker_groups": groups,
        "tasks": {
            THROTTLED: {
                "queue": "throttled" if split else "urgent",
                "priority": "low",
                "rate_limit": RATE,
            },
            URGENT: {"queue": "urgent", "priority": "high"},
        },
    }


def environment(port: int, spec: dict[str, Any]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DD_", "ECS_"))}
    return env | {
        "PYTHONPATH": str(ROOT / "examples" / "samples"),
        **variables_for(
            task_modules=["samples.tasks"],
            broker_host="127.0.0.1",
            broker_port=port,
            broker_tls=False,
            catalog=spec,
            log_level="WARNING",
        ),
    }


def one_round(port: int, split: bool, workdir: Path) -> float:
    spec = catalog(split)
    env = environment(port, spec)
    app = create_app(Settings.from_env(env), main="bench-rate-limits")
    redis.Redis(host="127.0.0.1", port=port).flushall()
    for user in range(BACKLOG):
        app.send_task(THROTTLED, args=[user])
    heartbeat = workdir / "heartbeat"
    heartbeat.unlink(missing_ok=True)
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "celery_service", "worker"],
            cwd=ROOT,
            env=env
            | {"CELERY_WORKER_GROUP": group, "CELERY_HEARTBEAT_FILE": f"{heartbeat}.{group}"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for group in spec["worker_groups"]
    ]
    try:
        deadline = time.monotonic() + 60
        while not all(Path(f"{heartbeat}.{g}").exists() for g in spec["worker_groups"]):
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not start")
            time.sleep(0.05)
        time.sleep(1)  # the throttled backlog is now in the worker's token bucket
        started = time.monotonic()
        app.send_task(URGENT, args=[3]).get(timeout=60)
        return time.monotonic() - started
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=30)
        app.close()


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        port, server = start_server(redis_server_binary(), workdir)
        try:
            waits = {
                layout: [one_round(port, layout == "split", workdir) for _ in range(ROUNDS)]
                for layout in ("shared", "split")
            }
        finally:
            server.terminate()
            server.wait(timeout=10)
    lines = [
        "# Rate-limited tasks and higher priorities in one worker group",
        "",
        f"{BACKLOG} rate-limited ({RATE}, low) tasks queued, then one high-priority task; "
        f"one worker per group, prefork 2 processes, late acks, prefetch x1; {ROUNDS} rounds.",
        "",
        "| layout | high-priority task, publish to done (s): median | max |",
        "|---|---|---|",
    ]
    for layout, values in waits.items():
        lines.append(f"| {layout} | {median(values):.2f} | {max(values):.2f} |")
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
