"""Shared fixtures: one synthesis per environment per test session, and a real redis-server;
the proofs' tally of cases tried."""

from __future__ import annotations

import os
import subprocess
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
import redis
from celery.backends.redis import ResultConsumer

from config import load_environment
from tests.proofs.figures import FIGURES
from tests.synth import ENVIRONMENTS, Synth, synthesize
from tools.local_redis import (
    RedisServerMissingError,
    free_port,
    redis_server_binary,
    start_server,
)

__all__ = ["RedisServer", "free_port"]  # free_port: imported by tests from here


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


# Every Redis result consumer made in this process. An AsyncResult unsubscribes when it is
# collected; one collected after its test's redis-server stopped retries for about 20 s,
# then fails whatever test the garbage collector was in (with pytest-xdist, any test). Its
# app may be gone by then, so the consumers themselves are tracked.
_result_consumers: weakref.WeakSet[ResultConsumer] = weakref.WeakSet()
_consumer_init = ResultConsumer.__init__


def _tracked_consumer_init(self: ResultConsumer, *args: Any, **kwargs: Any) -> None:
    _consumer_init(self, *args, **kwargs)
    _result_consumers.add(self)


ResultConsumer.__init__ = _tracked_consumer_init


@pytest.fixture(autouse=True)
def _forget_result_subscriptions() -> Iterator[None]:
    """After each test, every result consumer forgets what it subscribed to, so that no
    AsyncResult of the test unsubscribes later."""
    yield
    for consumer in list(_result_consumers):
        consumer.subscribed_to.clear()


# ---------------------------------------------------------------- AWS, faked


def use_fake_aws_credentials(monkeypatch: pytest.MonkeyPatch, region: str = "us-east-1") -> None:
    """Credentials that moto accepts and AWS refuses, and no profile or region from the
    machine, so no test can reach a real account."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SECURITY_TOKEN": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": region,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_REGION", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def ecs_cluster_with(
    cluster: str, desired_counts: Mapping[str, int], region: str = "us-east-1"
) -> Any:
    """moto's ECS client (call inside `mock_aws`) with `cluster` and one service per entry
    of `desired_counts` (service name -> desired count)."""
    ecs = boto3.client("ecs", region_name=region)
    ecs.create_cluster(clusterName=cluster)
    for name, count in desired_counts.items():
        ecs.create_service(cluster=cluster, serviceName=name, desiredCount=count)
    return ecs


@dataclass
class FakeLambdaContext:
    """What a Lambda handler reads of its context (Powertools' logger included)."""

    function_name: str = "autoscaler"
    memory_limit_in_mb: int = 256
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:autoscaler"
    aws_request_id: str = "req-test"


# ---------------------------------------------------------------- real redis-server


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
    try:
        binary = redis_server_binary()
    except RedisServerMissingError as exc:
        pytest.fail(str(exc))
    started: list[RedisServer] = []

    def start(**options: str) -> RedisServer:
        server = RedisServer(*start_server(binary, tmp_path, options))
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.process.terminate()
            server.process.wait(timeout=10)


# ---------------------------------------------------------------- the proofs' tally

# `make test` runs the tests in pytest-xdist workers: each sends its tally of the proofs'
# cases to the controlling process, which prints the sum (and writes it to PROOFS_REPORT).


def pytest_sessionfinish(session: pytest.Session) -> None:
    workeroutput = getattr(session.config, "workeroutput", None)
    if workeroutput is not None:
        workeroutput["proof_figures"] = FIGURES.sections


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    FIGURES.merge(node.workeroutput.get("proof_figures", {}))


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
