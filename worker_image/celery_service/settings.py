"""Settings of a worker, beat or Flower process, read from the environment only.

The services stack sets these variables from the environment's config (`CELERY_CATALOG` is
`EnvironmentConfig.runtime_catalog()` as JSON) and injects the AUTH token as an ECS secret.
Anything invalid stops the process at start with one line per problem.
"""

from __future__ import annotations

import fnmatch
import importlib
import json
import os
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal
from urllib.parse import quote

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

# Redis (kombu) consumes priority 0 first. Names map onto kombu's default steps, which every
# publisher of this broker must share (a publisher with other steps strands priorities).
PRIORITIES: dict[str, int] = {"high": 0, "normal": 3, "low": 6, "bulk": 9}
PRIORITY_STEPS = [0, 3, 6, 9]
DEFAULT_PRIORITY = PRIORITIES["normal"]

# Margin (seconds) the visibility timeout keeps above the longest retry wait plus the longest
# hard time limit (the same rule as config/model.py, checked again where it matters).
VISIBILITY_MARGIN_S = 10
# Fargate sends SIGKILL this long after SIGTERM at most (stopTimeout maximum, seconds).
FARGATE_MAX_STOP_TIMEOUT_S = 120

QueueName = Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_.-]{0,62}$")]


MODULE_NAME = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"
DEFAULT_TASK_MODULES = ("celery_service.tasks.samples",)


class SettingsError(Exception):
    """Invalid process settings; the message is one line per problem, for the operator."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Catalog(_Model):
    # CELERY_CATALOG is JSON rendered from the validated config: types are exact, so a
    # `true` for a count or a string for a number is an error here, not coerced.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


# Celery's rate limit syntax, as config/model.py accepts it: a number per second, minute
# or hour. Celery parses it only when a task is received, where a bad one fails every message.
RATE_LIMIT = r"^\d+(\.\d+)?/[smh]$"
RATE_LIMIT_EXAMPLES = "a number of tasks per second, minute or hour, such as 10/s, 100/m or 0.5/h"

# The time limits each pool enforces (Celery's worker guide; celery#1958, #5786). prefork
# runs tasks in child processes it can signal and kill; gevent cancels a greenlet at its
# hard limit, but only when the task yields to the hub (a CPU-bound loop is never stopped)
# and has no soft limit; threads and solo enforce neither.
POOL_LIMITS: dict[str, tuple[str, ...]] = {
    "prefork": ("soft_time_limit_s", "time_limit_s"),
    "gevent": ("time_limit_s",),
    "threads": (),
    "solo": (),
}
Pool = Literal["prefork", "gevent", "threads", "solo"]


class GroupSpec(_Catalog):
    queues: list[QueueName] = Field(min_length=1)
    concurrency: int = Field(ge=1, le=256)
    pool: Pool = "prefork"
    # Enforced by the pool (see POOL_LIMITS); None where the pool cannot enforce them.
    soft_time_limit_s: int | None = Field(default=None, ge=1)
    time_limit_s: int | None = Field(default=None, ge=1)
    # The longest a task of a group without a hard limit runs (not enforced): what the
    # visibility timeout must cover for it.
    longest_task_s: int | None = Field(default=None, ge=1)
    # Replace a pool process after this many tasks, or once its resident memory exceeds
    # this size after a task (prefork only): a leaking task library cannot grow for ever.
    max_tasks_per_child: int | None = Field(default=None, ge=1)
    max_memory_per_child_mib: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _limits(self) -> GroupSpec:
        for limit in ("soft_time_limit_s", "time_limit_s"):
            if getattr(self, limit) is not None and limit not in POOL_LIMITS[self.pool]:
                raise ValueError(f"pool {self.pool!r} does not enforce {limit}")
        if self.time_limit_s is None and self.longest_task_s is None:
            raise ValueError("set time_limit_s or, for a pool without one, longest_task_s")
        if self.pool != "prefork" and (self.max_tasks_per_child or self.max_memory_per_child_mib):
            raise ValueError(f"pool {self.pool!r} has no child processes to recycle")
        return self

    @property
    def longest_s(self) -> int:
        """How long a task of this group can hold its message: its hard limit, or for pools
        without one, the declared longest task."""
        return self.time_limit_s or self.longest_task_s or 0


class TaskSpec(_Catalog):
    """What the catalog sets for a task name or a pattern (`app.enrichment.*`): each field
    left out (None) keeps the task's own decorator value."""

    queue: QueueName
    priority: Literal["high", "normal", "low", "bulk"] | None = None
    rate_limit: str | None = None
    max_retries: int | None = Field(default=None, ge=0)
    soft_time_limit_s: int | None = Field(default=None, ge=1)
    time_limit_s: int | None = Field(default=None, ge=1)

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(RATE_LIMIT, value):
            raise ValueError(f"rate_limit {value!r} must be {RATE_LIMIT_EXAMPLES}")
        return value


