"""The autoscaler's inputs, parsed by models: its settings (`AUTOSCALER_CONFIG`, rendered by
the CDK from the queue catalog, plus Redis access from the environment) and its event."""

from __future__ import annotations

import json
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field, model_validator

from celery_service import contract


class Target(BaseModel):
    """One worker group's ECS service and scaling bounds (from the queue catalog)."""

    model_config = ConfigDict(extra="forbid")

    service: str = Field(min_length=1)
    queues: list[str] = Field(min_length=1)
    min_tasks: int = Field(ge=0)
    max_tasks: int = Field(ge=1)
    concurrency: int = Field(ge=1)
    target_wait_s: int = Field(ge=1)

    @model_validator(mode="after")
    def _bounds(self) -> Target:
        # Checked here, before any Redis or ECS call, not by the policy half-way through a run.
        if self.min_tasks > self.max_tasks:
            raise ValueError(
                f"min_tasks ({self.min_tasks}) must be <= max_tasks ({self.max_tasks})"
            )
        return self


RUN_WORK_S = contract.AUTOSCALER_RUN_WORK_S  # the lock: a run's sleeps plus this


class Settings(BaseModel):
    """`AUTOSCALER_CONFIG` (JSON, rendered by the CDK from the config) plus Redis access."""

    model_config = ConfigDict(extra="forbid")

    environment: str
    cluster: str
    interval_s: int = Field(default=300, ge=30)  # between invocations (EventBridge schedule)
    decisions_per_run: int = Field(default=1, ge=1, le=20)
    decision_interval_s: int = Field(default=30, ge=5)
    targets: dict[str, Target] = Field(min_length=1)
    dlq_queues: list[str] = Field(default_factory=list)
    redis_host: str = Field(min_length=1)
    redis_port: int = Field(default=6379, ge=1, le=65535)
    redis_tls: bool = True
    redis_auth_secret_arn: str | None = None

    @property
    def lock_ttl_s(self) -> int:
        """How long the run lock lives unless released (seconds): a run's sleeps plus its work."""
        return (self.decisions_per_run - 1) * self.decision_interval_s + RUN_WORK_S

    @model_validator(mode="after")
    def _fits_the_interval(self) -> Settings:
        if self.lock_ttl_s >= self.interval_s:
            busy = self.lock_ttl_s - RUN_WORK_S
            raise ValueError(
                f"(decisions_per_run - 1) x decision_interval_s ({busy} s) plus {RUN_WORK_S} s "
                f"of work must fit in interval_s ({self.interval_s} s): the run lock must "
                "expire before the next run is due"
            )
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        try:
            config = json.loads(environ["AUTOSCALER_CONFIG"])
        except KeyError:
            raise ValueError("AUTOSCALER_CONFIG is not set") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"AUTOSCALER_CONFIG is not valid JSON: {exc.msg}") from None
        if not isinstance(config, dict):
            raise ValueError("AUTOSCALER_CONFIG must be a JSON object")
        host = environ.get("REDIS_HOST", "")
        if not host:
            raise ValueError("REDIS_HOST is not set")
        port = environ.get("REDIS_PORT", "6379")
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"REDIS_PORT must be a port number (1-65535), got {port!r}")
        # Anything but true/false is a typo, and must not quietly turn TLS off.
        tls = environ.get("REDIS_TLS", "true").lower()
        if tls not in ("true", "false"):
            raise ValueError(f"REDIS_TLS must be true or false, got {tls!r}")
        config.update(
            redis_host=host,
            redis_port=int(port),
            redis_tls=tls == "true",
            redis_auth_secret_arn=environ.get("REDIS_AUTH_SECRET_ARN") or None,
        )
        return cls.model_validate(config)


class Event(BaseModel):
    """An EventBridge scheduled event, or `{"dry_run": true}` from an operator."""

    model_config = ConfigDict(extra="allow")

    dry_run: bool = False
    source: str | None = None
    detail_type: str | None = Field(default=None, alias="detail-type")
