"""Each example app (examples/<app>: its own package, Dockerfile and config directory) is what
a team brings: its catalog matches its code, every entry routes where the catalog says through
the producer client, and every environment synthesizes with cdk-nag. Nothing here names an
example's queues or groups: they come from its catalog."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from celery_service import producer
from celery_service.catalog import is_pattern
from celery_service.contract import PRIORITIES, PRIORITY_STEPS, queue_keys
from celery_service.settings import variables_for
from config import available_environments, load_environment
from tests.conftest import RedisServer
from tests.synth import synthesize
from tests.worker.harness import IMAGE_DIR

ROOT = Path(__file__).resolve().parent.parent
# The example apps: each has its config directory (examples/ci is a workflow, not an app).
EXAMPLES = {path.parent.name: path.parent for path in sorted((ROOT / "examples").glob("*/config"))}


def app_env(example: str, port: int) -> dict[str, str]:
    config = load_environment("dev", EXAMPLES[example] / "config")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "DD_", "ECS_"))}
    return (
        env
        | {"PYTHONPATH": str(EXAMPLES[example])}
        | variables_for(
            broker_host="127.0.0.1",
            broker_port=port,
            broker_tls=False,
            catalog=config.runtime_catalog_json(),
            task_modules=config.app.task_modules,
        )
    )


def test_there_are_two_examples_of_different_shapes() -> None:
    catalogs = [load_environment("dev", path / "config") for path in EXAMPLES.values()]
    assert len(catalogs) >= 2
    first, second = catalogs[:2]
    assert not set(first.queues) & set(second.queues)
    assert not set(first.worker_groups) & set(second.worker_groups)


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_the_catalog_matches_the_code(example: str) -> None:
    """`check` imports the app's modules and fails on a catalog entry that matches no task."""
    result = subprocess.run(
        [sys.executable, "-m", "celery_service", "check"],
        cwd=IMAGE_DIR,
        env=app_env(example, 6379),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("example", sorted(EXAMPLES))
def test_every_catalog_entry_lands_on_its_queue_at_its_priority(
    example: str, redis_server: Callable[..., RedisServer]
) -> None:
    server = redis_server()
    client = server.client()
    config = load_environment("dev", EXAMPLES[example] / "config")
    producer.producer_app(app_env(example, server.port))
    names = [name for name in config.tasks if not is_pattern(name)]
    assert names
    for name in names:
        spec = config.tasks[name]
        producer.send(name)
        step = PRIORITIES[spec.priority or "normal"]
        expected = queue_keys(spec.queue)[PRIORITY_STEPS.index(step)]
        keys: list[bytes] = client.keys("*")  # type: ignore[assignment]
        (key,) = [k.decode() for k in keys if client.type(k) == b"list"]
        assert key == expected, name
        raw: bytes = client.rpop(key) or b"{}"  # type: ignore[assignment]
        message = json.loads(raw)
        assert message["headers"]["task"] == name
        assert message["properties"]["priority"] == step


@pytest.mark.parametrize(
    "example_env",
    [
        (example, env)
        for example, path in sorted(EXAMPLES.items())
        for env in available_environments(path / "config")
    ],
    ids=lambda pair: "-".join(pair),
)
def test_every_environment_of_an_example_synthesizes(
    example_env: tuple[str, str], tmp_path: Path
) -> None:
    example, env = example_env
    config = load_environment(env, EXAMPLES[example] / "config")
    synth = synthesize(config, tmp_path)
    template = synth.template_json(synth.platform.services)
    services = [r for r in template["Resources"].values() if r["Type"] == "AWS::ECS::Service"]
    assert len(services) == len(config.worker_groups) + 2  # beat and Flower
