"""The benchmark's no-op task and the worker-side hooks that report its timings.

Loaded by every benchmark worker (`--include bench.bench_tasks`). Each finished task sends one
datagram over a Unix socket to the benchmark: fire-and-forget, no broker round trip, so
counting completions costs the worker a few microseconds, not a Redis command. Unix datagram
sockets block instead of dropping when the reader falls behind, so no report is lost.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any

from celery import shared_task, signals

TASK_NAME = "bench.noop"
REPORT_SOCKET_ENV = "BENCH_REPORT_SOCKET"
# Wall clock stamped by the publisher just before the message is handed to kombu, as the
# platform stamps its `published_at` header (for both apps, so both are timed alike).
STAMP_HEADER = "bench_published_at"

_sockets: dict[int, socket.socket] = {}  # pid -> socket: prefork children never share one
# (stamp header, wall clock at the start of the body) of the task running in this process
_current: list[float] = [0.0, 0.0]


def report(line: str) -> None:
    path = os.environ.get(REPORT_SOCKET_ENV)
    if not path:
        return
    pid = os.getpid()
    sock = _sockets.get(pid)
    if sock is None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.connect(path)
        _sockets[pid] = sock
    sock.send(line.encode())


def _stamp(headers: dict[str, Any] | None = None, **_: Any) -> None:
    if headers is not None:
        headers[STAMP_HEADER] = time.time()


def _noop(self: Any, published: float) -> None:
    """Does nothing but note when it started. `published`: the caller's clock before
    `apply_async`, so the publisher's own cost can be told apart."""
    started = time.time()
    _current[:] = [float(getattr(self.request, STAMP_HEADER, None) or 0.0), started]


def _report_done(task: Any = None, args: Any = None, **_: Any) -> None:
    # Connected after the platform's own handlers, so "done" includes their work.
    if task is not None and task.name == TASK_NAME and args:
        stamp, started = _current
        report(f"done {float(args[0])!r} {stamp!r} {started!r} {time.time()!r}")


def _report_ready(**_: Any) -> None:
    # Sent by the main process once its pool is up, just before its event loop consumes.
    report(f"ready {time.time()!r} {os.getpid()}")


noop = shared_task(bind=True, name=TASK_NAME)(_noop)
signals.before_task_publish.connect(_stamp)
signals.task_postrun.connect(_report_done)
signals.worker_ready.connect(_report_ready)