CRON_FIELDS = ("minute", "hour", "day-of-month", "month", "day-of-week")


class ScheduleSpec(_Catalog):
    task: str
    every_s: int | None = Field(default=None, ge=1)
    cron: str | None = None
    args: list[Any] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_timing(self) -> ScheduleSpec:
        if (self.every_s is None) == (self.cron is None):
            raise ValueError("set exactly one of every_s or cron")
        if self.cron is not None:
            self.crontab()  # beat would fail on every start with a bad field
        return self

    def crontab(self) -> Any:
        """The cron line as Celery's crontab (UTC); ValueError naming the bad field."""
        from celery.schedules import ParseException, crontab

        fields = (self.cron or "").split()
        if len(fields) != len(CRON_FIELDS):
            raise ValueError(
                f"cron must have 5 fields ({' '.join(CRON_FIELDS)}), got {self.cron!r}"
            )
        minute, hour, day_of_month, month, day_of_week = fields
        try:
            schedule = crontab(minute, hour, day_of_week, day_of_month, month)
        except (ValueError, ParseException) as exc:
            raise ValueError(f"cron {self.cron!r}: {exc}") from None
        return schedule


class Catalog(_Catalog):
    """The queue catalog as the CDK renders it (see config/model.py, runtime_catalog)."""

    visibility_timeout_s: int = Field(ge=10)
    default_queue: QueueName
    result_expires_s: int = Field(default=86400, ge=60)
    retry_backoff_max_s: int = Field(default=300, ge=1)
    # Results (states, progress, return values) live in their own Redis database, apart
    # from the queues: a results flush or scan never touches queued work.
    result_db: int = Field(default=1, ge=0, le=15)
    # Task events (Flower's task pages) and the STARTED state: see the worker README.
    task_events: bool = False
    track_started: bool = False
    queues: list[QueueName] = Field(min_length=1)
    worker_groups: dict[str, GroupSpec] = Field(min_length=1)
    tasks: dict[str, TaskSpec] = Field(default_factory=dict)
    schedules: dict[str, ScheduleSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _cross(self) -> Catalog:
        limits = [(f"worker_groups.{n}", g.longest_s) for n, g in self.worker_groups.items()]
        limits += [(f"tasks.{n}", t.time_limit_s) for n, t in self.tasks.items() if t.time_limit_s]
        where, longest = max(limits, key=lambda item: item[1])
        needed = longest + self.retry_backoff_max_s + VISIBILITY_MARGIN_S
        if self.visibility_timeout_s < needed:
            raise ValueError(
                f"visibility_timeout_s ({self.visibility_timeout_s}) must be at least {needed}: "
                f"the longest hard limit ({where} = {longest} s) + retry_backoff_max_s "
                f"({self.retry_backoff_max_s} s) + {VISIBILITY_MARGIN_S} s, or Redis "
                "redelivers waiting and running tasks"
            )
        known = set(self.queues)
        for name, group in self.worker_groups.items():
            unknown = sorted(set(group.queues) - known)
            if unknown:
                raise ValueError(f"worker_groups.{name} consumes undeclared queues {unknown}")
        for name, task in self.tasks.items():
            if task.queue not in known:
                raise ValueError(f"tasks.{name} routes to undeclared queue {task.queue!r}")
        if self.default_queue not in known:
            raise ValueError(f"default_queue {self.default_queue!r} is not declared")
        return self

    def task_spec(self, task_name: str) -> TaskSpec | None:
        """The catalog entry of a task: its exact name, else the longest pattern matching
        it (`*` and `?` as in shell globs), else None."""
        spec = self.tasks.get(task_name)
        if spec is not None:
            return spec
        matching = [p for p in self.tasks if is_pattern(p) and fnmatch.fnmatchcase(task_name, p)]
        return self.tasks[max(matching, key=len)] if matching else None

    def queue_of(self, task_name: str) -> str:
        spec = self.task_spec(task_name)
        return spec.queue if spec else self.default_queue

    def priority_of(self, task_name: str) -> int:
        spec = self.task_spec(task_name)
        return PRIORITIES[spec.priority] if spec and spec.priority else DEFAULT_PRIORITY


def is_pattern(task_name: str) -> bool:
    return any(c in task_name for c in "*?[")


class Settings(_Model):
    """Everything a process needs. Build it with `Settings.from_env()`."""

    broker_host: str = Field(min_length=1)
    broker_port: int = Field(default=6379, ge=1, le=65535)
    broker_tls: bool = True
    broker_auth_token: SecretStr | None = None
    broker_db: int = Field(default=0, ge=0, le=15)
    catalog: Catalog
    # The worker group this process serves (workers only).
    worker_group: str | None = None
    # Modules whose tasks every process registers (CELERY_TASK_MODULES, comma-separated).
    task_modules: list[Annotated[str, StringConstraints(pattern=MODULE_NAME)]] = Field(
        default_factory=lambda: list(DEFAULT_TASK_MODULES), min_length=1
    )
    # SIGTERM budget (seconds): running tasks get this long to finish, the rest is requeued.
    shutdown_budget_s: float = Field(default=90.0, gt=0, lt=FARGATE_MAX_STOP_TIMEOUT_S - 10)
    # How often an idle worker looks for a message when no keyspace notification woke it
    # (celery_service.delivery): a missed notification costs at most this long.
    idle_poll_s: float = Field(default=1.0, ge=0.05, le=60)
    # Datadog agent (DogStatsD over UDP); no host means metrics are not sent.
    statsd_host: str | None = None
    statsd_port: int = Field(default=8125, ge=1, le=65535)
    service_tags: dict[str, str] = Field(default_factory=dict)
    # CloudWatch embedded metric format on stdout (the stacks turn it on when Datadog is off).
    emf_metrics: bool = False
    emf_interval_s: float = Field(default=60.0, ge=0.1, le=3600)
    # ECS agent endpoint; absent outside ECS, which makes scale-in protection a no-op.
    ecs_agent_uri: str | None = None
    protection_minutes: int = Field(default=60, ge=1, le=2880)
    # Where the health check reads liveness (a file touched by the worker's monitor).
    heartbeat_file: str = "/tmp/celery-heartbeat"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _cross(self) -> Settings:
        if self.worker_group is not None and self.worker_group not in self.catalog.worker_groups:
            raise ValueError(
                f"CELERY_WORKER_GROUP {self.worker_group!r} is not in the catalog; known: "
                f"{', '.join(self.catalog.worker_groups)}"
            )
        return self

    @property
    def group(self) -> GroupSpec:
        if self.worker_group is None:
            raise SettingsError("CELERY_WORKER_GROUP: required for a worker")
        return self.catalog.worker_groups[self.worker_group]

    def import_task_modules(self) -> None:
        """Import every task module; SettingsError naming the first that does not import."""
        for module in self.task_modules:
            try:
                importlib.import_module(module)
            except Exception as exc:
                raise SettingsError(
                    f"CELERY_TASK_MODULES: {module} does not import: {type(exc).__name__}: {exc}"
                ) from None

    def redis_url(self, *, with_password: bool = True, db: int | None = None) -> str:
        """The broker's URL, or with `db` another database of the same server."""
        scheme = "rediss" if self.broker_tls else "redis"
        auth = ""
        if self.broker_auth_token is not None:
            secret = self.broker_auth_token.get_secret_value()
            auth = f":{quote(secret, safe='')}@" if with_password else ":***@"
        query = "?ssl_cert_reqs=required" if self.broker_tls else ""
        database = self.broker_db if db is None else db
        return f"{scheme}://{auth}{self.broker_host}:{self.broker_port}/{database}{query}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        raw: dict[str, Any] = {}
        for field, variable in ENV_VARS.items():
            if variable in env and env[variable] != "":
                raw[field] = env[variable]
        try:
            if "catalog" in raw:
                raw["catalog"] = json.loads(raw["catalog"])
            if "service_tags" in raw:
                raw["service_tags"] = json.loads(raw["service_tags"])
            if "task_modules" in raw:
                raw["task_modules"] = [
                    m.strip() for m in raw["task_modules"].split(",") if m.strip()
                ]
        except json.JSONDecodeError as exc:
            raise SettingsError(f"{_var_of(raw, exc)}: not valid JSON ({exc.msg})") from None
        # Datadog's unified service tags, as the agent sidecar and the dashboards use them.
        unified = {key: env.get(f"DD_{key.upper()}", "") for key in ("env", "service", "version")}
        tags = {key: value for key, value in unified.items() if value}
        if tags:
            raw["service_tags"] = {**tags, **raw.get("service_tags", {})}
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise SettingsError("\n".join(_describe(err) for err in exc.errors())) from None


# Field -> environment variable. AUTH token and Flower credentials arrive as ECS secrets.
ENV_VARS: dict[str, str] = {
    "broker_host": "CELERY_BROKER_HOST",
    "broker_port": "CELERY_BROKER_PORT",
    "broker_tls": "CELERY_BROKER_TLS",
    "broker_auth_token": "CELERY_BROKER_AUTH_TOKEN",
    "broker_db": "CELERY_BROKER_DB",
    "catalog": "CELERY_CATALOG",
    "worker_group": "CELERY_WORKER_GROUP",
    "task_modules": "CELERY_TASK_MODULES",
    "shutdown_budget_s": "CELERY_SHUTDOWN_BUDGET_S",
    "idle_poll_s": "CELERY_IDLE_POLL_S",
    "statsd_host": "DD_AGENT_HOST",
    "statsd_port": "DD_DOGSTATSD_PORT",
    "service_tags": "CELERY_METRIC_TAGS",
    "emf_metrics": "CELERY_METRICS_EMF",
    "emf_interval_s": "CELERY_METRICS_EMF_INTERVAL_S",
    "ecs_agent_uri": "ECS_AGENT_URI",
    "protection_minutes": "CELERY_PROTECTION_MINUTES",
    "heartbeat_file": "CELERY_HEARTBEAT_FILE",
    "log_level": "CELERY_LOG_LEVEL",
}


def _var_of(raw: dict[str, Any], exc: json.JSONDecodeError) -> str:
    for field in ("catalog", "service_tags"):
        if raw.get(field) == exc.doc:
            return ENV_VARS[field]
    return "environment"


def _describe(err: Any) -> str:
    loc = [str(p) for p in err["loc"]]
    variable = ENV_VARS.get(loc[0], loc[0]) if loc else "environment"
    where = variable + ("." + ".".join(loc[1:]) if len(loc) > 1 else "")
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "missing":
        message = "required"
    elif err["type"] == "extra_forbidden":
        message = "unknown setting"
    elif loc and loc[0] != "broker_auth_token" and not isinstance(err.get("input"), dict | list):
        message += f" (got {err.get('input')!r})"
    return f"{where}: {message}"
