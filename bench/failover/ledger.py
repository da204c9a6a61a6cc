"""Figures and verdict of one mode, from the tasks' own ledger (bench.chaos_tasks) and what
the publisher, the broker and the process table say; nothing is read from Celery's state.

- lost: acknowledged publish, not completed, not dead-lettered, and no longer anywhere in
  the broker (no queue, not unacked): nothing will ever run it;
- stuck: not completed by the drain deadline but still in the broker (typically unacked,
  where it waits the visibility timeout: 3,960 s in the sample catalog);
- run twice: one delivery (task id, retry number) executed more than once;
- effects applied twice: tasks whose `applied_once` effect shows twice in the ledger; one
  first applied within the replication window is excused with it (its marker was lost);
- resumed: every worker that was serving at the fault has started a task whose publish
  began after the fault ended, so it works on the new primary; beat has written its
  heartbeat there;
- drained: every task acknowledged before the fault ended has completed.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from bench.chaos import executions_of

RESUME_GOAL_S = 30.0  # the goal: working on the new primary within this (seconds)


@dataclass
class Exit:
    name: str  # worker or beat process
    status: int | None
    at: float  # epoch seconds


@dataclass
class Observed:
    """What one run of a mode saw, apart from the ledger."""

    acked_at: dict[str, float]  # task id -> when its publish was acknowledged (epoch)
    effects: dict[str, bool]  # task id -> applies an effect through applied_once
    fault_start: float
    fault_end: float
    workers: list[str]  # the workers serving when the fault began
    dead_letters: dict[str, str] = field(default_factory=dict)  # task id -> reason
    in_broker: set[str] = field(default_factory=set)  # task ids still queued or unacked
    exits: list[Exit] = field(default_factory=list)
    beat_resumed_at: float | None = None  # first beat heartbeat on the new primary (epoch)
    window: tuple[float, float] | None = None  # replication window: acks that may be lost
    # task id -> when its acknowledged publish began (a publish that waits for a replica
    # may be acknowledged after a worker started it); acked_at where missing
    sent_at: dict[str, float] = field(default_factory=dict)


@dataclass
class Figures:
    submitted: int
    completed: int
    dead_lettered: int
    lost: int
    lost_in_window: int  # of the lost, acknowledged within the replication window
    acked_in_window: int  # publishes acknowledged within it, lost or not
    stuck: int
    run_twice: int
    effect_tasks: int
    effects_applied_twice: int
    effects_twice_in_window: int  # of those, first applied within the replication window
    exits: list[Exit]
    publisher_resume_s: float | None  # first publish acknowledged after the fault's end
    first_completion_s: float | None  # of a task published after the fault's end
    worker_resume_s: dict[str, float | None]  # per worker serving at the fault
    beat_resume_s: float | None
    drained_s: float | None
    fault_s: float  # how long the fault lasted
    lost_ids: list[str] = field(default_factory=list)
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def resume_s(self) -> float | None:
        """When the last of the workers and beat worked on the new primary."""
        times = [*self.worker_resume_s.values(), self.beat_resume_s]
        return None if not times or None in times else max(t for t in times if t is not None)

    def misses(self) -> list[str]:
        """The goals this mode missed; empty: it passed."""
        missed = []
        resume = self.resume_s
        if resume is None or resume > RESUME_GOAL_S:
            late = {n: t for n, t in self.worker_resume_s.items() if t is None or t > RESUME_GOAL_S}
            if self.beat_resume_s is None or self.beat_resume_s > RESUME_GOAL_S:
                late["beat"] = self.beat_resume_s
            missed.append(f"not working again within {RESUME_GOAL_S:.0f} s: {_seconds(late)}")
        if self.exits:
            missed.append(f"{len(self.exits)} processes exited: {[e.name for e in self.exits]}")
        if self.lost > self.lost_in_window:
            missed.append(f"{self.lost - self.lost_in_window} lost beyond the replication window")
        if self.stuck:
            missed.append(f"{self.stuck} stuck at the drain deadline")
        if self.effects_applied_twice > self.effects_twice_in_window:
            beyond = self.effects_applied_twice - self.effects_twice_in_window
            missed.append(f"{beyond} effects applied twice beyond the replication window")
        return missed

    @property
    def ok(self) -> bool:
        return not self.misses()


def _seconds(times: dict[str, float | None]) -> str:
    return ", ".join(f"{n} {'never' if t is None else f'{t:.1f} s'}" for n, t in times.items())


def count(records: Iterable[dict[str, Any]], seen: Observed) -> Figures:
    records = list(records)
    submitted = set(seen.acked_at)
    end = seen.fault_end
    done_at: dict[str, float] = {}
    for rec in sorted(records, key=lambda r: r["t"]):
        if rec["e"] == "d":
            done_at.setdefault(rec["id"], rec["t"])
    runs = [run for run in executions_of(records) if run.task_id in submitted]
    per_delivery = Counter((run.task_id, run.retries) for run in runs)
    effects = Counter(r["id"] for r in records if r["e"] == "x")
    first_effect: dict[str, float] = {}
    for rec in records:
        if rec["e"] == "x":
            first_effect[rec["id"]] = min(rec["t"], first_effect.get(rec["id"], rec["t"]))

    not_done = submitted - set(done_at)
    dead = not_done & set(seen.dead_letters)
    stuck = (not_done - dead) & seen.in_broker
    lost = not_done - dead - stuck
    low, high = seen.window or (0.0, -1.0)
    in_window = {t for t in submitted if low <= seen.acked_at[t] <= high}

    sent_at = {t: seen.sent_at.get(t, seen.acked_at[t]) for t in submitted}
    after = {t for t in submitted if sent_at[t] > end}
    first_start: dict[str, float] = defaultdict(lambda: float("inf"))
    for run in runs:
        # Not a run of an earlier publish of the same id (one whose confirmation was cut
        # off: it raised, the publisher sent it again, and the first copy ran too).
        if run.task_id in after and run.start >= sent_at[run.task_id]:
            first_start[run.worker] = min(first_start[run.worker], run.start)
    before = submitted - after
    drained = None
    if before and not (before - set(done_at) - (lost & in_window) - dead):
        drained = max((done_at[t] for t in before & set(done_at)), default=end) - end

    with_effect = {t for t in submitted if seen.effects.get(t)}
    twice = {t for t in with_effect if effects[t] > 1}
    return Figures(
        submitted=len(submitted),
        completed=len(submitted & set(done_at)),
        dead_lettered=len(dead),
        lost=len(lost),
        lost_in_window=len(lost & in_window),
        acked_in_window=len(in_window),
        stuck=len(stuck),
        run_twice=sum(1 for n in per_delivery.values() if n > 1),
        effect_tasks=len(with_effect),
        effects_applied_twice=len(twice),
        effects_twice_in_window=sum(1 for t in twice if low <= first_effect[t] <= high),
        exits=list(seen.exits),
        publisher_resume_s=_since(end, (seen.acked_at[t] for t in after)),
        first_completion_s=_since(end, (done_at[t] for t in after & set(done_at))),
        worker_resume_s={
            w: (first_start[w] - end if first_start[w] != float("inf") else None)
            for w in seen.workers
        },
        beat_resume_s=None if seen.beat_resumed_at is None else seen.beat_resumed_at - end,
        drained_s=drained,
        fault_s=end - seen.fault_start,
        lost_ids=sorted(lost)[:20],
        dead_letter_reasons=dict(Counter(seen.dead_letters[t][:100] for t in dead)),
    )


def _since(t0: float, times: Iterable[float]) -> float | None:
    return min((t - t0 for t in times), default=None)
