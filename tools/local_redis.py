"""A throw-away redis-server on 127.0.0.1, as `make local`, `make autoscale-once`, the
benchmarks and the tests start it: one definition of its options and of when it is ready."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

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


class PortTakenError(RuntimeError):
    """Another process holds the port chosen for a redis-server."""


def wait_until_ready(
    port: int, process: subprocess.Popen[bytes], timeout_s: float = 10, poll_s: float = 0.05
) -> None:
    """Until the server answers PING (loading an append-only file counts as not yet), and
    is `process`: a server of another process answering on the port does not count."""
    # No retries inside the client: this loop polls, and redis-py's own retries would hold a
    # refused AUTH (a server started with --requirepass) for seconds before it is seen.
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=5, retry=Retry(NoBackoff(), 0))
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            try:
                client.ping()  # refused while an append-only file loads; INFO is not
                answered_by = int(client.info("server")["process_id"])
            except redis.AuthenticationError:
                return  # it answered, asking for the password: it is up
            except (redis.ConnectionError, redis.BusyLoadingError):
                if process.poll() is not None:  # most often: the port was taken meanwhile
                    raise PortTakenError(f"redis-server did not start on port {port}") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start on port {port}") from None
                time.sleep(poll_s)
                continue
            if answered_by != process.pid:
                raise PortTakenError(f"port {port} is another redis-server's")
            return
    finally:
        client.close()


#: How many ports a server is tried on before its start fails.
PORT_ATTEMPTS = 5


def start_server(
    binary: str,
    workdir: Path,
    options: Mapping[str, str] | None = None,
    *,
    port: int | None = None,
    timeout_s: float = 10,
    **popen: Any,
) -> tuple[int, subprocess.Popen[bytes]]:
    """A redis-server started with server_args(binary, port, workdir, **options) and ready;
    `popen`: Popen's keywords (output to DEVNULL unless given). Without `port`, a free one
    is chosen, and another when a process took it before the server bound it (tests run
    in parallel, and any client's ephemeral port can be it)."""
    popen.setdefault("stdout", subprocess.DEVNULL)
    popen.setdefault("stderr", subprocess.STDOUT)

    def attempt() -> tuple[int, subprocess.Popen[bytes]]:
        chosen = port if port is not None else free_port()
        process = subprocess.Popen(server_args(binary, chosen, workdir, **(options or {})), **popen)
        try:
            wait_until_ready(chosen, process, timeout_s=timeout_s)
        except BaseException:
            process.kill()  # a server that never became ready is not left behind
            process.wait(timeout=10)
            raise
        return chosen, process

    for _ in range(0 if port is not None else PORT_ATTEMPTS - 1):
        try:
            return attempt()
        except PortTakenError:
            continue
    return attempt()
