"""Run an app on the platform on this machine: redis-server, a worker per worker group,
beat and Flower, from the app's config directory and code.

    python -m tools.run_local --env dev                   # until Ctrl-C (`make local`)
    python -m tools.run_local --config-dir ../shop/deploy --app-dir ../shop --env dev
    python -m tools.run_local --env dev --duration 60     # stops by itself
    python -m tools.run_local --env dev --compose .compose   # the same with docker compose

The app's code is imported from --app-dir (default: the config's app.image.build_dir, the
directory its Dockerfile copies from). Everything listens on 127.0.0.1 only, on free ports.
Redis keeps no data and every file (heartbeats, logs, the environment file) lives in a
temporary folder removed at exit. Flower's password is generated anew on every run and
printed once. Ctrl-C (or SIGTERM, or a closed terminal) always stops every process.
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
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from celery_service.contract import FLOWER_DEFAULT_USER, KEYSPACE_EVENTS, Env
from config import (
    CONFIG_DIR,
    ConfigError,
    EnvironmentConfig,
    load_environment,
)
from config.services import (
    BEAT,
    FLOWER,
    FLOWER_PORT,
    CeleryService,
    container_environment,
    services_of,
    worker,
)
from tools.local_redis import (
    RedisServerMissingError,
    free_port,
    redis_server_binary,
    server_args,
)

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0  # SIGTERM, then SIGKILL after this long
# Ctrl-C gives running tasks this long (seconds) before they are requeued: locally there is
# no reason to wait as long as on Fargate.
LOCAL_SHUTDOWN_BUDGET_S = 5
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


def say(text: str, *, error: bool = False) -> None:
    """Print, but never fail: with a closed stdout (`make local | tee log`, the pipe gone at
    Ctrl-C) the processes must still be stopped."""
    stream = sys.stderr if error else sys.stdout
    try:
        print(text, file=stream, flush=True)
    except (BrokenPipeError, ValueError):
        # Python's advice for a closed pipe: point the stream at /dev/null, so the flush at
        # exit does not fail as well.
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    except OSError:
        pass


class StopRequest:
    """Set by SIGINT/SIGTERM/SIGHUP. A plain attribute: a signal handler that takes a lock
    (threading.Event.set) can deadlock against the main thread waiting on the same lock."""

    def __init__(self) -> None:
        self.requested = False

    def handle(self, _signum: int, _frame: FrameType | None) -> None:
        self.requested = True

    def sleep(self, seconds: float) -> bool:
        """Sleep up to `seconds`; True if a stop was requested."""
        deadline = time.monotonic() + seconds
        while not self.requested and time.monotonic() < deadline:
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
        return self.requested


def compose_env(config: EnvironmentConfig) -> str:
    """A `.env` file for docker compose: the catalog and fresh Flower credentials."""
    # Single-quoted values are taken literally by compose; a quote inside a JSON string
    # becomes its \u escape, which is the same JSON.
    catalog = config.runtime_catalog_json().replace("'", "\\u0027")
    env_name = config.name
    password = secrets.token_urlsafe(24)
    return (
        f"# docker compose settings, from: python -m tools.run_local --env {env_name} "
        "--print-env > .env\n"
        "# Regenerate after changing the config. Keep this file out of git: it holds Flower's "
        "password.\n"
        f"CELERY_CATALOG='{catalog}'\n"
        f"FLOWER_BASIC_AUTH='{FLOWER_DEFAULT_USER}:{password}'\n"
    )


COMPOSE_REDIS_IMAGE = "redis:7.4-alpine"


def compose_file(config: EnvironmentConfig) -> dict[str, Any]:
    """A docker compose project of the app: redis, a worker per worker group of its catalog,
    beat and Flower, from the app's image built FROM the platform's base (build that first:
    `make base-image`). The catalog and Flower's password come from the `.env` beside it."""
    from stacks.parts.app_image import BASE_IMAGE_ARG, BASE_IMAGE_TAG

    missing = "missing; run make compose"
    image = config.app.image
    if image.build_dir is not None:
        args = {BASE_IMAGE_ARG: BASE_IMAGE_TAG, **image.build_args}
        source: dict[str, Any] = {"build": {"context": image.build_dir, "args": args}}
    else:  # the prebuilt image (pull access to its registry is the user's)
        source = {"image": f"{image.repository}@{image.digest}"}
    celery = {
        "image": f"{config.project}-{config.name}-app:local",
        **source,
        "depends_on": {"redis": {"condition": "service_healthy"}},
        "restart": "unless-stopped",
    }

    def environment(service: CeleryService) -> dict[str, str]:
        return container_environment(
            config,
            service,
            broker_host="redis",
            broker_port=6379,
            broker_tls=False,
            catalog=f"${{{Env.CATALOG}:?{missing}}}",
            log_level="INFO",
            # Idle workers wait the whole soft-shutdown budget on stop: keep `down` quick.
            shutdown_budget_s=2,
        )

    services: dict[str, Any] = {
        "redis": {
            "image": COMPOSE_REDIS_IMAGE,
            # Throw-away data; the keyspace events idle workers wait on, as in AWS.
            "command": ["redis-server", "--save", "", "--appendonly", "no",
                        "--notify-keyspace-events", KEYSPACE_EVENTS],
            "ports": ["127.0.0.1:6379:6379"],
            "healthcheck": {"test": ["CMD", "redis-cli", "ping"], "interval": "2s",
                            "timeout": "3s", "retries": 15},
        }
    }  # fmt: skip
    for service in services_of(config):
        services[service.name] = {
            **celery,
            "command": [service.command],
            "environment": environment(service),
        }
    services[FLOWER.name]["environment"]["FLOWER_BASIC_AUTH"] = f"${{FLOWER_BASIC_AUTH:?{missing}}}"
    services[FLOWER.name] |= {
        "ports": [f"127.0.0.1:{FLOWER_PORT}:{FLOWER_PORT}"],
        "healthcheck": {
            "test": ["CMD", "python", "-m", "celery_service", "healthcheck", "flower"],
            "interval": "30s",
            "timeout": "5s",
            "start_period": "30s",
            "retries": 3,
        },
    }
    return {"name": f"{config.project}-{config.name}", "services": services}


