"""The policy under test (`lambdas/autoscaler/policy.py`) and the published anchors, each
called with what the autoscaler's handler observes."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Protocol

from lambdas.autoscaler.policy import Observation, PolicyConfig, decide

OURS = "policy.py"
ANCHORS = ("step 5..50", "AWS backlog/task", "KEDA redis list", "Copilot worker")
POLICIES = (OURS, *ANCHORS)


@dataclass(frozen=True)
class Service:
    """One worker service on Fargate, as the simulator models it."""

    concurrency: int = 4  # slots per ECS task
    min_tasks: int = 1
    max_tasks: int = 50
    target_wait_s: float = 300.0
    protection: bool = True  # ECS task scale-in protection while a worker has work
    startup_s: tuple[float, float] = (45.0, 90.0)  # launch to ready, uniform
    stop_timeout_s: float = 120.0  # SIGTERM to SIGKILL (ECS stopTimeout, its maximum)
    protection_grace_s: float = 5.0  # a worker releases protection after this long idle


# ---------------------------------------------------------------- policies


class Policy(Protocol):
    def decide(self, observation: Observation) -> int: ...


def _clamp(value: int, low: int, high: int) -> int:
    return min(max(value, low), high)


def _known(observation: Observation) -> tuple[float, int, int]:
    # The simulator always fills these; the anchors are not written for missing data.
    assert observation.now is not None
    assert observation.waiting is not None
    assert observation.desired is not None
    return observation.now, observation.waiting, observation.desired


class Ours:
    """`lambdas/autoscaler/policy.py`, with its state round-tripped through JSON."""

    def __init__(self, service: Service, interval_s: float) -> None:
        self.config = PolicyConfig(
            min_tasks=service.min_tasks,
            max_tasks=service.max_tasks,
            concurrency=service.concurrency,
            target_wait_s=service.target_wait_s,
            interval_s=interval_s,
        )
        self.state: dict[str, Any] | None = None
        self.reasons: list[tuple[float, str]] = []

    def decide(self, observation: Observation) -> int:
        decision = decide(observation, self.config, self.state)
        self.state = json.loads(json.dumps(decision.state, allow_nan=False))
        return decision.desired


class StepRule:
    """The seed design: +5 above 200 waiting, -2 below 20, within 5..50 whatever the service
    says."""

    def __init__(self, low: int = 5, high: int = 50) -> None:
        self.low, self.high = low, high

    def decide(self, observation: Observation) -> int:
        _, waiting, desired = _known(observation)
        if waiting > 200:
            desired += 5
        elif waiting < 20:
            desired -= 2
        return _clamp(desired, self.low, self.high)


class BacklogPerTask:
    """Target tracking on backlog per task (AWS's SQS recipe, Copilot's worker service).

    Acceptable backlog per task = acceptable latency / processing time of one message by one
    task; a task runs `concurrency` messages at once, so its processing time per message is
    mean run time / concurrency. desired = ceil(waiting / target). The backlog is the visible
    queue only (ApproximateNumberOfMessagesVisible: in-flight messages are not counted).
    A scale-out waits for the scale-out cooldown since the last scale-out; a scale-in for the
    scale-in cooldown since the last scaling of either direction.
    """

    def __init__(
        self, service: Service, mean_run_s: float, out_cooldown_s: float, in_cooldown_s: float
    ) -> None:
        self.service = service
        self.target = service.target_wait_s * service.concurrency / mean_run_s
        self.out_cooldown_s, self.in_cooldown_s = out_cooldown_s, in_cooldown_s
        self.last_out = self.last_in = -math.inf

    def decide(self, observation: Observation) -> int:
        now, waiting, desired = _known(observation)
        s = self.service
        want = _clamp(math.ceil(waiting / self.target), s.min_tasks, s.max_tasks)
        if want > desired and now - self.last_out >= self.out_cooldown_s:
            self.last_out = now
            return want
        if want < desired and now - max(self.last_out, self.last_in) >= self.in_cooldown_s:
            self.last_in = now
            return want
        return desired


class KedaRedisList:
    """KEDA's Redis list scaler driving the Kubernetes HPA.

    listLength target 5 (KEDA's documented default), activation above 0 messages, HPA
    desired = ceil(length / target) unless within 10 % of the current ratio, scale-down to
    the largest recommendation of the last 300 s (window inclusive, because one evaluation
    per cadence would otherwise never see its predecessor at the 300 s cadence), scale to
    zero (min_tasks 0) after KEDA's cooldownPeriod of 300 s without activity.
    """

    LIST_LENGTH = 5
    TOLERANCE = 0.1
    STABILIZATION_S = 300.0
    COOLDOWN_S = 300.0

    def __init__(self, service: Service) -> None:
        self.service = service
        self.last_active = -math.inf
        self.recommendations: list[tuple[float, int]] = []

    def decide(self, observation: Observation) -> int:
        now, waiting, desired = _known(observation)
        s = self.service
        if waiting > 0:
            self.last_active = now
        elif s.min_tasks == 0 and now - self.last_active >= self.COOLDOWN_S:
            self.recommendations.clear()
            return 0
        hpa_min = max(1, s.min_tasks)
        if desired == 0:
            recommendation = math.ceil(waiting / self.LIST_LENGTH)
        else:
            ratio = waiting / desired / self.LIST_LENGTH
            if abs(ratio - 1) <= self.TOLERANCE:
                recommendation = desired
            else:
                recommendation = math.ceil(waiting / self.LIST_LENGTH)
        recommendation = _clamp(recommendation, hpa_min, s.max_tasks)
        self.recommendations = [
            (t, r) for t, r in self.recommendations if now - t <= self.STABILIZATION_S
        ]
        self.recommendations.append((now, recommendation))
        if recommendation >= desired:
            return recommendation
        return min(desired, max(r for _, r in self.recommendations))


def make_policy(name: str, service: Service, interval_s: float, mean_run_s: float) -> Policy:
    if name == OURS:
        return Ours(service, interval_s)
    if name == "step 5..50":
        return StepRule()
    if name == "AWS backlog/task":
        # Application Auto Scaling's default cooldowns for ECS: 300 s each way.
        return BacklogPerTask(service, mean_run_s, 300, 300)
    if name == "KEDA redis list":
        return KedaRedisList(service)
    if name == "Copilot worker":
        return BacklogPerTask(service, mean_run_s, 60, 120)
    raise ValueError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")


def initial_tasks(policy: str, service: Service) -> int:
    return 5 if policy == "step 5..50" else service.min_tasks
