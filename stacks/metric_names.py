"""The CloudWatch metrics dashboards and alarms chart: one vocabulary, named once.

The autoscaler Lambda (lambdas/autoscaler/handler.py) publishes the CeleryPlatform metrics as
EMF; its image imports nothing from here, so tests/test_metric_names.py checks that every name
below is one the handler emits and that every name it emits is charted.
"""

from __future__ import annotations

from typing import Final

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
