"""Chaos soak: real workers of the image's code lose processes and their broker, no work is lost.

`make chaos` runs this. Everything stays on 127.0.0.1 and every process it starts is stopped
on exit, Ctrl-C and failure included:

- a `redis-server` broker with append-only persistence and `appendfsync always` (a write is
  on disk before Redis answers it, so even a host crash keeps every acknowledged publish);
- worker processes started as the image starts them (`python -m celery_service worker`) for
  two worker groups: `interactive` (queues `fast` and `default`) and `batch` (queue `slow`);
- a publisher thread that submits --tasks tasks (default 10,000) at a steady rate over the
  first three quarters of the chaos phase, with the catalog's named priorities and durations
  from milliseconds to a few seconds; half of them apply an effect through the project's
  idempotency helper (`applied_once`). Publishing goes on while Redis is down: a publish that
  fails is retried with the same task id until it is acknowledged;
- a chaos loop that every few seconds `kill -9`s a whole worker (a crashed container), only a
  worker's main process (its pool processes orphaned), or one pool process, or sends a worker
  SIGTERM (an ECS stop); a replacement worker starts a second later. Halfway through it
  `kill -9`s Redis and starts it again on the same files.

After the chaos phase the driver waits until every submitted task is done (or dead-lettered)
or the drain deadline passes. Counting uses only the tasks' own ledger (see chaos_tasks), not
Celery's state: submitted, completed, lost, executed more than once, effects applied twice.
Every duplicate execution must be explained: the earlier execution of the same delivery was
in flight on a process hit by a kill, a SIGTERM or the Redis restart. Exit status 1 if a task
is lost (neither done nor in a dead-letter queue), an effect was applied twice, or duplicates
exceed that bound. Dead letters are counted and listed with their reason: they are kept for
an operator, not lost.
Results go to bench/results/chaos.{json,md} (not for a run with --no-write).

The package keeps its concerns apart: `model` (limits, catalog, options and the data the
soak records), `analysis` (the ledger and the verdict from it), `runner` (the task mix, the
processes, the faults and the kills), `report` (bench/results/chaos.{json,md}) and
`__main__` (the CLI).
"""

from bench.chaos.analysis import LedgerReader, analyse, executions_of
from bench.chaos.model import CATALOG, Event, Options, Report
from bench.chaos.runner import (
    Fleet,
    Publisher,
    Worker,
    dead_letters,
    plan_tasks,
    publisher_app,
    run,
    work_directory,
)

__all__ = [
    "CATALOG",
    "Event",
    "Fleet",
    "LedgerReader",
    "Options",
    "Publisher",
    "Report",
    "Worker",
    "analyse",
    "dead_letters",
    "executions_of",
    "plan_tasks",
    "publisher_app",
    "run",
    "work_directory",
]
