"""The throw-away redis-server of the tests, benchmarks and `make local`: a port another
process holds (tests run in parallel) is never mistaken for the server's own."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import RedisServer
from tools import local_redis
from tools.local_redis import PortTakenError, redis_server_binary, start_server


def test_a_server_whose_port_was_taken_meanwhile_starts_on_another(
    redis_server: Callable[..., RedisServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    taken = redis_server().port
    ports = iter([taken, local_redis.free_port()])
    monkeypatch.setattr(local_redis, "free_port", lambda: next(ports))
    port, process = start_server(redis_server_binary(), tmp_path)
    try:
        assert port != taken
        info = RedisServer(port, process).client().info("server")
        assert info["process_id"] == process.pid
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_a_port_held_by_another_server_is_not_taken_for_ready(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    holder = redis_server()
    with pytest.raises(PortTakenError):
        start_server(redis_server_binary(), tmp_path, port=holder.port)
    assert holder.client().ping()  # the server that holds it is untouched
