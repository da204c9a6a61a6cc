"""Custom resource that supplies the DesiredCount an ECS service is deployed with.

CloudFormation sets a service's desired count to the template's value on every update,
undoing the autoscaler. This resource returns the live count instead (clamped into the
configured bounds), the way AWS Copilot keeps it.

Packaged as the root of its own Lambda asset (`handler.handler`): stdlib and boto3 only.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

if TYPE_CHECKING:
    from mypy_boto3_ecs.client import ECSClient

LOGGER = logging.getLogger("desired_count")
# The Lambda runtime's root logger passes only warnings; the one line per call is INFO.
LOGGER.setLevel(logging.INFO)

# Throttling during a large deploy is expected: retry with backoff before giving up.
CLIENT_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 8}, connect_timeout=5, read_timeout=10
)

_INT = re.compile(r"[+-]?\d+")

_ecs: ECSClient | None = None


class Settings(NamedTuple):
    cluster: str
    service: str
    min_tasks: int
    max_tasks: int
    initial_count: int


def _text(props: Mapping[str, object], name: str) -> str:
    value = props.get(name)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} is required and must be a non-empty string, got {value!r}")
    return value.strip()


def _count(props: Mapping[str, object], name: str) -> int:
    value = props.get(name)
    if value is None:
        raise ValueError(f"{name} is required")
    # CloudFormation sends numbers as strings; a bool is an int in Python but not a count.
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if isinstance(value, str):
        if not _INT.fullmatch(value.strip()):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        value = int(value.strip())
    if value < 0:
        raise ValueError(f"{name} must not be negative, got {value}")
    return value


def parse(props: Mapping[str, object]) -> Settings:
    """Validate ResourceProperties; raise ValueError naming the first bad property."""
    settings = Settings(
        cluster=_text(props, "Cluster"),
        service=_text(props, "Service"),
        min_tasks=_count(props, "MinTasks"),
        max_tasks=_count(props, "MaxTasks"),
        initial_count=_count(props, "InitialCount"),
    )
    if settings.min_tasks > settings.max_tasks:
        raise ValueError(
            f"MinTasks ({settings.min_tasks}) must not be greater than "
            f"MaxTasks ({settings.max_tasks})"
        )
    return settings


def decide(request_type: str, props: Mapping[str, object], live_count: int | None) -> int:
    """The count to deploy with: the live one if the service runs, else InitialCount.

    Either way it is clamped into the current [MinTasks, MaxTasks], so a lowered bound
    in config takes effect on the next deploy.
    """
    settings = parse(props)
    if request_type == "Create":
        # The service depends on this resource, so it cannot exist yet.
        wanted = settings.initial_count
    elif request_type == "Update":
        wanted = settings.initial_count if live_count is None else live_count
    else:
        raise ValueError(f"RequestType must be Create or Update, got {request_type!r}")
    return max(settings.min_tasks, min(settings.max_tasks, wanted))


def _client() -> ECSClient:
    # Created on first use so tests can set the environment and mocks first.
    global _ecs
    if _ecs is None:
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        _ecs = boto3.client("ecs", region_name=region, config=CLIENT_CONFIG)
    return _ecs


def live_desired_count(cluster: str, service: str) -> int | None:
    """The running service's desiredCount, or None if there is no active service."""
    try:
        response = _client().describe_services(cluster=cluster, services=[service])
    except ClientError as exc:
        # No cluster means no service whose count could be reset.
        if exc.response.get("Error", {}).get("Code") == "ClusterNotFoundException":
            return None
        raise _read_failed(cluster, service, exc) from exc
    except BotoCoreError as exc:
        raise _read_failed(cluster, service, exc) from exc
    for found in response.get("services", []):
        # INACTIVE and DRAINING services are deleted or being deleted: their count is stale.
        if found.get("status") == "ACTIVE" and "desiredCount" in found:
            return found["desiredCount"]
    return None


def _read_failed(cluster: str, service: str, exc: Exception) -> RuntimeError:
    return RuntimeError(
        f"Could not read the live desired count of ECS service {service!r} in cluster "
        f"{cluster!r} ({exc}); the deploy is stopped rather than resetting the count "
        "to the template's value. Retry the deploy once ECS answers."
    )


def handler(event: dict[str, Any], context: object) -> dict[str, Any]:
    request_type = event.get("RequestType")
    if request_type == "Delete":
        # Nothing to clean up; a failing Delete would block rollbacks and stack deletion.
        physical_id = event.get("PhysicalResourceId")
        LOGGER.info(json.dumps({"request_type": request_type, "physical_id": physical_id}))
        return {"PhysicalResourceId": physical_id} if physical_id else {}

    record: dict[str, Any] = {"request_type": request_type}
    try:
        if request_type not in ("Create", "Update"):
            raise ValueError(f"RequestType must be Create, Update or Delete, got {request_type!r}")
        props = event.get("ResourceProperties")
        if not isinstance(props, Mapping):
            raise ValueError("ResourceProperties is required")
        settings = parse(props)
        record.update(cluster=settings.cluster, service=settings.service)
        live = None
        if request_type == "Update":
            live = live_desired_count(settings.cluster, settings.service)
        record["live_count"] = live
        count = decide(request_type, props, live)
    except Exception as exc:
        record["error"] = str(exc)
        LOGGER.error(json.dumps(record))
        raise
    record["desired_count"] = count
    LOGGER.info(json.dumps(record))
    return {
        "PhysicalResourceId": f"{settings.cluster}/{settings.service}",
        "Data": {"DesiredCount": count},
    }
