"""The autoscaler under faults: real redis-server, moto's ECS, faults injected on the wire.

Every seeded run first lets a workload move messages, then computes the fault-free decision
on an exact copy of the state (Redis database 1, the same ECS counts), then runs the
autoscaler with one fault injected. A run may only lower a service's count to what the
fault-free run decided; every fault that fails an operation is reported as an
`AutoscalerErrors` metric of its kind; faults absorbed by retries change nothing; the clean
run after a fault decides exactly as the fault-free copy does.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from botocore.retries import standard
from moto import mock_aws

from celery_service.contract import UNACKED_KEY, completed_key, queue_keys
from lambdas.autoscaler import handler as scaler
from lambdas.autoscaler import redis_access
from lambdas.autoscaler.ecs import MAX_ATTEMPTS, BotoEcs, ServiceCounts
from lambdas.autoscaler.handler import GroupResult, run_once
from lambdas.autoscaler.redis_access import redis_client_for
from lambdas.autoscaler.settings import Settings
from tests.conftest import FakeLambdaContext, ecs_cluster_with, use_fake_aws_credentials
from tests.lambdas.ecs_faults import error_kinds, throttle
from tests.proofs.conftest import RestartableRedis
from tests.proofs.figures import EXHAUSTIVE, FIGURES
from tools.faultproxy import FaultProxy

SECTION = "Autoscaler under faults"
CLUSTER = "celery-proof"
REGION = "us-east-1"
INTERVAL_S = 300
# Test-only timeouts (seconds) on the faulty path; everything else is the handler's client.
FAST_TIMEOUT_S = 0.2
GROUPS: dict[str, dict[str, Any]] = {
    "general": {"queues": ["default", "priority"], "min_tasks": 1, "max": 20, "conc": 4},
    "batch": {"queues": ["reports"], "min_tasks": 0, "max": 6, "conc": 2},
    "bulk": {"queues": ["exports"], "min_tasks": 0, "max": 10, "conc": 8},
}
QUEUES = sorted(q for g in GROUPS.values() for q in g["queues"])


def service_of(group: str) -> str:
    return f"{CLUSTER}-worker-{group}"


def settings_for(port: int) -> Settings:
    return Settings.model_validate(
        {
            "environment": "proof",
            "cluster": CLUSTER,
            "interval_s": INTERVAL_S,
            "targets": {
                name: {
                    "service": service_of(name),
                    "queues": g["queues"],
                    "min_tasks": g["min_tasks"],
                    "max_tasks": g["max"],
                    "concurrency": g["conc"],
                    "target_wait_s": 60,
                }
                for name, g in GROUPS.items()
            },
            "dlq_queues": QUEUES,
            "redis_host": "127.0.0.1",
            "redis_port": port,
            "redis_tls": False,
        }
    )


# ---------------------------------------------------------------- ECS faults (botocore)


@dataclass
class FrozenEcs:
    """The fault-free twin's ECS: the same counts, updates recorded and not applied."""

    counts: dict[str, ServiceCounts]
    updates: dict[str, int] = field(default_factory=dict)

    def describe(self, services: list[str]) -> tuple[dict[str, ServiceCounts], dict[str, str]]:
        return {s: self.counts[s] for s in services if s in self.counts}, {}

    def set_desired(self, service: str, count: int) -> None:
        self.updates[service] = count


# ---------------------------------------------------------------- the world of one run


