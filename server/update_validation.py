"""Checking the boards' updates before they are aggregated.

A reply is rejected, with one reason, when:

* ``structure``: it carries no single ArrayRecord, or not as many arrays as the global model;
* ``shape`` / ``dtype``: an array's shape or dtype differs from the global model's;
* ``non-finite``: an array holds NaN or ±inf;
* ``weight``: its ``num-examples`` is missing, not a finite number, or not positive;
* ``norm-outlier``: the L2 norm of its update (its arrays minus the global model's) is an
  outlier among the round's updates. With ``n >= 3`` well-formed updates whose norms have
  median ``m`` and median absolute deviation ``MAD``, an update is rejected when its norm
  exceeds ``m + k * max(1.4826 * MAD, floor * m)`` (``k`` = ``mad_k``, 3.5 by default;
  ``floor`` = 0.5 keeps near-identical honest updates from making the rule hair-trigger).
  Only large norms are rejected: a small update cannot pull FedAvg far. With fewer than three
  updates the rule has no majority to lean on and only ``max_update_norm`` (if set) applies.
* ``norm-cap``: its update norm exceeds ``max_update_norm`` (0 = no cap).

Replies that carry a Flower error are not updates and are left to the strategy.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, Message, MetricRecord

from agent.config import ConfigError, get_field

log = logging.getLogger("sleepfed.server")

MAD_SCALE = 1.4826  # MAD of a normal distribution → its standard deviation
MAD_FLOOR_SHARE = 0.5
MIN_UPDATES_FOR_MAD = 3


@dataclass(frozen=True)
class ValidationRules:
    mad_k: float = 3.5
    max_update_norm: float = 0.0  # 0: no absolute cap
    weight_key: str = "num-examples"


@dataclass(frozen=True)
class Rejection:
    node_id: int
    reason: str
    detail: str

    def as_dict(self) -> dict[str, object]:
        return {"node": self.node_id, "reason": self.reason, "detail": self.detail}


def _arrays_of(reply: Message) -> ArrayRecord | None:
    records = list(reply.content.array_records.values())
    return records[0] if len(records) == 1 else None


def check_structure(
    reply: Message, global_arrays: list[np.ndarray], weight_key: str
) -> tuple[list[np.ndarray] | None, Rejection | None]:
    """The reply's arrays if they are well formed, else the reason they are not."""
    node = reply.metadata.src_node_id
    record = _arrays_of(reply)
    if record is None:
        return None, Rejection(node, "structure", "expected exactly one ArrayRecord")
    try:
        arrays = record.to_numpy_ndarrays()
    except Exception as error:  # undecodable bytes are a bad update, not a crash
        return None, Rejection(node, "structure", f"undecodable arrays: {error}")
    if len(arrays) != len(global_arrays):
        return None, Rejection(
            node, "structure", f"{len(arrays)} arrays, expected {len(global_arrays)}"
        )
    for index, (got, want) in enumerate(zip(arrays, global_arrays, strict=True)):
        if got.shape != want.shape:
            return None, Rejection(
                node, "shape", f"array {index}: shape {got.shape}, expected {want.shape}"
            )
        if got.dtype != want.dtype:
            return None, Rejection(
                node, "dtype", f"array {index}: dtype {got.dtype}, expected {want.dtype}"
            )
        if not np.isfinite(got).all():
            return None, Rejection(
                node, "non-finite", f"array {index}: {int((~np.isfinite(got)).sum())} NaN/inf"
            )
    metrics = list(reply.content.metric_records.values())
    weight = metrics[0].get(weight_key) if len(metrics) == 1 else None
    if (
        isinstance(weight, bool)
        or not isinstance(weight, int | float)
        or not math.isfinite(weight)
        or weight <= 0
    ):
        return None, Rejection(node, "weight", f"{weight_key} = {weight!r}")
    return arrays, None


def update_norm(arrays: list[np.ndarray], global_arrays: list[np.ndarray]) -> float:
    return float(
        math.sqrt(
            sum(float(np.sum((a - g) ** 2)) for a, g in zip(arrays, global_arrays, strict=True))
        )
    )


def norm_limit(norms: list[float], mad_k: float) -> float | None:
    """The largest acceptable update norm under the MAD rule (None: too few updates)."""
    if len(norms) < MIN_UPDATES_FOR_MAD:
        return None
    median = float(np.median(norms))
    mad = float(np.median(np.abs(np.array(norms) - median)))
    return median + mad_k * max(MAD_SCALE * mad, MAD_FLOOR_SHARE * median)


