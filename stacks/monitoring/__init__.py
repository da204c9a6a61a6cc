"""Monitoring declared once: each part's metrics, graphs and alarms (`catalog`), rendered to
CloudWatch by the monitoring stack (`cloudwatch`) and to Datadog (`datadog`)."""
