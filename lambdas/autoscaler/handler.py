"""The autoscaler Lambda: observe every worker group, ask the policy, apply its answer.

Thin by design: settings and the event are parsed by models, the decision is the pure
`policy.decide`, and the effects (one pipelined Redis read, ECS DescribeServices, an
UpdateService only when the count changes, the state written back, EMF metrics) sit here.
One run at a time: a run takes a lock in Redis first, and an invocation that finds it held
skips. Failures never lower capacity: no reading, no change.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit, single_metric
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from redis.exceptions import AuthenticationError, LockNotOwnedError, RedisError
from redis.lock import Lock

from celery_service import contract
from celery_service.contract import autoscaler_state_key

from .observe import Reading, read_all
from .policy import Decision, Observation, PolicyConfig, decide

logger = Logger(service=contract.AUTOSCALER_SERVICE)
# Every metric carries environment and service dimensions (plus queue or worker_group):
# alarms match dimensions exactly, so they must not depend on POWERTOOLS_SERVICE_NAME.
metrics = Metrics(namespace=contract.AUTOSCALER_NAMESPACE, service=contract.AUTOSCALER_SERVICE)


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


@dataclass(frozen=True)
class ServiceCounts:
    running: int
    pending: int
    desired: int


class EcsApi(Protocol):
    def describe(self, services: list[str]) -> tuple[dict[str, ServiceCounts], dict[str, str]]:
        """Counts of the services found, and a reason for each one not found."""

    def set_desired(self, service: str, count: int) -> None: ...


@dataclass
class GroupResult:
    group: str
    service: str
    before: int | None
    desired: int | None
    reason: str
    changed: bool
    error: str | None = None


def run_once(
    settings: Settings, redis_client: Any, ecs: EcsApi, now: float | None = None
) -> list[GroupResult]:
    """Observe, decide and act once for every worker group."""
    now = time.time() if now is None else now
    queues = sorted(
        {q for t in settings.targets.values() for q in t.queues} | set(settings.dlq_queues)
    )
    groups = sorted(settings.targets)
    try:
        reading = read_all(redis_client, queues, groups)
    except Exception as exc:  # redis.RedisError, OSError, timeouts: hold everything
        return _hold(settings, exc)
    _queue_metrics(settings, reading)
    if reading.beat_heartbeat is not None:
        # Absent key: no metric, and the alarm treats the gap as breaching.
        age = max(0.0, now - reading.beat_heartbeat)
        _metric(settings, contract.BEAT_HEARTBEAT_AGE_S, age, MetricUnit.Seconds)
    names = [settings.targets[g].service for g in groups]
    described = True
    try:
        found, missing = ecs.describe(names)
    except Exception as exc:
        logger.error("ecs describe failed: no change this run", extra={"error": str(exc)})
        _error_metric(settings, "ecs_describe")
        found, missing = {}, {n: f"describe failed: {exc}" for n in names}
        described = False

    results = []
    new_states: dict[str, str] = {}
    for group in groups:
        target = settings.targets[group]
        counts = found.get(target.service)
        if counts is None:
            reason = missing.get(target.service, "not found")
            if described:  # a failed describe is one ecs_describe error, not a missing service
                _error_metric(settings, "service_missing", group)
            results.append(GroupResult(group, target.service, None, None, reason, False, reason))
            continue
        unreadable = [reading.queues[q].error for q in target.queues if reading.queues[q].error]
        if unreadable:  # this group's queues only: the others decide as usual
            reason = f"queue unreadable: hold ({unreadable[0]})"
            logger.error(reason, extra={"worker_group": group})
            _error_metric(settings, "queue_unreadable", group)
            result = GroupResult(
                group, target.service, counts.desired, counts.desired, reason, False
            )
            result.error = unreadable[0]
            results.append(result)
            continue
        stored = reading.states.get(group) or {}
        observation, completed_total = _observe(target, reading, counts, stored, now)
        decision = _decide(settings, target, observation, stored)
        result = GroupResult(
            group,
            target.service,
            counts.desired,
            decision.desired,
            decision.reason,
            changed=decision.desired != counts.desired,
        )
        if result.changed:
            try:
                ecs.set_desired(target.service, decision.desired)
            except Exception as exc:
                result.error = f"update failed: {exc}"
                result.changed = False
                _error_metric(settings, "ecs_update", group)
        new_states[group] = json.dumps(
            {
                "policy": decision.state,
                "last": {
                    "now": now,
                    "waiting": observation.waiting,
                    "in_flight": observation.in_flight,
                    "completed_total": completed_total,
                },
            }
        )
        wait = _estimated_wait_s(observation, stored, now)
        _group_metrics(settings, group, observation, result, wait)
        results.append(result)
    if new_states:
        try:
            pipe = redis_client.pipeline(transaction=False)
            for group, state in new_states.items():
                pipe.set(autoscaler_state_key(group), state, ex=7 * 86400)
            pipe.execute()
        except Exception as exc:
            logger.error("policy state not saved", extra={"error": str(exc)})
            _error_metric(settings, "redis_write")
    return results


def run_exclusive(
    settings: Settings,
    redis_client: Any,
    ecs: EcsApi,
    sleep: Callable[[float], None] = time.sleep,
) -> list[list[GroupResult]] | None:
    """Every decision of one invocation (`decisions_per_run`, `decision_interval_s` apart)
    under the run lock; None, with RunsSkipped published, when another run holds it. A
    Redis error while taking the lock is raised: nothing has been read or changed yet."""
    lock = redis_client.lock(
        contract.AUTOSCALER_LOCK_KEY, timeout=settings.lock_ttl_s, blocking=False
    )
    if not lock.acquire():
        logger.info("another run holds the lock: skipped", extra={"key": lock.name})
        _metric(settings, contract.RUNS_SKIPPED, 1, MetricUnit.Count)
        return None
    try:
        runs = []
        for index in range(settings.decisions_per_run):
            if index:
                sleep(settings.decision_interval_s)
            runs.append(run_once(settings, redis_client, ecs))
        return runs
    finally:
        _release(settings, lock)


def _release(settings: Settings, lock: Lock) -> None:
    """Give the lock back (only if it still holds this run's token: redis-py's Lua)."""
    try:
        lock.release()
    except LockNotOwnedError:
        # The run outlasted lock_ttl_s: another invocation may have run alongside its end.
        logger.error("the run outlasted its lock", extra={"lock_ttl_s": settings.lock_ttl_s})
        _error_metric(settings, "lock_expired")
    except (RedisError, OSError) as exc:
        # Harmless: it expires by itself before the next scheduled run.
        logger.warning("run lock not released: it expires", extra={"error": str(exc)})


def _hold(settings: Settings, exc: BaseException) -> list[GroupResult]:
    logger.error("redis unreadable: no change this run", extra={"error": str(exc)})
    _error_metric(settings, "redis")
    return [
        GroupResult(g, t.service, None, None, "redis unreadable: hold", False, str(exc))
        for g, t in settings.targets.items()
    ]


def _observe(
    target: Target,
    reading: Reading,
    counts: ServiceCounts,
    stored: dict[str, Any],
    now: float,
) -> tuple[Observation, int | None]:
    waiting = sum(reading.queues[q].waiting for q in target.queues)
    in_flight = sum(reading.queues[q].in_flight for q in target.queues)
    totals = [reading.queues[q].completed_total for q in target.queues]
    completed_total = None if any(t is None for t in totals) else sum(t or 0 for t in totals)
    last = stored.get("last") if isinstance(stored.get("last"), dict) else None
    completed = arrived = 0
    if last is not None and completed_total is not None:
        previous = last.get("completed_total")
        if isinstance(previous, int) and completed_total >= previous:
            completed = completed_total - previous
        # Arrivals are not counted anywhere: what changed in the queue, plus what left it.
        delta_queue = (waiting - _stored_int(last.get("waiting"), waiting)) + (
            in_flight - _stored_int(last.get("in_flight"), in_flight)
        )
        arrived = max(0, delta_queue + completed)
    observation = Observation(
        now=now,
        waiting=waiting,
        in_flight=in_flight,
        running_tasks=counts.running,
        pending_tasks=counts.pending,
        desired=counts.desired,
        arrived_since_last=arrived,
        completed_since_last=completed,
    )
    return observation, completed_total


def _stored_int(value: object, default: int) -> int:
    """A count from the stored state; a damaged one reads as "no change" instead of failing
    the run of every group."""
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def _estimated_wait_s(observation: Observation, stored: dict[str, Any], now: float) -> float | None:
    """How long the backlog takes to drain at the completion rate measured since the last
    run; None when there is no rate to measure (first run, or nothing completed)."""
    waiting, completed = observation.waiting, observation.completed_since_last
    if waiting is None:
        return None
    if waiting == 0:
        return 0.0
    last = stored.get("last")
    if not isinstance(last, dict):
        return None
    try:
        elapsed = now - float(last.get("now", now))
    except (TypeError, ValueError):
        return None
    if elapsed <= 0 or completed is None or completed <= 0:
        return None
    return waiting * elapsed / completed


def _decide(
    settings: Settings, target: Target, observation: Observation, stored: dict[str, Any]
) -> Decision:
    interval = (
        settings.decision_interval_s if settings.decisions_per_run > 1 else settings.interval_s
    )
    config = PolicyConfig(
        min_tasks=target.min_tasks,
        max_tasks=target.max_tasks,
        concurrency=target.concurrency,
        target_wait_s=target.target_wait_s,
        interval_s=interval,
    )
    policy_state = stored.get("policy")
    return decide(observation, config, policy_state if isinstance(policy_state, dict) else None)


def _metric(settings: Settings, name: str, value: float, unit: MetricUnit, **dims: str) -> None:
    with single_metric(
        name=name, unit=unit, value=value, namespace=contract.AUTOSCALER_NAMESPACE
    ) as metric:
        metric.add_dimension(name="environment", value=settings.environment)
        metric.add_dimension(name="service", value=contract.AUTOSCALER_SERVICE)
        for key, dim in dims.items():
            metric.add_dimension(name=key, value=dim)


def _error_metric(settings: Settings, kind: str, group: str | None = None) -> None:
    dims = {"kind": kind}
    if group is not None:
        dims["worker_group"] = group
    _metric(settings, contract.AUTOSCALER_ERRORS, 1, MetricUnit.Count, **dims)
    # The environment's total, which the errors alarm watches (alarms cannot sum dimensions).
    _metric(settings, contract.AUTOSCALER_ERRORS, 1, MetricUnit.Count)


def _queue_metrics(settings: Settings, reading: Reading) -> None:
    for queue, values in reading.queues.items():
        _metric(settings, contract.QUEUE_WAITING, values.waiting, MetricUnit.Count, queue=queue)
        _metric(settings, contract.QUEUE_IN_FLIGHT, values.in_flight, MetricUnit.Count, queue=queue)
        _metric(settings, contract.DLQ_DEPTH, values.dlq_depth, MetricUnit.Count, queue=queue)


def _group_metrics(
    settings: Settings,
    group: str,
    observation: Observation,
    result: GroupResult,
    estimated_wait_s: float | None = None,
) -> None:
    unit = MetricUnit.Count
    values = {
        contract.GROUP_WAITING: observation.waiting,
        contract.GROUP_IN_FLIGHT: observation.in_flight,
        contract.RUNNING_TASKS: observation.running_tasks,
        contract.PENDING_TASKS: observation.pending_tasks,
    }
    for name, value in values.items():
        _metric(settings, name, float(value or 0), unit, worker_group=group)
    _metric(settings, contract.DESIRED_TASKS, float(result.desired or 0), unit, worker_group=group)
    _metric(
        settings, contract.SCALING_CHANGES, 1 if result.changed else 0, unit, worker_group=group
    )
    if estimated_wait_s is not None:
        _metric(
            settings,
            contract.GROUP_ESTIMATED_WAIT_S,
            estimated_wait_s,
            MetricUnit.Seconds,
            worker_group=group,
        )
    logger.info(
        "decision",
        extra={
            "worker_group": group,
            "service": result.service,
            "before": result.before,
            "desired": result.desired,
            "changed": result.changed,
            "reason": result.reason,
        },
    )


# ------------------------------------------------------------------------- Lambda entry


class BotoEcs:
    """ECS through boto3: bounded retries with backoff for throttling."""

    def __init__(self, cluster: str) -> None:
        import boto3
        from botocore.config import Config

        self.cluster = cluster
        self.client = boto3.client(
            "ecs",
            config=Config(
                retries={"mode": "standard", "max_attempts": 5}, connect_timeout=3, read_timeout=10
            ),
        )

    def describe(self, services: list[str]) -> tuple[dict[str, ServiceCounts], dict[str, str]]:
        found: dict[str, ServiceCounts] = {}
        missing: dict[str, str] = {}
        for start in range(0, len(services), 10):  # DescribeServices takes 10 at a time
            reply = self.client.describe_services(
                cluster=self.cluster, services=services[start : start + 10]
            )
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


class DryRunEcs:
    """Records what would change; starts every service at `initial` running tasks."""

    def __init__(self, initial: dict[str, int]) -> None:
        self.counts = dict(initial)
        self.updates: list[tuple[str, int]] = []

    def describe(self, services: list[str]) -> tuple[dict[str, ServiceCounts], dict[str, str]]:
        found = {
            s: ServiceCounts(self.counts[s], 0, self.counts[s])
            for s in services
            if s in self.counts
        }
        return found, {s: "not in the dry run" for s in services if s not in self.counts}

    def set_desired(self, service: str, count: int) -> None:
        self.updates.append((service, count))
        self.counts[service] = count


# Attempts after the first for a Redis command that times out or loses its connection.
# redis-py 8 makes 10 by default: with the 5 s timeout a hung Redis held one pipeline for
# about a minute (11 x 5 s), the Lambda's whole timeout, so the run was killed before it
# reported the fault. Two absorb a reset (a failover) and bound a read to about 16 s.
REDIS_RETRIES = 2
REDIS_SOCKET_TIMEOUT_S = 5
REDIS_CONNECT_TIMEOUT_S = 3


def redis_client_for(settings: Settings, token: str | None) -> Any:
    import redis
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    return redis.Redis(
        host=settings.redis_host,
        port=settings.redis_port,
        password=token,
        ssl=settings.redis_tls,
        ssl_cert_reqs="required" if settings.redis_tls else "none",
        socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S,
        socket_timeout=REDIS_SOCKET_TIMEOUT_S,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.1), REDIS_RETRIES),
    )


# How long a sandbox reuses the AUTH token it read (seconds). During a rotation both tokens
# work until SET: every sandbox reads the new one within this long of the secret's update.
# A token Redis refuses before then (SET came sooner) is read again at once.
TOKEN_MAX_AGE_S = 900


def _auth_token(settings: Settings, *, refresh: bool = False) -> str | None:
    if settings.redis_auth_secret_arn is None:
        return None
    from aws_lambda_powertools.utilities.parameters import get_secret

    # Cached by Powertools in this sandbox for TOKEN_MAX_AGE_S; `refresh` reads it now.
    token = get_secret(settings.redis_auth_secret_arn, max_age=TOKEN_MAX_AGE_S, force_fetch=refresh)
    if not isinstance(token, str):
        raise ValueError("REDIS_AUTH_SECRET_ARN must name a secret whose value is a string")
    return token


def _run_authenticated(settings: Settings, ecs: EcsApi) -> list[list[GroupResult]] | None:
    """run_exclusive with the sandbox's AUTH token; if Redis refuses it (rotated since it
    was read), once more with the secret read again. Taking the lock is the run's first
    command, so a refusal comes before anything was read or changed."""
    try:
        return _run_with_token(settings, ecs, _auth_token(settings))
    except AuthenticationError:
        if settings.redis_auth_secret_arn is None:
            raise
        logger.warning("redis refused the AUTH token: reading the secret again")
        return _run_with_token(settings, ecs, _auth_token(settings, refresh=True))


def _run_with_token(
    settings: Settings, ecs: EcsApi, token: str | None
) -> list[list[GroupResult]] | None:
    client = redis_client_for(settings, token)
    try:
        return run_exclusive(settings, client, ecs)
    finally:
        client.close()


@metrics.log_metrics
@logger.inject_lambda_context
def handler(event: Any, context: Any) -> dict[str, Any]:
    if not isinstance(event, dict):
        raise ValueError(f"the event must be a JSON object, got {type(event).__name__}")
    try:
        parsed = Event.model_validate(event)
        settings = Settings.from_env(os.environ)
    except ValidationError as exc:
        first = exc.errors()[0]
        # A check across fields (the run lock against the interval) has no field to name.
        where = ".".join(str(p) for p in first["loc"]) or "AUTOSCALER_CONFIG"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise ValueError(f"invalid input: {where}: {message}") from None
    metrics.add_dimension(name="environment", value=settings.environment)
    started = time.monotonic()
    ecs: EcsApi = BotoEcs(settings.cluster)
    if parsed.dry_run:
        ecs = ReadOnlyEcs(ecs)
    try:
        runs = _run_authenticated(settings, ecs)
    except (RedisError, OSError) as exc:  # no lock taken (down, or the token refused twice)
        runs = [_hold(settings, exc)]
    if runs is None:
        return {"skipped": True, "runs": []}
    metrics.add_metric(
        name=contract.RUN_DURATION,
        unit=MetricUnit.Milliseconds,
        value=(time.monotonic() - started) * 1000,
    )
    metrics.add_metric(name=contract.RUNS, unit=MetricUnit.Count, value=1)
    return {"skipped": False, "runs": [[r.__dict__ for r in run] for run in runs]}
