"""The vocabulary of monitoring, pure data (no CDK): a metric as both CloudWatch and Datadog
name it, a graph, an alarm, and a part's segment of the dashboards.

A part declares these once (`catalog`); `cloudwatch` renders them into the monitoring stack
and `datadog` into monitors and a dashboard, so the two can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

# CloudWatch's statistic -> Datadog's aggregation of the same series.
DATADOG_AGGREGATION = {"Maximum": "max", "Minimum": "min", "Sum": "sum", "Average": "avg"}


class MissingData(Enum):
    """What a gap in an alarm's metric means. Each value is the TreatMissingData the
    CloudWatch alarm gets; the Datadog monitor makes the same decision."""

    # Published only when something happens (errors, 5xx responses): a gap is a zero.
    # CloudWatch: notBreaching, and FILL(m, 0) on a math operand. Datadog: default_zero().
    MEANS_ZERO = "notBreaching"
    # Published on every run by an emitter that another alarm watches: a gap is no news about
    # this condition, so the state stays. CloudWatch: ignore. Datadog: no no-data alert (the
    # monitor keeps its last status).
    NO_NEWS = "ignore"
    # The metric's absence is the failure itself. CloudWatch: breaching. Datadog:
    # notify_no_data over the monitor's window.
    IS_FAILURE = "breaching"


class Comparison(Enum):
    ABOVE = ">"
    AT_LEAST = ">="
    BELOW = "<"


@dataclass(frozen=True)
class Resource:
    """A deployed resource whose CloudWatch dimensions only its construct knows (a node id,
    a function name, a load balancer's full name)."""

    kind: str
    key: str = ""
    # Several nodes, one CloudWatch series (and alarm) each, numbered from `first_node`.
    per_node: bool = False
    first_node: int = 1

    def nodes(self, replicas: int) -> range:
        """The node numbers of a broker with `replicas` replicas (the primary is 1)."""
        return range(self.first_node, replicas + 2)


# Each node of the broker (one CloudWatch series per node; one Datadog series per
# cacheclusterid), and its replicas only.
REDIS_NODES = Resource("redis-nodes", per_node=True)
REDIS_REPLICAS = Resource("redis-replicas", per_node=True, first_node=2)
AUTOSCALER_FUNCTION = Resource("autoscaler-function")
FLOWER_LOAD_BALANCER = Resource("flower-load-balancer")


def worker_service(group: str) -> Resource:
    return Resource("worker-service", group)


@dataclass(frozen=True)
class Metric:
    """One metric, as CloudWatch and Datadog name it."""

    namespace: str
    name: str
    statistic: str  # CloudWatch's: Maximum, Minimum, Sum, Average, p50...
    period_minutes: int
    datadog_name: str
    datadog_scope: str  # Datadog's tag filter selecting the same series
    dimensions: tuple[tuple[str, str], ...] = ()  # CloudWatch's, known without the resource
    resource: Resource | None = None  # the rest of the dimensions come from its construct
    label: str | None = None
    datadog_by: str | None = None  # one Datadog series per value of this tag
    # Datadog receives it from the agent (DogStatsD), not from CloudWatch through the AWS
    # integration's crawler, which delivers late.
    from_agent: bool = False

    @property
    def per_node(self) -> bool:
        """One CloudWatch series for each node of the broker."""
        return self.resource is not None and self.resource.per_node

    def line_label(self, node: int) -> str | None:
        """A graph line's label: the node's, for a per-node metric (one line each)."""
        return f"{self.name} node {node}" if self.per_node else self.label

    def datadog_query(self) -> str:
        aggregation = DATADOG_AGGREGATION.get(self.statistic, self.statistic)
        by = f" by {{{self.datadog_by}}}" if self.datadog_by else ""
        # A Sum is a count of events in the period.
        count = ".as_count()" if self.statistic == "Sum" else ""
        return f"{aggregation}:{self.datadog_name}{{{self.datadog_scope}}}{by}{count}"


@dataclass(frozen=True)
class Marker:
    value: float
    label: str | None = None


@dataclass(frozen=True)
class Graph:
    title: str
    left: tuple[Metric, ...]
    right: tuple[Metric, ...] = ()
    markers: tuple[Marker, ...] = ()
    width: int = 8  # of CloudWatch's 24 columns
    bars: bool = False  # counts of events, drawn as bars where the backend can
    percent: bool = False  # a 0-100 % axis


@dataclass(frozen=True)
class Alarm:
    """One alarm: a CloudWatch alarm (one per node for a per-node metric) and a Datadog
    monitor (one multi-alert monitor over the nodes)."""

    key: str  # the Datadog monitor's key: stable, it names its CloudFormation resource
    construct_id: str  # the CloudWatch alarm's (its logical ID: never rename one)
    title: str  # the Datadog monitor's name
    # Why it fires and what to do; `{node}` names the node of a per-node alarm.
    description: str
    metrics: tuple[tuple[str, Metric], ...]  # named operands; more than one are summed
    comparison: Comparison
    threshold: float
    periods: int  # consecutive periods that must breach
    missing: MissingData
    priority: int = 3  # Datadog's, 1 (highest) to 5
    # The condition the Datadog monitor evaluates instead, where Datadog has a timelier
    # source for the same failure (its agent, against a metric it would crawl late from
    # CloudWatch); the key, title, text and priority stay this alarm's.
    datadog: Alarm | None = None

    def __post_init__(self) -> None:
        if len({metric.period_minutes for _, metric in self.metrics}) != 1:
            raise ValueError(f"alarm {self.key}: its metrics must share one period")
        if self.per_node and len({metric.resource for _, metric in self.metrics}) != 1:
            raise ValueError(f"alarm {self.key}: a per-node alarm reads one kind of node")

    @property
    def period_minutes(self) -> int:
        return self.metrics[0][1].period_minutes

    @property
    def per_node(self) -> bool:
        return any(metric.per_node for _, metric in self.metrics)

    @property
    def nodes_resource(self) -> Resource:
        """The nodes a per-node alarm watches, one CloudWatch alarm each."""
        resource = self.metrics[0][1].resource
        if resource is None or not resource.per_node:
            raise ValueError(f"alarm {self.key} is not a per-node alarm")
        return resource

    def nodes(self, replicas: int) -> range:
        """The node of each CloudWatch alarm it becomes: every node its metric is read on,
        or one (numbered 1, unused) for an alarm that is not per node."""
        return self.nodes_resource.nodes(replicas) if self.per_node else range(1, 2)

    def cloudwatch_id(self, node: int) -> str:
        """The construct id (and logical id) of its CloudWatch alarm on `node`."""
        return f"{self.construct_id}{node}" if self.per_node else self.construct_id

    def text(self, node: int) -> str:
        """Its description, with `{node}` named."""
        return self.description.replace("{node}", str(node))


@dataclass(frozen=True)
class Segment:
    """One part's section of the dashboards: rows of graphs, and the part's alarms."""

    title: str
    rows: tuple[tuple[Graph, ...], ...]
    alarms: tuple[Alarm, ...] = ()
