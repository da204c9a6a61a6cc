"""Celery apps for the benchmark's workers: `python -m celery --app bench.bench_app worker ...`.

BENCH_APP=defaults  a plain `Celery(broker=BENCH_BROKER_URL)`: Celery's default settings.
BENCH_APP=shipped   the project's app exactly as `celery_service.main` builds it from the
                    environment, then changed by:
BENCH_CONF          JSON object of Celery settings applied on top (either app); a dict
                    setting (broker_transport_options) is merged into the app's.
BENCH_TWEAKS        comma-separated switches for what settings cannot express:
                    loud_task_logs       Celery's per-task INFO lines ("received",
                                         "succeeded") logged again
                    wake_every_message   the protection/heartbeat thread woken for every
                                         message, not only for one that finds the worker idle
                    no_platform_signals  the platform's task_prerun/task_postrun handlers
                                         off (metrics, completion counter INCR)
                    store_results        (defaults) results stored in the broker's Redis,
                                         database 1, by Celery's own Redis backend
BENCH_PROFILE       a path: cProfile the main process from ready to shutdown into it, and
                    each pool process from its start to its exit into <path>.<pid>.
"""

from __future__ import annotations

import cProfile
import json
import logging
import os
from typing import Any

from celery import Celery, signals

TWEAKS = frozenset(filter(None, os.environ.get("BENCH_TWEAKS", "").split(",")))
# Celery's per-task INFO records: one per received message (main process) and one per
# finished task (pool process).
TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


def _loud_task_logs(**_: Any) -> None:
    # Runs after the platform's logging setup; pool processes inherit the levels at fork.
    for name in TASK_LOGGERS:
        logging.getLogger(name).setLevel(logging.NOTSET)


def _wake_every_message(**_: Any) -> None:
    from celery_service import signals as platform

    for monitor in platform._monitor:
        monitor.wake()


def _build() -> Celery:
    if os.environ.get("BENCH_APP", "shipped") == "defaults":
        broker = os.environ["BENCH_BROKER_URL"]
        backend = f"{broker.rsplit('/', 1)[0]}/1" if "store_results" in TWEAKS else None
        return Celery("bench_defaults", broker=broker, backend=backend)
    from celery_service import signals as platform
    from celery_service.factory import create_app
    from celery_service.settings import Settings

    shipped = create_app(Settings.from_env())
    if "loud_task_logs" in TWEAKS:
        # Connected after the platform's receiver, so it runs after it.
        signals.setup_logging.connect(_loud_task_logs)
    if "wake_every_message" in TWEAKS:
        signals.task_received.disconnect(platform._wake_monitor)
        signals.task_received.connect(_wake_every_message)
    if "no_platform_signals" in TWEAKS:
        signals.task_prerun.disconnect(platform._task_started)
        signals.task_postrun.disconnect(platform._task_finished)
    return shipped


def apply_conf(target: Celery, conf: dict[str, Any]) -> None:
    for key, value in conf.items():
        current = target.conf.get(key)
        merged = (
            {**current, **value} if isinstance(value, dict) and isinstance(current, dict) else value
        )
        target.conf[key] = merged


app = _build()
apply_conf(app, json.loads(os.environ.get("BENCH_CONF", "{}")))

_profiles: list[cProfile.Profile] = []


def _start_profile(**_: Any) -> None:
    if os.environ.get("BENCH_PROFILE"):
        profile = cProfile.Profile()
        profile.enable()
        _profiles.append(profile)


def _stop_profile(**_: Any) -> None:
    for profile in _profiles:
        profile.disable()
        profile.dump_stats(os.environ["BENCH_PROFILE"])


def _stop_child_profile(**_: Any) -> None:
    for profile in _profiles:
        profile.disable()
        profile.dump_stats(f"{os.environ['BENCH_PROFILE']}.{os.getpid()}")


signals.worker_ready.connect(_start_profile)
signals.worker_shutdown.connect(_stop_profile)
# A pool process is forked before the main process is ready: it starts with no profile.
signals.worker_process_init.connect(_start_profile)
signals.worker_process_shutdown.connect(_stop_child_profile)
