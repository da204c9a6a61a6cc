"""Fixtures of the proofs: a redis-server that can be stopped and restarted with its data,
and the tally of cases tried, printed at the end and written to `PROOFS_REPORT` if set."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.proofs.figures import FIGURES
from tools.local_redis import (
    RedisServerMissingError,
    free_port,
    redis_server_binary,
    server_args,
    wait_until_ready,
)


class RestartableRedis:
    """A real redis-server whose data survives `stop()` / `start()` (saved on shutdown)."""

    def __init__(self, workdir: Path) -> None:
        try:
            self.binary = redis_server_binary()
        except RedisServerMissingError as exc:
            pytest.fail(str(exc))
        self.workdir = workdir
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def client(self, db: int = 0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, db=db, socket_timeout=5)

    def start(self) -> None:
        args = server_args(self.binary, self.port, self.workdir)
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_until_ready(self.port, self.process, poll_s=0.02)

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


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not FIGURES.sections:
        return
    text = FIGURES.markdown()
    terminalreporter.write_sep("=", "proofs: cases tried")
    terminalreporter.write_line(text)
    report = os.environ.get("PROOFS_REPORT")
    if report:
        Path(report).parent.mkdir(parents=True, exist_ok=True)
        Path(report).write_text(text)
