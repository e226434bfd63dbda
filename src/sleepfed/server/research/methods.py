"""The three methods ``sleepfed-server evaluate`` compares, each trained on one fold's
training people (federated, centralised, local-only), and the settings they run with."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from flwr.serverapp.strategy import Strategy

from sleepfed.board.training import client_app as board_app
from sleepfed.model import logistic as model
from sleepfed.model import objective
from sleepfed.model.personalisation import DEFAULT_MU
from sleepfed.server.app.fedbuff_loop import run_fedbuff_loop
from sleepfed.server.app.fedbuff_run import new_buffer
from sleepfed.server.app.privacy import PrivacySettings, wrap_strategy
from sleepfed.server.app.strategies import StrategySettings, build_strategy
from sleepfed.server.app.update_validation import ValidationRules
from sleepfed.server.research.people import Person
from sleepfed.server.research.scores import calibration_of, mean_dicts, scores
from sleepfed.server.research.simulation import InProcessGrid, prepare_buffers, run_federated

CENTRALISED_ITERATIONS = 500


@dataclass(frozen=True)
class EvaluationSettings:
    folds: int = 5
    rounds: int = 20
    # a board's fixed-size gradient steps per round (sleepfed.model.objective)
    local_iterations: int = objective.DEFAULT_STEPS
    learning_rate: float = objective.DEFAULT_LEARNING_RATE
    strategy: StrategySettings = field(default_factory=StrategySettings)
    personalise_mu: float = DEFAULT_MU
    seed: int = 0
    engine: str = "inprocess"
    run_config: dict[str, Any] = field(default_factory=dict)  # extra ClientApp run config
    privacy: PrivacySettings | None = (
        None  # DP (sleepfed.server.app.privacy): the server's own stack
    )


def _strategy(settings: EvaluationSettings, boards: int) -> Strategy:
    common: dict[str, Any] = {
        "fraction_train": 1.0,
        "fraction_evaluate": 0.0,
        "min_train_nodes": boards,
        "min_evaluate_nodes": 0,
        "min_available_nodes": boards,
    }
    if settings.privacy is None or not settings.privacy.dp:
        return build_strategy(settings.strategy, **common)
    # DP as the server runs it: equal weights, update screening, Flower's DP wrapper
    from sleepfed.server.app.recording_strategy import RecordingFedAvg

    inner = build_strategy(settings.strategy, RecordingFedAvg, uniform_weights=True, **common)
    return wrap_strategy(inner, settings.privacy, boards)


def _auc_recorder(
    curve: list[float], features: np.ndarray, labels: np.ndarray
) -> Callable[[int, model.Arrays], None]:
    def record(_round: int, arrays: model.Arrays) -> None:
        curve.append(model.auc(labels, model.good_probability(arrays, features)))

    return record


def train_federated(
    train: Sequence[Person], test: Sequence[Person], settings: EvaluationSettings
) -> tuple[model.Arrays, list[float]]:
    """The boards' own ClientApp on one buffer per training person: the last round's model
    and every round's AUC on the test people."""
    curve: list[float] = []
    test_x = np.vstack([p.labelled_xy[0] for p in test])
    test_y = np.concatenate([p.labelled_xy[1] for p in test])
    with tempfile.TemporaryDirectory(prefix="sleepfed-eval-") as buffers:
        prepare_buffers(buffers, [p.night for p in train], [p.subject for p in train])
        if settings.strategy.asynchronous:
            last = _train_fedbuff(
                buffers, len(train), settings, _auc_recorder(curve, test_x, test_y)
            )
            return last, curve
        strategy = _strategy(settings, len(train))
        per_round = run_federated(
            strategy,
            buffers,
            len(train),
            rounds=settings.rounds,
            train_config={
                "local-iterations": settings.local_iterations,
                "learning-rate": settings.learning_rate,
            },
            engine=settings.engine,
            run_config=settings.run_config,
            on_round=_auc_recorder(curve, test_x, test_y),
        )
    return per_round[-1], curve


def _train_fedbuff(
    buffers: str,
    boards: int,
    settings: EvaluationSettings,
    record: Callable[[int, model.Arrays], None],
) -> model.Arrays:
    """FedBuff (sleepfed.server.app.fedbuff_loop) over the in-process boards, who all answer
    at once: as many board updates as ``rounds`` synchronous rounds (each version scored)."""
    if settings.engine != "inprocess" or (settings.privacy is not None and settings.privacy.dp):
        raise ValueError("fedbuff runs in the in-process engine, without DP")
    # K is at most the boards (each answers once per version's time here)
    strategy = replace(settings.strategy, buffer_size=min(settings.strategy.buffer_size, boards))
    buffer = new_buffer(model.initial_arrays(), strategy, ValidationRules())
    config = {**settings.run_config, board_app.SIM_BUFFER_DIR_KEY: buffers}
    run_fedbuff_loop(
        InProcessGrid(board_app.app, boards, config),
        buffer,
        versions=max(1, settings.rounds * boards // strategy.buffer_size),
        train_config={
            "local-iterations": settings.local_iterations,
            "learning-rate": settings.learning_rate,
        },
        rules=ValidationRules(),
        task_timeout=3600.0,
        on_version=lambda version, _: record(version, buffer.model),
        poll_seconds=0.0,
    )
    return buffer.model


def _fit(features: np.ndarray, labels: np.ndarray) -> model.Arrays:
    return model.fit(features, labels, iterations=CENTRALISED_ITERATIONS)


def train_centralised(train: Sequence[Person]) -> model.Arrays:
    """One model on the pooled windows the boards train on (the upper reference)."""
    features = np.vstack([p.train_xy[0] for p in train])
    labels = np.concatenate([p.train_xy[1] for p in train])
    return _fit(features, labels)


def local_only_scores(train: Sequence[Person], test: Sequence[Person]) -> dict[str, float]:
    """The mean scores of one model per training person (with both classes), each fitted on
    that person's windows alone and calibrated on them."""
    rows = []
    for person in train:
        x, y = person.train_xy
        if len(np.unique(y)) < 2:
            continue
        rows.append(scores(_fit(x, y), test, calibration_of([person])))
    return mean_dicts(rows)
