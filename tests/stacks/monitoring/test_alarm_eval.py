"""The alarm evaluator follows CloudWatch: the user guide's missing-data tables, the metric-math
subset the templates use, and a loud refusal of anything else."""

from __future__ import annotations

from typing import Any

import pytest

from tests.stacks.monitoring.alarm_eval import Alarm, Gaps, State, UnsupportedError, parse

# The user guide's notation: 0 within the threshold, X breaching, - no datapoint.
POINTS = {"0": 0.0, "X": 1.0, "-": None}
TREATMENTS = ("missing", "ignore", "breaching", "notBreaching")
KEEP = "Retain current state"


def single(**overrides: Any) -> dict[str, Any]:
    """A one-metric alarm: value > 0 breaches."""
    return {
        "Namespace": "Test",
        "MetricName": "Value",
        "Period": 300,
        "Statistic": "Maximum",
        "ComparisonOperator": "GreaterThanThreshold",
        "Threshold": 0,
        "EvaluationPeriods": 3,
        "AlarmDescription": "inert",
        **overrides,
    }


def math(expression: str, **overrides: Any) -> dict[str, Any]:
    """A metric-math alarm over metrics A and B (ids a and b): a result >= 1 breaches."""

    def stat(query_id: str, name: str) -> dict[str, Any]:
        metric = {"Namespace": "Test", "MetricName": name, "Dimensions": []}
        return {
            "Id": query_id,
            "MetricStat": {"Metric": metric, "Period": 300, "Stat": "Sum"},
            "ReturnData": False,
        }

    return {
        "Metrics": [
            {"Id": "e", "Expression": expression, "ReturnData": True},
            stat("a", "A"),
            stat("b", "B"),
        ],
        "ComparisonOperator": "GreaterThanOrEqualToThreshold",
        "Threshold": 1,
        "EvaluationPeriods": 1,
        **overrides,
    }


# "How alarm state is evaluated when data is missing": 3 out of 3, then 2 out of 3, with the
# 5 most recent datapoints retrieved. Columns: MISSING, IGNORE, BREACHING, NOT BREACHING.
THREE_OF_THREE = [
    ("0 - X - X", ("OK", "OK", "OK", "OK")),
    ("0 - - - -", ("OK", "OK", "OK", "OK")),
    ("- - - - -", ("INSUFFICIENT_DATA", KEEP, "ALARM", "OK")),
    ("0 X X - X", ("ALARM", "ALARM", "ALARM", "ALARM")),
    ("- - - - X", ("INSUFFICIENT_DATA", KEEP, "ALARM", "OK")),
    ("X - - - -", ("ALARM", KEEP, "ALARM", "OK")),
]
TWO_OF_THREE = [
    ("0 - X - X", ("ALARM", "ALARM", "ALARM", "ALARM")),
    ("0 0 X 0 X", ("ALARM", "ALARM", "ALARM", "ALARM")),
    ("0 - X - -", ("OK", "OK", "ALARM", "OK")),
    ("- - - - 0", ("OK", "OK", "ALARM", "OK")),
    ("- - - - X", ("INSUFFICIENT_DATA", KEEP, "ALARM", "OK")),
]


@pytest.mark.parametrize(
    ("to_alarm", "points", "expected"),
    [(3, p, e) for p, e in THREE_OF_THREE] + [(2, p, e) for p, e in TWO_OF_THREE],
)
def test_missing_data_follows_the_user_guide_tables(
    to_alarm: int, points: str, expected: tuple[str, ...]
) -> None:
    values = [POINTS[p] for p in points.split()]
    for treat, outcome in zip(TREATMENTS, expected, strict=True):
        alarm = Alarm.from_template("T", single(DatapointsToAlarm=to_alarm, TreatMissingData=treat))
        previous: tuple[State, ...] = ("OK", "ALARM") if outcome == KEEP else ("OK",)
        for before in previous:
            want = before if outcome == KEEP else outcome
            assert alarm.evaluate({"Value": values}, previous=before) == want, (treat, before)


def test_missing_is_the_default_treatment() -> None:
    alarm = Alarm.from_template("T", single())
    assert alarm.treat_missing_data == "missing"
    assert alarm.evaluate({"Value": [None] * 5}, previous="OK") == "INSUFFICIENT_DATA"


@pytest.mark.parametrize(
    ("comparison", "at_threshold", "above", "below"),
    [
        ("GreaterThanThreshold", "OK", "ALARM", "OK"),
        ("GreaterThanOrEqualToThreshold", "ALARM", "ALARM", "OK"),
        ("LessThanThreshold", "OK", "OK", "ALARM"),
        ("LessThanOrEqualToThreshold", "ALARM", "OK", "ALARM"),
    ],
)
def test_comparison_operators(comparison: str, at_threshold: str, above: str, below: str) -> None:
    alarm = Alarm.from_template(
        "T", single(ComparisonOperator=comparison, Threshold=5, EvaluationPeriods=1)
    )
    for value, expected in ((5, at_threshold), (6, above), (4, below)):
        assert alarm.evaluate({"Value": [value]}) == expected, value


