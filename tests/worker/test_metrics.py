"""DogStatsD packets and Redis counters from a real worker, received on a loopback socket."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from celery_service import contract
from tests.conftest import RedisServer
from tests.worker.harness import publisher, running, wait_for
from tools.http_standin import standin


@pytest.fixture
def statsd_socket() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.2)
    yield sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    lines: list[str] = []
    while True:
        try:
            data = sock.recv(65535)
        except TimeoutError:
            return lines
        lines += data.decode().splitlines()


def parse(line: str) -> tuple[str, str, set[str]]:
    """`name:value|type|#tag,tag` -> (name, type, tags)."""
    head, *rest = line.split("|")
    name = head.split(":")[0]
    tags = set()
    for part in rest[1:]:
        if part.startswith("#"):
            tags = set(part[1:].split(","))
    return name, rest[0], tags


def test_task_metrics_are_sent_tagged_by_queue_and_task(
    redis_server: Callable[..., RedisServer], tmp_path: Path, statsd_socket: socket.socket
) -> None:
    server = redis_server()
    client = server.client()
    app = publisher(server.port)
    port = statsd_socket.getsockname()[1]
    with (
        standin([(404, {})]) as rates,
        running(
            server.port,
            tmp_path,
            DD_AGENT_HOST="127.0.0.1",
            DD_DOGSTATSD_PORT=str(port),
            DD_ENV="test",
            DD_SERVICE="celery-worker",
            DD_VERSION="1.2.3",
        ),
    ):
        for n in range(3):
            assert app.send_task("samples.square", args=[n]).get(timeout=10) == n * n
        with pytest.raises(Exception, match="404"):
            app.send_task("samples.fetch_exchange_rates", args=[rates.url]).get(timeout=10)
        wait_for(lambda: int(client.get(contract.completed_key("priority")) or 0) == 1, 10, "count")
    packets = [parse(line) for line in received(statsd_socket)]
    square = {"queue:default", "task:samples.square"}
    unified = {"env:test", "service:celery-worker", "version:1.2.3"}

    def sent(name: str, kind: str, tags: set[str]) -> int:
        return sum(1 for n, k, t in packets if n == name and k == kind and tags <= t)

    assert sent(contract.TASK_RUNTIME_MS, "d", square | unified) == 3
    assert sent(contract.TASK_QUEUE_WAIT_MS, "d", square | unified) == 3
    assert sent(contract.TASK_SUCCEEDED, "c", square | unified) == 3
    rates_tags = {"queue:priority", "task:samples.fetch_exchange_rates"}
    assert sent(contract.TASK_FAILED, "c", rates_tags) == 1
    assert sent(contract.DLQ_WRITTEN, "c", rates_tags | {"kind:failed"}) == 1
    assert int(client.get(contract.completed_key("default")) or 0) == 3
    app.close()


def test_retries_are_counted(
    redis_server: Callable[..., RedisServer], tmp_path: Path, statsd_socket: socket.socket
) -> None:
    server = redis_server()
    app = publisher(server.port)
    port = statsd_socket.getsockname()[1]
    with (
        standin([(503, {}), (200, {"EUR": 1})]) as rates,
        running(server.port, tmp_path, DD_AGENT_HOST="127.0.0.1", DD_DOGSTATSD_PORT=str(port)),
    ):
        assert app.send_task("samples.fetch_exchange_rates", args=[rates.url]).get(timeout=20)
    packets = [parse(line) for line in received(statsd_socket)]
    retried = [p for p in packets if p[0] == contract.TASK_RETRIED]
    assert len(retried) == 1
    assert {"queue:priority", "task:samples.fetch_exchange_rates"} <= retried[0][2]
    app.close()


def test_logs_are_json_with_the_task_context(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    server = redis_server()
    app = publisher(server.port)
    with running(server.port, tmp_path, group="batch") as worker:
        result = app.send_task("samples.build_report", args=["r-log", 1, 0.1])
        result.get(timeout=20)
    in_task = [line for line in worker.json_lines() if line.get("task_id") == result.id]
    assert in_task, worker.output()[-2000:]
    assert {line["task_name"] for line in in_task} == {"samples.build_report"}
    assert {line["queue"] for line in in_task} == {"reports"}
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in in_task)
    app.close()