def write_compose(config: EnvironmentConfig, directory: Path) -> None:
    """docker-compose.yml and its git-ignored .env (the catalog, a new Flower password)."""
    import yaml

    directory.mkdir(parents=True, exist_ok=True)
    header = (
        f"# Generated by `python -m tools.run_local --env {config.name} --compose {directory}`"
        " from the app's config: regenerate after changing it.\n"
        "# Build the platform's base image once (`make base-image`), then run "
        "`docker compose up --build` here.\n"
    )
    text = yaml.safe_dump(compose_file(config), sort_keys=False, width=1000)
    (directory / "docker-compose.yml").write_text(header + text)
    (directory / ".env").write_text(compose_env(config))


class LocalPlatform:
    def __init__(
        self, config: EnvironmentConfig, app_dir: Path | None, workdir: Path, log_dir: Path
    ) -> None:
        self.config = config
        self.env_name = config.name
        self.workdir = workdir
        self.log_dir = log_dir
        self.services: list[Service] = []
        self.redis_port = free_port()
        self.flower_port = free_port()
        self.flower_password = secrets.token_urlsafe(18)
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN_PREFIXES)}
        self.base_env.update(PYTHONPATH=str(app_dir or ""), PYTHONUNBUFFERED="1")
        self.groups = list(config.worker_groups)

    def environment(self, service: CeleryService, heartbeat: Path) -> dict[str, str]:
        """What the service's process gets: the shell's own variables, then its container's
        (the team's plain variables; its secrets exist only on ECS)."""
        return {
            **self.base_env,
            **container_environment(
                self.config,
                service,
                broker_host="127.0.0.1",
                broker_port=self.redis_port,
                broker_tls=False,
                shutdown_budget_s=LOCAL_SHUTDOWN_BUDGET_S,
                flower_address="127.0.0.1",
                flower_port=self.flower_port,
            ),
            Env.HEARTBEAT_FILE: str(heartbeat),
        }

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
        for celery in [*(worker(group) for group in self.groups), BEAT]:
            heartbeat = self.workdir / f"heartbeat-{celery.name}"
            env = self.environment(celery, heartbeat)
            service = self._spawn(celery.name, [*command, celery.command], env, self.workdir)
            service.ready = heartbeat.exists
        env = self.environment(FLOWER, self.workdir / "heartbeat-flower")
        env["FLOWER_BASIC_AUTH"] = f"{FLOWER_DEFAULT_USER}:{self.flower_password}"
        service = self._spawn(FLOWER.name, [*command, FLOWER.command], env, self.workdir)
        health = f"http://127.0.0.1:{self.flower_port}/healthcheck"
        service.ready = lambda: http_ok(health)

    def wait_ready(self, stop: StopRequest, timeout: float = START_TIMEOUT_S) -> bool:
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
            if stop.sleep(0.2):
                return False
            pending = [s for s in pending if not s.ready()]
        return True

    def write_env_file(self) -> None:
        names = (
            "PYTHONPATH",
            Env.BROKER_HOST,
            Env.BROKER_PORT,
            Env.BROKER_TLS,
            Env.CATALOG,
            Env.TASK_MODULES,
            Env.APP_CONFIG_MODULE,
        )
        env = self.environment(BEAT, self.workdir / "heartbeat-beat")
        lines = [f"export {name}={shlex.quote(env[name])}" for name in names if name in env]
        self.env_file.write_text("\n".join(lines) + "\n")

    def banner(self) -> str:
        pids = " ".join(f"{s.name}={s.process.pid}" for s in self.services)
        submit = (
            f"(. {shlex.quote(str(self.env_file))} && {shlex.quote(sys.executable)} "
            "-m celery_service.producer send <task name> [JSON args...] --wait 30)"
        )
        return (
            f"\nLocal platform ({self.env_name}) is up, on 127.0.0.1 only.\n"
            f"  Flower:  {self.flower_url}  user {FLOWER_DEFAULT_USER}  "
            f"password {self.flower_password}\n"
            f"  broker:  redis://127.0.0.1:{self.redis_port}/0\n"
            f"  workers: {', '.join(self.groups)}; beat; Flower\n"
            f"  logs:    {self.log_dir}\n"
            f"  pids:    {pids}\n"
            "Publish a task and wait for its result:\n"
            f"  {submit}\n"
            "Stop with Ctrl-C.\n"
        )

    def watch(self, stop: StopRequest, duration: float | None) -> str | None:
        """Run until a stop, the duration or a process death; the death's message, if any."""
        deadline = None if duration is None else time.monotonic() + duration
        while not stop.sleep(0.5):
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
                    say(f"run_local: {service.name} did not stop, killing it", error=True)
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
    parser.add_argument(
        "--config-dir",
        type=Path,
        default=CONFIG_DIR,
        help="the app's config directory: catalog.toml and <env>.toml (default: the samples')",
    )
    parser.add_argument("--env", default="dev", help="an environment of the config directory")
    parser.add_argument(
        "--app-dir",
        type=Path,
        help="where the app's task modules are imported from (default: app.image.build_dir)",
    )
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
    parser.add_argument(
        "--compose",
        type=Path,
        metavar="DIR",
        help="write docker-compose.yml and its .env for the app into DIR and exit",
    )
    return parser.parse_args(argv)


