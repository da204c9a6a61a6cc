"""The metrics dashboards and alarms chart: one vocabulary, named once.

Two emitters, two sources of names:

* the autoscaler Lambda (lambdas/autoscaler/handler.py) publishes the CeleryPlatform metrics
  below as EMF; its image imports nothing from here, so tests/test_metric_names.py checks that
  every name below is one the handler emits and that every name it emits is charted;
* the workers and beat emit the task metrics named in worker_image/celery_service/names.py
  (DogStatsD to Datadog, EMF to CloudWatch); `worker` below is that very module, loaded from
  its file so the stacks use the image's names without importing the image's dependencies.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Final


def _load_worker_names() -> ModuleType:
    path = Path(__file__).resolve().parent.parent / "worker_image" / "celery_service" / "names.py"
    spec = importlib.util.spec_from_file_location("celery_platform_worker_names", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


worker = _load_worker_names()
TASK_NAMESPACE: Final[str] = worker.EMF_NAMESPACE
TASK_METRICS: Final[frozenset[str]] = frozenset(worker.UNITS)

NAMESPACE: Final = "CeleryPlatform"
# Every CeleryPlatform metric carries these two dimensions (alarms match dimensions exactly).
SERVICE: Final = "celery-autoscaler"

# Dimensions: environment, service, queue.
QUEUE_WAITING: Final = "QueueWaiting"
QUEUE_IN_FLIGHT: Final = "QueueInFlight"
DLQ_DEPTH: Final = "DlqDepth"
QUEUE_METRICS: Final = (QUEUE_WAITING, QUEUE_IN_FLIGHT, DLQ_DEPTH)

# Dimensions: environment, service, worker_group.
GROUP_WAITING: Final = "GroupWaiting"
GROUP_IN_FLIGHT: Final = "GroupInFlight"
RUNNING_TASKS: Final = "RunningTasks"
PENDING_TASKS: Final = "PendingTasks"
DESIRED_TASKS: Final = "DesiredTasks"
SCALING_CHANGES: Final = "ScalingChanges"
GROUP_ESTIMATED_WAIT_S: Final = "GroupEstimatedWaitSeconds"  # only when a rate is measured
GROUP_METRICS: Final = (
    GROUP_WAITING,
    GROUP_IN_FLIGHT,
    RUNNING_TASKS,
    PENDING_TASKS,
    DESIRED_TASKS,
    SCALING_CHANGES,
    GROUP_ESTIMATED_WAIT_S,
)

# Dimensions: environment, service.
RUN_DURATION: Final = "RunDuration"
RUNS: Final = "Runs"
AUTOSCALER_ERRORS: Final = "AutoscalerErrors"  # also per kind (and worker_group): detail only
BEAT_HEARTBEAT_AGE_S: Final = "BeatHeartbeatAgeSeconds"  # absent when beat's key is gone
ENVIRONMENT_METRICS: Final = (RUN_DURATION, RUNS, AUTOSCALER_ERRORS, BEAT_HEARTBEAT_AGE_S)

ALL: Final = frozenset(QUEUE_METRICS + GROUP_METRICS + ENVIRONMENT_METRICS)


def datadog_name(metric: str) -> str:
    """The name Datadog's AWS integration gives a CeleryPlatform metric it collects from
    CloudWatch: the namespace lower-cased, the CamelCase name in snake_case
    (QueueWaiting -> celeryplatform.queue_waiting)."""
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in metric).lstrip("_")
    return f"{NAMESPACE.lower()}.{snake}"
