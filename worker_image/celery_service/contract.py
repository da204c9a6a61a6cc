"""The wire contract: what workers, beat, Flower, producers, the autoscaler, the stacks and
the local tools must agree on, defined once. Everything that emits, reads, charts or sets one
of these imports it from here; the module needs nothing beyond the standard library, so the
CDK app and the autoscaler Lambda import it without Celery.
"""

from __future__ import annotations

import socket
from typing import Any, Final, Literal

# Priorities, named in the catalog and in code. Redis (kombu) consumes step 0 first; the
# names map onto kombu's default steps, which every publisher of the broker must share (a
# publisher with other steps strands priorities). "normal" is what an unlisted task gets.
Priority = Literal["high", "normal", "low", "bulk"]
PRIORITIES: Final[dict[str, int]] = {"high": 0, "normal": 3, "low": 6, "bulk": 9}
PRIORITY_STEPS: Final = (0, 3, 6, 9)
DEFAULT_PRIORITY: Final = PRIORITIES["normal"]

# kombu's Redis transport keys: a queue `q` holds its messages in one list per priority step,
# `q` for step 0 and `q` + separator + step for the others; reserved and running messages sit
# in the `unacked` hash (JSON `[message, exchange, routing_key]`) indexed by time in
# `unacked_index`.
PRIORITY_SEPARATOR: Final = "\x06\x16"
UNACKED_KEY: Final = "unacked"
UNACKED_INDEX_KEY: Final = "unacked_index"


def queue_keys(queue: str) -> list[str]:
    """The Redis lists of `queue`, highest priority first (kombu's BRPOP order)."""
    return [queue if step == 0 else f"{queue}{PRIORITY_SEPARATOR}{step}" for step in PRIORITY_STEPS]


# What the broker must publish for idle workers to wake on a push (celery_service.delivery):
# keyspace events (K) of list commands (l). The data stack's parameter group, the local
# redis-server and the compose file set exactly this.
KEYSPACE_EVENTS: Final = "Kl"

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
TASK_METRICS: Final = frozenset(UNITS)
DISTRIBUTIONS = frozenset({TASK_RUNTIME_MS, TASK_QUEUE_WAIT_MS})
TASK_NAMESPACE: Final = "CeleryPlatform/Tasks"

# Metrics the autoscaler Lambda publishes (CloudWatch EMF) in this namespace. Every one carries
# the dimensions environment and service = AUTOSCALER_SERVICE (alarms match dimensions exactly).
AUTOSCALER_NAMESPACE: Final = "CeleryPlatform"
AUTOSCALER_SERVICE: Final = "celery-autoscaler"

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
RUNS_SKIPPED: Final = "RunsSkipped"  # invocations that found another run holding the lock
AUTOSCALER_ERRORS: Final = "AutoscalerErrors"  # also per kind (and worker_group): detail only
BEAT_HEARTBEAT_AGE_S: Final = "BeatHeartbeatAgeSeconds"  # absent when beat's key is gone
ENVIRONMENT_METRICS: Final = (
    RUN_DURATION,
    RUNS,
    RUNS_SKIPPED,
    AUTOSCALER_ERRORS,
    BEAT_HEARTBEAT_AGE_S,
)

AUTOSCALER_METRICS: Final = frozenset(QUEUE_METRICS + GROUP_METRICS + ENVIRONMENT_METRICS)


def datadog_name(metric: str) -> str:
    """The name Datadog's AWS integration gives a CeleryPlatform metric it collects from
    CloudWatch: the namespace lower-cased, the CamelCase name in snake_case
    (QueueWaiting -> celeryplatform.queue_waiting)."""
    snake = "".join(f"_{c.lower()}" if c.isupper() else c for c in metric).lstrip("_")
    return f"{AUTOSCALER_NAMESPACE.lower()}.{snake}"


# Redis keys. Queue names never contain ':' (validated), so these never collide.
KEY_PREFIX = "celery"


