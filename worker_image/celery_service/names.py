"""Metric names and Redis keys shared by the worker, the autoscaler and the dashboards.

Defined once: everything that emits, reads or charts one of these imports it from here.
"""

# DogStatsD metrics (tags: queue, task; plus the unified service tags env, service, version).
TASK_RUNTIME_MS = "celery.task.runtime"  # distribution, milliseconds
TASK_QUEUE_WAIT_MS = "celery.task.queue_wait"  # distribution, publish -> start, milliseconds
TASK_SUCCEEDED = "celery.task.succeeded"  # count
TASK_FAILED = "celery.task.failed"  # count, terminal failures only
TASK_RETRIED = "celery.task.retried"  # count
DLQ_WRITTEN = "celery.dlq.written"  # count (tags: queue, kind)
# count: a message whose countdown/ETA outlasts the visibility timeout, handed back to its
# queue instead of being held past it (celery_service.consumer)
TASK_ETA_DEFERRED = "celery.task.eta_deferred"
BEAT_HEARTBEAT = "celery.beat.heartbeat"  # count, once per beat tick while holding the lock

# Every metric above, with its CloudWatch unit. Without Datadog the same names reach CloudWatch
# as EMF in this namespace, with the dimensions environment and queue (none for beat).
UNITS = {
    TASK_RUNTIME_MS: "Milliseconds",
    TASK_QUEUE_WAIT_MS: "Milliseconds",
    TASK_SUCCEEDED: "Count",
    TASK_FAILED: "Count",
    TASK_RETRIED: "Count",
    DLQ_WRITTEN: "Count",
    TASK_ETA_DEFERRED: "Count",
    BEAT_HEARTBEAT: "Count",
}
DISTRIBUTIONS = frozenset({TASK_RUNTIME_MS, TASK_QUEUE_WAIT_MS})
EMF_NAMESPACE = "CeleryPlatform/Tasks"

# Redis keys. Queue names never contain ':' (validated), so these never collide.
KEY_PREFIX = "celery"


def completed_key(queue: str) -> str:
    """Tasks of `queue` finished (any outcome) since the counter began; the autoscaler diffs it."""
    return f"{KEY_PREFIX}:completed:{queue}"


def dlq_entries_key(queue: str) -> str:
    return f"{KEY_PREFIX}:dlq:{queue}"


def dlq_index_key(queue: str) -> str:
    """Sorted set of the queue's dead letters by failure time; its size is the DLQ depth."""
    return f"{KEY_PREFIX}:dlq:{queue}:index"


def dlq_replayed_key(queue: str) -> str:
    return f"{KEY_PREFIX}:dlq:{queue}:replayed"


def malformed_key(queue: str) -> str:
    """List of entries popped from `queue` that are not messages, until they are in its DLQ."""
    return f"{KEY_PREFIX}:malformed:{queue}"


BEAT_HEARTBEAT_KEY = f"{KEY_PREFIX}:beat:heartbeat"  # epoch seconds of the last tick
PUBLISHED_AT_HEADER = "published_at"  # message header: epoch seconds at publish
