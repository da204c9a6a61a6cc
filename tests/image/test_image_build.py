"""The platform's base image and an app image FROM it really build and run a task:
`make test-image`.

No public registry is reachable here, so the base Dockerfile's `BASE_IMAGE` is overridden
with a Debian bookworm (Python 3.11, as the shipped `python:3.11-slim-bookworm`) that this
test bootstraps itself with debootstrap and imports into podman. The platform's image is
built from `worker_image/` unchanged (its pip steps install from PyPI) under the tag CDK
passes to app images; the sample app's image is built from `examples/samples/` FROM it, as a
team's would be. That one is started with host networking against a test `redis-server` on
127.0.0.1, and a task of the app published from this process must come back with its
result.

It takes minutes, so it runs only when `RUN_IMAGE_TEST=1` (set by `make test-image`).
Podman's storage lives in `.image-test/` (git-ignored): a second run reuses the base image
and the build cache. Build time and image size go to `bench/results/image_build.json`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from stacks.parts.app_image import BASE_IMAGE_ARG, BASE_IMAGE_TAG
from tests.conftest import RedisServer
from tests.worker.harness import (
    SAMPLE_APP_DIR,
    SAMPLE_TASK_MODULES,
    TEST_CATALOG,
    publisher,
    wait_for,
)

Figures = dict[str, float | None]

ROOT = Path(__file__).resolve().parents[2]
WORK = ROOT / ".image-test"
RESULTS = ROOT / "bench" / "results" / "image_build.json"
BASE = "localhost/celery-test-base:bookworm"
PLATFORM_IMAGE = f"localhost/{BASE_IMAGE_TAG}"  # fully qualified: no registry lookup
IMAGE = "localhost/celery-samples:test"
SUITE = "bookworm"  # Debian 12: Python 3.11, the shipped base image's version
# debootstrap's own default mirror unless DEBIAN_MIRROR names another (a local one, say).
MIRROR = os.environ.get("DEBIAN_MIRROR", "")
# The host's trust store goes into the base image: where PyPI is reached through an
# intercepting proxy, its CA is in there (on other machines it is Debian's own bundle).
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def _skip_reason() -> str | None:
    if os.environ.get("RUN_IMAGE_TEST") != "1":
        return "builds a container image (minutes): run `make test-image`"
    missing = [tool for tool in ("podman", "debootstrap") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} missing: `make test-image` installs them as root"
    if os.geteuid() != 0:
        return "debootstrap and podman's vfs storage need root"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


def podman_command(*args: str) -> list[str]:
    """podman with its own storage, in ways that work without a daemon or systemd:
    vfs storage (no overlay mounts), runc (crun rejects hybrid cgroup hierarchies),
    cgroupfs instead of systemd."""
    return [
        "podman",
        "--root",
        str(WORK / "storage"),
        "--runroot",
        str(WORK / "run"),
        "--storage-driver",
        "vfs",
        "--cgroup-manager",
        "cgroupfs",
        *(["--runtime", "runc"] if shutil.which("runc") else []),
        *args,
    ]


# `podman run` flags that work here: host networking (the test redis-server is on 127.0.0.1),
# and limits no higher than the current ones (without CAP_SYS_RESOURCE the runtime may only
# lower them).
RUN_FLAGS = ("--network", "host", "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096")


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(podman_command(*args), check=check, text=True, capture_output=True)


def build_base_image() -> float | None:
    """Bootstrap a minimal Debian with Python and import it as BASE: seconds taken, or None
    when an earlier run's base image is reused."""
    if podman("image", "exists", BASE, check=False).returncode == 0:
        return None
    started = time.monotonic()
    rootfs = WORK / "rootfs"
    shutil.rmtree(rootfs, ignore_errors=True)
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv,python-is-python3,ca-certificates",
            SUITE,
            str(rootfs),
            *([MIRROR] if MIRROR else []),
        ],
        check=True,
        capture_output=True,
    )
    if HOST_CA_BUNDLE.exists():
        shutil.copyfile(HOST_CA_BUNDLE, rootfs / "etc/ssl/certs/ca-certificates.crt")
    for cache in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
        shutil.rmtree(rootfs / cache, ignore_errors=True)
    archive = WORK / "rootfs.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(rootfs, arcname=".")
    # Debian's pip (23.0) trusts only its own certifi bundle unless told otherwise.
    podman(
        "import",
        "--change",
        f"ENV PIP_CERT={HOST_CA_BUNDLE}",
        str(archive),
        BASE,
    )
    archive.unlink()
    shutil.rmtree(rootfs)
    return time.monotonic() - started


@pytest.fixture(scope="module")
def built_image() -> Figures:
    WORK.mkdir(exist_ok=True)
    base_s = build_base_image()
    started = time.monotonic()
    build(PLATFORM_IMAGE, ROOT / "worker_image", BASE_IMAGE=BASE)
    platform_s = time.monotonic() - started
    build(IMAGE, SAMPLE_APP_DIR, **{BASE_IMAGE_ARG: PLATFORM_IMAGE})
    app_s = time.monotonic() - started - platform_s
    size = int(podman("image", "inspect", IMAGE, "--format", "{{.Size}}").stdout.strip())
    base_size = int(podman("image", "inspect", BASE, "--format", "{{.Size}}").stdout.strip())
    return {
        "base_bootstrap_s": None if base_s is None else round(base_s, 1),
        "build_s": round(platform_s, 1),
        "app_build_s": round(app_s, 1),
        "image_bytes": size,
        "base_bytes": base_size,
    }