def completed_key(queue: str) -> str:
    """Messages of `queue` that left the workers since the counter began (acked or rejected:
    finished with any outcome, retried, revoked), counted by the ack; the autoscaler diffs it."""
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


def autoscaler_state_key(group: str) -> str:
    """What the autoscaler remembers of a worker group between runs (JSON)."""
    return f"{KEY_PREFIX}:autoscaler:state:{group}"


# How many times each unacknowledged message was delivered (hash: delivery tag -> count),
# kept by the workers' pop script and cleared by their acks: a message delivered more often
# than the catalog's max_deliveries without an ack goes to the DLQ instead of a worker.
DELIVERIES_KEY: Final = f"{KEY_PREFIX}:deliveries"


def pop_receipt_key(consumer: str) -> str:
    """What a consumer channel's last pop took (`<pop number>:<delivery tag>`, expiring with
    the visibility timeout): after a pop whose reply was lost with its connection, the
    worker puts that message back at once instead of leaving it to the visibility timeout."""
    return f"{KEY_PREFIX}:pop-receipt:{consumer}"


# One autoscaler run at a time: the run holding this key (a random token, with a TTL shorter
# than the schedule) decides; another invocation meanwhile skips.
AUTOSCALER_LOCK_KEY: Final = f"{KEY_PREFIX}:autoscaler:lock"
# What a run may spend beyond its sleeps between decisions (seconds; about one when all is
# well, a hung Redis costs about 16 per round trip). The run lock and the Lambda's timeout
# both last the sleeps plus this, so a run can never outlive its lock, and the config keeps
# them 15 s short of the schedule, so a killed run's lock never blocks the next run.
AUTOSCALER_RUN_WORK_S: Final = 45


# How the Redis clients of workers, beat, Flower and producers notice a dead peer, so that no
# read waits for ever: a reply is awaited at most REDIS_SOCKET_TIMEOUT_S (then the command is
# retried on a new connection); a connection idle REDIS_HEALTH_CHECK_S is PINGed before
# use; TCP keepalive drops a peer that stops acknowledging after 10 + 3 * 5 = 25 s idle; and
# the worker's event loop drops its long-lived connections itself: a pop unanswered for
# REDIS_SOCKET_TIMEOUT_S, a subscription that left a PING unanswered for
# REDIS_HEALTH_CHECK_S (celery_service.delivery; kombu's own check of remote control waits
# for two).
REDIS_CONNECT_TIMEOUT_S: Final = 5
REDIS_SOCKET_TIMEOUT_S: Final = 5
REDIS_HEALTH_CHECK_S: Final = 10
_KEEPALIVE = {"TCP_KEEPIDLE": 10, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 3}


def redis_client_options() -> dict[str, Any]:
    """redis-py connection options with the bounds above."""
    return {
        "socket_connect_timeout": REDIS_CONNECT_TIMEOUT_S,
        "socket_timeout": REDIS_SOCKET_TIMEOUT_S,
        "socket_keepalive": True,
        # The names differ by platform (macOS has no TCP_KEEPIDLE); Linux has all three.
        "socket_keepalive_options": {
            getattr(socket, name): value
            for name, value in _KEEPALIVE.items()
            if hasattr(socket, name)
        },
        "retry_on_timeout": True,
        "health_check_interval": REDIS_HEALTH_CHECK_S,
    }


# RedBeat's keys: `<prefix><schedule name>` hashes (definition, meta with total_run_count),
# the schedule's sorted set and the lock.
REDBEAT_KEY_PREFIX: Final = f"{KEY_PREFIX}:redbeat:"
BEAT_HEARTBEAT_KEY = f"{KEY_PREFIX}:beat:heartbeat"  # epoch seconds of the last tick
# The heartbeat key expires this long after beat's last tick (seconds): an alarm on its age
# at or above this could never fire, the key would be gone first.
BEAT_HEARTBEAT_TTL_S: Final = 300
PUBLISHED_AT_HEADER = "published_at"  # message header: epoch seconds at publish


# CELERY_TASK_MODULES: the app's modules, dotted names, comma-separated.
MODULE_NAME: Final = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"

