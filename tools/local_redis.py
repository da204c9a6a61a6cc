"""A throw-away redis-server on 127.0.0.1, as `make local`, `make autoscale-once`, the
benchmarks and the tests start it: one definition of its options and of when it is ready."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from celery_service.contract import KEYSPACE_EVENTS

MISSING = "redis-server is missing: `make redis-server` installs it (apt-get install redis-server)"


class RedisServerMissingError(RuntimeError):
    """No redis-server binary on PATH."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def redis_server_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RedisServerMissingError(MISSING)
    return binary


def server_args(binary: str, port: int, workdir: Path, **options: str) -> list[str]:
    """Loopback only, files in `workdir`, no snapshots and no append-only file unless an
    option says otherwise, keyspace events of lists on; each keyword becomes `--key value`
    (underscores as dashes)."""
    settings = {
        "bind": "127.0.0.1",
        "save": "",
        "appendonly": "no",
        "dir": str(workdir),
        # As the data stack's parameter group: idle workers wake on these.
        "notify-keyspace-events": KEYSPACE_EVENTS,  # what idle workers wait on
    }
    settings |= {key.replace("_", "-"): value for key, value in options.items()}
    args = [binary, "--port", str(port)]
    for key, value in settings.items():
        args += [f"--{key}", value]
    return args


def wait_until_ready(
    port: int, process: subprocess.Popen[bytes], timeout_s: float = 10, poll_s: float = 0.05
) -> None:
    """Until the server answers PING (loading an append-only file counts as not yet)."""
    # No retries inside the client: this loop polls, and redis-py's own retries would hold a
    # refused AUTH (a server started with --requirepass) for seconds before it is seen.
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, retry=Retry(NoBackoff(), 0))
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                client.ping()
                return
            except redis.AuthenticationError:
                return  # it answered, asking for the password: it is up
            except (redis.ConnectionError, redis.BusyLoadingError):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {port}") from None
                time.sleep(poll_s)
    finally:
        client.close()
