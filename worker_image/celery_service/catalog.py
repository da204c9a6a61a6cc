"""The queue catalog: queues, worker groups, task entries and schedules, and its JSON form.

The CDK renders it from an environment's config (`config.EnvironmentConfig.runtime_catalog`)
into `CELERY_CATALOG`; workers, beat, Flower and producers read it back with `Catalog`. The
config's own models extend these, so a field, a limit or a rule is written once. Needs only
pydantic: the CDK app imports it without Celery.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from celery_service.contract import DEFAULT_PRIORITY, PRIORITIES, Priority

# Queue names end up in Redis keys and environment variables: a safe alphabet, never ':'.
QUEUE_NAME = r"^[a-z][a-z0-9_.-]{0,62}$"
QueueName = Annotated[str, StringConstraints(pattern=QUEUE_NAME)]

# Redis redelivers a message left unacknowledged for the visibility timeout. A message is
# unacknowledged while its retry countdown runs (the worker holds it) and while the task runs
# (until its hard time limit), so the timeout must exceed both together plus this margin
# (seconds) for the ack to land, or one task runs on two workers at once.
VISIBILITY_MARGIN_S = 10

# The time limits each pool enforces (Celery's worker guide; celery#1958, #5786). prefork
# runs tasks in child processes it can signal and kill; gevent cancels a greenlet at its hard
# limit, but only when the task yields to the hub (a CPU-bound loop is never stopped) and has
# no soft limit; threads and solo enforce neither.
Pool = Literal["prefork", "gevent", "threads", "solo"]
POOL_LIMITS: dict[str, tuple[str, ...]] = {
    "prefork": ("soft_time_limit_s", "time_limit_s"),
    "gevent": ("time_limit_s",),
    "threads": (),
    "solo": (),
}
TIME_LIMITS = ("soft_time_limit_s", "time_limit_s")

# Celery's rate limit syntax: a number per second, minute or hour. Celery parses it only when
# a task is received, where a bad one fails every message.
RATE_LIMIT = r"^\d+(\.\d+)?/[smh]$"
RATE_LIMIT_EXAMPLES = "a number of tasks per second, minute or hour, such as 10/s, 100/m or 0.5/h"

# Celery's cron fields (UTC) and their ranges; names as Celery accepts them.
CRON_FIELDS: tuple[tuple[str, int, int, tuple[str, ...]], ...] = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day-of-month", 1, 31, ()),
    ("month", 1, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")),  # noqa: E501
    ("day-of-week", 0, 6, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),
)  # fmt: skip


class CatalogModel(BaseModel):
    """Unknown keys are errors (a typo must not fall back to a default), and the JSON form is
    rendered from validated config, so types are exact: a `true` for a count is refused."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class GroupSpec(CatalogModel):
    """A worker group as its workers see it: the queues it alone consumes and its pool."""

    queues: list[QueueName] = Field(min_length=1)
    concurrency: int = Field(ge=1, le=256)  # task slots per worker
    # prefork for CPU work and for limits; gevent for I/O-bound tasks (hard limit only);
    # threads or solo enforce no limit (POOL_LIMITS).
    pool: Pool = "prefork"
    # Seconds; only the limits the pool enforces.
    soft_time_limit_s: int | None = Field(default=None, ge=1)
    time_limit_s: int | None = Field(default=None, ge=1)
    # For a pool without a hard limit: the longest a task runs (seconds, not enforced), which
    # the visibility timeout must cover.
    longest_task_s: int | None = Field(default=None, ge=1)
    # Replace a pool process after this many tasks, or once its resident size after a task
    # exceeds this (prefork): a leaking task library cannot grow for ever.
    max_tasks_per_child: int | None = Field(default=None, ge=1)
    max_memory_per_child_mib: int | None = Field(default=None, ge=16)
    # The longest a busy worker keeps itself protected from scale-in, renewals included:
    # what a deploy or scale-in may wait for it (celery_service.protection). Past it, ECS
    # may replace the worker; its unfinished tasks go back to their queue and run again.
    protection_max_minutes: int = Field(default=120, ge=5, le=2880)

    @model_validator(mode="after")
    def _pool_rules(self) -> GroupSpec:
        for limit in TIME_LIMITS:
            if getattr(self, limit) is not None and limit not in POOL_LIMITS[self.pool]:
                able = [p for p, limits in POOL_LIMITS.items() if limit in limits]
                raise ValueError(
                    f"pool {self.pool!r} does not enforce {limit}: remove it, or use pool "
                    f"{' or '.join(repr(p) for p in able)}"
                )
        _check_soft_below_hard(self.soft_time_limit_s, self.time_limit_s)
        enforces_hard = "time_limit_s" in POOL_LIMITS[self.pool]
        if enforces_hard and self.longest_task_s is not None:
            # Ignoring it would let the default hard limit kill the tasks it describes.
            raise ValueError(
                f"pool {self.pool!r} enforces a hard limit: set time_limit_s, the longest a "
                "task of this group may run, instead of longest_task_s"
            )
        if self.time_limit_s is None and self.longest_task_s is None:
            wanted = "time_limit_s" if enforces_hard else "longest_task_s"
            raise ValueError(
                f"pool {self.pool!r} needs {wanted}, the longest a task of this group runs, "
                "which the visibility timeout must cover"
            )
        if self.pool == "solo" and self.concurrency != 1:
            raise ValueError(
                f"pool 'solo' runs one task at a time: set concurrency 1, not "
                f"{self.concurrency} (the autoscaler sizes the group by it)"
            )
        if self.pool != "prefork" and (self.max_tasks_per_child or self.max_memory_per_child_mib):
            raise ValueError(
                f"max_tasks_per_child and max_memory_per_child_mib need pool 'prefork' "
                f"(pool {self.pool!r} has no child processes to replace)"
            )
        if len(set(self.queues)) != len(self.queues):
            raise ValueError("queues must not list a queue twice")
        return self

    @property
    def longest_s(self) -> int:
        """How long a task of this group can hold its message: its hard limit, or for pools
        without one, the declared longest task."""
        return self.time_limit_s or self.longest_task_s or 0