# Flower's basic-auth user when FLOWER_USER is not set (the password is always generated).
FLOWER_DEFAULT_USER: Final = "admin"


class Env:
    """Environment variables of worker, beat and Flower containers and of producers. The
    AUTH token and Flower's credentials arrive as ECS secrets, never as plain values."""

    BROKER_HOST: Final = "CELERY_BROKER_HOST"
    BROKER_PORT: Final = "CELERY_BROKER_PORT"
    BROKER_TLS: Final = "CELERY_BROKER_TLS"  # "true" or "false"
    BROKER_AUTH_TOKEN: Final = "CELERY_BROKER_AUTH_TOKEN"
    # For a producer that cannot receive the token as a secret variable (a Lambda): the
    # secret's ARN, read at start with the AWS SDK.
    BROKER_AUTH_SECRET_ARN: Final = "CELERY_BROKER_AUTH_SECRET_ARN"
    BROKER_DB: Final = "CELERY_BROKER_DB"
    CATALOG: Final = "CELERY_CATALOG"  # the catalog's JSON form (celery_service.catalog)
    # For a producer whose variables cannot hold the catalog (a Lambda's hold 4 KB in all,
    # the catalog up to 8 KB): the SSM parameter's name, read at start with the AWS SDK.
    CATALOG_PARAMETER: Final = "CELERY_CATALOG_PARAMETER"
    WORKER_GROUP: Final = "CELERY_WORKER_GROUP"
    TASK_MODULES: Final = "CELERY_TASK_MODULES"  # comma-separated
    # The app's own Celery settings module (celeryconfig style), applied under the platform's.
    APP_CONFIG_MODULE: Final = "CELERY_APP_CONFIG_MODULE"
    SHUTDOWN_BUDGET_S: Final = "CELERY_SHUTDOWN_BUDGET_S"
    IDLE_POLL_S: Final = "CELERY_IDLE_POLL_S"
    METRIC_TAGS: Final = "CELERY_METRIC_TAGS"
    METRICS_EMF: Final = "CELERY_METRICS_EMF"
    METRICS_EMF_INTERVAL_S: Final = "CELERY_METRICS_EMF_INTERVAL_S"
    PROTECTION_MINUTES: Final = "CELERY_PROTECTION_MINUTES"
    HEARTBEAT_FILE: Final = "CELERY_HEARTBEAT_FILE"
    HEARTBEAT_MAX_AGE_S: Final = "CELERY_HEARTBEAT_MAX_AGE_S"  # the health check's limit
    LOG_LEVEL: Final = "CELERY_LOG_LEVEL"
    FLOWER_USER: Final = "FLOWER_USER"  # default FLOWER_DEFAULT_USER
    FLOWER_PASSWORD: Final = "FLOWER_PASSWORD"
    STATSD_HOST: Final = "DD_AGENT_HOST"
    STATSD_PORT: Final = "DD_DOGSTATSD_PORT"
    ECS_AGENT_URI: Final = "ECS_AGENT_URI"


# What the data stack publishes for producers outside the CDK app, as SSM parameters named
# `/<project>/<environment>/celery/<key>`: each value is what the variable of the same row
# expects (an ECS task can inject them as secrets with valueFrom the parameter). The AUTH token
# itself stays in Secrets Manager: the parameter holds its ARN.
PRODUCER_PARAMETERS: Final[dict[str, str]] = {
    "broker-host": Env.BROKER_HOST,
    "broker-port": Env.BROKER_PORT,
    "broker-tls": Env.BROKER_TLS,
    "catalog": Env.CATALOG,
    "broker-auth-secret-arn": Env.BROKER_AUTH_SECRET_ARN,
    "producer-security-group-id": "",  # join it to reach the broker
}


def producer_parameter(project: str, environment: str, key: str) -> str:
    if key not in PRODUCER_PARAMETERS:
        raise KeyError(f"not a producer parameter: {key}")
    return f"/{project}/{environment}/celery/{key}"
