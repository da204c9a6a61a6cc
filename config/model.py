"""Typed, validated settings of one deployment environment.

Everything an environment can change lives here, including the queue catalog that the
stacks, the worker containers and the autoscaler all build from. Validation happens once,
when the environment is loaded; nothing downstream re-checks or re-reads settings.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from celery_service.catalog import (
    POOL_LIMITS,
    TIME_LIMITS,
    Catalog,
    GroupSpec,
    QueueName,
    ScheduleSpec,
    TaskSpec,
    needed_visibility_timeout,
)
from celery_service.contract import (
    AUTOSCALER_RUN_WORK_S,
    BEAT_HEARTBEAT_TTL_S,
    MODULE_NAME,
    PRIORITIES,
)

# CloudWatch Logs accepts only these retention periods (days).
LOG_RETENTION_DAYS = (
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557,
    2922, 3288, 3653,
)  # fmt: skip

# ElastiCache engine versions this project supports, and their parameter group family.
ENGINE_VERSIONS: dict[str, dict[str, str]] = {
    "valkey": {"7.2": "valkey7", "8.0": "valkey8", "8.1": "valkey8"},
    "redis": {"7.0": "redis7", "7.1": "redis7"},
}

# Fargate task sizes: CPU units -> allowed memory (MiB).
FARGATE_SIZES: dict[int, range] = {
    256: range(512, 2048 + 1, 512),
    512: range(1024, 4096 + 1, 1024),
    1024: range(2048, 8192 + 1, 1024),
    2048: range(4096, 16384 + 1, 1024),
    4096: range(8192, 30720 + 1, 1024),
    8192: range(16384, 61440 + 1, 4096),
    16384: range(32768, 122880 + 1, 8192),
}

# The largest SSM parameter value (advanced tier, bytes): the catalog producers read.
SSM_PARAMETER_MAX_BYTES = 8192

# Group names end up in ECS service and CloudFormation names: a safe alphabet (queue names:
# celery_service.catalog).
GROUP_NAME = r"^[a-z][a-z0-9-]{0,23}$"
ENV_NAME = r"^[a-z][a-z0-9-]{1,15}$"
PROJECT_NAME = r"^[a-z][a-z0-9-]{1,23}$"
ACCOUNT_ID = r"^\d{12}$"
REGION = r"^[a-z]{2}(-gov)?-[a-z]+-\d$"
VPC_ID = r"^vpc-[0-9a-f]{8,17}$"
NODE_TYPE = r"^cache\.[a-z0-9]+\.[a-z0-9]+$"
EMAIL = r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$"

GroupName = Annotated[str, StringConstraints(pattern=GROUP_NAME)]


class Strict(BaseModel):
    """Unknown keys are errors: a typo must not silently fall back to a default."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class NetworkConfig(Strict):
    """A new VPC (the default) or an existing one imported by id."""

    vpc_id: Annotated[str, StringConstraints(pattern=VPC_ID)] | None = None
    cidr: str = "10.40.0.0/16"
    az_count: int = Field(default=2, ge=2, le=6)
    # Explicit AZ names; needed for more than two AZs when account and region are not set,
    # because an environment-agnostic stack can only address two AZs.
    availability_zones: list[str] | None = None
    nat_gateways: int = Field(default=1, ge=0, le=6)
    # Interface endpoints (ECR, logs, Secrets Manager, ECS, CloudWatch) so private tasks
    # reach AWS APIs without a NAT gateway. About 7 USD per endpoint per AZ per month.
    interface_endpoints: bool = False
    flow_log_retention_days: int = 30

    @field_validator("cidr")
    @classmethod
    def _cidr(cls, value: str) -> str:
        try:
            net = ipaddress.IPv4Network(value)
        except ValueError:
            raise ValueError(f"must be an IPv4 CIDR such as 10.40.0.0/16, got {value!r}") from None
        if not 16 <= net.prefixlen <= 22:
            raise ValueError(f"prefix must be between /16 and /22, got /{net.prefixlen}")
        return value

    @field_validator("flow_log_retention_days")
    @classmethod
    def _retention(cls, value: int) -> int:
        return _check_retention(value)

    @model_validator(mode="after")
    def _cross(self) -> NetworkConfig:
        if self.vpc_id is not None:
            new_vpc_only = {"cidr", "az_count", "availability_zones", "nat_gateways"}
            clash = sorted(new_vpc_only & self.model_fields_set)
            if clash:
                raise ValueError(
                    f"vpc_id imports an existing VPC, so {', '.join(clash)} cannot be set; "
                    "remove them or remove vpc_id"
                )
            return self
        if self.availability_zones is not None:
            if len(self.availability_zones) != self.az_count:
                raise ValueError(
                    f"availability_zones lists {len(self.availability_zones)} zones but "
                    f"az_count is {self.az_count}; they must agree"
                )
            if len(set(self.availability_zones)) != len(self.availability_zones):
                raise ValueError("availability_zones must not repeat a zone")
        if self.nat_gateways > self.az_count:
            raise ValueError(
                f"nat_gateways ({self.nat_gateways}) must be between 0 and "
                f"az_count ({self.az_count})"
            )
        if self.nat_gateways == 0 and not self.interface_endpoints:
            raise ValueError(
                "nat_gateways = 0 leaves private tasks without a route to ECR, logs and "
                "Secrets Manager; set interface_endpoints = true or nat_gateways >= 1"
            )
        return self


