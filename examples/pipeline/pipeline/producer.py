"""The pipeline app's producer: a chain, a chord over several sources, an export polled for
progress. `python -m pipeline.producer` with the workers' environment; prints one JSON
object, exits 1 if a result is wrong."""

from __future__ import annotations

import json
import sys

from celery import chain, chord

from celery_service.producer import follow, producer_app, send

SOURCES = ["alpha", "beta", "gamma", "delta"]


def main() -> int:
    app = producer_app()
    fetch, parse = app.signature("pipeline.fetch"), app.signature("pipeline.parse")
    one = chain(fetch.clone(args=("alpha",)), parse.clone()).apply_async().get(timeout=60)
    per_source = [chain(fetch.clone(args=(s,)), parse.clone()) for s in SOURCES]
    dataset = chord(per_source, app.signature("pipeline.merge")).apply_async().get(timeout=60)
    task_id = send("pipeline.export", dataset, 3, 0.3)
    states = list(follow(task_id, timeout_s=60))
    progress = [s.info for s in states if s.state == "PROGRESS"]
    state = states[-1]
    summary = {"chain": one, "chord": dataset, "export": state.info, "progress": progress}
    print(json.dumps(summary))
    good = (
        one["source"] == "alpha"
        and dataset["sources"] == sorted(SOURCES)
        and state.state == "SUCCESS"
        and progress
    )
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
