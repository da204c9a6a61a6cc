"""The Celery app for code that publishes to the platform: a web API, a script, a Lambda.

    from celery_service.producer import producer_app, send, state_of

    app = producer_app()                 # once, at start: from the workers' environment
    task_id = send("reports.build", 42)  # by name: the catalog's queue and priority
    state_of(task_id)                    # TaskState(state="PROGRESS", info={"done": 2, ...})

`producer_app()` reads the same variables as the workers (celery_service.contract.Env): the
broker's host, port, TLS and AUTH token, and the catalog (CELERY_CATALOG). It is configured
as the workers are, so what a producer publishes lands where the catalog says: the broker
transport options and priority steps of the platform, routes and priorities from the catalog
(also for `delay()`, `apply_async()`, canvas and `send_task()`), the result backend in its
own database. It becomes Celery's default app, so a team's `shared_task` functions publish
through it from any thread (FastAPI's worker threads, Django views), never to Celery's
built-in default of amqp://localhost.

Outside this CDK app, a producer finds the values in SSM (`/<project>/<env>/celery/...`,
written by the data stack) and reaches Redis by joining the producer security group.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from celery_service.factory import create_app
from celery_service.settings import Settings

_app: Celery | None = None


def producer_app(environ: Mapping[str, str] | None = None) -> Celery:
    """The platform's Celery app for publishing, set as the default app of every thread.

    Raises celery_service.settings.SettingsError (one line per problem) on bad settings.
    Task modules are not imported: a producer publishes by name or through its own
    `shared_task` functions.
    """
    global _app
    app = create_app(Settings.from_env(environ), main="producer")
    app.set_default()
    _app = app
    return app


def _current() -> Celery:
    if _app is None:
        raise RuntimeError("call celery_service.producer.producer_app() once at start")
    return _app


def send(task_name: str, *args: Any, **kwargs: Any) -> str:
    """Publish `task_name(*args, **kwargs)` to its catalog queue at its catalog priority;
    the task id, at once (nothing waits for a worker)."""
    result = _current().send_task(task_name, args=list(args), kwargs=kwargs)
    return str(result.id)


@dataclass(frozen=True)
class TaskState:
    """What a poller sees: PENDING (unknown or not started), STARTED (with track_started),
    a custom state such as PROGRESS with its `info`, SUCCESS with the result, or FAILURE
    and RETRY with the exception's text."""

    task_id: str
    state: str
    info: Any = None

    @property
    def ready(self) -> bool:
        return self.state in ("SUCCESS", "FAILURE", "REVOKED")


def state_of(task_id: str) -> TaskState:
    """The task's state and its progress or result, from the result backend."""
    result = AsyncResult(task_id, app=_current())
    info = result.info
    if isinstance(info, BaseException):
        info = f"{type(info).__name__}: {info}"
    return TaskState(task_id=task_id, state=str(result.state), info=info)