def validate_replies(
    replies: Iterable[Message], global_arrays: list[np.ndarray], rules: ValidationRules
) -> tuple[list[Message], list[Rejection], dict[int, float]]:
    """Split the round's replies into accepted ones and rejections.

    Returns the accepted replies (Flower error replies included, untouched), the rejections
    and the update norm of every well-formed reply (by node id)."""
    accepted: list[Message] = []
    rejections: list[Rejection] = []
    well_formed: list[tuple[Message, float]] = []
    for reply in replies:
        if reply.has_error():
            accepted.append(reply)
            continue
        arrays, rejection = check_structure(reply, global_arrays, rules.weight_key)
        if rejection is not None:
            rejections.append(rejection)
            continue
        assert arrays is not None
        well_formed.append((reply, update_norm(arrays, global_arrays)))
    norms = {r.metadata.src_node_id: n for r, n in well_formed}
    limit = norm_limit([n for _, n in well_formed], rules.mad_k)
    for reply, norm in well_formed:
        node = reply.metadata.src_node_id
        if rules.max_update_norm > 0 and norm > rules.max_update_norm:
            rejections.append(
                Rejection(node, "norm-cap", f"norm {norm:.4g} > cap {rules.max_update_norm:.4g}")
            )
        elif limit is not None and norm > limit:
            rejections.append(
                Rejection(node, "norm-outlier", f"norm {norm:.4g} > MAD limit {limit:.4g}")
            )
        else:
            accepted.append(reply)
    return accepted, rejections, norms


def parse_validation(data: dict[str, object]) -> ValidationRules:
    """The ``[validation]`` table of server.toml (absent: the defaults above)."""
    table = get_field(data, "validation", dict, "config", {})
    mad_k = get_field(table, "mad_k", float, "validation", 3.5)
    cap = get_field(table, "max_update_norm", float, "validation", 0.0)
    if mad_k <= 0:
        raise ConfigError(f"validation.mad_k: must be > 0, got {mad_k}")
    if cap < 0:
        raise ConfigError(f"validation.max_update_norm: must be >= 0, got {cap}")
    return ValidationRules(mad_k=mad_k, max_update_norm=cap)


UNIFORM_WEIGHT_KEY = "dp-weight"


class UpdateScreening:
    """Mixed into a strategy: ``screen`` runs before its aggregation.

    ``configure_train`` must store the round's global arrays in ``screening_arrays``.
    Rejections are logged with the node id and reason and kept per round in ``rejections``.
    With ``uniform_weights`` (differential privacy: the noise is calibrated to a mean of
    equally weighted, clipped updates) every update gets weight 1 under
    ``UNIFORM_WEIGHT_KEY``, and a rejected update is replaced by a zero update (the global
    model itself) so the mean keeps its calibrated denominator."""

    screening_rules: ValidationRules = ValidationRules()
    uniform_weights: bool = False

    def init_screening(self, rules: ValidationRules, uniform_weights: bool) -> None:
        self.screening_rules = rules
        self.uniform_weights = uniform_weights
        self.screening_arrays: list[np.ndarray] = []
        self.rejections: dict[int, list[Rejection]] = {}
        self.update_norms: dict[int, dict[int, float]] = {}

    def screen(self, server_round: int, replies: list[Message]) -> list[Message]:
        accepted, rejected, norms = validate_replies(
            replies, self.screening_arrays, self.screening_rules
        )
        self.rejections[server_round] = rejected
        self.update_norms[server_round] = norms
        for rejection in rejected:
            log.warning(
                "round %d: rejected the update of node %d (%s: %s)",
                server_round,
                rejection.node_id,
                rejection.reason,
                rejection.detail,
            )
        if not self.uniform_weights:
            return accepted
        rejected_nodes = {r.node_id for r in rejected}
        for reply in replies:
            if reply.has_error():
                continue
            if reply.metadata.src_node_id in rejected_nodes:
                key = next(iter(reply.content.array_records), "arrays")
                reply.content[key] = ArrayRecord(self.screening_arrays)
                metrics = MetricRecord({UNIFORM_WEIGHT_KEY: 1.0})
                reply.content[next(iter(reply.content.metric_records), "metrics")] = metrics
                accepted.append(reply)
            else:
                next(iter(reply.content.metric_records.values()))[UNIFORM_WEIGHT_KEY] = 1.0
        return accepted

    def weigh_evaluations(self, replies: list[Message]) -> list[Message]:
        """Evaluation replies weighted by their examples under ``UNIFORM_WEIGHT_KEY`` too
        (the strategy averages evaluation metrics with the same weighting key)."""
        if self.uniform_weights:
            for reply in replies:
                if not reply.has_error():
                    for metrics in reply.content.metric_records.values():
                        metrics[UNIFORM_WEIGHT_KEY] = float(
                            metrics.get(self.screening_rules.weight_key, 1)
                        )
        return replies
