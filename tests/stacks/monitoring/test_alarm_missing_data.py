"""Every alarm of the synthesized templates, run on datapoints: healthy, breaching, no data at
all, and the gaps that matter for it (a crash before the autoscaler reports its error).

Each kind of alarm, named by the metrics it reads, has a case below; an alarm without one
fails the coverage test, so a new alarm comes with a decision on what its gaps mean. The case
also names the Datadog monitor that must make the same decision.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Literal

import pytest

from celery_service import contract as m
from config import load_environment
from stacks.monitoring import datadog as dd
from stacks.monitoring.model import MissingData
from tests.stacks.monitoring.alarm_eval import Alarm, Gaps, State, alarms_in
from tests.synth import ENVIRONMENTS, Synth

Outcome = Literal["OK", "ALARM", "INSUFFICIENT_DATA", "KEEP"]  # KEEP: the state before stays
# Per metric name: one value for every period of the range, or the whole range (oldest first).
Datapoints = float | None | Sequence[float | None]
Values = Callable[[Alarm], Mapping[str, Datapoints]]
GAPS: tuple[Gaps, ...] = ("missing", "zero")
PLATFORM = m.AUTOSCALER_NAMESPACE


@dataclass(frozen=True)
class Scenario:
    name: str
    values: Values
    expected: Outcome


@dataclass(frozen=True)
class Case:
    """One kind of alarm: its metrics when healthy and when breaching, what the alarm does
    when none of them has a datapoint, and its Datadog monitors (the key, or the prefix of
    one per queue or worker group)."""

    monitor: str
    healthy: Values
    breaching: Values
    all_missing: Outcome
    more: tuple[Scenario, ...] = ()

    def scenarios(self, alarm: Alarm) -> list[Scenario]:
        names = [metric.name for metric in alarm.metrics.values()]
        return [
            Scenario("healthy", self.healthy, "OK"),
            Scenario("breaching", self.breaching, "ALARM"),
            Scenario("no datapoint at all", lambda _: dict.fromkeys(names), self.all_missing),
            *self.more,
        ]


def reads(*metrics: str) -> frozenset[str]:
    return frozenset(metrics)


CASES: dict[frozenset[str], Case] = {
    reads(f"{PLATFORM}/{m.DLQ_DEPTH}"): Case(
        monitor="dlq",
        healthy=lambda a: {m.DLQ_DEPTH: 0},
        breaching=lambda a: {m.DLQ_DEPTH: 2},
        all_missing="KEEP",
    ),
    reads(f"{PLATFORM}/{m.DESIRED_TASKS}"): Case(
        monitor="pinned",
        healthy=lambda a: {m.DESIRED_TASKS: a.threshold - 1},
        breaching=lambda a: {m.DESIRED_TASKS: a.threshold},
        all_missing="KEEP",
        more=(
            Scenario(
                "the autoscaler stops while pinned",
                lambda a: {
                    m.DESIRED_TASKS: [a.threshold] * (a.evaluation_periods - 1) + [None] * 3
                },
                "KEEP",
            ),
            Scenario(
                "one run below max in the window",
                lambda a: {
                    m.DESIRED_TASKS: [a.threshold] * (a.evaluation_periods - 1) + [a.threshold - 1]
                },
                "OK",
            ),
        ),
    ),
    reads(f"{PLATFORM}/{m.GROUP_ESTIMATED_WAIT_S}"): Case(
        monitor="backlog",
        healthy=lambda a: {m.GROUP_ESTIMATED_WAIT_S: a.threshold},
        breaching=lambda a: {m.GROUP_ESTIMATED_WAIT_S: 2 * a.threshold},
        all_missing="KEEP",
        more=(
            Scenario(
                "a run without an estimate between two slow ones",
                lambda a: {m.GROUP_ESTIMATED_WAIT_S: [2 * a.threshold, None, 2 * a.threshold]},
                "ALARM",
            ),
        ),
    ),
    reads("AWS/ElastiCache/DatabaseMemoryUsagePercentage"): Case(
        monitor="redis-memory",
        healthy=lambda a: {"DatabaseMemoryUsagePercentage": a.threshold / 2},
        breaching=lambda a: {"DatabaseMemoryUsagePercentage": a.threshold + 1},
        all_missing="KEEP",
        more=(
            Scenario(
                "the node stops reporting while full",
                lambda a: {"DatabaseMemoryUsagePercentage": [a.threshold + 1, None, None, None]},
                "KEEP",
            ),
        ),
    ),
    reads("AWS/ElastiCache/Evictions"): Case(
        monitor="redis-evictions",
        healthy=lambda a: {"Evictions": 0},
        breaching=lambda a: {"Evictions": 3},
        all_missing="KEEP",
    ),
    reads("AWS/ElastiCache/EngineCPUUtilization"): Case(
        monitor="redis-engine-cpu",
        healthy=lambda a: {"EngineCPUUtilization": a.threshold / 2},
        breaching=lambda a: {"EngineCPUUtilization": a.threshold + 1},
        all_missing="KEEP",
    ),
    reads("AWS/Lambda/Errors", f"{PLATFORM}/{m.AUTOSCALER_ERRORS}"): Case(
        monitor="autoscaler-errors",
        # A good run: Lambda counts no error, the autoscaler publishes none.
        healthy=lambda a: {"Errors": 0, m.AUTOSCALER_ERRORS: None},
        breaching=lambda a: {"Errors": 0, m.AUTOSCALER_ERRORS: 1},
        all_missing="OK",
        more=(
            Scenario(
                "a crash before the autoscaler reports",
                lambda a: {"Errors": 1, m.AUTOSCALER_ERRORS: None},
                "ALARM",
            ),
            Scenario("both count", lambda a: {"Errors": 1, m.AUTOSCALER_ERRORS: 2}, "ALARM"),
        ),
    ),
    reads("AWS/Lambda/Invocations"): Case(
        monitor="autoscaler-not-running",
        healthy=lambda a: {"Invocations": 3},
        breaching=lambda a: {"Invocations": 0},
        all_missing="ALARM",
    ),
    reads(f"{PLATFORM}/{m.BEAT_HEARTBEAT_AGE_S}"): Case(
        monitor="beat-heartbeat",
        healthy=lambda a: {m.BEAT_HEARTBEAT_AGE_S: 5},
        breaching=lambda a: {m.BEAT_HEARTBEAT_AGE_S: a.threshold + 1},
        all_missing="ALARM",
    ),
    reads("AWS/ApplicationELB/HTTPCode_ELB_5XX_Count"): Case(
        monitor="flower-elb-5xx",
        healthy=lambda a: {"HTTPCode_ELB_5XX_Count": a.threshold - 1},
        breaching=lambda a: {"HTTPCode_ELB_5XX_Count": a.threshold},
        all_missing="OK",
    ),
    reads("AWS/ApplicationELB/HTTPCode_Target_5XX_Count"): Case(
        monitor="flower-target-5xx",
        healthy=lambda a: {"HTTPCode_Target_5XX_Count": a.threshold - 1},
        breaching=lambda a: {"HTTPCode_Target_5XX_Count": a.threshold},
        all_missing="OK",
    ),
}


def all_alarms(synth: Synth) -> list[Alarm]:
    """The alarms of every stack of the environment."""
    return [alarm for stack in synth.assembly.stacks for alarm in alarms_in(stack.template)]


def series(alarm: Alarm, values: Mapping[str, Datapoints]) -> dict[str, list[float | None]]:
    """Values spread over an evaluation range: two periods more than the alarm evaluates
    (the user guide's 3-period examples retrieve 5)."""
    lists = [v for v in values.values() if isinstance(v, Sequence)]
    length = len(lists[0]) if lists else alarm.evaluation_periods + 2
    return {
        name: list(value) if isinstance(value, Sequence) else [value] * length
        for name, value in values.items()
    }


def test_every_alarm_has_a_missing_data_case(env_synth: Synth) -> None:
    alarms = all_alarms(env_synth)
    assert alarms
    uncovered = sorted(
        " + ".join(sorted(alarm.metric_names))
        for alarm in alarms
        if alarm.metric_names not in CASES
    )
    assert not uncovered, f"alarms without a case in CASES: {uncovered}"


@pytest.mark.parametrize("gaps", GAPS)
def test_every_alarm_when_healthy_breaching_and_without_data(env_synth: Synth, gaps: Gaps) -> None:
    failures = []
    for alarm in all_alarms(env_synth):
        case = CASES.get(alarm.metric_names)
        if case is None:
            continue  # reported by the coverage test
        for scenario in case.scenarios(alarm):
            data = series(alarm, scenario.values(alarm))
            previous: State
            for previous in ("OK", "ALARM"):
                wanted = previous if scenario.expected == "KEEP" else scenario.expected
                got = alarm.evaluate(data, previous, gaps)
                if got != wanted:
                    failures.append(
                        f"{alarm.logical_id}, {scenario.name}, was {previous}: {got}, "
                        f"expected {wanted}"
                    )
    assert not failures, "\n".join(failures)


def test_a_crash_before_the_autoscaler_reports_its_error_alarms(env_synth: Synth) -> None:
    (alarm,) = [a for a in all_alarms(env_synth) if "AWS/Lambda/Errors" in a.metric_names]
    # The Lambda's Errors datapoint is there; the autoscaler's own count never was.
    crash: dict[str, list[float | None]] = {"Errors": [1.0], m.AUTOSCALER_ERRORS: [None]}
    assert alarm.evaluate(crash, previous="OK") == "ALARM"
    assert alarm.evaluate({"Errors": [0.0], m.AUTOSCALER_ERRORS: [None]}, "ALARM") == "OK"


def test_a_math_alarm_has_a_datapoint_whenever_one_of_its_metrics_has(env_synth: Synth) -> None:
    """Every operand that may be absent is FILLed: no combination of gaps hides the others."""
    math = [alarm for alarm in all_alarms(env_synth) if alarm.expressions]
    assert math
    for alarm in math:
        names = [metric.name for metric in alarm.metrics.values()]
        for count in range(1, len(names)):
            for absent in combinations(names, count):
                data = {name: [None if name in absent else 1.0] for name in names}
                assert alarm.values(data) != [None], (alarm.expression_text, absent)


def monitors_of(case: Case, monitors: list[dd.Monitor]) -> list[dd.Monitor]:
    return [
        monitor
        for monitor in monitors
        if monitor.key == case.monitor or monitor.key.startswith(f"{case.monitor}-")
    ]


def test_datadog_monitors_make_the_same_missing_data_decision(env_synth: Synth) -> None:
    monitors = dd.monitors(env_synth.config)
    claimed: set[str] = set()
    for alarm in all_alarms(env_synth):
        case = CASES.get(alarm.metric_names)
        if case is None:
            continue  # reported by the coverage test
        matching = monitors_of(case, monitors)
        assert matching, f"{alarm.logical_id}: no Datadog monitor {case.monitor!r}"
        for monitor in matching:
            assert monitor.missing.value == alarm.treat_missing_data, (
                f"{alarm.logical_id} treats missing data as {alarm.treat_missing_data}, "
                f"Datadog's {monitor.key} as {monitor.missing}"
            )
        claimed |= {monitor.key for monitor in matching}
    assert claimed == {monitor.key for monitor in monitors}, "monitors without an alarm"


# A metric in a Datadog query, and whether default_zero() wraps it.
METRIC_IN_QUERY = re.compile(r"(default_zero\()?(?:sum|max|min|avg):[a-z0-9_.]+\{")


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_datadog_reads_a_gap_as_zero_exactly_where_cloudwatch_fills(env: str) -> None:
    for monitor in dd.monitors(load_environment(env)):
        wrapped = METRIC_IN_QUERY.findall(monitor.query)
        assert wrapped, monitor.query
        if monitor.missing is MissingData.MEANS_ZERO:
            assert all(wrapped), f"{monitor.key}: a count without default_zero()"
        else:
            assert not any(wrapped), f"{monitor.key}: default_zero() hides a gap"
