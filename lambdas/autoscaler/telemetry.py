"""The autoscaler's logs and metrics: EMF through Powertools, in the CeleryPlatform namespace.

Every metric carries the environment and service dimensions (plus queue or worker_group):
alarms match dimensions exactly, so they must not depend on POWERTOOLS_SERVICE_NAME.
"""

from __future__ import annotations

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.metrics import MetricUnit, single_metric

from celery_service import contract

from .observe import Reading
from .policy import Observation
from .settings import Settings

logger = Logger(service=contract.AUTOSCALER_SERVICE)
metrics = Metrics(namespace=contract.AUTOSCALER_NAMESPACE, service=contract.AUTOSCALER_SERVICE)


def metric(settings: Settings, name: str, value: float, unit: MetricUnit, **dims: str) -> None:
    with single_metric(
        name=name, unit=unit, value=value, namespace=contract.AUTOSCALER_NAMESPACE
    ) as emitted:
        emitted.add_dimension(name="environment", value=settings.environment)
        emitted.add_dimension(name="service", value=contract.AUTOSCALER_SERVICE)
        for key, dim in dims.items():
            emitted.add_dimension(name=key, value=dim)


def error(settings: Settings, kind: str, group: str | None = None) -> None:
    dims = {"kind": kind}
    if group is not None:
        dims["worker_group"] = group
    metric(settings, contract.AUTOSCALER_ERRORS, 1, MetricUnit.Count, **dims)
    # The environment's total, which the errors alarm watches (alarms cannot sum dimensions).
    metric(settings, contract.AUTOSCALER_ERRORS, 1, MetricUnit.Count)


def queue_metrics(settings: Settings, reading: Reading) -> None:
    for queue, values in reading.queues.items():
        metric(settings, contract.QUEUE_WAITING, values.waiting, MetricUnit.Count, queue=queue)
        metric(settings, contract.QUEUE_IN_FLIGHT, values.in_flight, MetricUnit.Count, queue=queue)
        metric(settings, contract.DLQ_DEPTH, values.dlq_depth, MetricUnit.Count, queue=queue)


def group_metrics(
    settings: Settings,
    group: str,
    observation: Observation,
    *,
    desired: int | None,
    changed: bool,
    estimated_wait_s: float | None,
) -> None:
    unit = MetricUnit.Count
    values = {
        contract.GROUP_WAITING: observation.waiting,
        contract.GROUP_IN_FLIGHT: observation.in_flight,
        contract.RUNNING_TASKS: observation.running_tasks,
        contract.PENDING_TASKS: observation.pending_tasks,
        contract.DESIRED_TASKS: desired,
    }
    for name, value in values.items():
        metric(settings, name, float(value or 0), unit, worker_group=group)
    metric(settings, contract.SCALING_CHANGES, 1 if changed else 0, unit, worker_group=group)
    if estimated_wait_s is not None:
        metric(
            settings,
            contract.GROUP_ESTIMATED_WAIT_S,
            estimated_wait_s,
            MetricUnit.Seconds,
            worker_group=group,
        )
