"""A data pipeline, the second example app: fetch sources (rate-limited, as a partner API
would demand), parse each, merge them in a chord, export the result with progress, and a
periodic rollup. Sources are generated here: the example needs no network."""

from __future__ import annotations

import hashlib
import time
from typing import Any

from celery import shared_task

from celery_service.tasks.base import PlatformTask


def _records(source: str, count: int) -> list[dict[str, Any]]:
    """Stand-in for a partner API's page: `count` records, the same for the same source."""
    seed = int(hashlib.sha256(source.encode()).hexdigest()[:8], 16)
    return [{"source": source, "value": (seed + i) % 97} for i in range(count)]


@shared_task(base=PlatformTask, name="pipeline.fetch")
def fetch(source: str, count: int = 5) -> list[dict[str, Any]]:
    return _records(source, count)


@shared_task(base=PlatformTask, name="pipeline.parse")
def parse(records: list[dict[str, Any]]) -> dict[str, Any]:
    values = [r["value"] for r in records]
    return {"source": records[0]["source"] if records else None, "total": sum(values)}


@shared_task(base=PlatformTask, name="pipeline.merge")
def merge(parsed: list[dict[str, Any]]) -> dict[str, Any]:
    """The chord's callback: one dataset from every parsed source."""
    return {
        "sources": sorted(p["source"] for p in parsed),
        "total": sum(p["total"] for p in parsed),
    }


@shared_task(bind=True, base=PlatformTask, name="pipeline.export")
def export(
    self: PlatformTask, dataset: dict[str, Any], parts: int = 3, pause_s: float = 0.2
) -> str:
    for done in range(parts):
        time.sleep(pause_s)  # stand-in for writing one part
        self.update_state(state="PROGRESS", meta={"done": done + 1, "total": parts})
    return f"exported {len(dataset['sources'])} sources, total {dataset['total']}"


@shared_task(base=PlatformTask, name="pipeline.rollup")
def rollup() -> str:
    return "rolled up"
