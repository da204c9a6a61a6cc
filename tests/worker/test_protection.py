"""ECS scale-in protection against a local stand-in for the ECS agent endpoint."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

from celery_service.protection import AGENT_TIMEOUT_S, TaskMonitor
from tests.conftest import RedisServer
from tests.worker.harness import publisher, running, wait_for
from tests.worker.http_standin import standin


def bodies(requests: list[dict[str, object]]) -> list[dict[str, object]]:
    return [json.loads(r["body"]) for r in requests]  # type: ignore[arg-type]


def test_busy_worker_protects_its_task_and_releases_when_idle(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    server = redis_server()
    app = publisher(server.port)
    with (
        standin([(200, {"protection": {"ProtectionEnabled": True}})]) as agent,
        running(server.port, tmp_path, group="batch", ECS_AGENT_URI=agent.url),
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
        {"ProtectionEnabled": True, "ExpiresInMinutes": 60},
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
