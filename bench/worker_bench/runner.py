"""The worker benchmark's runner: a throw-away redis-server, one worker per variant, the
queue filled and drained, tasks published at a steady rate, CPU and memory measured from
/proc, and optional cProfile files."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from bench import bench_tasks
from bench.worker_bench.report import RESULTS_DIR, floor_lines
from bench.worker_bench.variants import BENCH_GROUP, CONCURRENCY, VARIANTS, Variant
from celery_service.__main__ import worker_args
from celery_service.factory import create_app
from celery_service.settings import Settings, variables_for
from tools.http_standin import StandIn, standin
from tools.local_redis import (
    RedisServerMissingError,
    redis_server_binary,
    start_server,
)

ROOT = Path(__file__).resolve().parents[2]  # this file is bench/worker_bench/runner.py
CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- processes and /proc


def cpu_seconds(pid: int) -> float:
    """User + system CPU of one process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(stat[1]) == pid:
                found.append(int(entry.name))
    return found


def rss_mib(pid: int) -> float | None:
    """Resident set size of one process in MiB (None if it is gone, or a zombie: those have
    no VmRSS line)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.MULTILINE)
    return int(match[1]) / 1024 if match else None


def resident_mib(worker_pid: int) -> dict[str, Any]:
    """RSS of the worker's main process and of each of its pool processes (ascending), MiB."""
    main = rss_mib(worker_pid)
    pool = [rss for child in children_of(worker_pid) if (rss := rss_mib(child)) is not None]
    if main is None or not pool:
        raise RuntimeError("the worker or its pool processes exited before memory was read")
    return {"worker_main": round(main, 1), "pool_processes": sorted(round(r, 1) for r in pool)}


def system_cpu() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq) / CLK_TCK, steal / CLK_TCK


@dataclass
class CpuSnapshot:
    at: float  # monotonic
    main: float
    pool: float
    redis: float
    bench: float  # this process: the report reader and, for latency, the publisher
    busy: float  # the whole machine
    steal: float

    @classmethod
    def take(cls, worker_pid: int, redis_pid: int) -> CpuSnapshot:
        pool = sum(cpu_seconds(child) for child in children_of(worker_pid))
        busy, steal = system_cpu()
        return cls(
            time.monotonic(),
            cpu_seconds(worker_pid),
            pool,
            cpu_seconds(redis_pid),
            time.process_time(),
            busy,
            steal,
        )

    def other_share(self, later: CpuSnapshot) -> dict[str, float]:
        """CPU used meanwhile by processes not part of the benchmark, and stolen by the
        hypervisor, as shares of the machine's capacity."""
        ours = sum(getattr(later, k) - getattr(self, k) for k in ("main", "pool", "redis", "bench"))
        capacity = (later.at - self.at) * (os.cpu_count() or 1)
        other = max(0.0, (later.busy - self.busy) - ours)
        return {
            "other_cpu_share": round(other / capacity, 3),
            "steal_share": round((later.steal - self.steal) / capacity, 3),
        }


def wait_for_quiet(max_wait_s: float, threshold: float = 0.10) -> float:
    """Wait (at most `max_wait_s`) until other processes use under `threshold` of the CPUs
    over a 2 s window; return the last share seen. Only the idle redis-server and this process
    run meanwhile, so nearly all of the busy time is someone else's."""
    deadline = time.monotonic() + max_wait_s
    while True:
        busy0, at0, own0 = system_cpu()[0], time.monotonic(), time.process_time()
        time.sleep(2.0)
        busy = system_cpu()[0] - busy0 - (time.process_time() - own0)
        share = busy / ((time.monotonic() - at0) * (os.cpu_count() or 1))
        if share < threshold or time.monotonic() > deadline:
            return round(share, 3)
        print(f"(other load {share:.0%}, waiting)", end=" ", flush=True)