def build(tag: str, context: Path, **build_args: str) -> None:
    result = podman(
        "build",
        "--format",
        "docker",  # keeps the HEALTHCHECK, which the OCI format drops
        "--isolation",
        "chroot",
        "--network",
        "host",
        *[arg for key, value in build_args.items() for arg in ("--build-arg", f"{key}={value}")],
        "--tag",
        tag,
        str(context),
        check=False,
    )
    assert result.returncode == 0, f"{tag} build failed:\n{result.stdout[-4000:]}{result.stderr}"


def test_the_platform_image_holds_the_runtime_and_no_app(built_image: Figures) -> None:
    probe = podman(
        "run",
        "--rm",
        *RUN_FLAGS,
        "--entrypoint",
        "python",
        PLATFORM_IMAGE,
        "-c",
        "import celery_service.contract, importlib.util as u; print(u.find_spec('samples'))",
    )
    assert probe.stdout.strip() == "None", "the samples live in their app image only"


def test_image_keeps_its_entrypoint_user_and_healthcheck(built_image: Figures) -> None:
    image = json.loads(podman("image", "inspect", IMAGE).stdout)[0]
    config = image["Config"]
    assert config["Entrypoint"] == ["python", "-m", "celery_service"]
    assert config["Cmd"] == ["worker"]
    assert config["User"] == "10001:10001"
    assert image["Healthcheck"]["Test"][-1] == "healthcheck"


def test_a_task_completes_inside_the_container(
    built_image: Figures, redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    server = redis_server()
    name = f"celery-image-test-{os.getpid()}"
    environment = {
        "CELERY_BROKER_HOST": "127.0.0.1",
        "CELERY_BROKER_PORT": str(server.port),
        "CELERY_BROKER_TLS": "false",
        "CELERY_CATALOG": json.dumps(TEST_CATALOG),
        "CELERY_TASK_MODULES": ",".join(SAMPLE_TASK_MODULES),
        "CELERY_WORKER_GROUP": "general",
    }
    log = tmp_path / "container.log"
    started = time.monotonic()
    with log.open("w") as out:
        # Foreground `podman run`: the container lives as long as this child process.
        container = subprocess.Popen(
            podman_command(
                "run",
                "--rm",
                "--name",
                name,
                *RUN_FLAGS,
                *[arg for key, value in environment.items() for arg in ("--env", f"{key}={value}")],
                IMAGE,
                "worker",
            ),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        wait_for(
            lambda: "ready." in log.read_text() or container.poll() is not None,
            120,
            "the worker in the container to start",
        )
        assert container.poll() is None, f"container exited:\n{log.read_text()[-4000:]}"
        ready_s = time.monotonic() - started
        app = publisher(server.port)
        # The container is the only consumer of this fresh redis-server.
        result = app.send_task("samples.square", args=[12])
        assert result.get(timeout=60) == 144
    finally:
        podman("stop", "--time", "20", name, check=False)
        container.wait(timeout=60)
    output = log.read_text()
    assert container.returncode == 0, f"unclean stop:\n{output[-4000:]}"
    assert "warm shutdown" in output
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps({**built_image, "worker_ready_s": round(ready_s, 1)}, indent=2) + "\n"
    )


# README's "Bring your app" Dockerfile, its dependency lines as written there; the package
# comes from a wheel in the build context instead of PyPI.
APP_WITH_DEPENDENCIES = """\
ARG CELERY_PLATFORM_IMAGE
FROM ${CELERY_PLATFORM_IMAGE}
USER root
COPY requirements.txt /tmp/requirements.txt
COPY greeting-1.0-py3-none-any.whl /tmp/
RUN pip install --no-cache-dir -r /tmp/requirements.txt
USER 10001:10001
"""


def write_wheel(path: Path, package: str, source: str) -> None:
    """A pure-Python wheel of one module (what pip needs: the module, METADATA, WHEEL and
    RECORD)."""
    info = f"{package}-1.0.dist-info"
    files = {
        f"{package}/__init__.py": source,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {package}\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as wheel:
        for name, text in {**files, f"{info}/RECORD": record}.items():
            wheel.writestr(name, text)


def test_an_app_image_installs_its_own_dependencies(built_image: Figures, tmp_path: Path) -> None:
    write_wheel(tmp_path / "greeting-1.0-py3-none-any.whl", "greeting", 'HELLO = "hello"\n')
    (tmp_path / "requirements.txt").write_text("/tmp/greeting-1.0-py3-none-any.whl\n")
    (tmp_path / "Dockerfile").write_text(APP_WITH_DEPENDENCIES)
    tag = "localhost/celery-app-dependencies:test"
    build(tag, tmp_path, **{BASE_IMAGE_ARG: PLATFORM_IMAGE})
    probe = podman(
        "run",
        "--rm",
        *RUN_FLAGS,
        "--entrypoint",
        "python",
        tag,
        "-c",
        "import greeting, os; print(greeting.HELLO, os.getuid())",
    )
    assert probe.stdout.split() == ["hello", "10001"]