@pytest.mark.parametrize(
    ("expression", "a", "b", "expected"),
    [
        ("a + b", 1, 2, 3),
        ("a - b * 2", 7, 3, 1),
        ("(a - b) * 2", 7, 3, 8),
        ("-a + b", 1, 5, 4),
        ("a / b", 6, 3, 2),
        ("a / b", 6, 0, None),  # division by zero drops the datapoint
        ("a + b", 1, None, None),
        ("FILL(a, 0) + FILL(b, 0)", 1, None, 1),
        ("FILL(a, 0) + FILL(b, 0)", None, None, 0),
        ("FILL(b, -2.5) * 2", 1, None, -5),
        ("FILL(a + b, 9)", 1, None, 9),
        ("a*100/FILL(b,1)", 3, None, 300),
    ],
)
def test_expressions_compute_per_period(
    expression: str, a: float | None, b: float | None, expected: float | None
) -> None:
    alarm = Alarm.from_template("T", math(expression))
    assert alarm.values({"A": [a], "B": [b]}) == [expected]


@pytest.mark.parametrize(
    ("gaps", "expected"),
    [("missing", [None, 1.0, None]), ("zero", [1.0, 1.0, None])],
)
def test_an_absent_operand_under_either_reading(gaps: Gaps, expected: list[float | None]) -> None:
    alarm = Alarm.from_template("T", math("a + b"))
    assert alarm.values({"A": [1, 1, None], "B": [None, 0, None]}, gaps) == expected


def test_expressions_may_use_other_expressions() -> None:
    props = math("total * 2")
    props["Metrics"].append({"Id": "total", "Expression": "a + b", "ReturnData": False})
    alarm = Alarm.from_template("T", props)
    assert alarm.values({"A": [1], "B": [2]}) == [6]
    assert alarm.metric_names == {"Test/A", "Test/B"}


@pytest.mark.parametrize(
    "expression",
    [
        "SUM(METRICS())",
        "IF(a > 0, 1, 0)",
        "a ^ 2",
        "a > b",
        "FILL(a, REPEAT)",
        "FILL(a, b)",
        "a + c",
        "a +",
        "2 * 3",
        'METRICS("a")',
    ],
)
def test_anything_else_in_an_expression_is_refused(expression: str) -> None:
    with pytest.raises(UnsupportedError):
        Alarm.from_template("T", math(expression))


@pytest.mark.parametrize(
    "props",
    [
        single(ThresholdMetricId="ad1"),
        single(ExtendedStatistic="p99"),
        single(EvaluateLowSampleCountPercentile="ignore"),
        single(Unit="Count"),
        single(ComparisonOperator="LessThanLowerOrGreaterThanUpperThreshold"),
        single(TreatMissingData="whatever"),
        single(DatapointsToAlarm=4),
        math("a + b", Metrics=[{"Id": "a", "Expression": "1", "ReturnData": True}]),
    ],
)
def test_alarm_properties_it_does_not_model_are_refused(props: dict[str, Any]) -> None:
    with pytest.raises(UnsupportedError):
        Alarm.from_template("T", props)


def test_a_math_alarm_returns_exactly_one_query_of_one_period() -> None:
    props = math("a + b")
    props["Metrics"][1]["ReturnData"] = True
    with pytest.raises(UnsupportedError, match="2 queries return data"):
        Alarm.from_template("T", props)
    props = math("a + b")
    props["Metrics"][2]["MetricStat"]["Period"] = 60
    with pytest.raises(UnsupportedError, match="different periods"):
        Alarm.from_template("T", props)
    props = math("b")
    props["Metrics"][0] = {"Id": "a", "Expression": "a", "ReturnData": True}
    props["Metrics"].pop(1)
    with pytest.raises(UnsupportedError, match="refers to itself"):
        Alarm.from_template("T", props)


def test_series_must_match_what_the_alarm_reads() -> None:
    alarm = Alarm.from_template("T", math("a + b"))
    with pytest.raises(ValueError, match="reads"):
        alarm.values({"A": [1]})
    with pytest.raises(ValueError, match="reads"):
        alarm.values({"A": [1], "B": [1], "C": [1]})
    with pytest.raises(ValueError, match="lengths"):
        alarm.values({"A": [1, 1], "B": [1]})
    with pytest.raises(ValueError, match="evaluates 3"):
        Alarm.from_template("T", single()).values({"Value": [1, 1]})


def test_parse_reads_the_subset() -> None:
    assert parse("FILL(lambdaErrors, 0) + FILL(reported, 0)") == parse(
        "FILL( lambdaErrors ,0)+FILL(reported,0) "
    )