def app_dir_of(config: EnvironmentConfig, given: Path | None) -> Path | None:
    """The directory the app's modules are imported from: as given, else the image's build
    directory (its Dockerfile copies the package from there), else none (installed)."""
    if given is not None:
        return given.resolve()
    build_dir = config.app.image.build_dir
    return Path(build_dir).resolve() if build_dir else None


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        config = load_environment(args.env, args.config_dir)
        if args.print_env:
            sys.stdout.write(compose_env(config))
            return 0
        if args.compose is not None:
            write_compose(config, args.compose)
            say(f"run_local: wrote {args.compose / 'docker-compose.yml'} and its .env")
            return 0
    except ConfigError as exc:
        say(f"run_local: {exc}", error=True)
        return 2

    stop = StopRequest()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, stop.handle)

    workdir = Path(tempfile.mkdtemp(prefix="celery-local-"))
    log_dir = args.log_dir.resolve() if args.log_dir else workdir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    platform = LocalPlatform(config, app_dir_of(config, args.app_dir), workdir, log_dir)
    failure: str | None = None
    try:
        say(
            f"run_local: starting redis-server, workers ({', '.join(platform.groups)}), "
            f"beat and Flower; logs in {log_dir}"
        )
        platform.start_redis()
        if platform.wait_ready(stop, timeout=10):
            platform.start_celery()
            if platform.wait_ready(stop):
                platform.write_env_file()
                say(platform.banner())
                failure = platform.watch(stop, args.duration)
    except StartError as exc:
        failure = str(exc)
    finally:
        # Stop once, whatever arrives meanwhile: a second Ctrl-C must not cut the cleanup.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        say("run_local: stopping")
        platform.stop_all()
        shutil.rmtree(workdir, ignore_errors=True)
    if failure is not None:
        say(f"run_local: {failure}", error=True)
        return 1
    say("run_local: stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
