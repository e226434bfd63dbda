"""The accepted replies rewritten to one canonical form before aggregation: their decoded
arrays and the numeric, finite metrics every one of them carries. Flower's FedAvg raises,
and the ServerApp would fail, when the replies' records or metric keys differ."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict

from sleepfed.server.app.reply_records import arrays_of, finite_number, metrics_of
from sleepfed.server.app.update_validation import ValidationRules

log = logging.getLogger("sleepfed.server")

UNIFORM_WEIGHT_KEY = "dp-weight"


def _common_scalars(records: list[Mapping[str, Any]]) -> list[str]:
    """The metric keys whose value is a finite number in every record."""
    if not records:
        return []
    keys = [k for k, v in records[0].items() if finite_number(v)]
    return [k for k in keys if all(finite_number(r.get(k)) for r in records[1:])]


def canonical_train_replies(replies: list[Message], uniform_weights: bool) -> list[Message]:
    """Every reply rewritten as ``{"arrays": its arrays, "metrics": ...}`` (error replies as
    they are): the numeric, finite metrics all of them carry, or under ``uniform_weights``
    only ``UNIFORM_WEIGHT_KEY`` = 1 (a board's scalars are not used under DP). Flower's
    FedAvg raises when replies' records or metric keys differ."""
    ok = [r for r in replies if not r.has_error()]
    metrics = [metrics_of(r) or MetricRecord() for r in ok]
    keys = [] if uniform_weights else _common_scalars(metrics)
    for reply, record in zip(ok, metrics, strict=True):
        arrays = arrays_of(reply)
        assert arrays is not None  # validated
        kept = MetricRecord({k: record[k] for k in keys})
        if uniform_weights:
            kept[UNIFORM_WEIGHT_KEY] = 1.0
        reply.content = RecordDict(
            {"arrays": ArrayRecord(arrays.to_numpy_ndarrays()), "metrics": kept}
        )
    return replies


def canonical_evaluate_replies(
    replies: list[Message], rules: ValidationRules, uniform_weights: bool
) -> list[Message]:
    """Evaluation replies as ``{"metrics": ...}``, weighted by their num-examples, or under
    ``uniform_weights`` by 1 with no scalar kept. A reply without one MetricRecord holding a
    positive finite num-examples is left out of the average (logged)."""
    kept: list[Message] = []
    for reply in replies:
        if reply.has_error():
            kept.append(reply)
            continue
        record = metrics_of(reply)
        weight = record.get(rules.weight_key) if record is not None else None
        if uniform_weights:
            reply.content = RecordDict({"metrics": MetricRecord({UNIFORM_WEIGHT_KEY: 1.0})})
        elif not finite_number(weight) or weight <= 0:  # type: ignore[operator]
            log.warning(
                "evaluation reply of node %d left out: %s = %r",
                reply.metadata.src_node_id,
                rules.weight_key,
                weight,
            )
            continue
        kept.append(reply)
    if uniform_weights:
        return kept
    ok = [r for r in kept if not r.has_error()]
    records = [metrics_of(r) or MetricRecord() for r in ok]
    keys = _common_scalars(records)
    for reply, record in zip(ok, records, strict=True):
        reply.content = RecordDict({"metrics": MetricRecord({k: record[k] for k in keys})})
    return kept
