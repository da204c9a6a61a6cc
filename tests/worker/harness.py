"""Run real worker and beat processes of the image's code against a test redis-server."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from celery import Celery

from celery_service.catalog import Catalog
from celery_service.factory import create_app
from celery_service.settings import Settings, variables_for

ROOT = Path(__file__).resolve().parents[2]
IMAGE_DIR = ROOT / "worker_image"
# The sample app (examples/samples): its package `samples` holds the tasks most tests run.
SAMPLE_APP_DIR = ROOT / "examples" / "samples"
SAMPLE_TASK_MODULES = ("samples.tasks",)

# Short limits so redelivery after a crash takes seconds, not an hour. The visibility timeout
# obeys the same rule as production: hard limit 9 + retry wait 1 + margin 10.
TEST_CATALOG: dict[str, Any] = {
    "visibility_timeout_s": 20,
    "default_queue": "default",
    "result_expires_s": 600,
    "retry_backoff_max_s": 1,
    "queues": ["default", "priority", "reports"],
    "worker_groups": {
        "general": {
            "queues": ["default", "priority"],
            "concurrency": 2,
            "pool": "prefork",
            "soft_time_limit_s": 8,
            "time_limit_s": 9,
        },
        "batch": {
            "queues": ["reports"],
            "concurrency": 1,
            "pool": "prefork",
            "soft_time_limit_s": 8,
            "time_limit_s": 9,
        },
    },
    "tasks": {
        "samples.send_welcome_email": {"queue": "default"},
        "samples.fetch_exchange_rates": {"queue": "priority", "priority": "high", "max_retries": 2},
        "samples.build_report": {"queue": "reports", "priority": "low"},
    },
    "schedules": {},
}


def base_env(
    port: int,
    tmp: Path,
    catalog: dict[str, Any] | None = None,
    task_modules: tuple[str, ...] = SAMPLE_TASK_MODULES,
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DD_", "ECS_"))}
    # The image's code, the sample app, and the repository for test task modules
    # (tests.worker...).
    env["PYTHONPATH"] = os.pathsep.join((str(IMAGE_DIR), str(SAMPLE_APP_DIR), str(ROOT)))
    return env | variables_for(
        broker_host="127.0.0.1",
        broker_port=port,
        broker_tls=False,
        catalog=catalog or TEST_CATALOG,
        task_modules=task_modules,
        log_level="INFO",
    )


def publisher(
    port: int,
    catalog: dict[str, Any] | None = None,
    task_modules: tuple[str, ...] = SAMPLE_TASK_MODULES,
) -> Celery:
    """An app configured like the workers', for publishing and reading results."""
    settings = Settings.from_env(base_env(port, Path("."), catalog, task_modules))
    return create_app(settings, main="test-publisher")


@dataclass
class Process:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    heartbeat: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def json_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.output().splitlines():
            if line.startswith("{"):
                try:
                    lines.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return lines

    def wait_ready(self, timeout: float = 30) -> None:
        wait_for(
            lambda: self.heartbeat.exists() or self.proc.poll() is not None,
            timeout,
            f"{self.name} to start",
        )
        if self.proc.poll() is not None:
            raise AssertionError(f"{self.name} exited at start:\n{self.output()[-3000:]}")

    def print_state(self) -> None:
        """For a failed test's report (pytest shows what it printed): the heartbeat's age,
        every thread's stack (Celery's SIGUSR1 handler logs them) and the log's end."""
        if self.proc.poll() is None:
            self.signal(signal.SIGUSR1)
            time.sleep(1)
        age = time.time() - self.heartbeat.stat().st_mtime if self.heartbeat.exists() else None
        print(f"--- {self.name}: exit code {self.proc.poll()}, heartbeat age {age} s")
        print(self.output()[-20000:])

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill_all(self) -> None:
        """SIGKILL the whole process group: the container dying, children included."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill_all()
        else:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)  # orphans of a dead main process


def start(
    command: list[str], name: str, env: dict[str, str], tmp: Path, **extra_env: str
) -> Process:
    log = tmp / f"{name}.log"
    heartbeat = tmp / f"{name}.heartbeat"
    full_env = {**env, "CELERY_HEARTBEAT_FILE": str(heartbeat), **extra_env}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery_service", *command],
            cwd=IMAGE_DIR,
            env=full_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so a test can kill it whole
        )
    return Process(name=name, proc=proc, log=log, heartbeat=heartbeat)


@contextmanager
def running(
    port: int,
    tmp: Path,
    group: str = "general",
    name: str | None = None,
    catalog: dict[str, Any] | None = None,
    task_modules: tuple[str, ...] = SAMPLE_TASK_MODULES,
    **extra_env: str,
) -> Iterator[Process]:
    """A worker of `group`, ready to consume, stopped with SIGTERM at the end."""
    env = base_env(port, tmp, catalog, task_modules)
    worker = start(
        ["worker"], name or f"worker-{group}", env, tmp, CELERY_WORKER_GROUP=group, **extra_env
    )
    try:
        worker.wait_ready()
        yield worker
    except BaseException:
        worker.print_state()
        raise
    finally:
        worker.stop()


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def results_client(client: Any) -> Any:
    """A client of `client`'s server on the results' database (the catalog's default)."""
    kwargs = client.connection_pool.connection_kwargs
    db = Catalog.model_fields["result_db"].default
    return redis.Redis(host=kwargs["host"], port=kwargs["port"], db=db, socket_timeout=5)