@dataclass
class World:
    server: RestartableRedis
    proxy: FaultProxy
    ecs: Any  # boto3 ECS client on moto, outside the handler's client
    direct: redis.Redis
    rng: random.Random
    now: float = 1_700_000_000.0

    def desired(self) -> dict[str, int]:
        services = [service_of(g) for g in GROUPS]
        reply = self.ecs.describe_services(cluster=CLUSTER, services=services)
        return {s["serviceName"]: int(s["desiredCount"]) for s in reply["services"]}

    def churn(self, step: int) -> None:
        """Arrivals, completions and in-flight changes: busy, steady and quiet phases, so
        the fault-free decisions include scale-outs, holds and scale-ins."""
        phase = (step // 6) % 3
        pipe = self.direct.pipeline(transaction=False)
        for queue in QUEUES:
            arrivals = [self.rng.randint(80, 600), self.rng.randint(0, 40), 0][phase]
            if arrivals:
                pipe.rpush(self.rng.choice(queue_keys(queue)), *[b"m"] * arrivals)
        pipe.execute()
        for queue in QUEUES:
            budget = self.rng.randint(0, 500) if phase else self.rng.randint(0, 150)
            done = 0
            for key in queue_keys(queue):
                popped = self.direct.lpop(key, budget - done) if budget > done else None
                done += len(popped or [])
            if done:
                self.direct.incrby(completed_key(queue), done)
        in_flight = self.direct.hkeys(UNACKED_KEY)
        finished = in_flight[: self.rng.randint(0, len(in_flight))] if phase else []
        if finished:
            self.direct.hdel(UNACKED_KEY, *finished)
        if phase < 2:
            for i in range(self.rng.randint(0, 12)):  # reserved by workers: in flight
                entry = json.dumps([{}, "", self.rng.choice(QUEUES)])
                self.direct.hset(UNACKED_KEY, f"tag-{step}-{i}", entry)

    def stopped_with_a_backlog(self) -> None:
        """A group scaled to zero with messages waiting: an update is due this run (the
        policy never leaves work without a task), so a throttled UpdateService fires."""
        group = self.rng.choice(sorted(GROUPS))
        self.direct.rpush(GROUPS[group]["queues"][0], *[b"m"] * 100)
        self.ecs.update_service(cluster=CLUSTER, service=service_of(group), desiredCount=0)

    def queued(self) -> tuple[int, int, list[Any]]:
        """Everything queued: messages in every list, unacked entries, counters."""
        waiting = sum(int(self.direct.llen(k)) for q in QUEUES for k in queue_keys(q))
        unacked = int(self.direct.hlen(UNACKED_KEY))
        return waiting, unacked, [self.direct.get(completed_key(q)) for q in QUEUES]

    def fault_free(self, settings: Settings) -> dict[str, int]:
        """The decision with no fault, on a copy of this instant's Redis and ECS state."""
        twin = self.server.client(db=1)
        twin.flushdb()
        for key in self.direct.scan_iter(count=1000):
            self.direct.copy(key, key, destination_db="1", replace=True)
        counts, _ = BotoEcs(CLUSTER).describe([service_of(g) for g in GROUPS])
        ecs = FrozenEcs(counts)
        run_once(settings, twin, ecs, now=self.now)
        twin.close()
        return {s: ecs.updates.get(s, c.desired) for s, c in counts.items()}

    def faulty_client(self) -> Any:
        client = redis_client_for(settings_for(self.proxy.port), None)
        client.connection_pool.connection_kwargs.update(
            socket_timeout=FAST_TIMEOUT_S, socket_connect_timeout=FAST_TIMEOUT_S
        )
        return client


# ---------------------------------------------------------------- the faults


@dataclass(frozen=True)
class Fault:
    name: str
    # What the run must do: "hold" (no count changes), "same" (exactly the fault-free
    # decisions: the fault was absorbed or struck after the decisions were applied) or
    # "others" (the faulted group holds, the others decide as without the fault).
    outcome: str
    kinds: frozenset[str]  # AutoscalerErrors kinds the run must report, and no others
    inject: Callable[[World, BotoEcs], Callable[[], None]]  # returns the cleanup


def _proxy(mode: Any, budget: int | None = None) -> Callable[[World, BotoEcs], Callable[[], None]]:
    def inject(world: World, _: BotoEcs) -> Callable[[], None]:
        world.proxy.set(mode, budget)
        return lambda: world.proxy.set("pass")

    return inject


def _stop_redis(world: World, _: BotoEcs) -> Callable[[], None]:
    world.server.stop()
    return world.server.start


def _freeze_redis(world: World, _: BotoEcs) -> Callable[[], None]:
    world.server.freeze()
    return world.server.thaw


def _reset_after_describe(world: World, ecs: BotoEcs) -> Callable[[], None]:
    """Redis drops every connection once ECS has been read: the reading and the updates
    succeed, saving the policy state fails."""

    def cut(**_: Any) -> None:
        world.proxy.set("reset")

    ecs.client.meta.events.register("after-call.ecs.DescribeServices", cut)
    return lambda: world.proxy.set("pass")


def _throttle(
    operation: str, at_most: int | None
) -> Callable[[World, BotoEcs], Callable[[], None]]:
    """Throttle every attempt (None), or 1..at_most attempts, which the retries absorb."""

    def inject(world: World, ecs: BotoEcs) -> Callable[[], None]:
        throttle(ecs, operation, None if at_most is None else world.rng.randint(1, at_most))
        return lambda: None

    return inject


def _delete_service(world: World, _: BotoEcs) -> Callable[[], None]:
    group = world.rng.choice(sorted(GROUPS))
    before = world.desired()[service_of(group)]
    world.ecs.delete_service(cluster=CLUSTER, service=service_of(group), force=True)

    def redeploy() -> None:
        world.ecs.create_service(
            cluster=CLUSTER, serviceName=service_of(group), desiredCount=before
        )

    return redeploy


NONE: frozenset[str] = frozenset()


def kinds(*names: str) -> frozenset[str]:
    return frozenset(names)


FAULTS = [
    Fault("redis timeout (requests swallowed)", "hold", kinds("redis"), _proxy("blackhole")),
    Fault("redis frozen (SIGSTOP)", "hold", kinds("redis"), _freeze_redis),
    Fault("redis connection reset", "hold", kinds("redis"), _proxy("reset")),
    Fault("redis reset mid-reply", "hold", kinds("redis"), _proxy("reset_reply")),
    Fault("redis stopped", "hold", kinds("redis"), _stop_redis),
    Fault("redis reset once (retried)", "same", NONE, _proxy("reset", budget=1)),
    Fault("redis timeout once (retried)", "same", NONE, _proxy("blackhole", budget=1)),
    Fault("redis lost before the state write", "same", kinds("redis_write"), _reset_after_describe),
    Fault(
        "ECS DescribeServices throttled",
        "hold",
        kinds("ecs_describe"),
        _throttle("DescribeServices", None),
    ),
    Fault(
        "ECS DescribeServices throttled, then answers",
        "same",
        NONE,
        _throttle("DescribeServices", MAX_ATTEMPTS - 1),
    ),
    Fault(
        "ECS UpdateService throttled", "hold", kinds("ecs_update"), _throttle("UpdateService", None)
    ),
    Fault(
        "ECS UpdateService throttled, then answers",
        "same",
        NONE,
        _throttle("UpdateService", MAX_ATTEMPTS - 1),
    ),
    Fault("ECS service deleted", "others", kinds("service_missing"), _delete_service),
]


# ---------------------------------------------------------------- the runs


@pytest.fixture
def world(restartable_redis: RestartableRedis, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    use_fake_aws_credentials(monkeypatch, REGION)
    # botocore's backoff sleeps (up to 20 s per retry) are not what is on trial here.
    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", lambda *_: 0.0)
    proxy = FaultProxy(restartable_redis.port)
    restartable_redis.client().flushall()
    with mock_aws():
        counts = {service_of(group): spec["min_tasks"] for group, spec in GROUPS.items()}
        ecs = ecs_cluster_with(CLUSTER, counts, REGION)
        direct = restartable_redis.client()
        yield World(restartable_redis, proxy, ecs, direct, random.Random(0))
    proxy.close()


def schedule(seed: int, rounds: int) -> list[Fault | None]:
    """Every fault `rounds` times in a seeded order, each followed by at least one clean run
    (None), with random extra clean runs in between."""
    rng = random.Random(seed)
    faults = FAULTS * rounds
    rng.shuffle(faults)
    runs: list[Fault | None] = [None, None]
    for fault in faults:
        runs += [fault, None] + [None] * rng.randint(0, 1)
    return runs


SEEDS = range(4) if EXHAUSTIVE else range(1)
ROUNDS = 6 if EXHAUSTIVE else 2


@pytest.mark.parametrize("seed", SEEDS)
def test_no_fault_lowers_capacity_and_every_fault_is_reported(
    seed: int, world: World, capsys: pytest.CaptureFixture[str]
) -> None:
    world.rng.seed(seed)
    faulty_since: str | None = None
    for step, fault in enumerate(schedule(seed, ROUNDS)):
        world.now += INTERVAL_S
        world.churn(step)
        if fault is not None and "UpdateService" in fault.name:
            world.stopped_with_a_backlog()
        settings = settings_for(world.proxy.port)
        reference = world.fault_free(settings)
        before = world.desired()
        queued = world.queued()
        capsys.readouterr()

        ecs = BotoEcs(CLUSTER)
        client = world.faulty_client()
        cleanup = fault.inject(world, ecs) if fault else (lambda: None)
        try:
            results = run_once(settings, client, ecs, now=world.now)
        finally:
            cleanup()
            client.close()
        out = capsys.readouterr().out
        after = world.desired()
        reported = error_kinds(out)
        label = fault.name if fault else "clean run"
        where = f"seed {seed} step {step} ({label})"

        assert world.queued() == queued, f"{where}: the autoscaler changed queued work"
        for service, count in after.items():
            lowered = count < before[service]
            assert not lowered or count == reference[service], (
                f"{where}: {service} lowered {before[service]}->{count}, "
                f"the fault-free decision was {reference[service]}"
            )
        FIGURES.count(SECTION, "runs")
        scale_ins = [s for s in before if reference[s] < before[s]]
        if fault is None:
            assert reported == [], f"{where}: errors without a fault: {reported}"
            assert after == reference, f"{where}: {after} != fault-free {reference}"
            assert all(r.desired is not None for r in results), where
            if faulty_since:
                FIGURES.count(SECTION, "clean runs right after a fault, all recovered")
            faulty_since = None
            continue
        faulty_since = fault.name
        FIGURES.count(SECTION, f"fault: {fault.name}")
        expected = fault.kinds
        if fault.kinds == {"ecs_update"} and reference == before:
            expected = NONE  # nothing to update this run: the fault did not fire
            FIGURES.count(SECTION, "UpdateService throttled with no update due (not fired)")
        assert {k for k, _ in reported} == expected, f"{where}: reported {reported}"
        if expected:
            FIGURES.count(SECTION, "faulty runs with a failed operation, each reported", 1)
        else:
            FIGURES.count(SECTION, "faulty runs absorbed by retries, decided as fault-free", 1)
        FIGURES.count(SECTION, "AutoscalerErrors metrics emitted", len(reported))
        _check_outcome(fault, before, after, reference, results, where)
        FIGURES.count(SECTION, "scale-ins due in faulty runs (fault-free decision)", len(scale_ins))
        held = [s for s in scale_ins if after[s] == before[s]]
        FIGURES.count(SECTION, "of those, held because of the fault", len(held))
        FIGURES.count(SECTION, "runs that lowered a count because of a fault", 0)


def _check_outcome(
    fault: Fault,
    before: dict[str, int],
    after: dict[str, int],
    reference: dict[str, int],
    results: list[GroupResult],
    where: str,
) -> None:
    if fault.outcome == "hold":
        assert after == before, f"{where}: counts moved {before} -> {after}"
        assert not any(r.changed for r in results), where
        if fault.kinds == {"ecs_update"}:
            failed = {r.service for r in results if r.error}
            assert failed == {s for s in before if reference[s] != before[s]}, where
    elif fault.outcome == "same":
        assert after == reference, f"{where}: {after} != fault-free {reference}"
    else:
        missing = {r.service for r in results if r.desired is None}
        assert len(missing) == 1, where
        for service in before:
            expected = before[service] if service in missing else reference[service]
            assert after[service] == expected, f"{where}: {service}"


def test_a_hung_redis_is_reported_well_inside_the_lambda_timeout(
    restartable_redis: RestartableRedis,
) -> None:
    """The handler's own client (production timeouts) against a Redis that never answers:
    the run must end and report the error well before the Lambda's 60 s timeout, or the
    fault would go unreported with the run killed."""
    proxy = FaultProxy(restartable_redis.port)
    proxy.set("blackhole")
    client = redis_client_for(settings_for(proxy.port), None)
    timeout_s = redis_access.REDIS_SOCKET_TIMEOUT_S
    if not EXHAUSTIVE:  # same client and retries, scaled-down timeout; the count is the point
        client.connection_pool.connection_kwargs["socket_timeout"] = FAST_TIMEOUT_S
    started = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        client.pipeline(transaction=False).llen("default").execute()
    took = time.monotonic() - started
    proxy.close()
    attempts = proxy.fired
    worst_s = attempts * timeout_s + redis_access.REDIS_RETRIES * 0.5  # plus the capped backoff
    assert attempts == redis_access.REDIS_RETRIES + 1
    assert worst_s < 30, f"a hung Redis holds one pipeline for {worst_s:.0f} s"
    if EXHAUSTIVE:
        assert took < 30
        FIGURES.measure(SECTION, "hung Redis, production timeouts: s to the error", f"{took:.1f}")
    FIGURES.measure(SECTION, "hung Redis: attempts per pipeline (was 11)", str(attempts))
    FIGURES.measure(SECTION, "hung Redis: worst s per pipeline (was about 56)", f"{worst_s:.1f}")


@pytest.mark.parametrize("fault", ["redis connection reset", "redis stopped", "ECS throttled"])
def test_the_lambda_entry_point_holds_reports_and_recovers(
    fault: str,
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The same faults through `handler.handler`, as Lambda calls it: it returns, changes
    no count, publishes the error and its run metrics; the next invocation acts again."""
    world.churn(0)  # a busy phase: a working run scales out
    config = settings_for(world.proxy.port).model_dump(
        exclude={"redis_host", "redis_port", "redis_tls", "redis_auth_secret_arn"}
    )
    monkeypatch.setenv("AUTOSCALER_CONFIG", json.dumps(config))
    monkeypatch.setenv("REDIS_HOST", "127.0.0.1")
    monkeypatch.setenv("REDIS_PORT", str(world.proxy.port))
    monkeypatch.setenv("REDIS_TLS", "false")
    throttled = fault == "ECS throttled"

    class ThrottledEcs(BotoEcs):
        def __init__(self, cluster: str) -> None:
            super().__init__(cluster)
            if throttled:
                throttle(self, "DescribeServices", None)

    monkeypatch.setattr(scaler, "BotoEcs", ThrottledEcs)
    cleanup = {
        "redis connection reset": _proxy("reset"),
        "redis stopped": _stop_redis,
        "ECS throttled": lambda *_: lambda: None,
    }[fault](world, BotoEcs(CLUSTER))
    before = world.desired()
    capsys.readouterr()
    try:
        reply = scaler.handler({}, FakeLambdaContext())
    finally:
        cleanup()
    out = capsys.readouterr().out
    assert world.desired() == before
    assert all(r["desired"] is None for r in reply["runs"][0])
    expected = "ecs_describe" if throttled else "redis"
    assert {kind for kind, _ in error_kinds(out)} == {expected}
    assert '"Runs"' in out, "the run's own metrics are flushed too"

    throttled = False
    again = scaler.handler({}, FakeLambdaContext())
    assert error_kinds(capsys.readouterr().out) == []
    assert all(r["desired"] is not None for r in again["runs"][0])
    assert any(world.desired()[s] > before[s] for s in before), "the next run scales out"
    FIGURES.count(SECTION, "Lambda entry point: faulty invocations, then a recovering one")