class RedisConfig(Strict):
    """The ElastiCache replication group that is the Celery broker (cluster mode disabled)."""

    engine: Literal["valkey", "redis"] = "valkey"
    engine_version: str = "8.1"
    node_type: Annotated[str, StringConstraints(pattern=NODE_TYPE)] = "cache.t4g.micro"
    replicas: int = Field(default=0, ge=0, le=5)
    multi_az: bool = False
    port: int = Field(default=6379, ge=1024, le=65535)
    snapshot_retention_days: int = Field(default=1, ge=0, le=35)
    snapshot_window: str = "03:00-04:00"  # UTC, hh:mm-hh:mm
    maintenance_window: str = "sun:05:00-sun:06:00"  # UTC, ddd:hh:mm-ddd:hh:mm
    # What deleting the stack does to the broker and its queued work: the safe choice unless
    # an environment says its data may be thrown away.
    removal_policy: Literal["destroy", "snapshot", "retain"] = "snapshot"
    log_retention_days: int = 14

    @field_validator("snapshot_window")
    @classmethod
    def _snapshot_window(cls, value: str) -> str:
        if not re.fullmatch(r"([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-3]):[0-5]\d", value):
            raise ValueError(f"must look like 03:00-04:00 (UTC), got {value!r}")
        return value

    @field_validator("maintenance_window")
    @classmethod
    def _maintenance_window(cls, value: str) -> str:
        day = r"(mon|tue|wed|thu|fri|sat|sun)"
        clock = r"([01]\d|2[0-3]):[0-5]\d"
        if not re.fullmatch(f"{day}:{clock}-{day}:{clock}", value):
            raise ValueError(f"must look like sun:05:00-sun:06:00 (UTC), got {value!r}")
        return value

    @field_validator("log_retention_days")
    @classmethod
    def _retention(cls, value: int) -> int:
        return _check_retention(value)

    @model_validator(mode="after")
    def _cross(self) -> RedisConfig:
        versions = ENGINE_VERSIONS[self.engine]
        if self.engine_version not in versions:
            raise ValueError(
                f"engine_version {self.engine_version!r} is not supported for engine "
                f"{self.engine!r}; allowed: {', '.join(versions)}"
            )
        if self.multi_az and self.replicas < 1:
            raise ValueError("multi_az = true needs replicas >= 1 to fail over to")
        return self

    @property
    def parameter_group_family(self) -> str:
        return ENGINE_VERSIONS[self.engine][self.engine_version]


class BrokerConfig(Strict):
    """Transport settings shared by every publisher and worker of the environment."""

    # Seconds before Redis redelivers an unacknowledged message. It is global per Redis
    # database: it must exceed every hard time limit, and it is also how long a crashed
    # worker's messages wait before they come back.
    visibility_timeout_s: int = Field(default=3600, ge=60, le=43200)
    # Queue of tasks that no `tasks` entry routes; must be a declared queue.
    default_queue: QueueName = "default"
    # Seconds a task result (and its progress) stays readable in Redis.
    result_expires_s: int = Field(default=86400, ge=60, le=30 * 86400)
    # Longest wait between two retries (seconds); the backoff doubles up to this.
    retry_backoff_max_s: int = Field(default=300, ge=1, le=3600)
    # Deliveries of one message without an ack (its process died, or a shutdown stopped it)
    # before it goes to the DLQ instead of to another worker.
    max_deliveries: int = Field(default=5, ge=2, le=100)
    # Replicas that must hold a publish, a requeue or an `applied_once` marker before it
    # returns (Redis WAIT): without, a failover loses what the primary acknowledged in its
    # last moments of replication lag. Default: 1 when the broker has replicas, else 0.
    wait_for_replicas: int | None = Field(default=None, ge=0, le=5)
    # The longest such a write waits for them (milliseconds); past it, it returns with a
    # warning (a replica down or far behind), the write held by the primary alone.
    replica_wait_ms: int = Field(default=100, ge=1, le=2000)


