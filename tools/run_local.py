"""Run the platform on this machine: redis-server, a worker per worker group, beat, Flower.

    python tools/run_local.py --env dev                  # until Ctrl-C (`make local`)
    python tools/run_local.py --env dev --duration 60    # stops by itself
    python tools/run_local.py --env dev --print-env > .env    # settings for docker compose

Everything listens on 127.0.0.1 only, on free ports. Redis keeps no data and every file
(heartbeats, logs, the environment file) lives in a temporary folder removed at exit.
Flower's password is generated anew on every run and printed once.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from config import ConfigError, available_environments, load_environment
from tools.local_redis import (
    RedisServerMissingError,
    free_port,
    redis_server_binary,
    server_args,
)

ROOT = Path(__file__).resolve().parent.parent
IMAGE_DIR = ROOT / "worker_image"


START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0  # SIGTERM, then SIGKILL after this long
# Ctrl-C gives running tasks this long (seconds) before they are requeued: locally there is
# no reason to wait as long as on Fargate.
LOCAL_SHUTDOWN_BUDGET_S = "5"
FLOWER_USER = "admin"
SAMPLE_TASK = (
    "import celery_service.main; from celery_service.tasks.samples import square; "
    "print(square.delay(7).get(timeout=30))"
)
# Inherited variables that would point the processes at something other than this stack
# (a real broker, a Datadog agent, the ECS agent).
FOREIGN_PREFIXES = ("CELERY_", "FLOWER_", "DD_", "ECS_")


class StartError(Exception):
    """A process did not come up; the message says which and why."""


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    ready: Callable[[], bool]

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join("    " + line for line in text.splitlines()[-lines:])


def redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:  # URLError included
        return False


def catalog_json(env_name: str) -> str:
    return load_environment(env_name).runtime_catalog_json()


def compose_env(env_name: str) -> str:
    """A `.env` file for docker compose: the catalog and fresh Flower credentials."""
    # Single-quoted values are taken literally by compose; a quote inside a JSON string
    # becomes its \u escape, which is the same JSON.
    catalog = catalog_json(env_name).replace("'", "\\u0027")
    password = secrets.token_urlsafe(24)
    return (
        f"# docker compose settings, from: python tools/run_local.py --env {env_name} "
        "--print-env > .env\n"
        "# Regenerate after changing config/. Keep this file out of git: it holds Flower's "
        "password.\n"
        f"CELERY_CATALOG='{catalog}'\n"
        f"FLOWER_BASIC_AUTH='{FLOWER_USER}:{password}'\n"
    )


class LocalPlatform:
    def __init__(self, env_name: str, workdir: Path, log_dir: Path) -> None:
        self.env_name = env_name
        self.workdir = workdir
        self.log_dir = log_dir
        self.services: list[Service] = []
        self.redis_port = free_port()
        self.flower_port = free_port()
        self.flower_password = secrets.token_urlsafe(18)
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_PREFIXES)}
        self.base_env.update(
            PYTHONPATH=str(IMAGE_DIR),
            PYTHONUNBUFFERED="1",
            CELERY_BROKER_HOST="127.0.0.1",
            CELERY_BROKER_PORT=str(self.redis_port),
            CELERY_BROKER_TLS="false",
            CELERY_CATALOG=catalog_json(env_name),
            CELERY_SHUTDOWN_BUDGET_S=LOCAL_SHUTDOWN_BUDGET_S,
        )
        self.groups = list(load_environment(env_name).worker_groups)

    @property
    def flower_url(self) -> str:
        return f"http://127.0.0.1:{self.flower_port}/"

    @property
    def env_file(self) -> Path:
        return self.workdir / "local.env"

    def _spawn(self, name: str, args: list[str], env: dict[str, str], cwd: Path) -> Service:
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as out:
            # Own session: the terminal's Ctrl-C reaches this script only, which then stops
            # the processes in order (redis last, so workers can hand back their messages).
            process = subprocess.Popen(
                args,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        service = Service(name=name, process=process, log=log, ready=lambda: False)
        self.services.append(service)
        return service

    def start_redis(self) -> None:
        try:
            binary = redis_server_binary()
        except RedisServerMissingError as exc:
            raise StartError(str(exc)) from None
        args = server_args(binary, self.redis_port, self.workdir)
        service = self._spawn("redis-server", args, dict(self.base_env), self.workdir)
        port = self.redis_port
        service.ready = lambda: redis_answers(port)

    def start_celery(self) -> None:
        command = [sys.executable, "-m", "celery_service"]
        for group in self.groups:
            heartbeat = self.workdir / f"heartbeat-worker-{group}"
            env = {
                **self.base_env,
                "CELERY_WORKER_GROUP": group,
                "CELERY_HEARTBEAT_FILE": str(heartbeat),
            }
            service = self._spawn(f"worker-{group}", [*command, "worker"], env, IMAGE_DIR)
            service.ready = heartbeat.exists
        heartbeat = self.workdir / "heartbeat-beat"
        env = {**self.base_env, "CELERY_HEARTBEAT_FILE": str(heartbeat)}
        service = self._spawn("beat", [*command, "beat"], env, IMAGE_DIR)
        service.ready = heartbeat.exists
        env = {
            **self.base_env,
            "CELERY_HEARTBEAT_FILE": str(self.workdir / "heartbeat-flower"),
            "FLOWER_ADDRESS": "127.0.0.1",
            "FLOWER_PORT": str(self.flower_port),
            "FLOWER_BASIC_AUTH": f"{FLOWER_USER}:{self.flower_password}",
        }
        service = self._spawn("flower", [*command, "flower"], env, IMAGE_DIR)
        health = f"http://127.0.0.1:{self.flower_port}/healthcheck"
        service.ready = lambda: http_ok(health)

    def wait_ready(self, stop: threading.Event, timeout: float = START_TIMEOUT_S) -> bool:
        """True once every process is ready; False if a stop was asked for first."""
        deadline = time.monotonic() + timeout
        pending = [s for s in self.services if not s.ready()]
        while pending:
            for service in pending:
                code = service.process.poll()
                if code is not None:
                    raise StartError(
                        f"{service.name} exited with code {code} while starting; "
                        f"the end of its log:\n{service.tail()}"
                    )
            if time.monotonic() > deadline:
                names = ", ".join(s.name for s in pending)
                raise StartError(f"not ready after {timeout:.0f} s: {names}")
            if stop.wait(0.2):
                return False
            pending = [s for s in pending if not s.ready()]
        return True

    def write_env_file(self) -> None:
        names = (
            "PYTHONPATH",
            "CELERY_BROKER_HOST",
            "CELERY_BROKER_PORT",
            "CELERY_BROKER_TLS",
            "CELERY_CATALOG",
        )
        lines = [f"export {name}={shlex.quote(self.base_env[name])}" for name in names]
        self.env_file.write_text("\n".join(lines) + "\n")

    def banner(self) -> str:
        pids = " ".join(f"{s.name}={s.process.pid}" for s in self.services)
        submit = (
            f"(. {shlex.quote(str(self.env_file))} && "
            f"{shlex.quote(sys.executable)} -c {shlex.quote(SAMPLE_TASK)})"
        )
        return (
            f"\nLocal platform ({self.env_name}) is up, on 127.0.0.1 only.\n"
            f"  Flower:  {self.flower_url}  user {FLOWER_USER}  password {self.flower_password}\n"
            f"  broker:  redis://127.0.0.1:{self.redis_port}/0\n"
            f"  workers: {', '.join(self.groups)}; beat; Flower\n"
            f"  logs:    {self.log_dir}\n"
            f"  pids:    {pids}\n"
            "Submit a sample task (prints 49):\n"
            f"  {submit}\n"
            "Stop with Ctrl-C.\n"
        )

    def watch(self, stop: threading.Event, duration: float | None) -> str | None:
        """Run until a stop, the duration or a process death; the death's message, if any."""
        deadline = None if duration is None else time.monotonic() + duration
        while not stop.wait(0.5):
            for service in self.services:
                code = service.process.poll()
                if code is not None:
                    return (
                        f"{service.name} exited with code {code}; the end of its log:\n"
                        f"{service.tail()}"
                    )
            if deadline is not None and time.monotonic() >= deadline:
                return None
        return None

    def stop_all(self) -> None:
        celery = [s for s in self.services if s.name != "redis-server"]
        redis = [s for s in self.services if s.name == "redis-server"]
        for batch in (celery, redis):
            for service in batch:
                if service.process.poll() is None:
                    service.process.terminate()
            deadline = time.monotonic() + STOP_TIMEOUT_S
            for service in batch:
                try:
                    service.process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    print(f"run_local: {service.name} did not stop, killing it", file=sys.stderr)
                    _kill_group(service.process.pid)
                    service.process.wait(timeout=5)
                # A killed worker can leave its pool processes behind, in its process group.
                _kill_group(service.process.pid)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Run redis-server, a worker per worker group, beat and Flower locally."
    )
    parser.add_argument("--env", default="dev", choices=available_environments())
    parser.add_argument(
        "--duration",
        type=float,
        metavar="SECONDS",
        help="stop by itself this long after everything is up (default: run until Ctrl-C)",
    )
    parser.add_argument(
        "--log-dir",
        type=Path,
        help="keep the processes' logs here (default: the temporary folder, removed at exit)",
    )
    parser.add_argument(
        "--print-env",
        action="store_true",
        help="print a .env file for docker compose (catalog, new Flower password) and exit",
    )
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        if args.print_env:
            sys.stdout.write(compose_env(args.env))
            return 0
        load_environment(args.env)
    except ConfigError as exc:
        print(f"run_local: {exc}", file=sys.stderr)
        return 2

    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    workdir = Path(tempfile.mkdtemp(prefix="celery-local-"))
    log_dir = args.log_dir.resolve() if args.log_dir else workdir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    platform = LocalPlatform(args.env, workdir, log_dir)
    failure: str | None = None
    try:
        print(
            f"run_local: starting redis-server, workers ({', '.join(platform.groups)}), "
            f"beat and Flower; logs in {log_dir}",
            flush=True,
        )
        platform.start_redis()
        if platform.wait_ready(stop, timeout=10):
            platform.start_celery()
            if platform.wait_ready(stop):
                platform.write_env_file()
                print(platform.banner(), flush=True)
                failure = platform.watch(stop, args.duration)
    except StartError as exc:
        failure = str(exc)
    finally:
        print("run_local: stopping", flush=True)
        platform.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    if failure is not None:
        print(f"run_local: {failure}", file=sys.stderr)
        return 1
    print("run_local: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
