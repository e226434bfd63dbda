"""Checking the boards' updates before they are aggregated.

A reply is rejected, with one reason, when:

* ``structure``: it carries no single ArrayRecord, or not as many arrays as the global model;
* ``shape`` / ``dtype``: an array's shape or dtype differs from the global model's;
* ``non-finite``: an array holds NaN or ±inf;
* ``weight``: its ``num-examples`` is missing, not a finite number, or not positive;
* ``good-share``: its ``good-share`` (the board's share of Good training windows, the prior
  π of every board's night estimates) is there but not a finite number within [0, 1];
* ``weight-cap``: its ``num-examples`` exceeds ``max_num_examples`` (100 000 by default: a
  board's training windows are its nights' 10-minute windows, at most 144 a day, 80% of the
  labelled ones; 100 000 is over two years of round-the-clock labelled recording);
* ``weight-outlier``: with ``n >= 3`` well-formed replies, its ``num-examples`` exceeds
  ``max_examples_median_multiple`` (10 by default, 0 = off) times the round's median;
* ``norm-outlier``: the L2 norm of its update (its arrays minus the global model's) is an
  outlier among the round's updates. With ``n >= 3`` well-formed updates whose norms have
  median ``m`` and median absolute deviation ``MAD``, an update is rejected when its norm
  exceeds ``m + k * max(1.4826 * MAD, floor * m)`` (``k`` = ``mad_k``, 3.5 by default;
  ``floor`` = 0.5 keeps near-identical honest updates from making the rule hair-trigger).
  Only large norms are rejected: a small update cannot pull FedAvg far. With fewer than three
  updates the rule has no majority to lean on and only ``max_update_norm`` (if set) applies.
* ``norm-cap``: its update norm exceeds ``max_update_norm`` (0 = no cap).

FedBuff screens each reply alone, as it arrives: the two rules that need a majority then
count the updates it accepted lately beside it (``recent``; sleepfed.server.app.fedbuff_loop).

Under differential privacy (``use_scalars=False``) the server weighs every update equally and
uses none of a board's scalars, so the ``weight*`` and ``good-share`` rules do not apply.

The accepted replies are then rewritten to one canonical form
(:mod:`sleepfed.server.app.canonical_replies`). The round's π is the median of the accepted
replies' ``good-share`` (:func:`robust_good_share`). A strategy runs all of this through
:class:`sleepfed.server.app.update_screening.UpdateScreening`.

Replies that carry a Flower error are not updates and are left to the strategy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Message

from sleepfed.common.config_fields import ConfigError, Field, get_field, read_fields
from sleepfed.server.app.reply_records import arrays_of, finite_number, metrics_of

MAD_SCALE = 1.4826  # MAD of a normal distribution → its standard deviation
MAD_FLOOR_SHARE = 0.5
MIN_UPDATES_FOR_MAD = 3  # the MAD rule and the median-multiple rule need a majority
# A board's training windows: 10-minute windows of its nights (sleepfed.model.features), at most 144
# a day, of which the labelled ones not held out (80%) train. 100 000 is more than two years
# of round-the-clock labelled recording, or about seven years of 8-hour nights (38 a night).
DEFAULT_MAX_NUM_EXAMPLES = 100_000
DEFAULT_MAX_EXAMPLES_MEDIAN_MULTIPLE = 10.0
GOOD_SHARE_KEY = (
    "good-share"  # sleepfed.board.training.client_app.GOOD_SHARE_KEY (that module needs a board)
)


@dataclass(frozen=True)
class ValidationRules:
    mad_k: float = 3.5
    max_update_norm: float = 0.0  # 0: no absolute cap
    max_num_examples: int = DEFAULT_MAX_NUM_EXAMPLES
    max_examples_median_multiple: float = DEFAULT_MAX_EXAMPLES_MEDIAN_MULTIPLE  # 0: off
    weight_key: str = "num-examples"
    good_share_key: str = GOOD_SHARE_KEY


@dataclass(frozen=True)
class Rejection:
    node_id: int
    reason: str
    detail: str

    def as_dict(self) -> dict[str, object]:
        return {"node": self.node_id, "reason": self.reason, "detail": self.detail}


def check_structure(
    reply: Message,
    global_arrays: list[np.ndarray],
    rules: ValidationRules,
    use_scalars: bool = True,
) -> tuple[list[np.ndarray] | None, Rejection | None]:
    """The reply's arrays if they are well formed, else the reason they are not.
    ``use_scalars``: the reply's weight and good-share are used, so they are checked too."""
    node = reply.metadata.src_node_id
    record = arrays_of(reply)
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
    if not use_scalars:
        return arrays, None
    metrics = metrics_of(reply)
    weight = metrics.get(rules.weight_key) if metrics is not None else None
    if not finite_number(weight) or weight <= 0:  # type: ignore[operator]
        return None, Rejection(node, "weight", f"{rules.weight_key} = {weight!r}")
    assert metrics is not None
    if rules.good_share_key in metrics:
        share = metrics[rules.good_share_key]
        if not finite_number(share) or not 0.0 <= share <= 1.0:  # type: ignore[operator]
            return None, Rejection(
                node, "good-share", f"{rules.good_share_key} = {share!r}, not within [0, 1]"
            )
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


def weight_limit(weights: list[float], multiple: float) -> float | None:
    """The largest acceptable num-examples under the median-multiple rule (None: fewer than
    three replies, or the rule is off)."""
    if multiple <= 0 or len(weights) < MIN_UPDATES_FOR_MAD:
        return None
    return multiple * float(np.median(weights))


