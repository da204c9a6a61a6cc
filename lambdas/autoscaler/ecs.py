"""The autoscaler's ECS adapter: the worker services' counts, and their desired count set."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class ServiceCounts:
    running: int
    pending: int
    desired: int


class DescribeFailed(str):
    """The reason `describe` gives for a service it could not read (its batch throttled or
    timed out): unknown this run, which is not missing."""

    __slots__ = ()


class EcsApi(Protocol):
    def describe(self, services: list[str]) -> tuple[dict[str, ServiceCounts], dict[str, str]]:
        """Counts of the services found, and a reason for each one not found (a
        DescribeFailed for those that could not be read)."""

    def set_desired(self, service: str, count: int) -> None: ...


# Attempts per ECS call (botocore's standard mode default): a call given up on is made again
# by the next run, and more attempts would spend the run's time on one throttled service.
MAX_ATTEMPTS = 3


class BotoEcs:
    """ECS through boto3: bounded retries with backoff for throttling (MAX_ATTEMPTS)."""

    def __init__(self, cluster: str) -> None:
        import boto3
        from botocore.config import Config

        self.cluster = cluster
        self.client = boto3.client(
            "ecs",
            config=Config(
                retries={"mode": "standard", "max_attempts": MAX_ATTEMPTS},
                # The control plane answers in well under a second: a call that hangs is
                # given up on soon, within the run's time (handler.UPDATE_BUDGET_S).
                connect_timeout=3,
                read_timeout=5,
            ),
        )

    def describe(self, services: list[str]) -> tuple[dict[str, ServiceCounts], dict[str, str]]:
        found: dict[str, ServiceCounts] = {}
        missing: dict[str, str] = {}
        for start in range(0, len(services), 10):  # DescribeServices takes 10 at a time
            batch = services[start : start + 10]
            try:
                reply = self.client.describe_services(cluster=self.cluster, services=batch)
            except Exception as exc:  # throttled, timed out: this batch only is unknown
                missing |= dict.fromkeys(batch, DescribeFailed(f"describe failed: {exc}"))
                continue
            for service in reply.get("services", []):
                if service.get("status") != "ACTIVE":
                    missing[service["serviceName"]] = f"status {service.get('status')}"
                    continue
                found[service["serviceName"]] = ServiceCounts(
                    running=int(service["runningCount"]),
                    pending=int(service["pendingCount"]),
                    desired=int(service["desiredCount"]),
                )
            for failure in reply.get("failures", []):
                name = str(failure.get("arn", "")).rsplit("/", 1)[-1]
                missing[name] = str(failure.get("reason", "failure"))
        return found, missing

    def set_desired(self, service: str, count: int) -> None:
        self.client.update_service(cluster=self.cluster, service=service, desiredCount=count)


class ReadOnlyEcs:
    """Reads the real services, records what it would change: `{"dry_run": true}`."""

    def __init__(self, inner: EcsApi) -> None:
        self.inner = inner
        self.updates: list[tuple[str, int]] = []

    def describe(self, services: list[str]) -> tuple[dict[str, ServiceCounts], dict[str, str]]:
        return self.inner.describe(services)

    def set_desired(self, service: str, count: int) -> None:
        self.updates.append((service, count))
