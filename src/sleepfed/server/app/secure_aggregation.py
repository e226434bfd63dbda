"""Rounds under Flower's SecAgg+ (``SecAggPlusWorkflow``): the server learns only the sum.

SecAgg+ exists in Flower 1.42 only as a workflow of the legacy server API
(``DefaultWorkflow`` + a ``flwr.server.strategy`` strategy in a ``LegacyContext``); the
board's ``sleepfed.board.training.privacy_mods`` translate its records for the Message-API
ClientApp. Each
board's weighted parameters are clipped to ±``clipping_range``, quantised to 2**22 levels
(weights as num-examples / ``max_weight``)
and masked; the server unmasks only the sum of the boards that finished the round, and
reconstructs the masks of boards that dropped out after sharing their keys, as long as
``threshold`` of their neighbours' shares survive. Individual updates are never seen, so
per-update validation (sleepfed.server.app.update_validation) cannot run: only the aggregate is
checked
(finite, right shape) before it is kept.

Boards send no scalar in the clear under SecAgg+ (``sleepfed.board.training.privacy_mods.
withhold_scalars_mod``): a board's num-examples enters only its masked vector (as the
quantised weight factor Flower's SecAgg+ folds into it), so the server learns only the sum
of the finishers' num-examples, as it learns only the sum of their weighted parameters. The
``fitres.num_examples`` / ``fitres.metrics`` records the legacy protocol still carries are 0
and empty, and so are the evaluation replies' loss, num-examples and metrics: the history
keeps no board-reported metric for SecAgg+ rounds (the server's held-out scores remain), and
the strategy neither averages nor weights anything by them. A board whose agent predates
this sends them all the same; the server ignores them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import ServerConfig
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat import LegacyContext
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid

from sleepfed.server.app.privacy import PrivacySettings

log = logging.getLogger("sleepfed.server")


class RecordingSecAggFedAvg(LegacyFedAvg):
    """Legacy FedAvg that records what the history needs, and evaluates a round's model on
    the boards that completed that round (a board that dropped out is not waited for)."""

    def __init__(self, on_round_done: Callable[[int, list[np.ndarray]], None], **kwargs: Any):
        super().__init__(**kwargs)
        self.on_round_done = on_round_done
        self.train_metrics: dict[int, dict[str, float]] = {}
        self.eval_metrics: dict[int, dict[str, float]] = {}
        self.train_nodes: dict[int, int] = {}
        self.eval_nodes: dict[int, int] = {}
        self.round_arrays: dict[int, list[np.ndarray]] = {}
        self._finishers: list[ClientProxy] = []

    def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
        self._finishers = [proxy for proxy, _ in results]
        self.train_nodes[server_round] = len(results)
        # SecAggPlusWorkflow has put the unmasked aggregate (already weighted inside the
        # masked vectors) in every result: take it as it is. The legacy FedAvg would weight
        # these identical copies by the results' clear num_examples, which boards send as 0.
        parameters = results[0][1].parameters if results else None
        self.train_metrics[server_round] = {}  # no board-reported scalar under SecAgg+
        if parameters is not None:
            arrays = parameters_to_ndarrays(parameters)
            if not all(np.isfinite(a).all() for a in arrays):
                log.error("round %d: the secure aggregate is not finite; discarded", server_round)
                return None, {}
            self.round_arrays[server_round] = arrays
        return parameters, {}

    def configure_evaluate(self, server_round: int, parameters: Any, client_manager: Any) -> Any:
        if server_round not in self.round_arrays:
            return []  # the round's secure aggregation halted: nothing new to evaluate
        instructions = super().configure_evaluate(server_round, parameters, client_manager)
        finishers = {p.node_id for p in self._finishers}
        return [(p, ins) for p, ins in instructions if p.node_id in finishers]

    def aggregate_evaluate(self, server_round: int, results: Any, failures: Any) -> Any:
        # The boards' evaluation replies carry no loss, count or metric under SecAgg+: the
        # round's evaluation is the boards receiving the model, and the server's own scoring.
        self.eval_nodes[server_round] = len(results)
        self.eval_metrics[server_round] = {}
        if server_round in self.round_arrays:
            self.on_round_done(server_round, self.round_arrays[server_round])
        return None, {}


def run_secure_rounds(
    grid: Grid,
    context: Context,
    *,
    settings: PrivacySettings,
    initial: list[np.ndarray],
    num_rounds: int,
    min_nodes: int,
    fraction_train: float,
    fraction_evaluate: float,
    train_config: Callable[[int], dict[str, Any]],
    evaluate_config: Callable[[int], dict[str, Any]],
    on_round_done: Callable[[RecordingSecAggFedAvg, int, list[np.ndarray]], None],
) -> RecordingSecAggFedAvg:
    """Run ``num_rounds`` SecAgg+ rounds; ``on_round_done`` persists each one."""
    holder: list[RecordingSecAggFedAvg] = []
    strategy = RecordingSecAggFedAvg(
        on_round_done=lambda rnd, arrays: on_round_done(holder[0], rnd, arrays),
        fraction_fit=fraction_train,
        fraction_evaluate=fraction_evaluate,
        min_fit_clients=min_nodes,
        min_evaluate_clients=1,
        min_available_clients=min_nodes,
        on_fit_config_fn=train_config,
        on_evaluate_config_fn=evaluate_config,
        initial_parameters=ndarrays_to_parameters(initial),
        fit_metrics_aggregation_fn=lambda pairs: {},
        evaluate_metrics_aggregation_fn=lambda pairs: {},
    )
    holder.append(strategy)
    legacy = LegacyContext(
        context=context,
        config=ServerConfig(num_rounds=num_rounds, round_timeout=settings.secagg_timeout_seconds),
        strategy=strategy,
    )
    workflow = DefaultWorkflow(
        fit_workflow=SecAggPlusWorkflow(
            num_shares=settings.secagg_shares,
            reconstruction_threshold=settings.secagg_threshold,
            max_weight=settings.secagg_max_weight,
            clipping_range=settings.secagg_clipping_range,
            timeout=settings.secagg_timeout_seconds,
        )
    )
    workflow(grid, legacy)
    halted = [r for r in range(1, num_rounds + 1) if r not in strategy.round_arrays]
    if halted:
        # SecAggPlusWorkflow logs "Insufficient available nodes" and carries on without a
        # model: too many boards dropped out (fewer than the threshold's shares survive).
        raise RuntimeError(f"secure aggregation halted in round(s) {halted}: too many dropouts")
    return strategy
