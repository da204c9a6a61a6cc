"""ECS scale-in protection against a local stand-in for the ECS agent endpoint."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery_service.protection import AGENT_TIMEOUT_S, TaskMonitor
from tests.conftest import RedisServer
from tests.worker.harness import TEST_CATALOG, publisher, running, wait_for
from tools.http_standin import standin


def bodies(requests: list[dict[str, object]]) -> list[dict[str, object]]:
    return [json.loads(r["body"]) for r in requests]  # type: ignore[arg-type]


def test_busy_worker_protects_its_task_and_releases_when_idle(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    server = redis_server()
    app = publisher(server.port)
    # The group's bound reaches the worker through the catalog: the lease ends by it.
    catalog = copy.deepcopy(TEST_CATALOG)
    catalog["worker_groups"]["batch"]["protection_max_minutes"] = 30
    with (
        standin([(200, {"protection": {"ProtectionEnabled": True}})]) as agent,
        running(server.port, tmp_path, group="batch", catalog=catalog, ECS_AGENT_URI=agent.url),
    ):
        assert agent.requests == [], "an idle worker asks for nothing"
        result = app.send_task("samples.build_report", args=["r-protect", 3, 1.0])
        wait_for(lambda: len(agent.requests) >= 1, 10, "protection to be requested")
        protected_at = agent.requests[0]["at"]
        assert result.get(timeout=30) == "report r-protect: 3 sections"
        wait_for(lambda: len(agent.requests) >= 2, 20, "protection to be released")
    assert [r["path"] for r in agent.requests[:2]] == ["/task-protection/v1/state"] * 2
    assert [r["method"] for r in agent.requests[:2]] == ["PUT", "PUT"]
    assert bodies(agent.requests[:2]) == [
        {"ProtectionEnabled": True, "ExpiresInMinutes": 30},
        {"ProtectionEnabled": False},
    ]
    assert protected_at < time.time()
    app.close()


def test_a_slow_agent_never_delays_a_task(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    server = redis_server()
    app = publisher(server.port)
    with standin(delay_s=10) as agent, running(server.port, tmp_path, ECS_AGENT_URI=agent.url):
        started = time.monotonic()
        assert app.send_task("samples.square", args=[4]).get(timeout=10) == 16
        took = time.monotonic() - started
        wait_for(lambda: len(agent.requests) >= 1, 10, "the protection call")
    assert took < 2, f"the task took {took:.1f} s behind a 10 s agent"
    app.close()


def test_outside_ecs_the_monitor_only_keeps_the_heartbeat(tmp_path: Path) -> None:
    heartbeat = tmp_path / "hb"
    monitor = TaskMonitor(
        busy=lambda: 3, agent_uri=None, protection_minutes=5, heartbeat_file=str(heartbeat)
    )
    monitor.step()
    assert heartbeat.exists()
    assert monitor.protected_until == 0.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def agent_monitor(url: str, busy: list[int], clock: Clock, **options: Any) -> TaskMonitor:
    """A monitor of `busy[0]` running messages with 60-minute leases, on `clock`."""
    return TaskMonitor(
        busy=lambda: busy[0],
        agent_uri=url,
        protection_minutes=60,
        heartbeat_file=None,
        clock=clock,
        **options,
    )


def test_a_message_wakes_the_monitor_only_when_its_lease_may_be_missing() -> None:
    """Each wake-up is a thread switch in the worker's main process, on the path of the
    message that caused it: a worker without a lease, or with one past half-life, needs
    one; a fresh lease only needs the time noted; outside ECS nothing does."""
    clock = Clock()
    monitor = TaskMonitor(
        busy=lambda: 1,
        agent_uri="http://agent",
        protection_minutes=5,
        heartbeat_file=None,
        clock=clock,
    )

    def woken() -> bool:
        was = monitor._wake.is_set()
        monitor._wake.clear()
        return was

    monitor.wake()
    assert woken(), "not protected yet"
    monitor.protected_until, monitor.lease_s = clock.now + 300, 300
    monitor.wake()
    assert not woken(), "a fresh lease holds"
    assert monitor.message_at == clock.now
    clock.now += 151
    monitor.wake()
    assert woken(), "past half-life: the lease is due for renewal"
    outside = TaskMonitor(busy=lambda: 1, agent_uri=None, protection_minutes=5, heartbeat_file=None)
    outside.wake()
    assert not outside._wake.is_set()


def test_a_message_during_an_idle_spell_restarts_it_without_a_wake_up() -> None:
    """The lease is released after IDLE_GRACE_S without work: a message that found the
    worker idle, and finished before the next poll, counts as work all the same."""
    clock = Clock()
    busy = [1]
    with standin([(200, {})] * 2) as agent:
        monitor = agent_monitor(agent.url, busy, clock)
        monitor.step()  # protected
        busy[0] = 0
        monitor.step()  # idle from now
        clock.now += 4
        monitor.wake()  # a short task came and went between two polls
        assert not monitor._wake.is_set()
        clock.now += 2
        monitor.step()  # 6 s since the last work by the polls alone, 2 s by the message
        assert monitor.protected_until > 0
        clock.now += 4
        monitor.step()
        assert monitor.protected_until == 0.0
    assert bodies(agent.requests) == [
        {"ProtectionEnabled": True, "ExpiresInMinutes": 60},
        {"ProtectionEnabled": False},
    ]


def test_protection_is_renewed_before_it_expires_and_retried_after_failure() -> None:
    with standin([(500, {}), (200, {}), (200, {})]) as agent:
        monitor = TaskMonitor(
            busy=lambda: 1, agent_uri=agent.url, protection_minutes=2, heartbeat_file=None
        )
        monitor.step()  # the agent fails: not protected, tried again next step
        assert monitor.protected_until == 0.0
        monitor.step()
        assert monitor.protected_until > time.monotonic() + 60
        monitor.step()  # fresh: no call
        assert len(agent.requests) == 2
        monitor.protected_until = time.monotonic() + 30  # past half-life
        monitor.step()
        assert len(agent.requests) == 3
    assert AGENT_TIMEOUT_S <= 2


def test_a_busy_worker_releases_its_protection_at_the_bound_then_waits_for_idle() -> None:
    """ECS never stops a protected task: without a bound a deploy would wait for as long
    as the worker keeps finding work. Each lease ends by the bound; at it the worker lets
    go, busy or not, and protects again only after an idle spell."""
    clock = Clock()
    busy = [1]
    with standin([(200, {})] * 6) as agent:
        monitor = agent_monitor(agent.url, busy, clock, max_minutes=90)
        monitor.step()
        clock.now += 31 * 60  # past half-life: renewed, but only up to the bound
        monitor.step()
        clock.now += 59 * 60  # 90 minutes of work
        monitor.step()
        assert monitor.protected_until == 0.0
        clock.now += 60
        monitor.step()  # still busy: no new protection
        busy[0] = 0
        monitor.step()
        clock.now += 6  # idle past the grace period: the bound starts again
        monitor.step()
        busy[0] = 1
        monitor.step()
        leases = bodies(agent.requests)
    assert leases == [
        {"ProtectionEnabled": True, "ExpiresInMinutes": 60},
        {"ProtectionEnabled": True, "ExpiresInMinutes": 59},  # ends at the 90-minute bound
        {"ProtectionEnabled": False},
        {"ProtectionEnabled": True, "ExpiresInMinutes": 60},
    ]


def test_an_idle_worker_releases_without_being_told_to_stop() -> None:
    """Protection ends with the work, not with a SIGTERM: a scale-in or a deploy can then
    take the task at once."""
    clock = Clock()
    busy = [2]
    with standin([(200, {})] * 2) as agent:
        monitor = agent_monitor(agent.url, busy, clock)
        monitor.step()
        busy[0] = 0
        monitor.step()
        clock.now += 4
        monitor.step()  # within the grace period: still protected
        assert monitor.protected_until > 0
        clock.now += 2
        monitor.step()
        assert monitor.protected_until == 0.0
    assert bodies(agent.requests) == [
        {"ProtectionEnabled": True, "ExpiresInMinutes": 60},
        {"ProtectionEnabled": False},
    ]
