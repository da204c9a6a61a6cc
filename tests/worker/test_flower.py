"""Flower as the container runs it (command and settings taken from the synthesized task
definition), against a real Redis: never answers without the right credentials."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery_service.contract import Env
from stacks.parts.celery_fargate_service import APP_CONTAINER
from tests.conftest import RedisServer, free_port
from tests.synth import Synth
from tests.worker.harness import base_env, start, wait_for

PASSWORD = "correct-horse-battery-staple"


def flower_container(synth: Synth) -> dict[str, Any]:
    template = synth.template_json(synth.platform.services)
    for resource in template["Resources"].values():
        if resource["Type"] != "AWS::ECS::TaskDefinition":
            continue
        for container in resource["Properties"]["ContainerDefinitions"]:
            if container["Name"] == APP_CONTAINER and container["Command"] == ["flower"]:
                found: dict[str, Any] = container
                return found
    raise AssertionError("no Flower container in the services stack")


def get(url: str, auth: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return 0  # not listening yet


def test_flower_as_deployed_requires_its_password(
    redis_server: Callable[..., RedisServer], tmp_path: Path, synth_env: Callable[[str], Synth]
) -> None:
    container = flower_container(synth_env("dev"))
    settings = {e["Name"]: e["Value"] for e in container["Environment"]}
    assert {s["Name"] for s in container["Secrets"]} == {
        "CELERY_BROKER_AUTH_TOKEN",
        "FLOWER_PASSWORD",
    }
    # Flower imports none of the team's modules (its container names none).
    assert not {Env.TASK_MODULES, Env.APP_CONFIG_MODULE} & settings.keys()
    server = redis_server()
    port = free_port()
    env = base_env(server.port, tmp_path, task_modules=())
    # The container's own settings, except where this machine differs: loopback only, a
    # local broker without TLS, and the secrets ECS would inject.
    passthrough = {k: v for k, v in settings.items() if k.startswith("FLOWER_")}
    passthrough.update(FLOWER_PORT=str(port), FLOWER_ADDRESS="127.0.0.1", FLOWER_PASSWORD=PASSWORD)
    flower = start(container["Command"], "flower", env, tmp_path, **passthrough)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: get(f"{base}/healthcheck") == 200, 30, "Flower to answer")
        user = settings["FLOWER_USER"]
        for path in ("/", "/api/workers", "/api/tasks"):
            assert get(base + path) == 401, path
            assert get(base + path, (user, "wrong")) == 401, path
            assert get(base + path, ("someone", PASSWORD)) == 401, path
            assert get(base + path, (user, PASSWORD)) == 200, path
        # Flower itself leaves these open: the ALB blocks /metrics, and checks /healthcheck.
        assert get(f"{base}/metrics") == 200
    finally:
        flower.stop()
    assert PASSWORD not in flower.output()


def test_flower_refuses_to_start_without_credentials(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    server = redis_server()
    flower = start(
        ["flower"],
        "flower-open",
        base_env(server.port, tmp_path),
        tmp_path,
        FLOWER_PORT=str(free_port()),
        FLOWER_ADDRESS="127.0.0.1",
    )
    assert flower.proc.wait(timeout=30) == 2
    assert "FLOWER_BASIC_AUTH: required" in flower.output()