class TaskSpec(CatalogModel):
    """What the catalog sets for one task, keyed by its Celery name ("billing.charge") or by
    a pattern ("enrichment.*", shell-style; the longest matching pattern applies). A setting
    left out keeps the task decorator's own value."""

    queue: QueueName
    priority: Priority | None = None  # unset: the decorator's, else normal
    rate_limit: str | None = None  # per worker process
    max_retries: int | None = Field(default=None, ge=0, le=100)
    # Override the worker group's limits for this task (seconds).
    soft_time_limit_s: int | None = Field(default=None, ge=1)
    time_limit_s: int | None = Field(default=None, ge=1)

    @field_validator("rate_limit")
    @classmethod
    def _rate_limit_syntax(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(RATE_LIMIT, value):
            raise ValueError(f"{value!r} must be {RATE_LIMIT_EXAMPLES}")
        return value

    @model_validator(mode="after")
    def _limits(self) -> TaskSpec:
        _check_soft_below_hard(self.soft_time_limit_s, self.time_limit_s)
        return self


class ScheduleSpec(CatalogModel):
    """A periodic task run by beat (RedBeat): every `every_s` seconds or on a cron line."""

    task: str = Field(min_length=1)
    every_s: int | None = Field(default=None, ge=1)
    cron: str | None = None  # "minute hour day-of-month month day-of-week", UTC
    args: list[Any] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_timing(self) -> ScheduleSpec:
        if (self.every_s is None) == (self.cron is None):
            raise ValueError("set exactly one of every_s or cron")
        if self.cron is not None:
            check_cron(self.cron)
        return self

    def crontab(self) -> Any:
        """The cron line as Celery's crontab (UTC); needs Celery (beat only)."""
        from celery.schedules import crontab

        minute, hour, day_of_month, month, day_of_week = (self.cron or "").split()
        return crontab(minute, hour, day_of_week, day_of_month, month)


# The most days each month has (February: in a leap year).
DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def check_cron(line: str) -> None:
    """Each field as Celery's crontab parses it: `*`, numbers, names, ranges, lists, and
    steps after `*` or a range; a day of the month that some month of the line has.
    ValueError naming the bad field: Celery would refuse the line in every process that
    loads the schedule."""
    fields = line.split()
    if len(fields) != len(CRON_FIELDS):
        names = " ".join(field for field, *_ in CRON_FIELDS)
        raise ValueError(f"cron must have 5 fields ({names}), got {line!r}")
    values = [
        _cron_values(line, text, *spec) for text, spec in zip(fields, CRON_FIELDS, strict=True)
    ]
    days, months = values[2], values[3]
    if not any(day <= DAYS_IN_MONTH[month - 1] for day in days for month in months):
        raise ValueError(
            f"cron {line!r}: day-of-month {fields[2]!r} never occurs in month {fields[3]!r}"
        )


def _cron_values(
    line: str, text: str, field: str, low: int, high: int, names: tuple[str, ...]
) -> set[int]:
    """The values one cron field names."""
    values: set[int] = set()
    for part in text.split(","):
        span, slash, step_text = part.partition("/")
        if slash and not (step_text.isdigit() and int(step_text) >= 1):
            raise ValueError(f"cron {line!r}: {field} step {step_text!r} must be a number >= 1")
        if slash and span != "*" and "-" not in span:
            raise ValueError(
                f"cron {line!r}: {field} {part!r}: a step follows * or a range "
                f"(*/{step_text} or {span}-{high}/{step_text})"
            )
        if span == "*":
            first, last = low, high
        else:
            bounds = [
                _cron_value(line, bound, field, low, high, names) for bound in span.split("-", 1)
            ]
            first, last = bounds[0], bounds[-1]
        # A range may wrap around (22-2, fri-mon), as Celery reads it.
        span_values = (
            list(range(first, last + 1))
            if first <= last
            else [*range(first, high + 1), *range(low, last + 1)]
        )
        values.update(span_values[:: int(step_text) if slash else 1])
    return values


def _cron_value(
    line: str, bound: str, field: str, low: int, high: int, names: tuple[str, ...]
) -> int:
    value = names.index(bound.lower()) + low if bound.lower() in names else None
    if value is None and bound.isdigit():
        value = int(bound)
    if value is None or not low <= value <= high:
        allowed = f"{low}-{high}" + (f" or {names[0]}..{names[-1]}" if names else "")
        raise ValueError(f"cron {line!r}: {field} {bound!r} is not in {allowed}")
    return value


def _check_soft_below_hard(soft: int | None, hard: int | None) -> None:
    if soft is not None and hard is not None and soft >= hard:
        raise ValueError(
            f"soft_time_limit_s ({soft}) must be < time_limit_s ({hard}) so the task can "
            "clean up before it is killed"
        )


def needed_visibility_timeout(
    holds: Iterable[tuple[str, int]], retry_backoff_max_s: int
) -> tuple[str, int, int]:
    """The smallest safe visibility timeout, from how long each group or task can hold its
    message (`(where, seconds)`): `(where the longest is, its seconds, the timeout needed)`."""
    where, longest = max(holds, key=lambda item: item[1])
    return where, longest, longest + retry_backoff_max_s + VISIBILITY_MARGIN_S


def is_pattern(task_name: str) -> bool:
    return any(c in task_name for c in "*?[")


class Catalog(CatalogModel):
    """The catalog's JSON form, as containers and producers receive it in CELERY_CATALOG."""

    visibility_timeout_s: int = Field(ge=10)
    default_queue: QueueName
    result_expires_s: int = Field(default=86400, ge=60)
    retry_backoff_max_s: int = Field(default=300, ge=1)
    # Deliveries of one message without an ack before it goes to the DLQ: a task that ends
    # its process each time (a segfault, an out-of-memory kill) stops there.
    max_deliveries: int = Field(default=5, ge=2, le=100)
    # Writes that must survive a failover (every publish, a requeue, an `applied_once`
    # marker) return once this many replicas hold them, or after replica_wait_ms with a
    # warning (Redis WAIT). 0: they return once the primary has them, and a failover loses
    # what the primary acknowledged within its replication lag.
    wait_for_replicas: int = Field(default=0, ge=0, le=5)
    replica_wait_ms: int = Field(default=100, ge=1, le=2000)
    # Results (states, progress, return values) live in their own Redis database, apart from
    # the queues: a results flush or scan never touches queued work.
    result_db: int = Field(default=1, ge=0, le=15)
    # Task events (Flower's task pages) and the STARTED state: see the worker README.
    task_events: bool = False
    track_started: bool = False
    queues: list[QueueName] = Field(min_length=1)
    worker_groups: dict[str, GroupSpec] = Field(min_length=1)
    tasks: dict[str, TaskSpec] = Field(default_factory=dict)
    schedules: dict[str, ScheduleSpec] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _cross(self) -> Catalog:
        holds = [(f"worker_groups.{n}", g.longest_s) for n, g in self.worker_groups.items()]
        holds += [(f"tasks.{n}", t.time_limit_s) for n, t in self.tasks.items() if t.time_limit_s]
        where, longest, needed = needed_visibility_timeout(holds, self.retry_backoff_max_s)
        if self.visibility_timeout_s < needed:
            raise ValueError(
                f"visibility_timeout_s ({self.visibility_timeout_s}) must be at least {needed}: "
                f"the longest hard limit ({where} = {longest} s) + retry_backoff_max_s "
                f"({self.retry_backoff_max_s} s) + {VISIBILITY_MARGIN_S} s, or Redis "
                "redelivers waiting and running tasks"
            )
        known = set(self.queues)
        for name, group in self.worker_groups.items():
            unknown = sorted(set(group.queues) - known)
            if unknown:
                raise ValueError(f"worker_groups.{name} consumes undeclared queues {unknown}")
        for name, task in self.tasks.items():
            if task.queue not in known:
                raise ValueError(f"tasks.{name} routes to undeclared queue {task.queue!r}")
        if self.default_queue not in known:
            raise ValueError(f"default_queue {self.default_queue!r} is not declared")
        return self

    def task_spec(self, task_name: str) -> TaskSpec | None:
        """The catalog entry of a task: its exact name, else the longest pattern matching
        it (`*` and `?` as in shell globs), else None."""
        spec = self.tasks.get(task_name)
        if spec is not None:
            return spec
        matching = [p for p in self.tasks if is_pattern(p) and fnmatch.fnmatchcase(task_name, p)]
        return self.tasks[max(matching, key=len)] if matching else None

    def queue_of(self, task_name: str) -> str:
        spec = self.task_spec(task_name)
        return spec.queue if spec else self.default_queue

    def priority_of(self, task_name: str) -> int:
        spec = self.task_spec(task_name)
        return PRIORITIES[spec.priority] if spec and spec.priority else DEFAULT_PRIORITY
