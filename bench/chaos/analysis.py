"""The ledger: tailing the files the tasks write, and the soak's verdict from them alone."""

from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.chaos.model import ACK_GRACE_S, Event, Execution, Report


class LedgerReader:
    """Tails every process's ledger file; only whole lines count (a kill can cut the last)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.offsets: dict[Path, int] = {}
        self.records: list[dict[str, Any]] = []
        self.done: set[str] = set()

    def poll(self) -> None:
        for path in sorted(self.directory.glob("*.jsonl")):
            with path.open("rb") as fh:
                fh.seek(self.offsets.get(path, 0))
                data = fh.read()
            complete = data[: data.rfind(b"\n") + 1]
            self.offsets[path] = self.offsets.get(path, 0) + len(complete)
            for line in complete.splitlines():
                record = json.loads(line)
                self.records.append(record)
                if record["e"] == "d":
                    self.done.add(record["id"])


def executions_of(records: Iterable[dict[str, Any]]) -> list[Execution]:
    """Pair each start with the end written by the same process for the same delivery."""
    runs: list[Execution] = []
    open_runs: dict[tuple[str, int, int], Execution] = {}
    for rec in sorted(records, key=lambda r: r["t"]):
        key = (rec["id"], rec["r"], rec["p"])
        if rec["e"] == "s":
            run = Execution(rec["id"], rec["r"], rec["w"], rec["p"], rec["t"])
            runs.append(run)
            open_runs[key] = run
        elif rec["e"] == "d" and key in open_runs:
            open_runs.pop(key).end = rec["t"]
    return runs


def _hit(event: Event, run: Execution) -> bool:
    """Was `run` on a process `event` hit, and not yet acknowledged when it hit?"""
    if event.worker != "*" and run.worker != event.worker:
        return False
    if event.pid is not None and run.pid != event.pid:
        return False
    return run.start <= event.t1 and (run.end is None or run.end >= event.t0 - ACK_GRACE_S)


def analyse(
    records: list[dict[str, Any]],
    submitted: dict[str, bool],
    events: list[Event],
    *,
    dead_letters: dict[str, str],
    not_submitted: int = 0,
    republished: frozenset[str] = frozenset(),
) -> Report:
    """The verdict from the ledger alone. `submitted`: task id -> applies an effect."""
    runs = executions_of(records)
    done = {r["id"] for r in records if r["e"] == "d"}
    effects = Counter(r["id"] for r in records if r["e"] == "x")
    per_delivery: dict[tuple[str, int], list[Execution]] = defaultdict(list)
    for run in runs:
        per_delivery[(run.task_id, run.retries)].append(run)
    per_task = Counter(run.task_id for run in runs)

    for event in events:
        event.in_flight = sum(1 for run in runs if _hit(event, run))
        event.running = sum(
            1
            for run in runs
            if _hit(event, run) and run.start <= event.t0 and (run.end or event.t0) >= event.t0
        )
    ack_lags: list[float] = []
    duplicates = unexplained = 0
    for deliveries in per_delivery.values():
        for earlier, _again in itertools.pairwise(deliveries):
            duplicates += 1
            cause = next((e for e in events if _hit(e, earlier)), None)
            if cause is None and earlier.task_id in republished and earlier.retries == 0:
                continue  # a publish retried after Redis took the first copy
            if cause is None:
                unexplained += 1
            else:
                cause.duplicates += 1
                if earlier.end is not None and earlier.end < cause.t0:
                    ack_lags.append(cause.t0 - earlier.end)
    not_done = set(submitted) - done
    failed = not_done & set(dead_letters)
    with_effect = {task_id for task_id, effect in submitted.items() if effect}
    return Report(
        submitted=len(submitted),
        completed=len(done & set(submitted)),
        lost=len(not_done - failed),
        dead_lettered=len(failed),
        not_submitted=not_submitted,
        executions=len(runs),
        retries=sum(1 for key in per_delivery if key[1] > 0),
        executed_more_than_once=sum(1 for n in per_task.values() if n > 1),
        duplicate_executions=duplicates,
        max_executions=max(per_task.values(), default=0),
        # Publish retries can enqueue a second copy when Redis took the first but its
        # answer was lost; each is one more allowed duplicate.
        duplicate_bound=sum(e.in_flight for e in events) + len(republished),
        unexplained_duplicates=unexplained,
        effect_tasks=len(with_effect),
        effects_applied=sum(effects[t] for t in with_effect),
        effects_applied_twice=sum(1 for t in with_effect if effects[t] > 1),
        effects_missing=len({t for t in with_effect & done if effects[t] == 0}),
        publish_retries=len(republished),
        actions=dict(Counter(e.kind for e in events)),
        events=events,
        lost_ids=sorted(not_done - failed)[:20],
        lost_never_started=len((not_done - failed) - set(per_task)),
        dead_letter_reasons=dict(Counter(dead_letters[t][:100] for t in failed)),
        max_ack_lag_s=round(max(ack_lags, default=0.0), 3),
    )
