"""The Celery app for code that publishes to the platform: a web API, a script, a Lambda.

    from celery_service.producer import producer_app, send, state_of

    app = producer_app()                 # once, at start: from the workers' environment
    task_id = send("reports.build", 42)  # by name: the catalog's queue and priority
    state_of(task_id)                    # TaskState(state="PROGRESS", info={"done": 2, ...})
    for state in follow(task_id, 60): ...  # each progress update, then the result

`producer_app()` reads the same variables as the workers (celery_service.contract.Env): the
broker's host, port, TLS and AUTH token, and the catalog (CELERY_CATALOG). It is configured
as the workers are, so what a producer publishes lands where the catalog says: the broker
transport options and priority steps of the platform, routes and priorities from the catalog
(also for `delay()`, `apply_async()`, canvas and `send_task()`), the result backend in its
own database. It becomes Celery's default app, so a team's `shared_task` functions publish
through it from any thread (FastAPI's worker threads, Django views), never to Celery's
built-in default of amqp://localhost. Where the catalog sets `wait_for_replicas`, a
publish returns only once the broker's replica holds it, and raises kombu's
OperationalError, as a failed publish does, when that confirmation is cut off: publish
again (the same task id may be reused).

Outside this CDK app, a producer finds the values in SSM (`/<project>/<env>/celery/...`,
written by the data stack) and reaches Redis by joining the broker's clients group (its id
is the `producer-security-group-id` parameter).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.result import AsyncResult

from celery_service.contract import Env
from celery_service.factory import create_app
from celery_service.settings import Settings, SettingsError

_app: Celery | None = None


def producer_app(environ: Mapping[str, str] | None = None) -> Celery:
    """The platform's Celery app for publishing, set as the default app of every thread.

    Raises celery_service.settings.SettingsError (one line per problem) on bad settings.
    Task modules are not imported: a producer publishes by name or through its own
    `shared_task` functions. Without CELERY_BROKER_AUTH_TOKEN, the token is read from the
    secret named by CELERY_BROKER_AUTH_SECRET_ARN, and without CELERY_CATALOG the catalog
    from the SSM parameter named by CELERY_CATALOG_PARAMETER (boto3, as a Lambda has it).
    """
    global _app
    env = dict(os.environ if environ is None else environ)
    arn = env.get(Env.BROKER_AUTH_SECRET_ARN)
    if arn and not env.get(Env.BROKER_AUTH_TOKEN):
        env[Env.BROKER_AUTH_TOKEN] = _read_aws(Env.BROKER_AUTH_SECRET_ARN, arn, _secret)
    parameter = env.get(Env.CATALOG_PARAMETER)
    if parameter and not env.get(Env.CATALOG):
        env[Env.CATALOG] = _read_aws(Env.CATALOG_PARAMETER, parameter, _parameter)
    app = create_app(Settings.from_env(env), main="producer")
    app.set_default()
    _app = app
    return app


def _read_aws(variable: str, name: str, read: Callable[[Any, str], Any]) -> str:
    import boto3  # the AWS SDK: in every Lambda runtime, not a dependency of the package

    try:
        return str(read(boto3, name))
    except Exception as exc:
        raise SettingsError(
            f"{variable}: {name} could not be read: {type(exc).__name__}: {exc}"
        ) from None


def _secret(boto3: Any, arn: str) -> Any:
    return boto3.client("secretsmanager").get_secret_value(SecretId=arn)["SecretString"]


def _parameter(boto3: Any, name: str) -> Any:
    return boto3.client("ssm").get_parameter(Name=name)["Parameter"]["Value"]


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


def follow(task_id: str, timeout_s: float, poll_s: float = 0.05) -> Iterator[TaskState]:
    """Each new state of the task (a PROGRESS update, then its result) until it is ready or
    `timeout_s` has passed; the last one yielded is where it stands."""
    deadline = time.monotonic() + timeout_s
    state = state_of(task_id)
    yield state
    while not state.ready and time.monotonic() < deadline:
        time.sleep(poll_s)
        current = state_of(task_id)
        if current != state:
            yield current
        state = current


def main(argv: list[str] | None = None) -> int:
    """`python -m celery_service.producer send <task> [ARG ...] [--wait S]` or `state <id>`:
    publish or read a task from a shell, configured from the environment like the workers.
    Each ARG is JSON if it parses (7, "x", [1, 2]), else a string."""
    import argparse
    import json
    import sys

    parser = argparse.ArgumentParser(prog="python -m celery_service.producer")
    commands = parser.add_subparsers(dest="command", required=True)
    send_cmd = commands.add_parser("send", help="publish a task by name; print its id")
    send_cmd.add_argument("task")
    send_cmd.add_argument("args", nargs="*")
    send_cmd.add_argument("--wait", type=float, metavar="S", help="then wait for its result")
    state_cmd = commands.add_parser("state", help="print a task's state and progress or result")
    state_cmd.add_argument("task_id")
    options = parser.parse_args(argv)
    try:
        producer_app()
    except Exception as exc:  # SettingsError: one line per problem
        for line in str(exc).splitlines():
            print(f"settings error: {line}", file=sys.stderr)
        return 2

    def parsed(text: str) -> Any:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text

    if options.command == "state":
        state = state_of(options.task_id)
    else:
        task_id = send(options.task, *[parsed(a) for a in options.args])
        print(task_id, flush=True)
        if options.wait is None:
            return 0
        *_, state = follow(task_id, options.wait, poll_s=0.1)
    print(json.dumps({"state": state.state, "info": state.info}, default=str))
    return 0 if state.state != "FAILURE" else 1


if __name__ == "__main__":
    raise SystemExit(main())
