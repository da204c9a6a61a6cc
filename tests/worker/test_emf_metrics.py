"""Task metrics reach CloudWatch without Datadog: EMF lines from a real worker's stdout.

CloudWatch Logs extracts a metric from a log event only if the event follows the embedded
metric format specification; `emf_problems` checks the rules of that specification
(https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html)
so a malformed line fails here instead of silently producing no metric.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from celery_service import contract
from celery_service.metrics import EMF_MAX_VALUES, EmfAggregator
from tests.conftest import RedisServer
from tests.worker.harness import publisher, running, wait_for
from tools.http_standin import standin

UNITS = {"Milliseconds", "Count", "Seconds", "None"}


def emf_problems(record: dict[str, Any]) -> list[str]:
    """What would stop CloudWatch from extracting this event's metrics."""
    problems = []
    meta = record.get("_aws")
    if not isinstance(meta, dict):
        return ["no _aws object"]
    if not isinstance(meta.get("Timestamp"), int) or meta["Timestamp"] < 10**12:
        problems.append("Timestamp must be epoch milliseconds")
    directives = meta.get("CloudWatchMetrics")
    if not isinstance(directives, list) or not directives:
        return [*problems, "CloudWatchMetrics must be a non-empty list"]
    for directive in directives:
        if not 1 <= len(directive.get("Namespace", "")) <= 255:
            problems.append("Namespace must be 1-255 characters")
        for dimension_set in directive.get("Dimensions", []):
            if len(dimension_set) > 30:
                problems.append("more than 30 dimensions")
            for key in dimension_set:
                if not isinstance(record.get(key), str):
                    problems.append(f"dimension {key} must be a string member of the event")
        metrics = directive.get("Metrics", [])
        if not 1 <= len(metrics) <= 100:
            problems.append("1-100 metrics per directive")
        for metric in metrics:
            name = metric.get("Name", "")
            if not 1 <= len(name) <= 1024:
                problems.append("metric name must be 1-1024 characters")
            if metric.get("Unit", "None") not in UNITS:
                problems.append(f"{name}: unit {metric.get('Unit')} not used here")
            value = record.get(name)
            values = value if isinstance(value, list) else [value]
            if not values or len(values) > EMF_MAX_VALUES:
                problems.append(f"{name}: 1-100 values")
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
                problems.append(f"{name}: values must be numbers")
    return problems


def emf_records(output: str) -> list[dict[str, Any]]:
    records = []
    for line in output.splitlines():
        if line.startswith('{"_aws"'):
            records.append(json.loads(line))
    return records


def test_a_window_becomes_one_valid_line_per_queue() -> None:
    written: list[bytes] = []
    emf = EmfAggregator("prod", 60, write=written.append, clock=lambda: 1_700_000_000.5)
    for n in range(5):
        emf.count(contract.TASK_SUCCEEDED, "default")
        emf.observe(contract.TASK_RUNTIME_MS, "default", 10.0 + n)
    emf.count(contract.TASK_FAILED, "reports", 2)
    emf.count(contract.BEAT_HEARTBEAT, None)
    assert emf.flush() == 3
    records = [json.loads(line) for line in written]
    assert [emf_problems(r) for r in records] == [[], [], []]
    by_queue = {r.get("queue"): r for r in records}
    assert by_queue["default"][contract.TASK_SUCCEEDED] == 5
    assert by_queue["default"][contract.TASK_RUNTIME_MS] == [10.0, 11.0, 12.0, 13.0, 14.0]
    assert by_queue["reports"][contract.TASK_FAILED] == 2
    assert by_queue[None][contract.BEAT_HEARTBEAT] == 1
    assert by_queue[None]["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["environment"]]
    assert by_queue["default"]["_aws"]["Timestamp"] == 1_700_000_000_500
    assert emf.flush() == 0, "a flushed window is not written twice"


def test_distributions_keep_a_uniform_sample_of_at_most_100_values() -> None:
    written: list[bytes] = []
    emf = EmfAggregator("dev", 60, write=written.append)
    emf._rng = random.Random(7)
    for value in range(10_000):
        emf.observe(contract.TASK_QUEUE_WAIT_MS, "default", float(value))
    emf.flush()
    (record,) = [json.loads(line) for line in written]
    sample = record[contract.TASK_QUEUE_WAIT_MS]
    assert len(sample) == EMF_MAX_VALUES
    assert emf_problems(record) == []
    # Uniform over 0..9999: the sample's median lands near 5000, not at the first 100 values.
    assert 3500 < sorted(sample)[50] < 6500


def test_the_validator_rejects_what_cloudwatch_would_drop() -> None:
    good = json.loads(EmfAggregator("dev", 60).line("q", {contract.TASK_SUCCEEDED: 1}))
    assert emf_problems(good) == []
    missing_dimension = {**good}
    del missing_dimension["queue"]
    assert emf_problems(missing_dimension)
    assert emf_problems({**good, contract.TASK_SUCCEEDED: "1"})
    assert emf_problems({**good, "_aws": {**good["_aws"], "Timestamp": 1_700_000_000}})


def test_a_real_worker_writes_task_metrics_as_emf(
    redis_server: Callable[..., RedisServer], tmp_path: Path
) -> None:
    server = redis_server()
    client = server.client()
    app = publisher(server.port)
    with (
        standin([(404, {})]) as rates,
        running(
            server.port,
            tmp_path,
            CELERY_METRICS_EMF="true",
            CELERY_METRICS_EMF_INTERVAL_S="0.5",
            DD_ENV="staging",
        ) as worker,
    ):
        for n in range(4):
            assert app.send_task("samples.square", args=[n]).get(timeout=10) == n * n
        with pytest.raises(Exception, match="404"):
            app.send_task("samples.fetch_exchange_rates", args=[rates.url]).get(timeout=10)

        def totals() -> dict[tuple[str, str], float]:
            sums: dict[tuple[str, str], float] = {}
            for record in emf_records(worker.output()):
                for metric in record["_aws"]["CloudWatchMetrics"][0]["Metrics"]:
                    value = record[metric["Name"]]
                    count = len(value) if isinstance(value, list) else value
                    key = (record.get("queue", ""), metric["Name"])
                    sums[key] = sums.get(key, 0) + count
            return sums

        wait_for(
            lambda: (
                totals().get(("default", contract.TASK_SUCCEEDED)) == 4
                and totals().get(("priority", contract.TASK_FAILED)) == 1
            ),
            15,
            "the worker's EMF lines",
        )
    records = emf_records(worker.output())
    assert all(emf_problems(r) == [] for r in records), [emf_problems(r) for r in records]
    assert {r["environment"] for r in records} == {"staging"}
    assert {r["_aws"]["CloudWatchMetrics"][0]["Namespace"] for r in records} == {
        contract.TASK_NAMESPACE
    }
    final = totals()
    assert final[("default", contract.TASK_RUNTIME_MS)] == 4
    assert final[("default", contract.TASK_QUEUE_WAIT_MS)] == 4
    assert final[("priority", contract.TASK_RUNTIME_MS)] == 1
    assert ("default", contract.TASK_FAILED) not in final
    assert int(client.get(contract.completed_key("default")) or 0) == 4
