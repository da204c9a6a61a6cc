"""The prefork pool, with its time limits checked by one sweep a second instead of a timer
per task.

Celery's AsynPool gives every task a timer entry in the main process's event loop for its
soft and hard limits. When the task ends the entry is only marked cancelled: kombu's timer
keeps it in its heap until its due time. At a thousand tasks a second under a one-hour
limit that is millions of dead entries: memory that grows with the limit and the rate, and
heap work on every task (the time limits cost about 9 % of the drain rate,
bench/results/diag4.md). Here each running task has one deadline in a dict, removed when it
ends, and one repeating timer applies the limits through the pool's own handlers
(`on_soft_timeout`, `on_hard_timeout`). A limit fires at most SWEEP_S late.
"""

from __future__ import annotations

from dataclasses import dataclass
from time import monotonic
from typing import Any

from celery.concurrency import asynpool, prefork

#: Seconds between two checks of the running tasks' deadlines.
SWEEP_S = 1.0


@dataclass
class _Deadlines:
    soft: float | None  # monotonic seconds; None once fired or without a soft limit
    hard: float | None


class SweptAsynPool(asynpool.AsynPool):  # type: ignore[misc]
    def _create_timelimit_handlers(self, hub: Any) -> None:
        # Called again when the worker reconnects to the broker: keep the running tasks'
        # deadlines, and only one sweep.
        deadlines: dict[int, _Deadlines] = getattr(self, "_deadlines", None) or {}
        self._deadlines = deadlines

        def on_timeout_set(result: Any, soft: float | None, hard: float | None) -> None:
            if soft or hard:
                now = monotonic()
                deadlines[result._job] = _Deadlines(
                    now + soft if soft else None, now + hard if hard else None
                )

        def discard(job: int) -> None:
            deadlines.pop(job, None)

        self.on_timeout_set = on_timeout_set
        self.on_timeout_cancel = lambda result: discard(result._job)
        self._discard_tref = discard
        sweep = getattr(self, "_sweep", None)
        if sweep is not None:
            sweep.cancel()
        self._sweep = hub.call_repeatedly(SWEEP_S, self._apply_time_limits)

    def _apply_time_limits(self) -> None:
        now = monotonic()
        for job, due in list(self._deadlines.items()):
            result = self._cache.get(job)
            if result is None or result.ready():
                del self._deadlines[job]  # ended between its result and this sweep
            elif due.hard is not None and now >= due.hard:
                del self._deadlines[job]
                self.on_hard_timeout(result)
            elif due.soft is not None and now >= due.soft:
                due.soft = None
                if due.hard is None:
                    del self._deadlines[job]
                self.on_soft_timeout(result)


class TaskPool(prefork.TaskPool):  # type: ignore[misc]
    """Celery's prefork pool (`worker_pool`), on SweptAsynPool."""

    Pool = SweptAsynPool
