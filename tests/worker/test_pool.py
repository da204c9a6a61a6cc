"""The prefork pool's time limits: one sweep instead of a timer per task (celery_service.pool).

The limits themselves are proven on real workers (tests/worker/test_semantics.py and
test_reliability.py: a soft limit raised in the task, a hard one that kills it); here, what
the sweep keeps and when it fires, with the pool's handlers recorded.
"""

from __future__ import annotations

from typing import Any

import pytest

import celery_service.pool as pool_module
from celery_service.pool import SWEEP_S, SweptAsynPool, TaskPool


class Hub:
    def __init__(self) -> None:
        self.repeating: list[Any] = []

    def call_repeatedly(self, seconds: float, fun: Any) -> Any:
        entry = Entry(seconds, fun)
        self.repeating.append(entry)
        return entry


class Entry:
    def __init__(self, seconds: float, fun: Any) -> None:
        self.seconds, self.fun, self.cancelled = seconds, fun, False

    def cancel(self) -> None:
        self.cancelled = True


class Result:
    def __init__(self, job: int) -> None:
        self._job, self.done = job, False

    def ready(self) -> bool:
        return self.done


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(pool_module, "monotonic", clock)
    return clock


def swept_pool(hub: Hub) -> Any:
    """The pool's time-limit part alone: no processes are started."""
    pool: Any = SweptAsynPool.__new__(SweptAsynPool)
    pool._cache = {}
    pool.fired = []
    pool.on_soft_timeout = lambda result: pool.fired.append(("soft", result._job))
    pool.on_hard_timeout = lambda result: pool.fired.append(("hard", result._job))
    pool._create_timelimit_handlers(hub)
    return pool


def start(pool: Any, job: int, soft: float | None, hard: float | None) -> Result:
    result = Result(job)
    pool._cache[job] = result
    pool.on_timeout_set(result, soft, hard)
    return result


def test_the_worker_pool_is_prefork_with_swept_limits() -> None:
    from celery.concurrency import prefork

    assert issubclass(TaskPool, prefork.TaskPool)
    assert TaskPool.Pool is SweptAsynPool


def test_soft_then_hard_limits_fire_once_each_within_a_sweep(clock: Clock) -> None:
    hub = Hub()
    pool = swept_pool(hub)
    (sweep,) = hub.repeating
    assert sweep.seconds == SWEEP_S
    start(pool, 1, soft=10, hard=20)
    start(pool, 2, soft=None, hard=5)
    clock.now += 4.9
    sweep.fun()
    assert pool.fired == []
    clock.now += SWEEP_S
    sweep.fun()
    assert pool.fired == [("hard", 2)]
    clock.now += 5
    sweep.fun()
    sweep.fun()
    assert pool.fired == [("hard", 2), ("soft", 1)]
    clock.now += 10
    sweep.fun()
    assert pool.fired == [("hard", 2), ("soft", 1), ("hard", 1)]
    assert pool._deadlines == {}


def test_a_task_that_ends_leaves_nothing_behind(clock: Clock) -> None:
    hub = Hub()
    pool = swept_pool(hub)
    for job in range(10_000):
        result = start(pool, job, soft=3600, hard=3660)
        result.done = True
        pool.on_timeout_cancel(result)
        del pool._cache[job]
    assert pool._deadlines == {}
    # One that ended without its cancel reaching the pool is dropped at the next sweep.
    ended = start(pool, 10_001, soft=1, hard=2)
    ended.done = True
    clock.now += 5
    hub.repeating[0].fun()
    assert pool.fired == []
    assert pool._deadlines == {}


def test_a_reconnect_keeps_running_deadlines_and_one_sweep(clock: Clock) -> None:
    hub = Hub()
    pool = swept_pool(hub)
    start(pool, 7, soft=None, hard=30)
    pool._create_timelimit_handlers(hub)  # the worker registers again after a reconnect
    first, second = hub.repeating
    assert first.cancelled
    assert not second.cancelled
    clock.now += 31
    second.fun()
    assert pool.fired == [("hard", 7)]
