"""Evaluate a synthesized CloudWatch alarm on a series of datapoints, the way CloudWatch does.

Only the alarm model the templates use: one metric, or metric math over metrics of one period
(`Metrics` entries with `Id`, `MetricStat`, `Expression`, `ReturnData`). Expressions may use
numbers, metric and expression ids, `+ - * /`, unary minus, parentheses and `FILL(x, number)`.
Anything else raises `UnsupportedError`, so a new kind of alarm cannot pass untested.

The rules, from the CloudWatch user guide ("How alarm state is evaluated when data is missing",
and the arithmetic notes of "Using metric math"):

* The series given is the evaluation range, oldest first; `None` is a period with no datapoint.
* With at least EvaluationPeriods real datapoints in the range, the most recent of them decide
  and TreatMissingData is not used: ALARM when at least DatapointsToAlarm of them breach.
* With fewer, `breaching` and `notBreaching` fill the gaps (as few as needed, every real
  datapoint counts). `ignore` and `missing` let the real datapoints decide when they can
  (enough breach: ALARM; one is within the threshold: OK); otherwise `ignore` keeps the state
  and `missing` gives INSUFFICIENT_DATA, or ALARM when the oldest datapoint of the range
  breached (the guide's "X - - - -" row).
* No real datapoint at all: breaching ALARM, notBreaching OK, ignore keeps the state, missing
  INSUFFICIENT_DATA.
* Division by zero drops the datapoint.
* An arithmetic operand without a datapoint: the user guide says basic arithmetic treats a
  missing value as 0, yet an operand with no datapoint in the whole window (an error count
  published only when errors happen) has no series to pair with. `gaps="missing"` (the
  default, the stricter reading) makes the result missing; `gaps="zero"` follows the guide's
  sentence. An expression that FILLs every operand that may be absent answers the same under
  both readings, and the tests check both.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

State = Literal["OK", "ALARM", "INSUFFICIENT_DATA"]
Series = Sequence[float | None]  # one value per period, oldest first; None: no datapoint
Gaps = Literal["missing", "zero"]


class UnsupportedError(ValueError):
    """The alarm uses something this evaluator does not model: extend the evaluator."""


_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "GreaterThanThreshold": operator.gt,
    "GreaterThanOrEqualToThreshold": operator.ge,
    "LessThanThreshold": operator.lt,
    "LessThanOrEqualToThreshold": operator.le,
}
_TREATMENTS = ("breaching", "notBreaching", "ignore", "missing")
# Alarm properties that do not change how an alarm evaluates.
_INERT = frozenset(
    {
        "AlarmDescription",
        "AlarmName",
        "AlarmActions",
        "OKActions",
        "InsufficientDataActions",
        "ActionsEnabled",
        "Tags",
    }
)
_EVALUATION = frozenset(
    {
        "ComparisonOperator",
        "Threshold",
        "EvaluationPeriods",
        "DatapointsToAlarm",
        "TreatMissingData",
    }
)
_SINGLE = frozenset({"Namespace", "MetricName", "Dimensions", "Period", "Statistic"})
_QUERY_KEYS = frozenset({"Id", "MetricStat", "Expression", "ReturnData", "Label", "Period"})
_STAT_KEYS = frozenset({"Metric", "Period", "Stat"})
_METRIC_KEYS = frozenset({"Namespace", "MetricName", "Dimensions"})
_SINGLE_ID = "m"  # the id a single-metric alarm's metric gets here


# ------------------------------------------------------------------ expressions


@dataclass(frozen=True)
class Number:
    value: float


@dataclass(frozen=True)
class Ref:
    id: str


@dataclass(frozen=True)
class Fill:
    series: Expr
    value: float


@dataclass(frozen=True)
class Negate:
    operand: Expr


@dataclass(frozen=True)
class Binary:
    op: str
    left: Expr
    right: Expr


Expr = Number | Ref | Fill | Negate | Binary

_TOKEN = re.compile(
    r"\s*(?:(?P<number>\d+(?:\.\d+)?)|(?P<id>[a-z][A-Za-z0-9_]*)"
    r"|(?P<function>[A-Z][A-Z0-9_]*)|(?P<symbol>[-+*/(),]))"
)


def _tokens(text: str) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    position = 0
    text = text.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.lastgroup is None:
            raise UnsupportedError(f"{text!r}: cannot read {text[position:]!r}")
        found.append((match.lastgroup, match.group(match.lastgroup)))
        position = match.end()
    return found


class _Parser:
    """expr := term (('+'|'-') term)*; term := unary (('*'|'/') unary)*;
    unary := '-' unary | number | id | FILL '(' expr ',' ['-'] number ')' | '(' expr ')'"""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.at = 0

    def parse(self) -> Expr:
        expr = self._expr()
        if self.at != len(self.tokens):
            raise UnsupportedError(f"{self.text!r}: unexpected {self.tokens[self.at][1]!r}")
        return expr

    def _peek(self) -> str | None:
        return self.tokens[self.at][1] if self.at < len(self.tokens) else None

    def _take(self, expected: str | None = None) -> tuple[str, str]:
        if self.at >= len(self.tokens):
            raise UnsupportedError(f"{self.text!r}: ends early")
        kind, value = self.tokens[self.at]
        if expected is not None and value != expected:
            raise UnsupportedError(f"{self.text!r}: expected {expected!r}, found {value!r}")
        self.at += 1
        return kind, value

    def _expr(self) -> Expr:
        left = self._term()
        while self._peek() in ("+", "-"):
            _, op = self._take()
            left = Binary(op, left, self._term())
        return left

    def _term(self) -> Expr:
        left = self._unary()
        while self._peek() in ("*", "/"):
            _, op = self._take()
            left = Binary(op, left, self._unary())
        return left

    def _unary(self) -> Expr:
        if self._peek() == "-":
            self._take()
            return Negate(self._unary())
        kind, value = self._take()
        if kind == "number":
            return Number(float(value))
        if kind == "id":
            return Ref(value)
        if kind == "function" and value == "FILL":
            self._take("(")
            series = self._expr()
            self._take(",")
            sign = -1.0 if self._peek() == "-" else 1.0
            if sign < 0:
                self._take()
            fill_kind, fill = self._take()
            if fill_kind != "number":  # REPEAT, LINEAR, another series: not modelled
                raise UnsupportedError(f"{self.text!r}: FILL with {fill!r}")
            self._take(")")
            return Fill(series, sign * float(fill))
        if value == "(":
            inner = self._expr()
            self._take(")")
            return inner
        raise UnsupportedError(f"{self.text!r}: {value!r} is not modelled")


def parse(text: str) -> Expr:
    return _Parser(text).parse()


def _refs(expr: Expr) -> set[str]:
    if isinstance(expr, Ref):
        return {expr.id}
    if isinstance(expr, Fill):
        return _refs(expr.series)
    if isinstance(expr, Negate):
        return _refs(expr.operand)
    if isinstance(expr, Binary):
        return _refs(expr.left) | _refs(expr.right)
    return set()


_ARITHMETIC: dict[str, Callable[[float, float], float]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
}


# ------------------------------------------------------------------ alarms


@dataclass(frozen=True)
class Metric:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Alarm:
    """One AWS::CloudWatch::Alarm of a synthesized template, ready to evaluate."""

    logical_id: str
    metrics: Mapping[str, Metric]  # query id -> metric
    expressions: Mapping[str, Expr]  # query id -> expression
    result: str  # the query id the alarm compares with its threshold
    comparison: str
    threshold: float
    evaluation_periods: int
    datapoints_to_alarm: int
    treat_missing_data: str
    expression_text: str | None = None  # the returned expression as written, if any

    @classmethod
    def from_template(cls, logical_id: str, props: Mapping[str, Any]) -> Alarm:
        where = f"alarm {logical_id}"
        unknown = set(props) - _INERT - _EVALUATION - _SINGLE - {"Metrics"}
        if unknown:
            raise UnsupportedError(f"{where}: {sorted(unknown)} not modelled")
        comparison = str(props["ComparisonOperator"])
        if comparison not in _COMPARE:
            raise UnsupportedError(f"{where}: ComparisonOperator {comparison}")
        treat = str(props.get("TreatMissingData", "missing"))
        if treat not in _TREATMENTS:
            raise UnsupportedError(f"{where}: TreatMissingData {treat}")
        periods = int(props["EvaluationPeriods"])
        to_alarm = int(props.get("DatapointsToAlarm", periods))
        if not 1 <= to_alarm <= periods:
            raise UnsupportedError(f"{where}: DatapointsToAlarm {to_alarm} of {periods}")
        metrics: dict[str, Metric] = {}
        expressions: dict[str, Expr] = {}
        texts: dict[str, str] = {}
        if "Metrics" in props:
            if set(props) & _SINGLE:
                raise UnsupportedError(f"{where}: both a metric and Metrics")
            returned, periods_seen = [], set()
            for query in props["Metrics"]:
                extra = set(query) - _QUERY_KEYS
                if extra or ("MetricStat" in query) == ("Expression" in query):
                    raise UnsupportedError(f"{where}: query {query} not modelled")
                query_id = str(query["Id"])
                if query_id in metrics or query_id in expressions:
                    raise UnsupportedError(f"{where}: query id {query_id} twice")
                if query.get("ReturnData", True):
                    returned.append(query_id)
                if "MetricStat" in query:
                    stat = query["MetricStat"]
                    if set(stat) - _STAT_KEYS or set(stat["Metric"]) - _METRIC_KEYS:
                        raise UnsupportedError(f"{where}: MetricStat {stat} not modelled")
                    periods_seen.add(stat["Period"])
                    metric = stat["Metric"]
                    metrics[query_id] = Metric(metric["Namespace"], metric["MetricName"])
                else:
                    texts[query_id] = str(query["Expression"])
                    expressions[query_id] = parse(texts[query_id])
            if len(returned) != 1:
                raise UnsupportedError(f"{where}: {len(returned)} queries return data, not 1")
            if len(periods_seen) > 1:
                raise UnsupportedError(f"{where}: metrics of different periods {periods_seen}")
            result = returned[0]
        else:
            metrics[_SINGLE_ID] = Metric(props["Namespace"], props["MetricName"])
            result = _SINGLE_ID
        alarm = cls(
            logical_id=logical_id,
            metrics=metrics,
            expressions=expressions,
            result=result,
            comparison=comparison,
            threshold=float(props["Threshold"]),
            evaluation_periods=periods,
            datapoints_to_alarm=to_alarm,
            treat_missing_data=treat,
            expression_text=texts.get(result),
        )
        alarm._check_references()
        return alarm

    def _check_references(self) -> None:
        names = [metric.name for metric in self.metrics.values()]
        if len(set(names)) != len(names):
            raise UnsupportedError(f"alarm {self.logical_id}: one metric name read twice: {names}")
        known = set(self.metrics) | set(self.expressions)
        for query_id, expr in self.expressions.items():
            if _refs(expr) - known:
                raise UnsupportedError(
                    f"alarm {self.logical_id}: {query_id} uses unknown {_refs(expr) - known}"
                )
        if not self._reads_a_metric(self.result, ()):
            raise UnsupportedError(f"alarm {self.logical_id}: its result reads no metric")

    def _reads_a_metric(self, query_id: str, seen: tuple[str, ...]) -> bool:
        if query_id in seen:
            raise UnsupportedError(f"alarm {self.logical_id}: {query_id} refers to itself")
        if query_id in self.metrics:
            return True
        return any(
            self._reads_a_metric(ref, (*seen, query_id))
            for ref in _refs(self.expressions[query_id])
        )

    @property
    def metric_names(self) -> frozenset[str]:
        """`Namespace/MetricName` of every metric the alarm reads."""
        return frozenset(str(metric) for metric in self.metrics.values())

    def breaches(self, value: float) -> bool:
        return _COMPARE[self.comparison](value, self.threshold)

    # ---------------------------------------------------------------- evaluation

    def values(self, series: Mapping[str, Series], gaps: Gaps = "missing") -> list[float | None]:
        """The alarm's datapoints, one per period: `series` holds one series per metric
        name the alarm reads (e.g. `{"Errors": [0, 1, None]}`)."""
        by_name = {metric.name: query_id for query_id, metric in self.metrics.items()}
        if set(series) != set(by_name):
            raise ValueError(
                f"alarm {self.logical_id} reads {sorted(by_name)}, series given for "
                f"{sorted(series)}"
            )
        lengths = {len(values) for values in series.values()}
        if len(lengths) != 1:
            raise ValueError(f"alarm {self.logical_id}: series of different lengths {lengths}")
        (length,) = lengths
        if length < self.evaluation_periods:
            raise ValueError(
                f"alarm {self.logical_id}: {length} periods given, it evaluates "
                f"{self.evaluation_periods}"
            )
        data = {by_name[name]: values for name, values in series.items()}
        return [self._value(self.result, data, index, gaps) for index in range(length)]

    def _value(
        self, query_id: str, data: Mapping[str, Series], index: int, gaps: Gaps
    ) -> float | None:
        if query_id in self.metrics:
            return data[query_id][index]
        return self._compute(self.expressions[query_id], data, index, gaps)

    def _compute(
        self, expr: Expr, data: Mapping[str, Series], index: int, gaps: Gaps
    ) -> float | None:
        if isinstance(expr, Number):
            return expr.value
        if isinstance(expr, Ref):
            return self._value(expr.id, data, index, gaps)
        if isinstance(expr, Fill):
            value = self._compute(expr.series, data, index, gaps)
            return expr.value if value is None else value
        if isinstance(expr, Negate):
            value = self._compute(expr.operand, data, index, gaps)
            return None if value is None else -value
        left = self._compute(expr.left, data, index, gaps)
        right = self._compute(expr.right, data, index, gaps)
        if left is None and right is None:
            return None
        if left is None or right is None:
            if gaps == "missing":
                return None
            left, right = (0.0 if left is None else left), (0.0 if right is None else right)
        if expr.op == "/" and right == 0:
            return None  # "the data point is dropped"
        return _ARITHMETIC[expr.op](left, right)

    def evaluate(
        self,
        series: Mapping[str, Series],
        previous: State = "INSUFFICIENT_DATA",
        gaps: Gaps = "missing",
    ) -> State:
        """The state after one evaluation of the range `series`; `previous` is the state
        before it (kept by `ignore`)."""
        return self.state_of(self.values(series, gaps), previous)

    def state_of(self, values: Sequence[float | None], previous: State) -> State:
        """The state CloudWatch sets from the alarm's own datapoints (the evaluation range)."""
        wanted, to_alarm = self.evaluation_periods, self.datapoints_to_alarm
        real = [(index, value) for index, value in enumerate(values) if value is not None]
        if len(real) >= wanted:
            latest = [value for _, value in real[-wanted:]]
            return "ALARM" if sum(map(self.breaches, latest)) >= to_alarm else "OK"
        treat = self.treat_missing_data
        if not real:
            outcome: dict[str, State] = {
                "breaching": "ALARM",
                "notBreaching": "OK",
                "ignore": previous,
                "missing": "INSUFFICIENT_DATA",
            }
            return outcome[treat]
        breaching = sum(self.breaches(value) for _, value in real)
        if treat == "breaching":
            breaching += wanted - len(real)
        if treat in ("breaching", "notBreaching") or breaching >= to_alarm:
            return "ALARM" if breaching >= to_alarm else "OK"
        if breaching < len(real):  # a real datapoint within the threshold: no alarm possible
            return "OK"
        if treat == "ignore":
            return previous
        return "ALARM" if real[0][0] == 0 else "INSUFFICIENT_DATA"


def alarms_in(template: Mapping[str, Any]) -> list[Alarm]:
    """Every alarm of a synthesized template."""
    return [
        Alarm.from_template(logical_id, resource["Properties"])
        for logical_id, resource in template["Resources"].items()
        if resource["Type"] == "AWS::CloudWatch::Alarm"
    ]
