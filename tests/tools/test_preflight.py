"""The deploy preflight: one line per missing prerequisite, against moto's STS and SSM and a
docker CLI that answers as a real one does on the host it stands for (no Docker engine here)."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from config import load_environment, parse_environment
from stacks.parts.app_image import BASE_IMAGE_TAG, runtime_fingerprint
from tests.config.test_config import merged
from tests.conftest import use_fake_aws_credentials
from tools import preflight

# What `docker buildx inspect` prints on an x86 host, without and with QEMU registered.
BUILDX_X86 = """Name:          default
Driver:        docker
Nodes:
Name:             default
Endpoint:         default
Status:           running
BuildKit version: v0.23.2
Platforms:        linux/amd64, linux/amd64/v2, linux/amd64/v3, linux/386
"""
BUILDX_X86_WITH_QEMU = BUILDX_X86.replace("linux/386", "linux/386, linux/arm64, linux/arm/v7")


def fake_docker(
    tmp_path: Path,
    *,
    buildx: str | None = BUILDX_X86,
    daemon: bool = True,
    base_image_arch: str | None = "arm64",
    base_image_fingerprint: str | None = None,
) -> Path:
    """A docker CLI for one host: the answers of `version`, `buildx inspect`, `info` and
    `image inspect` that the preflight reads."""
    script = tmp_path / "docker"
    buildx_branch = (
        f"cat <<'EOF'\n{buildx}EOF\n" if buildx is not None else "echo 'not a command' >&2; exit 1"
    )
    fingerprint = base_image_fingerprint or runtime_fingerprint()
    image_branch = (
        f"echo '{base_image_arch} {fingerprint}'"
        if base_image_arch
        else "echo 'Error: No such image' >&2; exit 1"
    )
    script.write_text(
        "#!/bin/sh\n"
        + ("" if daemon else "echo 'Cannot connect to the Docker daemon' >&2; exit 1\n")
        + 'case "$1" in\n'
        + "  version) echo 27.5.1 ;;\n"
        + f"  buildx) {buildx_branch} ;;\n"
        + "  info) echo x86_64 ;;\n"
        + f'  image) [ "$5" = "{BASE_IMAGE_TAG}" ] || exit 1; {image_branch} ;;\n'
        + "  *) exit 1 ;;\n"
        + "esac\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    use_fake_aws_credentials(monkeypatch)
    with mock_aws():
        yield boto3.client("ssm", region_name="us-east-1")


def problems(findings: list[preflight.Finding]) -> list[str]:
    return [f.line for f in findings if not f.ok]


BOOTSTRAP = f"/cdk-bootstrap/{preflight.DEFAULT_QUALIFIER}/version"


def test_a_bootstrapped_account_passes(aws: Any) -> None:
    aws.put_parameter(Name=BOOTSTRAP, Value="28", Type="String")
    findings = preflight.check_credentials(load_environment("dev"))
    assert problems(findings) == []
    assert [f.line for f in findings] == [
        "AWS credentials: account 123456789012",
        "CDK bootstrap: version 28 in us-east-1",
    ]


def test_an_account_that_is_not_bootstrapped_says_how(aws: Any) -> None:
    assert problems(preflight.check_credentials(load_environment("dev"))) == [
        "CDK bootstrap: us-east-1 is not bootstrapped; run "
        "npx cdk bootstrap aws://123456789012/us-east-1"
    ]


def test_an_old_bootstrap_says_how(aws: Any) -> None:
    aws.put_parameter(Name=BOOTSTRAP, Value="4", Type="String")
    (line,) = problems(preflight.check_credentials(load_environment("dev")))
    assert line.startswith("CDK bootstrap: version 4 in us-east-1 is older than 6; run npx cdk")


def test_credentials_for_another_account(aws: Any) -> None:
    config = parse_environment("qa", merged(account="111122223333"))
    (line,) = problems(preflight.check_credentials(config))
    assert "account 123456789012, the config deploys to 111122223333" in line


def test_no_credentials_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    (line,) = problems(preflight.check_credentials(load_environment("dev")))
    assert line.startswith("AWS credentials: none usable (NoCredentialsError)")


def test_an_x86_host_without_emulation_cannot_build_arm64(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CDK_DOCKER", str(fake_docker(tmp_path)))
    config = load_environment("dev")
    assert config.services.architecture == "arm64"
    (line,) = problems(preflight.check_docker(config))
    assert line == (
        "build platform: this Docker builds 386, amd64, not linux/arm64; enable emulation "
        "(docker run --privileged --rm tonistiigi/binfmt --install arm64), build on an arm64 "
        'machine, or set services.architecture = "x86_64"'
    )


@pytest.mark.parametrize(
    ("buildx", "architecture", "base"),
    [
        (BUILDX_X86_WITH_QEMU, "arm64", "arm64"),  # emulation registered
        (BUILDX_X86, "x86_64", "amd64"),  # the host's own platform
        (None, "x86_64", "amd64"),  # no buildx: the daemon's architecture
    ],
)
def test_a_buildable_platform_passes(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    buildx: str | None,
    architecture: str,
    base: str,
) -> None:
    docker = fake_docker(tmp_path, buildx=buildx, base_image_arch=base)
    monkeypatch.setenv("CDK_DOCKER", str(docker))
    config = parse_environment("qa", merged(services={"architecture": architecture}))
    assert problems(preflight.check_docker(config)) == []


def test_docker_missing_or_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_environment("dev")
    monkeypatch.setenv("CDK_DOCKER", str(tmp_path / "no-docker"))
    assert problems(preflight.check_docker(config)) == [
        "Docker: not installed; CDK builds the images at deploy"
    ]
    monkeypatch.setenv("CDK_DOCKER", str(fake_docker(tmp_path, daemon=False)))
    assert problems(preflight.check_docker(config)) == [
        "Docker: the daemon does not answer; start it (docker info)"
    ]


def test_the_base_image_must_be_built_for_the_platform(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_environment("dev")  # build_dir: the app builds FROM the base image
    monkeypatch.setenv(
        "CDK_DOCKER", str(fake_docker(tmp_path, buildx=BUILDX_X86_WITH_QEMU, base_image_arch=None))
    )
    assert problems(preflight.check_docker(config)) == [
        f"base image: {BASE_IMAGE_TAG} is not built here; run make base-image PLATFORM=linux/arm64"
    ]
    monkeypatch.setenv(
        "CDK_DOCKER",
        str(fake_docker(tmp_path, buildx=BUILDX_X86_WITH_QEMU, base_image_arch="amd64")),
    )
    (line,) = problems(preflight.check_docker(config))
    assert line.startswith(f"base image: {BASE_IMAGE_TAG} is amd64, not arm64")
    # Same tag, built before worker_image/ changed: the app would build FROM old code.
    stale = fake_docker(tmp_path, buildx=BUILDX_X86_WITH_QEMU, base_image_fingerprint="0" * 64)
    monkeypatch.setenv("CDK_DOCKER", str(stale))
    (line,) = problems(preflight.check_docker(config))
    assert "was built from other worker_image/ files than these" in line


def test_a_base_image_from_the_teams_registry_is_not_looked_for_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = "123456789012.dkr.ecr.us-east-1.amazonaws.com/celery-platform-runtime:0.2.0"
    data = merged()
    data["app"]["image"]["build_args"] = {"CELERY_PLATFORM_IMAGE": base}
    config = parse_environment("qa", data)
    docker = fake_docker(tmp_path, buildx=BUILDX_X86_WITH_QEMU, base_image_arch=None)
    monkeypatch.setenv("CDK_DOCKER", str(docker))
    findings = preflight.check_docker(config)
    assert problems(findings) == []
    assert f"base image: {base} (app.image.build_args)" in [f.line for f in findings]


def test_main_prints_each_problem_on_one_line_and_fails(
    aws: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CDK_DOCKER", str(fake_docker(tmp_path, base_image_arch=None)))
    assert preflight.main(["--env", "dev"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert [line.split(":")[1].strip() for line in err] == [
        "CDK bootstrap",
        "build platform",
        "base image",
    ]
    aws.put_parameter(Name=BOOTSTRAP, Value="28", Type="String")
    monkeypatch.setenv("CDK_DOCKER", str(fake_docker(tmp_path, buildx=BUILDX_X86_WITH_QEMU)))
    assert preflight.main(["--env", "dev"]) == 0
