"""The chaos soak's tasks and their ledger, loaded by its workers (`--include bench.chaos_tasks`).

The ledger is independent of Celery and of the broker: every execution appends JSON lines to
a file of its own process (`$CHAOS_LEDGER_DIR/<worker>-<pid>.jsonl`), one `write()` per
line on an O_APPEND descriptor, so a line is in the kernel's page cache the moment the call
returns and survives a `kill -9` of the process.

    {"e": "s", "id": ..., "r": retries, "w": worker, "p": pid, "t": epoch}   started
    {"e": "x", "id": ..., ...}   the effect, applied through `applied_once`
    {"e": "d", "id": ..., ...}   the body finished (the work is done)

The effect stands for an external side effect (an email, a payment): the line itself is the
effect, so counting `x` lines per task id counts how often the effect was really applied.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from celery import shared_task

from celery_service.idempotency import EffectInProgressError, applied_once
from celery_service.redis_client import client_for
from celery_service.tasks.base import PlatformTask

LEDGER_DIR_ENV = "CHAOS_LEDGER_DIR"
WORKER_NAME_ENV = "CHAOS_WORKER_NAME"

# Task name -> (queue, catalog priority). One body, several names: the catalog routes by name.
TASKS: dict[str, tuple[str, str]] = {
    "chaos.urgent": ("fast", "high"),
    "chaos.normal": ("fast", "normal"),
    "chaos.bulk": ("fast", "bulk"),
    "chaos.default": ("default", "normal"),
    "chaos.report": ("slow", "low"),
}

_fds: dict[int, int] = {}  # pid -> ledger descriptor: prefork children never share one


def record(event: str, task_id: str, retries: int) -> None:
    pid = os.getpid()
    fd = _fds.get(pid)
    if fd is None:
        worker = os.environ.get(WORKER_NAME_ENV, "worker")
        path = os.path.join(os.environ[LEDGER_DIR_ENV], f"{worker}-{pid}.jsonl")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        _fds[pid] = fd
    line = {
        "e": event,
        "id": task_id,
        "r": retries,
        "w": os.environ.get(WORKER_NAME_ENV, "worker"),
        "p": pid,
        "t": time.time(),
    }
    os.write(fd, (json.dumps(line, separators=(",", ":")) + "\n").encode())


def work(self: Any, duration_ms: int, effect: bool) -> str:
    """Sleep `duration_ms` (the work), apply the effect once if asked, then note the end."""
    task_id: str = self.request.id
    retries = int(self.request.retries or 0)
    record("s", task_id, retries)
    time.sleep(duration_ms / 1000)
    if effect:
        client = client_for(self.app.platform_settings)
        try:
            applied_once(client, f"chaos:{task_id}", lambda: record("x", task_id, retries))
        except EffectInProgressError as exc:
            raise self.retry(exc=exc, countdown=exc.retry_after_s) from exc
    record("d", task_id, retries)
    return "done"


for _name in TASKS:
    shared_task(bind=True, base=PlatformTask, name=_name)(work)
