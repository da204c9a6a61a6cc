"""The sample app's producer: what its web API does on a request, as a script.

    python -m samples.producer

It enqueues a report and gets its id at once (an API would return it to the client), polls
its state and progress as the client would, then runs a chain and a chord. It needs only the
workers' environment (`make local` prints it) and publishes by task name: the API process
does not import the task code. Prints one JSON object; exits 1 if a result is wrong.
"""

from __future__ import annotations

import json
import sys

from celery import chain, chord, group

from celery_service.producer import follow, producer_app, send


def main() -> int:
    app = producer_app()
    task_id = send("samples.build_report", "demo", 3, 0.3)  # returns at once
    states = list(follow(task_id, timeout_s=60))  # what a client's polling sees
    progress = [s.info for s in states if s.state == "PROGRESS"]
    state = states[-1]
    square = app.signature("samples.square")
    chained = chain(square.clone(args=(2,)), square.clone()).apply_async().get(timeout=60)
    chorded = chord(
        group(square.clone(args=(n,)) for n in range(1, 6)), app.signature("samples.total")
    ).apply_async()
    summary = {
        "report": state.info,
        "progress": progress,
        "chain": chained,
        "chord": chorded.get(timeout=60),
    }
    print(json.dumps(summary))
    expected = {"report": "report demo: 3 sections", "chain": 16, "chord": 55}
    wrong = {key: summary[key] for key, value in expected.items() if summary[key] != value}
    return 1 if wrong or not progress else 0


if __name__ == "__main__":
    sys.exit(main())
