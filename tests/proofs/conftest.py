"""Fixtures of the proofs: a redis-server that can be stopped and restarted with its data.
The tally of cases tried is reported from tests/conftest.py, which every process loads."""

from __future__ import annotations

import contextlib
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tools.local_redis import (
    RedisServerMissingError,
    redis_server_binary,
    start_server,
)


class RestartableRedis:
    """A real redis-server whose data survives `stop()` / `start()` (saved on shutdown)."""

    def __init__(self, workdir: Path) -> None:
        try:
            self.binary = redis_server_binary()
        except RedisServerMissingError as exc:
            pytest.fail(str(exc))
        self.workdir = workdir
        self.port = 0  # a free one chosen at the first start, kept by the restarts
        self.process: subprocess.Popen[bytes] | None = None

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, socket_timeout=5)

    def start(self) -> None:
        self.port, self.process = start_server(self.binary, self.workdir, port=self.port or None)

    def stop(self) -> None:
        """SHUTDOWN SAVE: the data is on disk and comes back with the next start."""
        assert self.process is not None
        with contextlib.suppress(redis.ConnectionError):  # the server hangs up as it exits
            self.client().shutdown(save=True)
        self.process.wait(timeout=10)
        self.process = None

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def terminate(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture(scope="module")
def restartable_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestartableRedis]:
    server = RestartableRedis(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.terminate()
