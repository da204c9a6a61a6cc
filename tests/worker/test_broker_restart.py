"""A task running while Redis restarts is finished or redelivered, never dropped."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from celery_service import contract
from celery_service.contract import queue_keys
from celery_service.settings import Settings
from tests.conftest import RedisServer
from tests.worker.harness import Process, base_env, publisher, start, wait_for
from tools.http_standin import standin
from tools.local_redis import redis_server_binary, start_server

REDIS_DOWN_S = 2.0  # how long the broker stays down (seconds)


@contextlib.contextmanager
def restarted(server: RedisServer, workdir: Path) -> Iterator[None]:
    """kill -9 the broker, keep it down a moment, start it again on its append-only file."""
    server.process.kill()
    server.process.wait(timeout=10)
    time.sleep(REDIS_DOWN_S)
    # Up once its append-only file is loaded.
    _, again = start_server(
        redis_server_binary(),
        workdir,
        {"appendonly": "yes", "appendfsync": "always"},
        port=server.port,
        timeout_s=30,
    )
    try:
        yield
    finally:
        again.terminate()
        again.wait(timeout=10)


def test_tasks_running_when_redis_restarts_complete(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    """Regression: with worker_cancel_long_running_tasks_on_connection_loss a worker cancelled
    its running tasks at the connection loss; writing their RETRY state to the result backend
    (the same Redis, down) failed, so Celery marked them REVOKED and acknowledged their
    messages: the tasks were gone (2 of 10,000 in the chaos soak, bench/chaos/)."""
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = redis_server(appendonly="yes", appendfsync="always", dir=str(workdir))
    client = server.client()
    app = publisher(server.port)
    env = base_env(server.port, tmp_path)
    workers: list[Process] = []

    def replace_exited() -> bool:
        # A worker can exit on the connection loss (a kombu error while closing the channel);
        # ECS would start a new one. Two stay alive, so unacked messages are swept back.
        for worker in list(workers):
            if worker.proc.poll() is not None:
                workers.remove(worker)
                worker.stop()
        while len(workers) < 2:
            name = f"worker-{len(list(tmp_path.glob('worker-*.log'))) + 1}"
            workers.append(start(["worker"], name, env, tmp_path, CELERY_WORKER_GROUP="general"))
        return False  # so that `replace_exited() or condition` reads the condition

    try:
        replace_exited()
        for worker in workers:
            worker.wait_ready()
        with standin([(200, {"EUR": 1.0})], delay_s=4.0) as rates:
            results = [
                app.send_task("samples.fetch_exchange_rates", args=[rates.url]) for _ in range(4)
            ]
            wait_for(lambda: len(rates.requests) == 4, 20, "all four tasks to start")
            with restarted(server, workdir):
                # Finished by their first run, or redelivered after the visibility timeout.
                wait_for(
                    lambda: replace_exited() or all(r.ready() for r in results),
                    90,
                    "every task to finish",
                )
                states = [(r.state, r.result) for r in results]
                assert states == [("SUCCESS", {"EUR": 1.0})] * 4
                wait_for(
                    lambda: (
                        replace_exited()
                        or (
                            client.hlen("unacked") == 0
                            and sum(client.llen(k) for k in queue_keys("priority")) == 0
                        )
                    ),
                    60,
                    "the broker to hold nothing of the tasks",
                )
        # The setting is False on purpose: Celery's warning about its 6.0 default is silenced.
        assert not any("CPendingDeprecationWarning" in worker.output() for worker in workers)
    finally:
        for worker in workers:
            worker.stop()
        app.close()


def test_a_task_that_ends_while_redis_is_down_stores_its_result_when_it_returns(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    """Its work is done: a failed result write must not turn it into a failure and a dead
    letter (Celery's result_backend_always_retry, made for this, is on)."""
    from tests.worker import semantics_tasks
    from tests.worker.test_semantics import MODULES, runner_with

    catalog = {**runner_with(soft_time_limit_s=20, time_limit_s=30), "visibility_timeout_s": 60}
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = redis_server(appendonly="yes", appendfsync="always", dir=str(workdir))
    app = publisher(server.port, catalog, MODULES)
    env = base_env(server.port, tmp_path, catalog, MODULES)
    worker = start(["worker"], "worker-runner", env, tmp_path, CELERY_WORKER_GROUP="runner")
    try:
        worker.wait_ready()
        result = semantics_tasks.nap.delay("blip", 1.0)
        wait_for(lambda: server.client().hexists(semantics_tasks.RUNS_KEY, "blip"), 10, "a start")
        with restarted(server, workdir):  # down for longer than the task has left to run
            assert result.get(timeout=30) == "blip"
            client = server.client()
            assert client.zcard(contract.dlq_index_key("work")) == 0, "no dead letter"
            wait_for(lambda: client.hlen("unacked") == 0, 30, "its ack")
    finally:
        worker.stop()
        app.close()


def test_running_tasks_are_not_cancelled_on_a_broker_connection_loss() -> None:
    from celery_service.factory import celery_config

    settings = Settings.from_env(base_env(6379, Path(".")))
    assert celery_config(settings)["worker_cancel_long_running_tasks_on_connection_loss"] is False
