"""The autoscaler Lambda: observe every worker group, ask the policy, apply its answer.

Thin by design: the event and settings are parsed by models (`settings`), the decision is
the pure `policy.decide`, and the effects sit in small modules: the one pipelined Redis read
(`observe`), ECS (`ecs`), the Redis connection and its token (`redis_access`), logs and
metrics (`telemetry`). One run at a time: a run takes a lock in Redis first, and an
invocation that finds it held skips. Failures never lower capacity: no reading, no change.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from pydantic import ValidationError
from redis.exceptions import AuthenticationError, LockNotOwnedError, RedisError
from redis.lock import Lock

from celery_service import contract
from celery_service.contract import autoscaler_state_key

from . import telemetry
from .ecs import BotoEcs, DescribeFailed, EcsApi, ReadOnlyEcs
from .observe import estimated_wait_s, observation_of, read_all
from .policy import Decision, Observation, PolicyConfig, decide
from .redis_access import auth_token, redis_client_for
from .settings import Event, Settings, Target
from .telemetry import logger, metrics


@dataclass
class GroupResult:
    group: str
    service: str
    before: int | None
    desired: int | None
    reason: str
    changed: bool
    error: str | None = None


# Of a run's AUTOSCALER_RUN_WORK_S (45 s, the Lambda's time for one decision's work), how
# long ECS updates may still be sent: the rest saves the state and flushes the metrics.
# Updates not sent by then (a throttled ECS API) are held until the next run.
UPDATE_BUDGET_S = 30.0


@dataclass
class _Decided:
    """One group's decision before it is applied: what its metrics and log line need."""

    result: GroupResult
    observation: Observation
    wait_s: float | None


