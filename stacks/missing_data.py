"""What a gap in an alarm's metric means, decided once per alarm and applied alike to its
CloudWatch alarm and its Datadog monitor.

Pure data (no CDK): the monitoring stack turns it into TreatMissingData, the Datadog
definitions into their no-data options and default_zero().
"""

from __future__ import annotations

from enum import Enum


class MissingData(Enum):
    """Each value is the TreatMissingData the CloudWatch alarm gets."""

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
