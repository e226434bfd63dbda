"""The strategy side of update validation: a mixin that screens each round's replies
(:mod:`sleepfed.server.app.update_validation`) before the strategy aggregates them, and
keeps what it rejected for the history."""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import ArrayRecord, Message, RecordDict

from sleepfed.server.app.canonical_replies import (
    canonical_evaluate_replies,
    canonical_train_replies,
)
from sleepfed.server.app.update_validation import (
    Rejection,
    ValidationRules,
    robust_good_share,
    validate_replies,
)

log = logging.getLogger("sleepfed.server")


class UpdateScreening:
    """Mixed into a strategy: ``screen`` runs before its aggregation.

    ``configure_train`` must store the round's global arrays in ``screening_arrays``.
    Rejections are logged with the node id and reason and kept per round in ``rejections``;
    the round's π (:func:`robust_good_share` of the accepted replies) in ``good_shares``.
    With ``uniform_weights`` (differential privacy: the noise is calibrated to a mean of
    equally weighted, clipped updates) every update gets weight 1 under
    ``UNIFORM_WEIGHT_KEY``, no scalar of a board is kept, and a rejected update is replaced by
    a zero update (the global model itself) so the mean keeps its calibrated denominator."""

    screening_rules: ValidationRules = ValidationRules()
    uniform_weights: bool = False

    def init_screening(self, rules: ValidationRules, uniform_weights: bool) -> None:
        self.screening_rules = rules
        self.uniform_weights = uniform_weights
        self.screening_arrays: list[np.ndarray] = []
        self.rejections: dict[int, list[Rejection]] = {}
        self.update_norms: dict[int, dict[int, float]] = {}
        self.good_shares: dict[int, float | None] = {}

    def screen(self, server_round: int, replies: list[Message]) -> list[Message]:
        accepted, rejected, norms = validate_replies(
            replies,
            self.screening_arrays,
            self.screening_rules,
            use_scalars=not self.uniform_weights,
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
        if self.uniform_weights:
            rejected_nodes = {r.node_id for r in rejected}
            for reply in replies:
                if not reply.has_error() and reply.metadata.src_node_id in rejected_nodes:
                    reply.content = RecordDict({"arrays": ArrayRecord(self.screening_arrays)})
                    accepted.append(reply)
            self.good_shares[server_round] = None
        else:
            self.good_shares[server_round] = robust_good_share(
                accepted, self.screening_rules.good_share_key
            )
        return canonical_train_replies(accepted, self.uniform_weights)

    def weigh_evaluations(self, replies: list[Message]) -> list[Message]:
        """Evaluation replies in one canonical form (weighted by num-examples; under
        ``uniform_weights`` by 1 under ``UNIFORM_WEIGHT_KEY``, with no board's scalar kept)."""
        return canonical_evaluate_replies(replies, self.screening_rules, self.uniform_weights)
