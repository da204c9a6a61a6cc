"""Entry point of the image: `python -m celery_service <command>`.

    worker        consume the queues of $CELERY_WORKER_GROUP
    beat          run the scheduler (RedBeat; a second one waits on the lock)
    flower        run Flower; refuses to start without $FLOWER_BASIC_AUTH
    healthcheck   exit 0 if this container's process is alive (no broker round trip)
    dlq ...       list, show, replay or purge dead letters (see `dlq --help`)
    check         validate the settings and print them (secrets masked)

Settings are validated before Celery starts: a problem prints one line and exits with 2.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.request
from pathlib import Path

from celery_service.contract import FLOWER_DEFAULT_USER, Env
from celery_service.settings import Settings, SettingsError

USAGE = __doc__ or ""
# A worker's event loop touches the file every second while it polls; beat at least every
# 5 s. Older than this, the process is stuck; ECS then replaces it after its retries.
HEARTBEAT_MAX_AGE_S = 60


def main(argv: list[str]) -> int:
    if not argv or argv[0] in {"-h", "--help"}:
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "healthcheck":
        return healthcheck(rest)
    try:
        settings = Settings.from_env()
        if command == "worker":
            settings.group  # noqa: B018  (a worker needs its group)
        if command in {"worker", "beat", "check"}:
            settings.import_task_modules()
    except SettingsError as exc:
        for line in str(exc).splitlines():
            print(f"settings error: {line}", file=sys.stderr)
        return 2
    if command == "worker":
        return exec_celery(worker_args(settings) + rest)
    if command == "beat":
        return exec_celery(["beat", "--loglevel", settings.log_level, *rest])
    if command == "flower":
        # On ECS the password arrives alone (an ECS secret is one value): pair it with the user.
        if os.environ.get("FLOWER_PASSWORD") and not os.environ.get("FLOWER_BASIC_AUTH"):
            user = os.environ.get(Env.FLOWER_USER, FLOWER_DEFAULT_USER)
            os.environ["FLOWER_BASIC_AUTH"] = f"{user}:{os.environ.pop('FLOWER_PASSWORD')}"
        if not os.environ.get("FLOWER_BASIC_AUTH") and not os.environ.get("FLOWER_AUTH"):
            print(
                "settings error: FLOWER_BASIC_AUTH: required (user:password); Flower is "
                "never started without authentication",
                file=sys.stderr,
            )
            return 2
        # Flower turns task events on in every worker it sees unless told not to.
        events = [] if settings.catalog.task_events else ["--enable_events=False"]
        return exec_celery(["flower", *events, *rest])
    if command == "dlq":
        from celery_service.dlq_cli import main as dlq_main

        return dlq_main(settings, rest)
    if command == "check":
        return check(settings)
    print(f"unknown command {command!r}\n{USAGE}", file=sys.stderr)
    return 2


def check(settings: Settings) -> int:
    """Print the settings (secrets masked); fail if the catalog names a task that no task
    module registers: its routing, priority and limits would never apply."""
    from celery_service.factory import (
        create_app,
        unregistered_catalog_entries,
        unregistered_schedules,
    )

    print(settings.model_dump_json(indent=2, exclude={"broker_auth_token"}))
    print(f"broker: {settings.redis_url(with_password=False)}")
    app = create_app(settings, main="check")
    problems = []
    if missing := unregistered_catalog_entries(app):
        problems.append(f"tasks {', '.join(missing)} match no task of the app")
    if unscheduled := unregistered_schedules(app):
        problems.append(f"schedules {', '.join(unscheduled)} name no task of the app")
    for problem in problems:
        print(f"settings error: CELERY_CATALOG: {problem} ({settings.modules()})", file=sys.stderr)
    return 1 if problems else 0


def worker_args(settings: Settings) -> list[str]:
    group = settings.group
    return [
        "worker",
        "--queues",
        ",".join(group.queues),
        "--concurrency",
        str(group.concurrency),
        "--pool",
        group.pool,
        "--hostname",
        f"{settings.worker_group}@%h",
        "--loglevel",
        settings.log_level,
        # Mingle and gossip make every worker talk to every other at start; not needed here.
        "--without-mingle",
        "--without-gossip",
    ]


def exec_celery(args: list[str]) -> int:
    argv = [sys.executable, "-m", "celery", "--app", "celery_service.main", *args]
    os.execv(sys.executable, argv)
    return 1  # not reached


def healthcheck(args: list[str]) -> int:
    """Liveness without touching the broker: the heartbeat file, or Flower's local endpoint."""
    role = args[0] if args else "worker"
    if role == "flower":
        port = os.environ.get("FLOWER_PORT", "5555")
        url = f"http://127.0.0.1:{port}/healthcheck"
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                return 0 if r.status == 200 else unhealthy(f"{url} answered {r.status}")
        except OSError as exc:
            return unhealthy(f"{url}: {exc}")
    path = Path(os.environ.get(Env.HEARTBEAT_FILE, "/tmp/celery-heartbeat"))
    limit_s = float(os.environ.get(Env.HEARTBEAT_MAX_AGE_S) or HEARTBEAT_MAX_AGE_S)
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return unhealthy(f"no heartbeat file {path}: the {role} has not started or has stopped")
    if age >= limit_s:
        return unhealthy(
            f"heartbeat {path} is {age:.0f} s old (limit {limit_s:.0f} s): "
            f"the {role}'s main process is stuck"
        )
    return 0


def unhealthy(reason: str) -> int:
    # ECS keeps the health check's output with the task's health status.
    print(f"unhealthy: {reason}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
