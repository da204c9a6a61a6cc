"""Task metrics: DogStatsD to the Datadog agent sidecar, and CloudWatch EMF lines on stdout.

One call records a metric for both sinks; each is on only when its setting is:

* DogStatsD (`DD_AGENT_HOST`): one UDP packet per observation, as Datadog expects.
* EMF (`CELERY_METRICS_EMF=true`, set by the stacks when Datadog is off): the container's
  log driver ships stdout to CloudWatch Logs, which extracts metrics from any log event in
  the embedded metric format. A line per task would cost more in log ingestion than the work
  at a few hundred tasks/s, so each process aggregates per queue and writes one line per
  window (60 s): exact counts, and for distributions a uniform sample of at most 100 values
  (EMF's limit per metric), from which CloudWatch computes the percentiles.

Lines are written with one `os.write` on file descriptor 1: Celery redirects `sys.stdout` into
logging, and a single write below PIPE_BUF is never interleaved with another process's line.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from datadog.dogstatsd.base import DogStatsd

from celery_service import contract
from celery_service.settings import Settings

log = logging.getLogger(__name__)

EMF_MAX_VALUES = 100  # CloudWatch accepts at most 100 values per metric in one EMF event
PIPE_BUF = 4096  # atomic write size on a pipe (Linux)


def tags(queue: str | None, task: str | None) -> list[str]:
    return [f"queue:{queue or 'unknown'}", f"task:{task or 'unknown'}"]


@dataclass
class _Sample:
    """Algorithm R: a uniform sample of everything observed in the window."""

    values: list[float] = field(default_factory=list)
    seen: int = 0

    def add(self, value: float, rng: random.Random) -> None:
        self.seen += 1
        if len(self.values) < EMF_MAX_VALUES:
            self.values.append(value)
        else:
            slot = rng.randrange(self.seen)
            if slot < EMF_MAX_VALUES:
                self.values[slot] = value


class EmfAggregator:
    """Per-process counts and samples, flushed as EMF lines every `interval_s`."""

    def __init__(
        self,
        environment: str,
        interval_s: float,
        write: Callable[[bytes], object] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.environment = environment
        self.interval_s = interval_s
        self._write = write or (lambda data: os.write(1, data))
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[tuple[str | None, str], float] = {}
        self._samples: dict[tuple[str | None, str], _Sample] = {}
        self._rng = random.Random()
        self._thread: threading.Thread | None = None

    def count(self, name: str, queue: str | None, value: float = 1) -> None:
        with self._lock:
            key = (queue, name)
            self._counts[key] = self._counts.get(key, 0) + value
        self._ensure_flusher()

    def observe(self, name: str, queue: str | None, value: float) -> None:
        with self._lock:
            self._samples.setdefault((queue, name), _Sample()).add(value, self._rng)
        self._ensure_flusher()

    def flush(self) -> int:
        """Write what the window holds, one line per queue; returns the number of lines."""
        with self._lock:
            counts, samples = self._counts, self._samples
            self._counts, self._samples = {}, {}
        by_queue: dict[str | None, dict[str, float | list[float]]] = {}
        for (queue, name), total in counts.items():
            by_queue.setdefault(queue, {})[name] = total
        for (queue, name), sample in samples.items():
            by_queue.setdefault(queue, {})[name] = sample.values
        for queue, values in sorted(by_queue.items(), key=lambda item: item[0] or ""):
            try:
                self._write(self.line(queue, values))
            except OSError as exc:  # stdout closed at exit: metrics are not worth a crash
                log.warning("metrics line not written: %s", exc)
        return len(by_queue)

    def line(self, queue: str | None, values: dict[str, float | list[float]]) -> bytes:
        dimensions = {"environment": self.environment}
        if queue is not None:
            dimensions["queue"] = queue
        record: dict[str, object] = {
            "_aws": {
                "Timestamp": int(self._clock() * 1000),
                "CloudWatchMetrics": [
                    {
                        "Namespace": contract.TASK_NAMESPACE,
                        "Dimensions": [sorted(dimensions)],
                        "Metrics": [
                            {"Name": name, "Unit": contract.UNITS[name]} for name in sorted(values)
                        ],
                    }
                ],
            },
            **dimensions,
            **{name: _rounded(value) for name, value in values.items()},
        }
        data = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        if len(data) > PIPE_BUF:
            log.warning("metrics line of %d bytes may interleave with other output", len(data))
        return data

    def _ensure_flusher(self) -> None:
        # Started lazily in the process that records (pool children are forked without threads).
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(target=self._run, name="emf-flush", daemon=True)
        self._thread.start()
        atexit.register(self.flush)

    def _run(self) -> None:
        while True:
            time.sleep(self.interval_s)
            self.flush()


def _rounded(value: float | list[float]) -> float | list[float]:
    if isinstance(value, list):
        return [round(v, 3) for v in value]
    return round(value, 3)


class Recorder:
    """Where a process's metrics go: DogStatsD, EMF, both or neither."""

    def __init__(self, statsd: DogStatsd | None, emf: EmfAggregator | None) -> None:
        self.statsd = statsd
        self.emf = emf

    def count(
        self, name: str, queue: str | None, task: str | None, extra: tuple[str, ...] = ()
    ) -> None:
        if self.statsd is not None:
            metric_tags = [*tags(queue, task), *extra] if queue or task else list(extra)
            self.statsd.increment(name, tags=metric_tags or None)
        if self.emf is not None:
            self.emf.count(name, queue)

    def distribution(self, name: str, value: float, queue: str | None, task: str | None) -> None:
        if self.statsd is not None:
            self.statsd.distribution(name, value, tags=tags(queue, task))
        if self.emf is not None:
            self.emf.observe(name, queue, value)

    def flush(self) -> None:
        if self.emf is not None:
            self.emf.flush()


_recorders: dict[int, Recorder] = {}


def recorder(settings: Settings) -> Recorder:
    """This process's recorder (re-created after a fork: a child must not share the parent's
    socket or flush thread)."""
    pid = os.getpid()
    if pid not in _recorders:
        statsd = None
        if settings.statsd_host is not None:
            statsd = DogStatsd(
                host=settings.statsd_host,
                port=settings.statsd_port,
                constant_tags=[f"{k}:{v}" for k, v in sorted(settings.service_tags.items())],
                # Send each metric at once: no flush thread to lose across a fork or a kill.
                disable_buffering=True,
                disable_telemetry=True,
            )
        emf = None
        if settings.emf_metrics:
            environment = settings.service_tags.get("env", "unknown")
            emf = EmfAggregator(environment, settings.emf_interval_s)
        _recorders[pid] = Recorder(statsd, emf)
    return _recorders[pid]