@contextmanager
def redis_server(workdir: Path) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    try:
        binary = redis_server_binary()
    except RedisServerMissingError as exc:
        sys.exit(str(exc))
    port, process = start_server(binary, workdir)
    try:
        yield port, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def redis_benchmark(port: int) -> dict[str, Any]:
    """redis-benchmark's LPUSH/RPOP rates: 50 clients (server capacity) and 1 client
    (one connection's round trip, which is what a worker's consumer sees)."""
    binary = shutil.which("redis-benchmark")
    if binary is None:
        return {"error": "redis-benchmark not found"}
    floor: dict[str, Any] = {}
    runs = {"50_clients": ["-n", "100000"], "1_client": ["-n", "20000", "-c", "1"]}
    for label, extra in runs.items():
        out = subprocess.run(
            [binary, "-h", "127.0.0.1", "-p", str(port), "-q", "-t", "lpush,rpop", *extra],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
        # Lines look like "LPUSH: 119904.08 requests per second, p50=0.215 msec" (CRs inside).
        for line in out.replace("\r", "\n").splitlines():
            match = re.match(r"(\w+): ([\d.]+) requests per second(?:, p50=([\d.]+) msec)?", line)
            if match:
                entry: dict[str, float] = {"requests_per_s": float(match[2])}
                if match[3]:
                    entry["p50_ms"] = float(match[3])
                floor[f"{match[1].lower()}_{label}"] = entry
    return floor


# ---------------------------------------------------------------- worker-side reports


class Reports:
    """Receives the workers' datagrams (bench_tasks.report) on a background thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        self.sock.bind(str(path))
        self.lock = threading.Condition()
        self.ready: list[float] = []
        # (caller's clock before apply_async, publish stamp, body start, finished)
        self.done: list[tuple[float, float, float, float]] = []
        self.thread = threading.Thread(target=self._run, name="reports", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            try:
                data = self.sock.recv(256)
            except OSError:
                return
            kind, *values = data.decode().split()
            with self.lock:
                if kind == "ready":
                    self.ready.append(float(values[0]))
                elif kind == "done":
                    called, stamped, started, finished = (float(v) for v in values)
                    self.done.append((called, stamped, started, finished))
                self.lock.notify_all()

    def reset(self) -> None:
        with self.lock:
            self.ready.clear()
            self.done.clear()

    def wait_ready(self, timeout: float) -> float:
        with self.lock:
            if not self.lock.wait_for(lambda: bool(self.ready), timeout):
                raise RuntimeError("the worker did not become ready")
            return self.ready[0]

    def wait_done(self, count: int, stall_s: float) -> list[tuple[float, float, float, float]]:
        """Wait for `count` completions; give up after `stall_s` without progress."""
        with self.lock:
            seen = -1
            while len(self.done) < count:
                if len(self.done) == seen:
                    raise RuntimeError(f"stalled at {seen} of {count} completions")
                seen = len(self.done)
                self.lock.wait_for(lambda: len(self.done) >= count, stall_s)
            return list(self.done)

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------- one variant


@dataclass
class Bench:
    port: int
    redis_pid: int
    workdir: Path
    reports: Reports
    catalog: dict[str, Any]
    tasks: int
    rate: float
    seconds: float
    profile: bool
    statsd_sink: socket.socket = field(init=False)
    # The ECS agent's task-protection endpoint, answering every call as ECS does, so the
    # shipped worker's protection thread runs as it does on Fargate.
    ecs_agent: StandIn = field(init=False)
    _open: ExitStack = field(init=False)

    def __post_init__(self) -> None:
        self._open = ExitStack()
        self.statsd_sink = self._open.enter_context(
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        )
        self.statsd_sink.bind(("127.0.0.1", 0))
        self.ecs_agent = self._open.enter_context(
            standin([(200, {"protection": {"ProtectionEnabled": True}})])
        )

    def close(self) -> None:
        self._open.close()

    @property
    def broker_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def settings_env(self) -> dict[str, str]:
        return variables_for(
            broker_host="127.0.0.1",
            broker_port=self.port,
            broker_tls=False,
            catalog=self.catalog,
            worker_group=BENCH_GROUP,
            task_modules=["bench.bench_tasks"],
            # The worker is idle when stopped: no need for the 90 s shutdown budget.
            shutdown_budget_s=2,
            heartbeat_file=self.workdir / "heartbeat",
        )

    def publisher(self, variant: Variant) -> Celery:
        """The app producers would use: the shipped app (create_app) or a plain one."""
        if variant.app == "defaults":
            app = Celery("bench_publisher", broker=self.broker_url)
        else:
            app = create_app(Settings.from_env(self.settings_env()))
        for key, value in variant.conf.items():
            # As bench_app does for the worker: dict settings are merged, not replaced.
            current = app.conf.get(key)
            both = isinstance(value, dict) and isinstance(current, dict)
            app.conf[key] = {**current, **value} if both else value
        return app

    def worker_command(self, variant: Variant) -> list[str]:
        python = sys.executable
        include = ["--include", "bench.bench_tasks"]
        if variant.image_entry:
            return [python, "-m", "celery_service", "worker"]  # CELERY_TASK_MODULES
        if variant.app == "defaults":
            # Same pool, size and start flags as the shipped entry point: only settings differ.
            args = [
                "worker",
                "--queues",
                "celery",
                "--concurrency",
                str(CONCURRENCY),
                "--pool",
                "prefork",
                "--without-mingle",
                "--without-gossip",
            ]
        else:
            args = worker_args(Settings.from_env(self.settings_env()))
        return [python, "-m", "celery", "--app", "bench.bench_app", *args, *include]

    def worker_env(self, variant: Variant) -> dict[str, str]:
        skip = ("CELERY_", "DD_", "BENCH_", "ECS_", "FLOWER_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
        env.update(self.settings_env())
        env.update(
            {
                "PYTHONPATH": str(ROOT),
                "BENCH_APP": variant.app,
                "BENCH_BROKER_URL": self.broker_url,
                "BENCH_CONF": json.dumps(variant.conf),
                "BENCH_TWEAKS": ",".join(variant.tweaks),
                bench_tasks.REPORT_SOCKET_ENV: str(self.reports.path),
            }
        )
        if "statsd" in variant.tweaks:
            # A bound socket nobody reads: sends succeed, the kernel drops what overflows.
            env["DD_AGENT_HOST"] = "127.0.0.1"
            env["DD_DOGSTATSD_PORT"] = str(self.statsd_sink.getsockname()[1])
        if variant.app == "shipped":
            env["ECS_AGENT_URI"] = self.ecs_agent.url  # scale-in protection, as on Fargate
        if self.profile:
            env["BENCH_PROFILE"] = str(RESULTS_DIR / f"profile_{variant.name}.prof")
        return env

    def run(self, variant: Variant) -> dict[str, Any]:
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=10)
        client.flushall()
        self.reports.reset()
        calls_before = len(self.ecs_agent.requests)
        app = self.publisher(variant)
        fill_queue(app, client, self.tasks)
        log_path = self.workdir / f"worker_{variant.name}.log"
        with log_path.open("wb") as log:
            worker = subprocess.Popen(
                self.worker_command(variant),
                cwd=ROOT,
                env=self.worker_env(variant),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                drain = self._drain(worker)
                time.sleep(1.0)  # let the worker go idle before the latency run
                self.reports.reset()
                latency = self._latency(app, worker)
            except RuntimeError as exc:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(
                    f"{variant.name}: {exc}\n--- worker log tail ---\n{tail}"
                ) from None
            finally:
                stop(worker)
                app.close()
        counter = client.get("celery:completed:default")
        return {
            "variant": variant.name,
            "title": variant.title,
            "app": variant.app,
            "conf": variant.conf,
            "tweaks": list(variant.tweaks),
            "command": " ".join(self.worker_command(variant)[1:]),
            "drain": drain,
            "latency": latency,
            # The platform's own Redis completion counter, as a cross-check (shipped only).
            "platform_completion_counter": int(counter) if counter is not None else None,
            "protection_calls": len(self.ecs_agent.requests) - calls_before,
        }

    def _drain(self, worker: subprocess.Popen[bytes]) -> dict[str, Any]:
        ready = self.reports.wait_ready(timeout=60)
        before = CpuSnapshot.take(worker.pid, self.redis_pid)
        done = self.reports.wait_done(self.tasks, stall_s=30)
        after = CpuSnapshot.take(worker.pid, self.redis_pid)
        # Read now, after the tasks ran: imported task modules and warmed caches count.
        memory = resident_mib(worker.pid)
        finished = sorted(end for *_, end in done)
        elapsed = finished[-1] - ready
        # Steady state: the middle 80 % of completions, free of start-up and tail effects.
        low, high = finished[len(finished) // 10], finished[len(finished) * 9 // 10]
        return {
            "tasks": self.tasks,
            "seconds": round(elapsed, 3),
            "tasks_per_s": round(self.tasks / elapsed, 1),
            "steady_tasks_per_s": round((len(finished) * 8 // 10) / (high - low), 1),
            "first_start_after_ready_ms": round((min(d[2] for d in done) - ready) * 1000, 1),
            "cpu_ms_per_task": {
                "worker_main": round((after.main - before.main) * 1000 / self.tasks, 3),
                "pool_processes": round((after.pool - before.pool) * 1000 / self.tasks, 3),
                "redis": round((after.redis - before.redis) * 1000 / self.tasks, 3),
            },
            "rss_mib": memory,
            **before.other_share(after),
        }

    def _latency(self, app: Celery, worker: subprocess.Popen[bytes]) -> dict[str, Any]:
        task = app.tasks[bench_tasks.TASK_NAME]
        count = int(self.rate * self.seconds)
        interval = 1.0 / self.rate
        before = CpuSnapshot.take(worker.pid, self.redis_pid)
        with app.producer_or_acquire() as producer:
            begin = time.monotonic() + 0.05
            for i in range(count):
                delay = begin + i * interval - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                task.apply_async(args=[time.time()], producer=producer)
            sent_rate = count / (time.monotonic() - begin)
        done = self.reports.wait_done(count, stall_s=30)
        after = CpuSnapshot.take(worker.pid, self.redis_pid)
        # The publisher shares the machine's 2 cores with the worker and Redis.
        publisher_ms = (after.bench - before.bench) * 1000 / count
        start = sorted((started - stamped) * 1000 for _, stamped, started, _ in done)
        from_call = sorted((started - called) * 1000 for called, _, started, _ in done)
        return {
            "tasks": count,
            "target_rate_per_s": self.rate,
            "achieved_rate_per_s": round(sent_rate, 1),
            "start_ms": {f"p{p}": round(percentile(start, p), 3) for p in (50, 95, 99)}
            | {"max": round(start[-1], 3)},
            "from_apply_async_ms": {f"p{p}": round(percentile(from_call, p), 3) for p in (50, 99)},
            "publisher_cpu_ms_per_task": round(publisher_ms, 3),
            **before.other_share(after),
        }


def fill_queue(app: Celery, client: redis.Redis, count: int) -> None:
    """Fill the variant's queue with `count` copies of one message the app publishes: same
    routing, priority, headers and body as `apply_async` makes, each with its own task id and
    delivery tag (kombu's unacked bookkeeping is keyed by the tag)."""
    app.tasks[bench_tasks.TASK_NAME].apply_async(args=[0.0])
    keys = list(client.scan_iter(_type="list"))
    if len(keys) != 1:
        raise RuntimeError(f"expected one queue key after publishing, found {keys}")
    key = keys[0]
    raw = client.rpop(key)
    if not isinstance(raw, bytes):
        raise RuntimeError(f"no message in {key!r}")
    message = json.loads(raw)
    headers, properties = message["headers"], message["properties"]
    pipe = client.pipeline(transaction=False)
    for i in range(count):
        task_id = str(uuid.uuid4())
        headers["id"] = headers["root_id"] = properties["correlation_id"] = task_id
        properties["delivery_tag"] = str(uuid.uuid4())
        pipe.lpush(key, json.dumps(message))
        if i % 1000 == 999:
            pipe.execute()
    pipe.execute()
    if client.llen(key) != count:
        raise RuntimeError(f"queue {key!r} holds {client.llen(key)} messages, not {count}")


def percentile(ordered: list[float], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    index = max(0, min(len(ordered) - 1, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def stop(worker: subprocess.Popen[bytes]) -> None:
    """SIGTERM (warm shutdown of an idle worker), then whatever is left of its group."""
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait()
    # Pool processes that outlived their parent belong to the group we started.
    with suppress(ProcessLookupError):
        os.killpg(worker.pid, signal.SIGKILL)


# ---------------------------------------------------------------- all variants


def run_all(
    args: argparse.Namespace, names: list[str], catalog: dict[str, Any]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """redis-benchmark, then every variant `args.repeat` times, interleaved."""
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="worker-bench-") as tmp:
        workdir = Path(tmp)
        reports = Reports(workdir / "reports.sock")
        with redis_server(workdir) as (port, server):
            floor = redis_benchmark(port)
            print(floor_lines(floor), flush=True)
            bench = Bench(
                port,
                server.pid,
                workdir,
                reports,
                catalog,
                args.tasks,
                args.rate,
                args.seconds,
                args.profile,
            )
            try:
                for round_ in range(1, args.repeat + 1):
                    for name in names:
                        print(f"round {round_}: {name} ...", end=" ", flush=True)
                        quiet = wait_for_quiet(args.max_wait_idle)
                        try:
                            run = {**bench.run(VARIANTS[name]), "other_load_before": quiet}
                        except RuntimeError as exc:
                            print(f"failed\n{exc}", file=sys.stderr)
                            run = {"variant": name, "error": str(exc)}
                        else:
                            drain, p99 = run["drain"], run["latency"]["start_ms"]["p99"]
                            print(f"{drain['tasks_per_s']:.0f} tasks/s, start p99 {p99:.2f} ms")
                        runs.append({"round": round_, **run})
            finally:
                bench.close()
                reports.close()
    return floor, runs