def _weight_rejection(
    node: int, weight: float, rules: ValidationRules, limit: float | None
) -> Rejection | None:
    if weight > rules.max_num_examples:
        return Rejection(
            node, "weight-cap", f"{rules.weight_key} {weight:.4g} > cap {rules.max_num_examples}"
        )
    if limit is not None and weight > limit:
        return Rejection(
            node,
            "weight-outlier",
            f"{rules.weight_key} {weight:.4g} > {rules.max_examples_median_multiple:g} x "
            f"median = {limit:.4g}",
        )
    return None


def validate_replies(
    replies: Iterable[Message],
    global_arrays: list[np.ndarray],
    rules: ValidationRules,
    use_scalars: bool = True,
    recent: Sequence[tuple[float, float]] = (),
) -> tuple[list[Message], list[Rejection], dict[int, float]]:
    """Split the round's replies into accepted ones and rejections.

    Returns the accepted replies (Flower error replies included, untouched), the rejections
    and the update norm of every well-formed reply (by node id). ``use_scalars=False``
    (differential privacy: equal weights, no π) skips the rules on num-examples and
    good-share. ``recent``: (update norm, num-examples) of updates accepted before, counted
    with the replies by the rules that need a majority (an asynchronous strategy screens
    each reply as it arrives, with no round of others beside it)."""
    accepted: list[Message] = []
    rejections: list[Rejection] = []
    well_formed: list[tuple[Message, float, float]] = []  # reply, norm, weight
    for reply in replies:
        if reply.has_error():
            accepted.append(reply)
            continue
        arrays, rejection = check_structure(reply, global_arrays, rules, use_scalars)
        if rejection is not None:
            rejections.append(rejection)
            continue
        assert arrays is not None
        metrics = metrics_of(reply) if use_scalars else None
        weight = float(metrics[rules.weight_key]) if metrics is not None else 1.0  # type: ignore[arg-type]
        well_formed.append((reply, update_norm(arrays, global_arrays), weight))
    norms = {r.metadata.src_node_id: n for r, n, _ in well_formed}
    limit = norm_limit([n for _, n, _ in well_formed] + [n for n, _ in recent], rules.mad_k)
    examples_limit = (
        weight_limit(
            [w for _, _, w in well_formed] + [w for _, w in recent],
            rules.max_examples_median_multiple,
        )
        if use_scalars
        else None
    )
    for reply, norm, weight in well_formed:
        node = reply.metadata.src_node_id
        weight_rejection = (
            _weight_rejection(node, weight, rules, examples_limit) if use_scalars else None
        )
        if weight_rejection is not None:
            rejections.append(weight_rejection)
        elif rules.max_update_norm > 0 and norm > rules.max_update_norm:
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


def robust_good_share(replies: Iterable[Message], key: str = GOOD_SHARE_KEY) -> float | None:
    """π for the round: the median of the ``key`` values of the (accepted, well-formed)
    replies that carry one — each board one vote, whatever its num-examples — or None.

    With a majority of honest boards the median lies within the honest boards' range, and a
    board cannot buy influence by claiming more windows (FedAvg's weighted mean let one
    reply of num-examples 1e300 set π alone)."""
    shares = []
    for reply in replies:
        if reply.has_error():
            continue
        metrics = metrics_of(reply)
        value = metrics.get(key) if metrics is not None else None
        if finite_number(value) and 0.0 <= value <= 1.0:  # type: ignore[operator]
            shares.append(float(value))  # type: ignore[arg-type]
    return float(np.median(shares)) if shares else None


_RULES = ValidationRules()
VALIDATION_FIELDS = (
    Field("mad_k", float, _RULES.mad_k, "reject updates this many MADs from the median",
          above=0),
    Field("max_update_norm", float, _RULES.max_update_norm, "reject longer updates; 0: no cap",
          low=0),
    Field("max_num_examples", int, _RULES.max_num_examples, "cap on a reply's num-examples",
          low=1),
    Field("max_examples_median_multiple", float, _RULES.max_examples_median_multiple,
          "reject num-examples above this multiple of the round's median; 0: off"),
)  # fmt: skip


def parse_validation(data: dict[str, object]) -> ValidationRules:
    """The ``[validation]`` table of server.toml (absent: the defaults above)."""
    table = get_field(data, "validation", dict, "config", {})
    values = read_fields(table, "validation", VALIDATION_FIELDS)
    multiple = values["max_examples_median_multiple"]
    if multiple != 0 and multiple < 1:
        raise ConfigError(
            f"validation.max_examples_median_multiple: must be >= 1 (0 = off), got {multiple}"
        )
    return ValidationRules(**values)


def run_config_entries(rules: ValidationRules) -> dict[str, float | int]:
    """The run-config keys the ServerApp reads back with :func:`rules_from_run_config`
    (each must also be in flower_app/pyproject.toml: Flower refuses unknown keys)."""
    return {
        "validation-mad-k": rules.mad_k,
        "validation-max-update-norm": rules.max_update_norm,
        "validation-max-num-examples": rules.max_num_examples,
        "validation-max-examples-median-multiple": rules.max_examples_median_multiple,
    }


def rules_from_run_config(cfg: Mapping[str, Any]) -> ValidationRules:
    default = ValidationRules()
    return ValidationRules(
        mad_k=float(cfg.get("validation-mad-k", default.mad_k)),
        max_update_norm=float(cfg.get("validation-max-update-norm", default.max_update_norm)),
        max_num_examples=int(cfg.get("validation-max-num-examples", default.max_num_examples)),
        max_examples_median_multiple=float(
            cfg.get("validation-max-examples-median-multiple", default.max_examples_median_multiple)
        ),
    )
