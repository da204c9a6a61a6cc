"""Before `cdk diff` or `cdk deploy`: what the deploy needs from this machine and account,
one line per problem with what to do about it, and exit 1 if anything is missing.

    python -m tools.preflight --config-dir examples/samples/config --env prod

Checks: AWS credentials (and the config's account), the CDK bootstrap of the account and
region, a reachable Docker daemon (the autoscaler's image, and the app's unless it is
prebuilt, are built at deploy), that Docker can build the configured architecture, and the
platform base image an app's Dockerfile starts FROM.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from config import CONFIG_DIR, ConfigError, EnvironmentConfig, load_environment
from stacks.parts.app_image import (
    BASE_IMAGE_ARG,
    BASE_IMAGE_LABEL,
    BASE_IMAGE_TAG,
    runtime_fingerprint,
)

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_QUALIFIER = "hnb659fds"
# The oldest bootstrap stack whose roles and asset stores this CDK version deploys with
# (the templates' BootstrapVersion rule checks the same).
MIN_BOOTSTRAP_VERSION = 6
PLATFORMS = {"arm64": "linux/arm64", "x86_64": "linux/amd64"}
# `docker info` / `docker image inspect` names of the same machines.
DOCKER_ARCHITECTURES = {"aarch64": "arm64", "arm64": "arm64", "x86_64": "amd64", "amd64": "amd64"}


@dataclass(frozen=True)
class Finding:
    ok: bool
    line: str


def check_credentials(config: EnvironmentConfig) -> list[Finding]:
    region = config.region or boto3.session.Session().region_name
    if region is None:
        return [Finding(False, "AWS region: none; set region in the environment's config")]
    sts = boto3.client(
        "sts",
        region_name=region,
        config=Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 2}),
    )
    try:
        account = sts.get_caller_identity()["Account"]
    except (BotoCoreError, ClientError) as exc:
        return [
            Finding(
                False,
                f"AWS credentials: none usable ({type(exc).__name__}); sign in "
                "(aws sso login, or AWS_PROFILE / the CI's role) and run again",
            )
        ]
    if config.account is not None and account != config.account:
        return [
            Finding(
                False,
                f"AWS credentials: they are for account {account}, the config deploys to "
                f"{config.account}; switch profile or role",
            )
        ]
    findings = [Finding(True, f"AWS credentials: account {account}")]
    return findings + check_bootstrap(account, region)


def check_bootstrap(account: str, region: str) -> list[Finding]:
    name = f"/cdk-bootstrap/{bootstrap_qualifier()}/version"
    bootstrap = f"npx cdk bootstrap aws://{account}/{region}"
    try:
        value = boto3.client("ssm", region_name=region).get_parameter(Name=name)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code")
        if code == "ParameterNotFound":
            return [Finding(False, f"CDK bootstrap: {region} is not bootstrapped; run {bootstrap}")]
        if code in ("AccessDenied", "AccessDeniedException"):
            # A CI role may only assume the bootstrap roles: cdk deploy checks it through them.
            return [Finding(True, f"CDK bootstrap: {name} is not readable here; cdk checks it")]
        return [Finding(False, f"CDK bootstrap: cannot read {name} ({exc})")]
    except BotoCoreError as exc:
        return [Finding(False, f"CDK bootstrap: cannot read {name} ({exc})")]
    version = int(value["Parameter"]["Value"])
    if version < MIN_BOOTSTRAP_VERSION:
        return [
            Finding(
                False,
                f"CDK bootstrap: version {version} in {region} is older than "
                f"{MIN_BOOTSTRAP_VERSION}; run {bootstrap}",
            )
        ]
    return [Finding(True, f"CDK bootstrap: version {version} in {region}")]


def bootstrap_qualifier() -> str:
    context = json.loads((ROOT / "cdk.json").read_text()).get("context", {})
    return str(context.get("@aws-cdk/core:bootstrapQualifier", DEFAULT_QUALIFIER))


def docker(*args: str) -> subprocess.CompletedProcess[str] | None:
    """The docker CLI CDK builds with (CDK_DOCKER, like CDK, or docker); None if absent."""
    executable = shutil.which(os.environ.get("CDK_DOCKER", "docker"))
    if executable is None:
        return None
    return subprocess.run(
        [executable, *args], capture_output=True, text=True, timeout=60, check=False
    )


def check_docker(config: EnvironmentConfig) -> list[Finding]:
    platform = PLATFORMS[config.services.architecture]
    arch = platform.split("/")[1]
    switch = (
        'services.architecture = "x86_64"' if arch == "arm64" else 'services.architecture = "arm64"'
    )
    server = docker("version", "--format", "{{.Server.Version}}")
    if server is None:
        return [Finding(False, "Docker: not installed; CDK builds the images at deploy")]
    if server.returncode != 0:
        return [Finding(False, "Docker: the daemon does not answer; start it (docker info)")]
    findings = [Finding(True, f"Docker: server {server.stdout.strip()}")]
    buildable = buildable_platforms()
    if arch not in buildable:
        host = ", ".join(sorted(buildable)) or "unknown"
        findings.append(
            Finding(
                False,
                f"build platform: this Docker builds {host}, not {platform}; enable emulation "
                f"(docker run --privileged --rm tonistiigi/binfmt --install {arch}), build on "
                f"an {arch} machine, or set {switch}",
            )
        )
    else:
        findings.append(Finding(True, f"build platform: {platform}"))
    image = config.app.image
    if image.build_dir is not None:
        base = image.build_args.get(BASE_IMAGE_ARG)
        if base is None or base == BASE_IMAGE_TAG:
            findings += check_base_image(arch)
        else:  # the team's own copy of the base, pulled by the build from its registry
            findings.append(Finding(True, f"base image: {base} (app.image.build_args)"))
    return findings


def buildable_platforms() -> set[str]:
    """Architectures the Docker builder can build: buildx lists what emulation adds; without
    buildx, the daemon's own."""
    found: set[str] = set()
    inspect = docker("buildx", "inspect")
    if inspect is not None and inspect.returncode == 0:
        for line in inspect.stdout.splitlines():
            if line.strip().startswith("Platforms:"):
                for item in line.split(":", 1)[1].split(","):
                    match = re.fullmatch(r"linux/(\w+)\*?", item.strip())
                    if match:
                        found.add(match.group(1))
    if not found:
        info = docker("info", "--format", "{{.Architecture}}")
        if info is not None and info.returncode == 0:
            own = DOCKER_ARCHITECTURES.get(info.stdout.strip())
            if own:
                found.add(own)
    return found


