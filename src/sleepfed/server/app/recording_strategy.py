"""The server's FedAvg (and, through sleepfed.server.app.strategies, every strategy built on
it): it screens the boards' updates (sleepfed.server.app.update_screening) and remembers each
round's aggregated metrics, reply counts and rejections for the history.

The boards' scores of a global model arrive in two ways (sleepfed.server.app.round_loop):
with the next round's updates (``eval-*`` metrics of a train reply, taken out before the
update is screened and aggregated) and in an evaluate reply (the run's last model, or an
evaluation-only run). Both land in ``eval_metrics`` / ``eval_nodes`` under the server round
whose model was scored."""

from __future__ import annotations

import math
from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from sleepfed.board.training.client_app import (
    EVAL_ACCURACY_KEY,
    EVAL_EXAMPLES_KEY,
    EVAL_KEYS,
    EVAL_LOSS_KEY,
    GOOD_SHARE_KEY,
)
from sleepfed.server.app.canonical_replies import UNIFORM_WEIGHT_KEY
from sleepfed.server.app.reply_records import finite_number, metrics_of
from sleepfed.server.app.update_screening import UpdateScreening
from sleepfed.server.app.update_validation import ValidationRules


def take_evaluations(replies: list[Message]) -> dict[int, dict[str, float]]:
    """Each reply's ``eval-*`` metrics by node id, removed from its metric record so that
    the update's own metrics are screened and aggregated as before. A reply whose three
    values are not finite numbers (or whose examples are not positive) gives none."""
    taken: dict[int, dict[str, float]] = {}
    for reply in replies:
        if reply.has_error():
            continue
        record = metrics_of(reply)
        if record is None or not any(k in record for k in EVAL_KEYS):
            continue
        values = {k: record.pop(k) for k in EVAL_KEYS if k in record}
        numbers = {k: float(v) for k, v in values.items() if finite_number(v)}  # type: ignore[arg-type]
        if len(numbers) == len(EVAL_KEYS) and numbers[EVAL_EXAMPLES_KEY] > 0:
            taken[reply.metadata.src_node_id] = numbers
    return taken


def pooled_evaluation(scores: list[dict[str, float]], max_examples: int) -> dict[str, float]:
    """The boards' held-out loss and accuracy, weighted by their held-out windows (each
    weight capped at ``max_examples``, as an update's is)."""
    weights = [min(s[EVAL_EXAMPLES_KEY], float(max_examples)) for s in scores]
    total = sum(weights)
    if not scores or total <= 0 or not math.isfinite(total):
        return {}
    return {
        key: sum(w * s[key] for w, s in zip(weights, scores, strict=True)) / total
        for key in (EVAL_LOSS_KEY, EVAL_ACCURACY_KEY)
    }


class RecordingFedAvg(UpdateScreening, FedAvg):
    """FedAvg that screens the boards' updates and remembers each round's aggregated client
    metrics, reply counts and rejections."""

    def __init__(
        self,
        rules: ValidationRules | None = None,
        uniform_weights: bool = False,
        **kwargs: object,
    ) -> None:
        if uniform_weights:
            kwargs["weighted_by_key"] = UNIFORM_WEIGHT_KEY
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.init_screening(rules or ValidationRules(), uniform_weights)
        self.train_metrics: dict[int, dict[str, float]] = {}
        self.eval_metrics: dict[int, dict[str, float]] = {}
        self.train_nodes: dict[int, int] = {}
        self.eval_nodes: dict[int, int] = {}
        # set by the round loop: whether this round's train messages carry the model of the
        # round before for the boards to score (sleepfed.server.app.round_loop)
        self.scored_with_train: set[int] = set()

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        evaluations = take_evaluations(replies)
        replies = self.screen(server_round, replies)
        if server_round in self.scored_with_train:
            # the scores of boards whose update was accepted; under DP none are sent
            accepted = {r.metadata.src_node_id for r in replies if not r.has_error()}
            kept = [s for node, s in evaluations.items() if node in accepted]
            self.eval_metrics[server_round - 1] = pooled_evaluation(
                kept, self.screening_rules.max_num_examples
            )
            self.eval_nodes[server_round - 1] = len(accepted if self.uniform_weights else kept)
        self.train_nodes[server_round] = sum(1 for r in replies if not r.has_error())
        arrays, metrics = super().aggregate_train(server_round, replies)
        # π is the median of the accepted boards' shares (sleepfed.server.app.update_validation
        # .robust_good_share), not Flower's num-examples-weighted mean of them.
        recorded = {k: v for k, v in dict(metrics or {}).items() if k != GOOD_SHARE_KEY}
        good_share = self.good_shares.get(server_round)
        if good_share is not None:
            recorded[GOOD_SHARE_KEY] = good_share
        self.train_metrics[server_round] = recorded
        return arrays, MetricRecord(recorded) if metrics is not None else None

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self.screening_arrays = arrays.to_numpy_ndarrays()
        return super().configure_train(server_round, arrays, config, grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        # The boards' share of Good windows (π, the median of the accepted boards' shares),
        # from this round's train metrics: the boards calibrate their night estimates with it
        # (sleepfed.model.features.estimated_efficiency). None under DP: no board's scalar is used.
        good_share = self.train_metrics.get(server_round, {}).get(GOOD_SHARE_KEY)
        if good_share is not None and 0.0 < float(good_share) < 1.0:
            config = ConfigRecord({**dict(config), GOOD_SHARE_KEY: float(good_share)})
        return super().configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        replies = self.weigh_evaluations(list(replies))
        self.eval_nodes[server_round] = sum(1 for r in replies if not r.has_error())
        metrics = super().aggregate_evaluate(server_round, replies)
        self.eval_metrics[server_round] = dict(metrics or {})
        return metrics
