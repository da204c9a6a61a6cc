"""Settings of a worker, beat or Flower process, read from the environment only.

The services stack sets these variables from the environment's config (`CELERY_CATALOG` is
`EnvironmentConfig.runtime_catalog()` as JSON) and injects the AUTH token as an ECS secret.
Anything invalid stops the process at start with one line per problem.
"""

from __future__ import annotations

import importlib
import json
import os
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
    model_validator,
)

from celery_service.catalog import Catalog, GroupSpec
from celery_service.contract import MODULE_NAME, Env

# Fargate sends SIGKILL this long after SIGTERM at most (stopTimeout maximum, seconds).
FARGATE_MAX_STOP_TIMEOUT_S = 120


class SettingsError(Exception):
    """Invalid process settings; the message is one line per problem, for the operator."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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
    # Modules whose tasks every process registers (CELERY_TASK_MODULES, comma-separated):
    # required by workers, beat and `check`; a producer publishes by name without them.
    task_modules: list[Annotated[str, StringConstraints(pattern=MODULE_NAME)]] = Field(
        default_factory=list
    )
    # The app's own Celery settings module (CELERY_APP_CONFIG_MODULE): applied first, so its
    # settings hold where the platform has none (timezone, serializers, its `imports`); the
    # platform's own (broker, delivery, routes, limits, schedules) win over it.
    app_config_module: Annotated[str, StringConstraints(pattern=MODULE_NAME)] | None = None
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

    def modules(self) -> str:
        """Where the app's tasks come from, for messages."""
        named = [f"{Env.TASK_MODULES}: {', '.join(self.task_modules)}"] if self.task_modules else []
        if self.app_config_module:
            named.append(f"{Env.APP_CONFIG_MODULE}: {self.app_config_module}")
        return "; ".join(named)

    def import_task_modules(self) -> None:
        """Import every task module; SettingsError naming the first that does not import."""
        if not self.task_modules and self.app_config_module is None:
            raise SettingsError(
                f"{Env.TASK_MODULES}: required: the app's task modules, comma-separated "
                f"(the config's app.task_modules), or {Env.APP_CONFIG_MODULE}"
            )
        for module in [*filter(None, [self.app_config_module]), *self.task_modules]:
            try:
                importlib.import_module(module)
            except Exception as exc:
                variable = (
                    Env.APP_CONFIG_MODULE if module == self.app_config_module else Env.TASK_MODULES
                )
                raise SettingsError(
                    f"{variable}: {module} does not import: {type(exc).__name__}: {exc}"
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
    "broker_host": Env.BROKER_HOST,
    "broker_port": Env.BROKER_PORT,
    "broker_tls": Env.BROKER_TLS,
    "broker_auth_token": Env.BROKER_AUTH_TOKEN,
    "broker_db": Env.BROKER_DB,
    "catalog": Env.CATALOG,
    "worker_group": Env.WORKER_GROUP,
    "task_modules": Env.TASK_MODULES,
    "app_config_module": Env.APP_CONFIG_MODULE,
    "shutdown_budget_s": Env.SHUTDOWN_BUDGET_S,
    "idle_poll_s": Env.IDLE_POLL_S,
    "statsd_host": Env.STATSD_HOST,
    "statsd_port": Env.STATSD_PORT,
    "service_tags": Env.METRIC_TAGS,
    "emf_metrics": Env.METRICS_EMF,
    "emf_interval_s": Env.METRICS_EMF_INTERVAL_S,
    "ecs_agent_uri": Env.ECS_AGENT_URI,
    "protection_minutes": Env.PROTECTION_MINUTES,
    "heartbeat_file": Env.HEARTBEAT_FILE,
    "log_level": Env.LOG_LEVEL,
}


def variables_for(**values: Any) -> dict[str, str]:
    """The variables from which `Settings.from_env` reads these field values: what the
    stacks, the local tools, the tests and a producer's launcher set, by field name
    (`variables_for(broker_host=..., broker_tls=False, task_modules=[...])`). Values may be
    tokens (text) the CDK resolves at deploy."""
    env = {}
    for field, value in values.items():
        variable = ENV_VARS[field]  # a KeyError names a field Settings does not have
        if value is None or value in ((), []):
            continue  # unset: the field's default
        if isinstance(value, bool):
            env[variable] = "true" if value else "false"
        elif isinstance(value, list | tuple):
            env[variable] = ",".join(str(item) for item in value)
        elif isinstance(value, dict):
            env[variable] = json.dumps(value, sort_keys=True, separators=(",", ":"))
        else:
            env[variable] = str(value)
    return env


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
