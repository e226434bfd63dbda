"""The sleepfed ServerApp: FedAvg over the boards, every round persisted to the history.

Started by the SuperLink for each run that ``sleepfed-server run`` submits. The run config
(``src/sleepfed/server/app/flower_app/pyproject.toml``, overridden per run) names the history
file, the number of rounds and the node minimums, and an optional held-out data set (Walch
format) on which each round's global model is scored on the server
(sleepfed.server.app.held_out).

A run resumes from the last active round in the history: its model is the initial model
and its rounds are numbered on from there. A run that never finished (the server was killed
mid-run) is marked interrupted, and the next run does only its remaining rounds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, UserConfig
from flwr.serverapp import Grid, ServerApp

from sleepfed.board.training.client_app import GOOD_SHARE_KEY
from sleepfed.board.training.privacy_mods import WITHHOLD_METRICS_KEY
from sleepfed.model import logistic as model
from sleepfed.server.app.fedbuff import Contribution, FedBuffBuffer
from sleepfed.server.app.fedbuff_run import run_fedbuff, version_row
from sleepfed.server.app.held_out import held_out_scores, held_out_set
from sleepfed.server.app.history import History
from sleepfed.server.app.privacy import (
    PrivacySettings,
    dp_rules,
    round_privacy,
    settings_from_run_config,
    wrap_strategy,
)
from sleepfed.server.app.recording_strategy import RecordingFedAvg
from sleepfed.server.app.round_loop import run_rounds, train_config
from sleepfed.server.app.secure_aggregation import RecordingSecAggFedAvg, run_secure_rounds
from sleepfed.server.app.strategies import StrategySettings, build_strategy
from sleepfed.server.app.strategies import (
    settings_from_run_config as strategy_settings_from_run_config,
)
from sleepfed.server.app.update_validation import Rejection, rules_from_run_config

log = logging.getLogger("sleepfed.server")
app = ServerApp()


@dataclass(frozen=True)
class RunPlan:
    """What one run does: where it starts, how many rounds, and what the boards are asked."""

    run_id: str
    start_round: int
    num_rounds: int
    initial: model.Arrays
    min_nodes: int
    training: dict[str, int | float]  # each round's train config
    privacy: PrivacySettings

    @property
    def protected(self) -> bool:
        return self.privacy.dp or self.privacy.secure_aggregation


def _resume(history: History, num_rounds: int) -> tuple[int, int, model.Arrays]:
    """(start round, rounds to do, initial model): on from the last active round."""
    interrupted_end = history.interrupt_unfinished_runs()
    last = history.last_round()
    start_round = last.global_round if last else 0
    if interrupted_end is not None and interrupted_end > start_round:
        # The server was killed mid-run: this run finishes that one's remaining rounds.
        num_rounds = interrupted_end - start_round
        log.warning(
            "resuming an interrupted run after round %d: %d rounds left", start_round, num_rounds
        )
    initial = model.arrays_from_bytes(last.arrays) if last else model.initial_arrays()
    return start_round, num_rounds, initial


def _training_config(cfg: UserConfig) -> dict[str, int | float]:
    # what a board's training takes each round (sleepfed.board.training.client_app,
    # sleepfed.model.objective)
    return {
        "local-iterations": int(cfg["local-iterations"]),
        "learning-rate": float(cfg["learning-rate"]),
    }


def _build_strategy(cfg: UserConfig, plan: RunPlan, settings: StrategySettings) -> RecordingFedAvg:
    # the configured strategy (sleepfed.server.app.strategies), screened and recorded
    privacy = plan.privacy
    return build_strategy(
        settings,
        RecordingFedAvg,
        rules=dp_rules(rules_from_run_config(cfg), privacy.clipping_norm if privacy.dp else 0.0),
        uniform_weights=privacy.dp,
        fraction_train=float(cfg["fraction-train"]),
        fraction_evaluate=float(cfg["fraction-evaluate"]),
        min_train_nodes=plan.min_nodes,
        min_evaluate_nodes=plan.min_nodes,
        min_available_nodes=plan.min_nodes,
    )


@dataclass(frozen=True)
class RoundRecorder:
    """Writes each finished round to the history, with its held-out scores."""

    history: History
    plan: RunPlan
    held_out: tuple[np.ndarray, np.ndarray] | None

    def persist(
        self,
        source: RecordingFedAvg | RecordingSecAggFedAvg,
        server_round: int,
        ndarrays: model.Arrays,
    ) -> dict[str, float]:
        scores = held_out_scores(ndarrays, *self.held_out) if self.held_out else {}
        rejected = getattr(source, "rejections", {}).get(server_round, [])
        earlier = [r.privacy for r in self.history.rounds()]
        self.history.add_round(
            global_round=self.plan.start_round + server_round,
            run_id=self.plan.run_id,
            server_round=server_round,
            arrays=model.arrays_to_bytes(ndarrays),
            train_metrics=source.train_metrics.get(server_round, {}),
            eval_metrics=source.eval_metrics.get(server_round, {}),
            server_metrics=scores,
            train_nodes=source.train_nodes.get(server_round, 0),
            eval_nodes=source.eval_nodes.get(server_round, 0),
            rejected=[r.as_dict() for r in rejected],
            privacy=round_privacy(earlier, self.plan.privacy),
        )
        return scores

    def persist_version(
        self,
        version: int,
        ndarrays: model.Arrays,
        used: list[Contribution],
        buffer: FedBuffBuffer,
        rejected: list[Rejection],
    ) -> None:
        """A FedBuff version as the run's round ``version``, with the updates rejected in its
        time."""
        self.history.add_round(
            global_round=self.plan.start_round + version,
            run_id=self.plan.run_id,
            server_metrics=held_out_scores(ndarrays, *self.held_out) if self.held_out else {},
            privacy=round_privacy([r.privacy for r in self.history.rounds()], self.plan.privacy),
            rejected=[r.as_dict() for r in rejected],
            **version_row(version, ndarrays, used, buffer),
        )

    def record_evaluation(self, source: RecordingFedAvg, server_round: int) -> None:
        """The boards' scores of round ``server_round``'s model (0: the model the run started
        from, whose earlier scores are kept unless the run only evaluates)."""
        if server_round not in source.eval_nodes:
            return
        self.history.record_evaluation(
            self.plan.start_round + server_round,
            source.eval_metrics.get(server_round, {}),
            source.eval_nodes[server_round],
            replace=server_round > 0 or self.plan.num_rounds == 0,
        )


def _run_secure(grid: Grid, context: Context, plan: RunPlan, recorder: RoundRecorder) -> None:
    """The rounds under SecAgg+ (Flower's legacy workflow)."""
    cfg = context.run_config

    def evaluate_config(server_round: int) -> dict[str, int | bool]:
        return {
            "server-round": server_round,
            "global-round-offset": plan.start_round,
            "final-global-round": plan.start_round + plan.num_rounds,
            WITHHOLD_METRICS_KEY: True,  # only used under SecAgg+ (the legacy workflow)
        }

    run_secure_rounds(
        grid,
        context,
        settings=plan.privacy,
        initial=plan.initial,
        num_rounds=plan.num_rounds,
        min_nodes=plan.min_nodes,
        fraction_train=float(cfg["fraction-train"]),
        fraction_evaluate=float(cfg["fraction-evaluate"]),
        train_config=lambda rnd: {"server-round": rnd, **plan.training},
        evaluate_config=evaluate_config,
        on_round_done=recorder.persist,
    )


def _run_screened(
    grid: Grid, cfg: UserConfig, plan: RunPlan, strategy: RecordingFedAvg, recorder: RoundRecorder
) -> None:
    """The rounds of the screening strategy (under central DP if configured), one train
    message per board per round (sleepfed.server.app.round_loop)."""
    last = recorder.history.last_round()
    earlier_share = last.train_metrics.get(GOOD_SHARE_KEY) if last else None

    def config_of_round(server_round: int) -> ConfigRecord:
        if server_round == 1:
            share = float(earlier_share) if earlier_share is not None else None
        else:
            share = strategy.train_metrics.get(server_round - 1, {}).get(GOOD_SHARE_KEY)
        return train_config(plan.training, plan.start_round + server_round - 1, share)

    def persist(server_round: int, arrays: ArrayRecord) -> None:
        recorder.persist(strategy, server_round, arrays.to_numpy_ndarrays())

    run_rounds(
        wrap_strategy(strategy, plan.privacy, plan.min_nodes),
        strategy,
        grid,
        initial=ArrayRecord(plan.initial),
        num_rounds=plan.num_rounds,
        timeout=float(cfg["round-timeout"]),
        config_of_round=config_of_round,
        evaluate_config=ConfigRecord(
            {
                "global-round-offset": plan.start_round,
                "final-global-round": plan.start_round + plan.num_rounds,
                **({WITHHOLD_METRICS_KEY: True} if plan.protected else {}),
            }
        ),
        on_round=persist,
        on_evaluated=lambda server_round: recorder.record_evaluation(strategy, server_round),
    )


def _run_asynchronous(
    grid: Grid, cfg: UserConfig, plan: RunPlan, recorder: RoundRecorder, settings: StrategySettings
) -> None:
    """FedBuff (sleepfed.server.app.fedbuff_run): the run's rounds are its versions."""
    run_fedbuff(
        grid,
        initial=plan.initial,
        rounds=(plan.start_round, plan.num_rounds),
        settings=settings,
        rules=dp_rules(
            rules_from_run_config(cfg), plan.privacy.clipping_norm if plan.privacy.dp else 0.0
        ),
        training=plan.training,
        round_timeout=float(cfg["round-timeout"]),
        persist=recorder.persist_version,
        privacy=plan.privacy,
    )


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    run_id = str(context.run_id)
    history = History(str(cfg["history-path"]))
    start_round, num_rounds, initial = _resume(history, int(cfg["num-rounds"]))
    if num_rounds == 0 and start_round == 0:
        history.close()
        raise ValueError("an evaluation-only run needs a model: the history has no round yet")
    history.start_run(run_id, start_round, num_rounds)
    held_out = held_out_set(str(cfg.get("eval-data", "")), str(cfg.get("eval-subjects", "")))
    min_nodes = int(cfg["min-nodes"])
    training = _training_config(cfg)
    privacy = settings_from_run_config(cfg)
    if privacy.dp or privacy.secure_aggregation:
        # Boards send no scalar under DP or SecAgg+
        # (sleepfed.board.training.privacy_mods.withhold_scalars_mod)
        training[WITHHOLD_METRICS_KEY] = True
    plan = RunPlan(run_id, start_round, num_rounds, initial, min_nodes, training, privacy)
    recorder = RoundRecorder(history, plan, held_out)
    try:
        strategy_settings = strategy_settings_from_run_config(cfg)
        if strategy_settings.asynchronous:
            _run_asynchronous(grid, cfg, plan, recorder, strategy_settings)
            history.finish_run(run_id, "finished")
            history.close()
            return
        strategy = _build_strategy(cfg, plan, strategy_settings)
        if privacy.secure_aggregation:
            _run_secure(grid, context, plan, recorder)
            history.finish_run(run_id, "finished")
            history.close()
            return
        _run_screened(grid, cfg, plan, strategy, recorder)
    except BaseException:
        history.finish_run(run_id, "failed")
        raise
    history.finish_run(run_id, "finished")
    history.close()