class ServicesConfig(Strict):
    """How the ECS services run (the queue catalog says what they run)."""

    architecture: Literal["arm64", "x86_64"] = "arm64"  # Graviton is cheaper per vCPU
    fargate_spot: bool = False  # workers only: interruptions are requeued like a SIGTERM
    log_retention_days: int = 30
    enable_exec: bool = False  # ECS Exec into running tasks, for debugging
    # Fargate sends SIGKILL this long after SIGTERM (seconds, at most 120); the worker's
    # shutdown budget stays 15 s below it.
    stop_timeout_s: int = Field(default=120, ge=30, le=120)

    @field_validator("log_retention_days")
    @classmethod
    def _retention(cls, value: int) -> int:
        return _check_retention(value)


class FlowerConfig(Strict):
    """Flower behind an ALB: internal with basic auth, or internet-facing with HTTPS + OIDC."""

    internet_facing: bool = False
    # Who may reach an internal ALB (default: the VPC's own CIDR).
    allowed_cidrs: list[str] = Field(default_factory=list)
    certificate_arn: Annotated[str, StringConstraints(pattern=r"^arn:aws[a-z-]*:acm:")] | None = (
        None
    )
    oidc_issuer: str | None = None
    oidc_authorization_endpoint: str | None = None
    oidc_token_endpoint: str | None = None
    oidc_user_info_endpoint: str | None = None
    oidc_client_id: str | None = None
    # Name of a Secrets Manager secret holding the OIDC client secret (never the value).
    oidc_client_secret_name: str | None = None

    @field_validator("allowed_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for cidr in value:
            try:
                net = ipaddress.IPv4Network(cidr)
            except ValueError:
                raise ValueError(f"{cidr!r} is not an IPv4 CIDR") from None
            if net.prefixlen == 0:
                raise ValueError("0.0.0.0/0 would open Flower to everyone; list your networks")
        return value

    @model_validator(mode="after")
    def _cross(self) -> FlowerConfig:
        if self.internet_facing:
            oidc = {
                "certificate_arn": self.certificate_arn,
                "oidc_issuer": self.oidc_issuer,
                "oidc_authorization_endpoint": self.oidc_authorization_endpoint,
                "oidc_token_endpoint": self.oidc_token_endpoint,
                "oidc_user_info_endpoint": self.oidc_user_info_endpoint,
                "oidc_client_id": self.oidc_client_id,
                "oidc_client_secret_name": self.oidc_client_secret_name,
            }
            missing = [name for name, value in oidc.items() if not value]
            if missing:
                raise ValueError(
                    "internet_facing = true needs HTTPS and OIDC sign-in; missing: "
                    + ", ".join(missing)
                )
        return self


class DatadogConfig(Strict):
    """The Datadog agent sidecar in every task (DogStatsD on localhost:8125)."""

    enabled: bool = False
    site: str = "datadoghq.com"
    # Name of the Secrets Manager secret holding the API key (never the key itself).
    api_key_secret_name: str = "datadog/api-key"
    agent_image: str = "public.ecr.aws/datadog/agent:7"
    # The dashboard and monitors generated from the catalog: not deployed ("off"), deployed
    # by CloudFormation as the Datadog::Dashboards::Dashboard and Datadog::Monitors::Monitor
    # registry types (activated in the account beforehand), or pushed through Datadog's API
    # with `make datadog-push` ("api").
    resources: Literal["off", "cloudformation", "api"] = "off"
    # Who the monitors notify, as Datadog handles: "@slack-celery-alerts", "@pagerduty-celery".
    notify: list[Annotated[str, StringConstraints(pattern=r"^@[\w.+@-]+$")]] = []
    # Secrets Manager name of the application key, used only by `make datadog-push`.
    app_key_secret_name: str = "datadog/app-key"


# A run's lock (and Lambda timeout) ends at least this long before the next scheduled run,
# so a killed run never makes the next one skip.
RUN_LOCK_MARGIN_S = 15


class AutoscalerConfig(Strict):
    """The queue-depth autoscaler Lambda: how often it runs and decides."""

    schedule_minutes: int = Field(default=5, ge=1, le=60)  # EventBridge rate
    # Decide several times per invocation (every decision_interval_s) for bursts that
    # cannot wait a whole schedule; 1 means once per invocation (the default).
    decisions_per_run: int = Field(default=1, ge=1, le=20)
    decision_interval_s: int = Field(default=30, ge=5, le=300)

    @model_validator(mode="after")
    def _cross(self) -> AutoscalerConfig:
        busy_s = (self.decisions_per_run - 1) * self.decision_interval_s
        if self.timeout_s + RUN_LOCK_MARGIN_S > min(self.schedule_minutes * 60, 900):
            extra_s = AUTOSCALER_RUN_WORK_S + RUN_LOCK_MARGIN_S
            raise ValueError(
                f"decisions_per_run x decision_interval_s ({busy_s} s) plus {extra_s} s must "
                f"fit in the schedule ({self.schedule_minutes} min) and in Lambda's 15 minutes"
            )
        return self

    @property
    def timeout_s(self) -> int:
        """Lambda timeout: the run's sleeps plus its work, as long as its run lock lasts and
        at least RUN_LOCK_MARGIN_S below the schedule."""
        return (self.decisions_per_run - 1) * self.decision_interval_s + AUTOSCALER_RUN_WORK_S


class SlackConfig(Strict):
    """A Slack channel for alarms, through AWS Chatbot. Authorize the workspace in the
    Chatbot console once per account; its ID starts with T, the channel's with C or G."""

    workspace_id: Annotated[str, StringConstraints(pattern=r"^T[A-Z0-9]{6,}$")]
    channel_id: Annotated[str, StringConstraints(pattern=r"^[CG][A-Z0-9]{6,}$")]


class MonitoringConfig(Strict):
    """CloudWatch alarms and their recipients."""

    # Who receives alarm notifications (an SNS email subscription, confirmed by mail).
    alarm_email: Annotated[str, StringConstraints(pattern=EMAIL)] | None = None
    # ... and/or a Slack channel (AWS Chatbot).
    slack: SlackConfig | None = None
    # A worker group pinned at max_tasks this long cannot keep up: raise max_tasks or look.
    max_tasks_alarm_minutes: int = Field(default=30, ge=5, le=1440)
    redis_memory_percent: int = Field(default=80, ge=10, le=100)
    redis_engine_cpu_percent: int = Field(default=80, ge=10, le=100)
    # ALB 5xx responses (each of load balancer and target) in 5 minutes before alarming.
    flower_5xx_per_5_minutes: int = Field(default=5, ge=1, le=100000)
    beat_heartbeat_max_age_s: int = Field(default=120, ge=15, lt=BEAT_HEARTBEAT_TTL_S)
    # Task throughput, failures, retries and run times as CloudWatch metrics (EMF lines in the
    # workers' logs). Default: on exactly when Datadog is off, so they are never missing.
    cloudwatch_task_metrics: bool | None = None


class QueueConfig(Strict):
    """One Celery queue. Its name is the key in the `queues` table."""

    description: str = ""


# What a team's worker groups and beat may add to their containers and task roles.
ENV_VAR = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"
# The platform's own variables (celery_service.contract.Env, the Datadog and ECS agents,
# the AWS SDK's): a team value would silently change how the platform runs.
RESERVED_ENV_PREFIXES = ("CELERY_", "FLOWER_", "DD_", "ECS_", "AWS_")
EnvVarName = Annotated[str, StringConstraints(pattern=ENV_VAR)]
# Secrets Manager: a name (letters, digits, /_+=.@-) or a secret's ARN; SSM: a parameter name.
SECRET_NAME = r"^[A-Za-z0-9/_+=.@-]{1,512}$"
SECRET_ARN = r"^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:\d{12}:secret:[A-Za-z0-9/_+=.@-]+$"
SSM_PARAMETER = r"^/?[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$"
S3_BUCKET = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
IAM_ACTION = r"^[a-z0-9-]+:[A-Za-z0-9*]+$"


class SecretRef(Strict):
    """One secret, read by ECS when the task starts and given to the container as one
    variable (never written into the task definition): `{ secretsmanager = "billing/stripe" }`,
    `{ secretsmanager = "prod/db", field = "password" }` (a JSON key), `{ ssm = "/app/token" }`."""

    secretsmanager: str | None = None  # a secret's name or ARN
    field: str | None = Field(default=None, min_length=1)
    ssm: str | None = None  # a SecureString or String parameter's name

    @model_validator(mode="after")
    def _one_source(self) -> SecretRef:
        if (self.secretsmanager is None) == (self.ssm is None):
            raise ValueError("set exactly one of secretsmanager (a name or ARN) or ssm (a name)")
        if self.secretsmanager is not None:
            name = self.secretsmanager
            if name.startswith("arn:"):
                if not re.fullmatch(SECRET_ARN, name):
                    raise ValueError(
                        f"secretsmanager {name!r} is not a secret ARN "
                        "(arn:aws:secretsmanager:<region>:<account>:secret:<name>)"
                    )
            elif not re.fullmatch(SECRET_NAME, name):
                raise ValueError(
                    f"secretsmanager {name!r} is not a secret name (1-512 of letters, digits "
                    "and /_+=.@-) or ARN"
                )
        if self.ssm is not None:
            if self.field is not None:
                raise ValueError("field selects a JSON key of a Secrets Manager secret, not ssm")
            if not re.fullmatch(SSM_PARAMETER, self.ssm):
                raise ValueError(
                    f"ssm {self.ssm!r} is not a parameter name such as /team/api-token "
                    "(letters, digits, _.- and / between parts)"
                )
        return self


class S3Grant(Strict):
    """Access to one S3 bucket (and the KMS key it uses, if any, is the team's to grant)."""

    s3_bucket: Annotated[str, StringConstraints(pattern=S3_BUCKET)]
    access: Literal["read", "write", "read_write"] = "read"
    # Only keys under this prefix ("exports/"); all keys when unset.
    prefix: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9!_.*'()/-]+$")] | None = None


class PolicyStatementConfig(Strict):
    """An IAM statement added to the task role as written (Allow only)."""

    actions: list[Annotated[str, StringConstraints(pattern=IAM_ACTION)]] = Field(min_length=1)
    resources: list[Annotated[str, StringConstraints(min_length=1)]] = Field(min_length=1)


class TaskAccess(Strict):
    """What a team's code needs in its containers: plain variables, secrets and IAM grants."""

    environment: dict[EnvVarName, str] = Field(default_factory=dict)
    secrets: dict[EnvVarName, SecretRef] = Field(default_factory=dict)
    grants: list[S3Grant] = Field(default_factory=list)
    policy_statements: list[PolicyStatementConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _names(self) -> TaskAccess:
        for kind, names in (("environment", self.environment), ("secrets", self.secrets)):
            for name in names:
                if name.startswith(RESERVED_ENV_PREFIXES):
                    raise ValueError(
                        f"{kind}.{name}: names starting with "
                        f"{', '.join(RESERVED_ENV_PREFIXES)} are the platform's"
                    )
        both = sorted(set(self.environment) & set(self.secrets))
        if both:
            raise ValueError(f"{', '.join(both)}: set as both environment and secrets")
        return self


# Fields of TaskAccess: infrastructure, never part of the runtime catalog.
ACCESS_FIELDS = frozenset(TaskAccess.model_fields)


class BeatConfig(TaskAccess):
    """The one beat service: what the team's schedules need to import their task modules."""


IMAGE_DIGEST = r"^sha256:[0-9a-f]{64}$"
ECR_REPOSITORY = r"^(arn:aws[a-z-]*:ecr:[a-z0-9-]+:\d{12}:repository/)?[a-z0-9][a-z0-9._/-]{1,255}$"


class ImageConfig(Strict):
    """Where the image of workers, beat and Flower comes from: built by CDK at deploy from
    a directory whose Dockerfile starts FROM the platform's base image, or a prebuilt image
    by ECR repository and digest, so CI builds once and promotes the same image through
    every environment."""

    build_dir: str | None = None  # relative to the config directory
    build_args: dict[str, str] = Field(default_factory=dict)
    repository: Annotated[str, StringConstraints(pattern=ECR_REPOSITORY)] | None = None
    digest: Annotated[str, StringConstraints(pattern=IMAGE_DIGEST)] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ImageConfig:
        prebuilt = self.repository is not None or self.digest is not None
        if not prebuilt and self.build_dir is None:
            raise ValueError(
                "set build_dir (a directory whose Dockerfile starts FROM the platform's base "
                "image) or repository and digest (a prebuilt image)"
            )
        if prebuilt and self.build_dir is not None:
            raise ValueError("set build_dir or repository and digest, not both")
        if prebuilt and (self.repository is None or self.digest is None):
            raise ValueError(
                "a prebuilt image needs both repository (an ECR repository's name or ARN) and "
                "digest (sha256:..., in the config or as IMAGE_DIGEST at deploy): a tag could "
                "change under a deployed service"
            )
        if self.build_args and self.build_dir is None:
            raise ValueError("build_args need build_dir")
        if self.build_dir is not None:
            dockerfile = Path(self.build_dir) / "Dockerfile"
            if not dockerfile.is_file():
                raise ValueError(f"build_dir {self.build_dir!r} has no Dockerfile")
        return self


class AppConfig(Strict):
    """The team's Celery code: the modules every worker and beat imports (Flower none), and the
    image they are in."""

    task_modules: list[Annotated[str, StringConstraints(pattern=MODULE_NAME)]] = Field(
        default_factory=list
    )
    # Or, or as well: the app's own Celery settings module (its `imports` name the task
    # modules); the platform's settings win where both set one.
    celery_config_module: Annotated[str, StringConstraints(pattern=MODULE_NAME)] | None = None
    image: ImageConfig

    @model_validator(mode="after")
    def _tasks_named(self) -> AppConfig:
        if not self.task_modules and self.celery_config_module is None:
            raise ValueError(
                "set task_modules (the modules of the app's tasks) or celery_config_module "
                "(its Celery settings module, whose `imports` name them)"
            )
        return self


# Limits a group gets when it sets none and its pool enforces them (seconds).
DEFAULT_LIMITS = {"soft_time_limit_s": 240, "time_limit_s": 300}


class WorkerGroupConfig(GroupSpec, TaskAccess):
    """One ECS worker service and the queues it alone consumes: the catalog's worker group
    (celery_service.catalog.GroupSpec) plus its Fargate size, scaling bounds and what the
    team's tasks need (TaskAccess)."""

    concurrency: int = Field(default=4, ge=1, le=256)  # task slots per ECS task
    cpu: int = 512  # Fargate CPU units
    memory_mib: int = 1024
    min_tasks: int = Field(default=1, ge=0, le=1000)
    max_tasks: int = Field(default=10, ge=1, le=1000)
    # Longest acceptable wait (seconds) between publishing a message and a worker starting it.
    target_wait_s: int = Field(default=60, ge=1, le=86400)

    @model_validator(mode="before")
    @classmethod
    def _pool_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        pool = data.get("pool", "prefork")
        if pool == "solo":
            data = {"concurrency": 1, **data}  # its only possible value
        enforced = POOL_LIMITS.get(pool, ()) if isinstance(pool, str) else ()
        if any(limit in data for limit in DEFAULT_LIMITS):
            return data  # set by hand: checked as written
        return {**{k: v for k, v in DEFAULT_LIMITS.items() if k in enforced}, **data}

    @model_validator(mode="after")
    def _fargate(self) -> WorkerGroupConfig:
        if self.min_tasks > self.max_tasks:
            raise ValueError(
                f"min_tasks ({self.min_tasks}) must be <= max_tasks ({self.max_tasks})"
            )
        if (self.max_memory_per_child_mib or 0) * self.concurrency > self.memory_mib:
            raise ValueError(
                f"max_memory_per_child_mib ({self.max_memory_per_child_mib}) x concurrency "
                f"({self.concurrency}) exceeds memory_mib ({self.memory_mib}): the container "
                "would be killed before a pool process is replaced"
            )
        memory = FARGATE_SIZES.get(self.cpu)
        if memory is None:
            raise ValueError(
                f"cpu {self.cpu} is not a Fargate size; allowed: "
                f"{', '.join(str(c) for c in FARGATE_SIZES)}"
            )
        if self.memory_mib not in memory:
            raise ValueError(
                f"memory_mib {self.memory_mib} is not valid with cpu {self.cpu}; allowed: "
                f"{memory.start}-{memory.stop - 1} in steps of {memory.step}"
            )
        return self


class CeleryConfig(Strict):
    """Celery behaviour with a cost, chosen per catalog (measured in bench/results/)."""

    # Off by default, as in Celery: each costs a large share of a worker's throughput
    # (measured in bench/results/worker_bench.md; worker_image/README.md has the figures).
    # Task events: Flower's task pages and `celery events`; a publish per task state change.
    task_events: bool = False
    # The STARTED state: a poller sees that its task left the queue; one result write per task.
    track_started: bool = False
    # Redis database of results and progress, apart from the queues' database (0).
    result_db: int = Field(default=1, ge=1, le=15)


class EnvironmentConfig(Strict):
    """All settings of one environment (dev, staging, prod, ...)."""

    name: Annotated[str, StringConstraints(pattern=ENV_NAME)]
    project: Annotated[str, StringConstraints(pattern=PROJECT_NAME)] = "celery"
    account: Annotated[str, StringConstraints(pattern=ACCOUNT_ID)] | None = None
    region: Annotated[str, StringConstraints(pattern=REGION)] | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    redis: RedisConfig = Field(default_factory=RedisConfig)
    broker: BrokerConfig = Field(default_factory=BrokerConfig)
    celery: CeleryConfig = Field(default_factory=CeleryConfig)
    app: AppConfig
    beat: BeatConfig = Field(default_factory=BeatConfig)
    queues: dict[QueueName, QueueConfig] = Field(min_length=1)
    worker_groups: dict[GroupName, WorkerGroupConfig] = Field(min_length=1)
    tasks: dict[str, TaskSpec] = Field(default_factory=dict)
    schedules: dict[GroupName, ScheduleSpec] = Field(default_factory=dict)
    services: ServicesConfig = Field(default_factory=ServicesConfig)
    flower: FlowerConfig = Field(default_factory=FlowerConfig)
    datadog: DatadogConfig = Field(default_factory=DatadogConfig)
    autoscaler: AutoscalerConfig = Field(default_factory=AutoscalerConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)

    @model_validator(mode="after")
    def _cross(self) -> EnvironmentConfig:
        self._check_catalog()
        self._check_visibility_timeout()
        self._check_placement()
        size = len(self.runtime_catalog_json().encode())
        if size > SSM_PARAMETER_MAX_BYTES:
            raise ValueError(
                f"the catalog's JSON form is {size} bytes; producers read it from an SSM "
                f"parameter, which holds at most {SSM_PARAMETER_MAX_BYTES}: cover tasks with "
                'patterns ("billing.*") instead of one entry each'
            )
        if self.wait_for_replicas > self.redis.replicas:
            raise ValueError(
                f"broker.wait_for_replicas ({self.wait_for_replicas}) is more than "
                f"redis.replicas ({self.redis.replicas}): every write would wait "
                "broker.replica_wait_ms for replicas that do not exist"
            )
        if self.monitoring.max_tasks_alarm_minutes < self.autoscaler.schedule_minutes:
            raise ValueError(
                f"monitoring.max_tasks_alarm_minutes ({self.monitoring.max_tasks_alarm_minutes}) "
                f"must be >= autoscaler.schedule_minutes ({self.autoscaler.schedule_minutes}): "
                "the desired count is only measured once per run"
            )
        if self.datadog.resources != "off" and not self.datadog.enabled:
            raise ValueError(
                f"datadog.resources {self.datadog.resources!r} needs datadog.enabled = true: "
                "the dashboard charts the metrics the agent sidecars send"
            )
        if self.datadog.enabled and self.network.nat_gateways == 0:
            raise ValueError(
                "datadog.enabled needs network.nat_gateways >= 1: the agent sends to "
                "Datadog over the internet"
            )
        if self.name.startswith("prod") and self.redis.removal_policy == "destroy":
            raise ValueError(
                f"redis.removal_policy 'destroy' would delete {self.name}'s queued work with "
                "the stack; allowed for a prod environment: snapshot, retain"
            )
        return self

    def _check_catalog(self) -> None:
        consumers: dict[str, list[str]] = {}
        for group, settings in self.worker_groups.items():
            for queue in settings.queues:
                if queue not in self.queues:
                    raise ValueError(
                        f"worker_groups.{group}.queues names {queue!r}, which is not in "
                        f"queues; declared queues: {', '.join(self.queues)}"
                    )
                consumers.setdefault(queue, []).append(group)
        if self.broker.default_queue not in self.queues:
            raise ValueError(
                f"broker.default_queue {self.broker.default_queue!r} is not a declared queue; "
                f"declared queues: {', '.join(self.queues)}"
            )
        for task, spec in self.tasks.items():
            if spec.queue not in self.queues:
                raise ValueError(
                    f"tasks.{task}.queue {spec.queue!r} is not a declared queue; "
                    f"declared queues: {', '.join(self.queues)}"
                )
        for queue in self.queues:
            groups = consumers.get(queue, [])
            if len(groups) != 1:
                found = ", ".join(groups) if groups else "none"
                raise ValueError(
                    f"queues.{queue} must be consumed by exactly one worker group (found: {found})"
                )
        for task, spec in self.tasks.items():
            group_name = consumers[spec.queue][0]
            pool = self.worker_groups[group_name].pool
            for limit in TIME_LIMITS:
                if getattr(spec, limit) is not None and limit not in POOL_LIMITS[pool]:
                    raise ValueError(
                        f"tasks.{task}.{limit}: its queue {spec.queue!r} is consumed by "
                        f"worker_groups.{group_name}, whose pool {pool!r} does not enforce it"
                    )

    def _check_visibility_timeout(self) -> None:
        limits = [
            (
                f"worker_groups.{n}.{'time_limit_s' if g.time_limit_s else 'longest_task_s'}",
                g.longest_s,
            )
            for n, g in self.worker_groups.items()
        ]
        limits += [
            (f"tasks.{n}.time_limit_s", t.time_limit_s)
            for n, t in self.tasks.items()
            if t.time_limit_s
        ]
        backoff = self.broker.retry_backoff_max_s
        where, longest, needed = needed_visibility_timeout(limits, backoff)
        if self.broker.visibility_timeout_s < needed:
            raise ValueError(
                f"broker.visibility_timeout_s ({self.broker.visibility_timeout_s}) must be at "
                f"least {needed}: the longest hard limit ({where} = {longest}) "
                f"+ the longest retry wait (broker.retry_backoff_max_s = {backoff}) "
                f"+ {needed - longest - backoff} s, or a task is delivered twice"
            )

    def _check_placement(self) -> None:
        net = self.network
        if self.region is None:
            raise ValueError(
                'region: required (e.g. region = "eu-west-1"): the Flower load balancer\'s '
                "access logs are delivered by the region's ELB account"
            )
        if net.vpc_id is not None and (self.account is None or self.region is None):
            raise ValueError(
                "network.vpc_id needs account and region: an existing VPC is looked up in them"
            )
        unnamed_zones = net.vpc_id is None and net.availability_zones is None
        if unnamed_zones and net.az_count > 2 and (self.account is None or self.region is None):
            raise ValueError(
                f"network.az_count {net.az_count} needs network.availability_zones, or "
                "account and region: without them a stack can only address 2 AZs"
            )
        if net.availability_zones is not None and self.region is not None:
            stray = [az for az in net.availability_zones if not az.startswith(self.region)]
            if stray:
                raise ValueError(
                    f"network.availability_zones {', '.join(stray)} are not in region {self.region}"
                )

    @property
    def wait_for_replicas(self) -> int:
        explicit = self.broker.wait_for_replicas
        return min(self.redis.replicas, 1) if explicit is None else explicit

    @property
    def task_metrics_in_cloudwatch(self) -> bool:
        explicit = self.monitoring.cloudwatch_task_metrics
        return not self.datadog.enabled if explicit is None else explicit

    def autoscaler_config(self, cluster: str, services: Mapping[str, str]) -> dict[str, Any]:
        """What the autoscaler Lambda receives in AUTOSCALER_CONFIG: every worker group (never
        beat or Flower), from the catalog; `services` maps each group to its ECS service."""
        scaler = self.autoscaler
        return {
            "environment": self.name,
            "cluster": cluster,
            "interval_s": scaler.schedule_minutes * 60,
            "decisions_per_run": scaler.decisions_per_run,
            "decision_interval_s": scaler.decision_interval_s,
            "targets": {
                name: {
                    "service": services[name],
                    "queues": group.queues,
                    "min_tasks": group.min_tasks,
                    "max_tasks": group.max_tasks,
                    "concurrency": group.concurrency,
                    "target_wait_s": group.target_wait_s,
                }
                for name, group in self.worker_groups.items()
            },
            "dlq_queues": sorted(self.queues),
        }

    def runtime_catalog(self) -> dict[str, Any]:
        """What containers, producers and the autoscaler receive (as JSON in CELERY_CATALOG):
        the queue catalog and broker settings, nothing about infrastructure and no secret."""
        catalog = Catalog(
            visibility_timeout_s=self.broker.visibility_timeout_s,
            default_queue=self.broker.default_queue,
            result_expires_s=self.broker.result_expires_s,
            retry_backoff_max_s=self.broker.retry_backoff_max_s,
            max_deliveries=self.broker.max_deliveries,
            wait_for_replicas=self.wait_for_replicas,
            replica_wait_ms=self.broker.replica_wait_ms,
            **self.celery.model_dump(),
            queues=sorted(self.queues),
            worker_groups={
                name: GroupSpec(**group.model_dump(include=set(GroupSpec.model_fields)))
                for name, group in self.worker_groups.items()
            },
            tasks=self.tasks,
            schedules=self.schedules,
        )
        # Only what each entry sets: the rest stays the task decorator's.
        return catalog.model_dump(mode="json", exclude_none=True)

    def runtime_catalog_json(self) -> str:
        """`runtime_catalog()` as CELERY_CATALOG holds it (containers, producers, SSM)."""
        return json.dumps(self.runtime_catalog(), sort_keys=True, separators=(",", ":"))

    def advisories(self) -> list[str]:
        """Valid settings that are probably a mistake, one line each (printed at synth)."""
        lines = []
        owners = [(f"worker_groups.{n}", g) for n, g in self.worker_groups.items()]
        for where, access in [*owners, ("beat", self.beat)]:
            for i, statement in enumerate(access.policy_statements):
                wild = [x for x in statement.actions + statement.resources if "*" in x]
                if wild:
                    lines.append(
                        f"{where}.policy_statements.{i}: {', '.join(wild)} grants more than one "
                        "action or resource; name them if you can"
                    )
        for name, settings in self.worker_groups.items():
            if settings.protection_max_minutes * 60 < settings.longest_s:
                lines.append(
                    f"worker_groups.{name}: protection_max_minutes "
                    f"({settings.protection_max_minutes}) is shorter than its longest task "
                    f"({settings.longest_s} s): a deploy may stop such a task, which then runs "
                    "again from the start"
                )
        for name, spec in self.tasks.items():
            if spec.rate_limit is None:
                continue
            group = self.group_of(spec.queue)
            level = PRIORITIES[spec.priority or "normal"]
            above = sorted(
                other
                for other, o in self.tasks.items()
                if self.group_of(o.queue) == group and PRIORITIES[o.priority or "normal"] < level
            )
            if self.broker.default_queue in self.worker_groups[group].queues and level > 3:
                above.append("unlisted tasks")
            if above:
                lines.append(
                    f"tasks.{name}: rate_limit {spec.rate_limit} shares worker_groups.{group} "
                    f"with higher-priority work ({', '.join(above)}), which waits while held "
                    "rate-limited messages fill the group's prefetch window; give rate-limited "
                    "tasks a queue and worker group of their own"
                )
        return lines

    def group_of(self, queue: str) -> str:
        """The worker group that consumes `queue` (exactly one, by validation)."""
        return next(name for name, g in self.worker_groups.items() if queue in g.queues)


def _check_retention(value: int) -> int:
    if value not in LOG_RETENTION_DAYS:
        raise ValueError(
            f"{value} is not a CloudWatch Logs retention; allowed: "
            f"{', '.join(str(d) for d in LOG_RETENTION_DAYS)}"
        )
    return value
