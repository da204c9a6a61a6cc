"""Shared fixtures: one synthesis per environment per test session, and a real redis-server."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from config import load_environment
from tests.synth import ENVIRONMENTS, Synth, synthesize


@pytest.fixture(scope="session")
def synth_env(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Synth]:
    """`synth_env("prod")`: the shipped environment, synthesized once per session."""
    cache: dict[str, Synth] = {}

    def get(name: str) -> Synth:
        if name not in cache:
            cache[name] = synthesize(load_environment(name), tmp_path_factory.mktemp(name))
        return cache[name]

    return get


@pytest.fixture(scope="session", params=ENVIRONMENTS)
def env_synth(request: pytest.FixtureRequest, synth_env: Callable[[str], Synth]) -> Synth:
    """Each shipped environment in turn."""
    return synth_env(request.param)


# ---------------------------------------------------------------- real redis-server


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[Callable[..., RedisServer]]:
    """Start a throw-away redis-server on a free loopback port: `redis_server(maxmemory="2mb")`.

    Every keyword becomes a `--key value` option. Servers stop when the test ends.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is missing: `make test` installs it (apt-get install redis-server)"
        )
    started: list[RedisServer] = []

    def start(**options: str) -> RedisServer:
        port = free_port()
        args = [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(tmp_path),
        ]
        for key, value in options.items():
            args += [f"--{key.replace('_', '-')}", value]
        process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        server = RedisServer(port=port, process=process)
        started.append(server)
        deadline = time.monotonic() + 10
        while True:
            try:
                server.client().ping()
                return server
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {port}") from None
                time.sleep(0.05)

    try:
        yield start
    finally:
        for server in started:
            server.process.terminate()
            server.process.wait(timeout=10)
