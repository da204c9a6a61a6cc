"""The image every Celery task runs: the team's app, built FROM the platform's runtime base
image on the deploying machine, or a prebuilt digest the team's CI pushed."""

from __future__ import annotations

import functools
import importlib.metadata
from dataclasses import dataclass
from pathlib import Path

from aws_cdk import FileSystem, IgnoreMode
from aws_cdk import aws_ecr as ecr
from aws_cdk import aws_ecr_assets as ecr_assets
from aws_cdk import aws_ecs as ecs
from aws_cdk.aws_ecr_assets import Platform
from constructs import Construct

from config.model import ImageConfig

IMAGE_DIR = Path(__file__).resolve().parents[2] / "worker_image"

# The base image a team's Dockerfile starts FROM (`ARG CELERY_PLATFORM_IMAGE`): this tag,
# built from worker_image/ on the deploying machine (`make base-image`), or an image the team
# pushed to its registry, named in app.image.build_args.
BASE_IMAGE_ARG = "CELERY_PLATFORM_IMAGE"
BASE_IMAGE_TAG = f"celery-platform-runtime:{importlib.metadata.version('celery-platform-runtime')}"
# `make base-image` labels the image with the runtime fingerprint it was built from, so the
# deploy preflight can tell a base image older than worker_image/ (same tag, older code).
BASE_IMAGE_LABEL = "org.celery-platform.runtime-fingerprint"


@functools.cache  # the same files for every stack and environment of one synthesis
def runtime_fingerprint() -> str:
    """A digest of the runtime package's build context (worker_image/ minus what its
    .dockerignore leaves out): it changes exactly when the image built from it does."""
    ignore = (IMAGE_DIR / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in ignore if line.strip() and not line.startswith("#")]
    return FileSystem.fingerprint(str(IMAGE_DIR), exclude=patterns, ignore_mode=IgnoreMode.DOCKER)


def base_image_build_options() -> list[str]:
    """`docker build` options of the base image: its tag and its fingerprint label."""
    return ["-t", BASE_IMAGE_TAG, "--label", f"{BASE_IMAGE_LABEL}={runtime_fingerprint()}"]


@dataclass(frozen=True)
class AppImage:
    image: ecs.ContainerImage
    # Datadog's unified version tag: the asset's hash or the digest, so it changes exactly
    # when the image does (no git call at synth).
    version: str
    platform: ecs.RuntimePlatform


def app_image(scope: Construct, source: ImageConfig, architecture: str) -> AppImage:
    arm = architecture == "arm64"
    platform = ecs.RuntimePlatform(
        cpu_architecture=ecs.CpuArchitecture.ARM64 if arm else ecs.CpuArchitecture.X86_64,
        operating_system_family=ecs.OperatingSystemFamily.LINUX,
    )
    if source.repository is not None and source.digest is not None:
        if source.repository.startswith("arn:"):
            repository = ecr.Repository.from_repository_arn(
                scope, "AppRepository", source.repository
            )
        else:
            repository = ecr.Repository.from_repository_name(
                scope, "AppRepository", source.repository
            )
        image = ecs.ContainerImage.from_ecr_repository(repository, tag=source.digest)
        return AppImage(image, source.digest.removeprefix("sha256:")[:12], platform)
    assert source.build_dir is not None  # one of the two, by validation
    asset = ecr_assets.DockerImageAsset(
        scope,
        "AppImage",
        directory=source.build_dir,
        platform=Platform.LINUX_ARM64 if arm else Platform.LINUX_AMD64,
        build_args={BASE_IMAGE_ARG: BASE_IMAGE_TAG, **source.build_args},
        # The base it builds FROM is another directory: its changes must rebuild this too.
        extra_hash=runtime_fingerprint(),
    )
    # The asset's own hash: the files its .dockerignore keeps, the build arguments, the
    # platform and the base. A README or a __pycache__ changes nothing, so restarts nothing.
    return AppImage(
        ecs.ContainerImage.from_docker_image_asset(asset), asset.asset_hash[:12], platform
    )
