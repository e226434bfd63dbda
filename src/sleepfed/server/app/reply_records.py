"""Reading a board's reply: its one ArrayRecord, its one MetricRecord, and which of its
metric values are usable numbers. Shared by the validation of updates and their rewriting to
one canonical form."""

from __future__ import annotations

import math

from flwr.app import ArrayRecord, Message, MetricRecord


def arrays_of(reply: Message) -> ArrayRecord | None:
    """The reply's ArrayRecord, or None unless it carries exactly one."""
    records = list(reply.content.array_records.values())
    return records[0] if len(records) == 1 else None


def metrics_of(reply: Message) -> MetricRecord | None:
    """The reply's MetricRecord, or None unless it carries exactly one."""
    records = list(reply.content.metric_records.values())
    return records[0] if len(records) == 1 else None


def finite_number(value: object) -> bool:
    # bool is an int subclass, but True is no count of examples
    return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
