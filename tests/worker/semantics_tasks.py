"""Tasks written as a team writes them (plain `shared_task`, decorator options, canvas), for
the Celery-semantics tests. Each records what happened in Redis, where the test reads it."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

from billiard.exceptions import SoftTimeLimitExceeded
from celery import shared_task
from celery.exceptions import Reject
from celery.worker.control import control_command

from celery_service.redis_client import client_for
from celery_service.tasks.base import PermanentError, PlatformTask, TransientError

ORDER_KEY = "semantics:order"  # labels in the order tasks ran
RUNS_KEY = "semantics:runs"  # hash: label -> how many times it ran
RAN_AT_KEY = "semantics:ran-at"  # hash: label -> epoch seconds of its (last) run

_hoard: list[bytes] = []  # memory a task keeps, so its pool process stays large


def _note(task: Any, label: str) -> None:
    client = client_for(task.app.platform_settings)
    pipe = client.pipeline()
    pipe.rpush(ORDER_KEY, label)
    pipe.hincrby(RUNS_KEY, label, 1)
    pipe.hset(RAN_AT_KEY, label, time.time())
    pipe.execute()


@control_command(args=[("seconds", float)], signature="<seconds>")
def block_event_loop(state: Any, seconds: float) -> dict[str, str]:
    """A remote-control command runs on the worker's event loop: this one stands in for a
    read that never returns (a half-open connection), blocking the loop and nothing else."""
    time.sleep(seconds)
    return {"ok": "unblocked"}


@shared_task(bind=True, name="semantics.urgent")
def urgent(self: Any, label: str) -> str:
    _note(self, label)
    return label


@shared_task(bind=True, name="semantics.eventually", priority=0)  # the catalog says "bulk"
def eventually(self: Any, label: str) -> str:
    _note(self, label)
    return label


@shared_task(bind=True, name="semantics.step")
def step(self: Any, value: Any = None) -> Any:
    _note(self, f"step:{value}")
    return value


@shared_task(bind=True, name="semantics.parked_high")
def parked_high(self: Any, *args: Any) -> None:
    _note(self, "parked_high")


@shared_task(bind=True, name="semantics.parked_low")
def parked_low(self: Any, *args: Any) -> None:
    _note(self, "parked_low")


@shared_task(bind=True, name="semantics.patterned.tick")
def patterned_tick(self: Any, *args: Any) -> None:
    _note(self, "patterned_tick")


@shared_task(bind=True, name="semantics.unlisted")
def unlisted(self: Any, *args: Any) -> None:
    _note(self, "unlisted")


@shared_task(bind=True, name="semantics.limits.sleep_through_soft")
def sleep_through_soft(self: Any, seconds: float) -> None:
    """Ignores its soft limit, so only the hard limit stops it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            time.sleep(0.1)
        except SoftTimeLimitExceeded:
            continue


@shared_task(bind=True, name="semantics.limits.requeued_at_hard_limit", acks_on_timeout=False)
def requeued_at_hard_limit(self: Any, label: str) -> None:
    """Runs past its hard limit every time; its message goes back to the queue then (the
    task's acks_on_timeout=False) instead of to the DLQ."""
    _note(self, label)
    sleep_through_soft(60)


@shared_task(bind=True, name="semantics.limits.sleep")
def sleep(self: Any, seconds: float) -> None:
    time.sleep(seconds)


@shared_task(bind=True, base=PlatformTask, name="semantics.flaky")
def flaky(self: Any) -> None:
    raise TransientError("always failing")


@shared_task(bind=True, base=PlatformTask, name="semantics.refused")
def refused(self: Any) -> None:
    raise PermanentError("bad input")


@shared_task(bind=True, name="semantics.broken")
def broken(self: Any) -> None:
    raise ValueError("a bug")


@shared_task(bind=True, name="semantics.later")
def later(self: Any, label: str) -> None:
    _note(self, label)


@shared_task(bind=True, name="semantics.retry_later", max_retries=1)
def retry_later(self: Any, label: str, countdown: float) -> None:
    """First run: retry with a countdown set in task code; second run: record."""
    if self.request.retries == 0:
        raise self.retry(countdown=countdown)
    _note(self, label)


@shared_task(bind=True, name="semantics.whoami")
def whoami(self: Any, label: str) -> int:
    _note(self, label)
    return os.getpid()


@shared_task(bind=True, name="semantics.exhausts_memory")
def exhausts_memory(self: Any) -> None:
    """Asks for more memory than any machine has: the allocation raises MemoryError."""
    bytearray(1 << 60)


@shared_task(bind=True, name="semantics.crash")
def crash(self: Any, label: str) -> None:
    """Ends its own pool process, as a segfault or the kernel's OOM killer would."""
    _note(self, label)
    os.kill(os.getpid(), signal.SIGKILL)


@shared_task(bind=True, name="semantics.nap")
def nap(self: Any, label: str, seconds: float) -> str:
    _note(self, label)
    time.sleep(seconds)
    return label


@shared_task(name="semantics.quiet", ignore_result=True)
def quiet(path: str) -> None:
    """Leaves its mark in a file, not in Redis: it runs on a full Redis."""
    Path(path).touch()


@shared_task(bind=True, name="semantics.hoard")
def hoard(self: Any, label: str, mib: int) -> int:
    """Keeps `mib` MiB alive in its pool process after it returns."""
    _hoard.append(os.urandom(mib * 1024 * 1024))
    _note(self, label)
    return os.getpid()


@shared_task(
    bind=True, name="semantics.decorated", max_retries=7, retry_backoff_max=30, rate_limit="5/s"
)
def decorated(self: Any) -> None:
    """Its decorator sets options the catalog entry does not."""


@shared_task(bind=True, name="semantics.rejected_once")
def rejected_once(self: Any, label: str, hold_s: float) -> str:
    """Holds its message `hold_s`, then hands it back to its queue (a task that found its
    input not ready); runs through once redelivered."""
    if not self.request.delivery_info.get("redelivered"):
        time.sleep(hold_s)
        raise Reject("not ready yet", requeue=True)
    _note(self, label)
    return label


@shared_task(bind=True, name="semantics.not_ready")
def not_ready(self: Any, label: str, runs: int) -> int:
    """Hands its message back to its queue (its input not ready yet) until its `runs`-th
    run, which completes."""
    _note(self, label)
    done = int(client_for(self.app.platform_settings).hget(RUNS_KEY, label) or 0)
    if done < runs:
        raise Reject("input not ready", requeue=True)
    return done
