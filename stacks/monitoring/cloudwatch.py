"""The monitoring catalog rendered to CloudWatch: graphs on a dashboard, alarms on a topic.

A resource's dimensions (a node id, a function name, a load balancer's full name) are known
only to its construct; the monitoring stack hands them in as `Dimensions`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_sns as sns
from constructs import Construct

from stacks.monitoring.model import Alarm, Comparison, Graph, Metric, MissingData, Resource, Segment

# Each resource's CloudWatch dimensions, one mapping per series (a broker has one per node).
Dimensions = Mapping[Resource, Sequence[Mapping[str, str]]]

WIDTH = 24  # the dashboard's grid width
TREAT_MISSING_DATA = {
    MissingData.MEANS_ZERO: cw.TreatMissingData.NOT_BREACHING,
    MissingData.NO_NEWS: cw.TreatMissingData.IGNORE,
    MissingData.IS_FAILURE: cw.TreatMissingData.BREACHING,
}
COMPARISON = {
    Comparison.ABOVE: cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
    Comparison.AT_LEAST: cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
    Comparison.BELOW: cw.ComparisonOperator.LESS_THAN_THRESHOLD,
}


class CloudWatchRenderer:
    """Adds segments to a dashboard and their alarms, each notifying `topic`."""

    def __init__(
        self,
        scope: Construct,
        *,
        dashboard: cw.Dashboard,
        topic: sns.ITopic,
        dimensions: Dimensions,
    ) -> None:
        self.scope = scope
        self.dashboard = dashboard
        self.topic = topic
        self.dimensions = dimensions
        self.alarms: list[cw.Alarm] = []

    def series(self, metric: Metric, *, labelled: bool) -> list[cw.Metric]:
        """The metric's CloudWatch series: one, or one per node of the broker. An alarm's
        are `labelled=False`: a label would turn its metric into a metric-math form."""
        resource = metric.resource
        series = self.dimensions[resource] if resource else [{}]
        first = resource.first_node if resource else 1
        return [
            cw.Metric(
                namespace=metric.namespace,
                metric_name=metric.name,
                dimensions_map={**dict(metric.dimensions), **dimensions},
                statistic=metric.statistic,
                period=Duration.minutes(metric.period_minutes),
                label=metric.line_label(node) if labelled else None,
            )
            for node, dimensions in enumerate(series, start=first)
        ]

    def graph(self, graph: Graph) -> cw.GraphWidget:
        def lines(metrics: tuple[Metric, ...]) -> list[cw.IMetric]:
            return [line for metric in metrics for line in self.series(metric, labelled=True)]

        return cw.GraphWidget(
            title=graph.title,
            left=lines(graph.left),
            right=lines(graph.right),
            left_annotations=[
                cw.HorizontalAnnotation(value=marker.value, label=marker.label)
                for marker in graph.markers
            ],
            left_y_axis=cw.YAxisProps(min=0, max=100) if graph.percent else None,
            width=graph.width,
        )

    def alarm(self, alarm: Alarm) -> list[cw.Alarm]:
        """The alarm: one, or one per node (`<construct id><node number>`, the primary 1)
        for a per-node metric."""
        operands = {name: self.series(metric, labelled=False) for name, metric in alarm.metrics}
        count = len(next(iter(operands.values())))
        created = []
        first = alarm.nodes_resource.first_node if alarm.per_node else 1
        for index in range(count):
            metric: cw.IMetric
            if len(operands) == 1:
                metric = next(iter(operands.values()))[index]
            else:
                # A sum with an operand missing has no datapoint: where a gap means zero, each
                # operand is FILLed so one count's datapoint is never hidden by the other's gap.
                fill = alarm.missing is MissingData.MEANS_ZERO
                metric = cw.MathExpression(
                    expression=" + ".join(
                        f"FILL({name}, 0)" if fill else name for name in operands
                    ),
                    using_metrics={name: series[index] for name, series in operands.items()},
                    period=Duration.minutes(alarm.period_minutes),
                )
            node = first + index
            created.append(
                cw.Alarm(
                    self.scope,
                    alarm.cloudwatch_id(node),
                    alarm_description=alarm.text(node),
                    metric=metric,
                    threshold=alarm.threshold,
                    evaluation_periods=alarm.periods,
                    comparison_operator=COMPARISON[alarm.comparison],
                    treat_missing_data=TREAT_MISSING_DATA[alarm.missing],
                )
            )
        for created_alarm in created:
            created_alarm.add_alarm_action(cw_actions.SnsAction(self.topic))
        self.alarms += created
        return created

    def header(self, text: str) -> None:
        self.dashboard.add_widgets(cw.TextWidget(markdown=f"## {text}", width=WIDTH, height=1))

    def segment(self, segment: Segment) -> None:
        self.header(segment.title)
        for row in segment.rows:
            self.dashboard.add_widgets(*(self.graph(graph) for graph in row))
        for alarm in segment.alarms:
            self.alarm(alarm)

    def alarm_widgets(self) -> None:
        """Every alarm's state at a glance, then each alarm's graph."""
        self.header("Alarms")
        self.dashboard.add_widgets(cw.AlarmStatusWidget(alarms=self.alarms, width=WIDTH))
        self.dashboard.add_widgets(
            *[cw.AlarmWidget(alarm=alarm, title=alarm.node.id, width=8) for alarm in self.alarms]
        )