def run_once(
    settings: Settings,
    redis_client: Any,
    ecs: EcsApi,
    now: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> list[GroupResult]:
    """Observe, decide and act once for every worker group."""
    started = clock()
    now = time.time() if now is None else now
    queues = sorted(
        {q for t in settings.targets.values() for q in t.queues} | set(settings.dlq_queues)
    )
    groups = sorted(settings.targets)
    try:
        reading = read_all(redis_client, queues, groups)
    except Exception as exc:  # redis.RedisError, OSError, timeouts: hold everything
        return _hold(settings, exc)
    telemetry.queue_metrics(settings, reading)
    if reading.beat_heartbeat is not None:
        # Absent key: no metric, and the alarm treats the gap as breaching.
        age = max(0.0, now - reading.beat_heartbeat)
        telemetry.metric(settings, contract.BEAT_HEARTBEAT_AGE_S, age, MetricUnit.Seconds)
    names = [settings.targets[g].service for g in groups]
    try:
        found, missing = ecs.describe(names)
    except Exception as exc:
        found, missing = {}, dict.fromkeys(names, DescribeFailed(f"describe failed: {exc}"))
    unread = sorted(n for n, reason in missing.items() if isinstance(reason, DescribeFailed))
    if unread:  # one error for the describe, not one per group it left unknown
        logger.error(
            "ecs describe failed: these services hold this run",
            extra={"services": unread, "error": missing[unread[0]]},
        )
        telemetry.error(settings, "ecs_describe")

    results = []
    decided: list[_Decided] = []
    new_states: dict[str, str] = {}
    for group in groups:
        target = settings.targets[group]
        counts = found.get(target.service)
        if counts is None:
            reason = missing.get(target.service, "not found")
            if not isinstance(reason, DescribeFailed):
                logger.error(
                    "service missing: hold",
                    extra={"worker_group": group, "service": target.service, "reason": reason},
                )
                telemetry.error(settings, "service_missing", group)
            results.append(GroupResult(group, target.service, None, None, reason, False, reason))
            continue
        unreadable = [reading.queues[q].error for q in target.queues if reading.queues[q].error]
        if unreadable:  # this group's queues only: the others decide as usual
            reason = f"queue unreadable: hold ({unreadable[0]})"
            logger.error(reason, extra={"worker_group": group})
            telemetry.error(settings, "queue_unreadable", group)
            result = GroupResult(
                group, target.service, counts.desired, counts.desired, reason, False
            )
            result.error = unreadable[0]
            results.append(result)
            continue
        stored = reading.states.get(group) or {}
        observation, completed_total = observation_of(target, reading, counts, stored, now)
        decision = _decide(settings, target, observation, stored)
        result = GroupResult(
            group,
            target.service,
            counts.desired,
            decision.desired,
            decision.reason,
            changed=decision.desired != counts.desired,
        )
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
        decided.append(_Decided(result, observation, estimated_wait_s(observation, stored, now)))
        results.append(result)
    _apply(settings, ecs, [d.result for d in decided if d.result.changed], started, clock)
    for entry in decided:
        result = entry.result
        telemetry.group_metrics(
            settings,
            result.group,
            entry.observation,
            desired=result.desired,
            changed=result.changed,
            estimated_wait_s=entry.wait_s,
        )
        logger.info(
            "decision",
            extra={
                "worker_group": result.group,
                "service": result.service,
                "before": result.before,
                "desired": result.desired,
                "changed": result.changed,
                "reason": result.reason,
            },
        )
    if new_states:
        try:
            pipe = redis_client.pipeline(transaction=False)
            for group, state in new_states.items():
                pipe.set(autoscaler_state_key(group), state, ex=7 * 86400)
            pipe.execute()
        except Exception as exc:
            logger.error("policy state not saved", extra={"error": str(exc)})
            telemetry.error(settings, "redis_write")
    return results


def _apply(
    settings: Settings,
    ecs: EcsApi,
    changes: list[GroupResult],
    started: float,
    clock: Callable[[], float],
) -> None:
    """Send the desired counts, scale-outs first (largest first: where work waits), while the
    run has time; a change not sent is held, reported, and decided again next run."""
    for result in sorted(changes, key=lambda r: (r.before or 0) - (r.desired or 0)):
        if clock() - started > UPDATE_BUDGET_S:
            result.error = f"update not sent: the run's {UPDATE_BUDGET_S:g} s for updates are spent"
        else:
            try:
                assert result.desired is not None  # a decided group's
                ecs.set_desired(result.service, result.desired)
                continue
            except Exception as exc:
                result.error = f"update failed: {exc}"
        result.changed = False
        logger.error(
            "ecs update not applied: hold",
            extra={"worker_group": result.group, "desired": result.desired, "error": result.error},
        )
        telemetry.error(settings, "ecs_update", result.group)


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
        telemetry.metric(settings, contract.RUNS_SKIPPED, 1, MetricUnit.Count)
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
        telemetry.error(settings, "lock_expired")
    except (RedisError, OSError) as exc:
        # Harmless: it expires by itself before the next scheduled run.
        logger.warning("run lock not released: it expires", extra={"error": str(exc)})


def _hold(settings: Settings, exc: BaseException) -> list[GroupResult]:
    logger.error("redis unreadable: no change this run", extra={"error": str(exc)})
    telemetry.error(settings, "redis")
    return [
        GroupResult(g, t.service, None, None, "redis unreadable: hold", False, str(exc))
        for g, t in settings.targets.items()
    ]


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


def _run_authenticated(settings: Settings, ecs: EcsApi) -> list[list[GroupResult]] | None:
    """run_exclusive with the sandbox's AUTH token; if Redis refuses it (rotated since it
    was read), once more with the secret read again. Taking the lock is the run's first
    command, so a refusal comes before anything was read or changed."""
    try:
        return _run_with_token(settings, ecs, auth_token(settings))
    except AuthenticationError:
        if settings.redis_auth_secret_arn is None:
            raise
        logger.warning("redis refused the AUTH token: reading the secret again")
        return _run_with_token(settings, ecs, auth_token(settings, refresh=True))


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