def check_base_image(arch: str) -> list[Finding]:
    label = f'{{{{index .Config.Labels "{BASE_IMAGE_LABEL}"}}}}'
    inspect = docker(
        "image", "inspect", "--format", f"{{{{.Architecture}}}} {label}", BASE_IMAGE_TAG
    )
    build = f"make base-image PLATFORM=linux/{arch}"
    if inspect is None or inspect.returncode != 0:
        return [Finding(False, f"base image: {BASE_IMAGE_TAG} is not built here; run {build}")]
    built, _, fingerprint = inspect.stdout.strip().partition(" ")
    built = DOCKER_ARCHITECTURES.get(built, built)
    if built != arch:
        return [Finding(False, f"base image: {BASE_IMAGE_TAG} is {built}, not {arch}; run {build}")]
    if fingerprint != runtime_fingerprint():
        return [
            Finding(
                False,
                f"base image: {BASE_IMAGE_TAG} was built from other worker_image/ files than "
                f"these; run {build}",
            )
        ]
    return [Finding(True, f"base image: {BASE_IMAGE_TAG} ({arch})")]


def preflight(config: EnvironmentConfig) -> list[Finding]:
    return check_credentials(config) + check_docker(config)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-dir", type=Path, default=CONFIG_DIR)
    parser.add_argument("--env", default="dev")
    parser.add_argument("--image-digest")
    args = parser.parse_args(argv)
    try:
        config = load_environment(args.env, args.config_dir, image_digest=args.image_digest)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"config error: {line}", file=sys.stderr)
        return 1
    findings = preflight(config)
    for finding in findings:
        if finding.ok:
            print(f"preflight: ok: {finding.line}")
        else:
            print(f"preflight: {finding.line}", file=sys.stderr)
    return 0 if all(f.ok for f in findings) else 1


if __name__ == "__main__":
    sys.exit(main())
