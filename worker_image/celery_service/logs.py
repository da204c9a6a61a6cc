"""JSON logs on stdout, each record carrying the current task's id, name and queue."""

from __future__ import annotations

import logging
import sys

from celery._state import get_current_task
from pythonjsonlogger.json import JsonFormatter


class TaskContext(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        task = get_current_task()
        request = getattr(task, "request", None) if task else None
        if request is not None and getattr(request, "id", None):
            record.task_id = request.id
            record.task_name = task.name if task else None
            delivery = getattr(request, "delivery_info", None) or {}
            record.queue = delivery.get("routing_key")
        return True


def configure(level: str) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    )
    handler.addFilter(TaskContext())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Celery's per-message INFO lines ("received", "succeeded") cost the main process about
    # a tenth of its throughput; at DEBUG they come back.
    quiet = logging.DEBUG if level == "DEBUG" else logging.WARNING
    for name in ("celery.worker.strategy", "celery.app.trace"):
        logging.getLogger(name).setLevel(quiet)
