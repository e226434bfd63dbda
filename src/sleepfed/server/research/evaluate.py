"""``sleepfed-server evaluate``: federated vs centralised vs local-only on real people.

Any folder in the Walch 2019 format; one federated board per subject; leave-subjects-out
folds (every subject is tested exactly once, by models that never saw any of their data).
Per fold:

* **federated**: the boards' own ClientApp (``sleepfed.board.training.client_app``) on one real
SQLite buffer
  per training subject, driven by the chosen Flower strategy for ``rounds`` rounds
  (:mod:`sleepfed.server.research.simulation`); each round's global model is scored on the fold's
  test people;
* **centralised**: the same model and objective (balanced logistic regression, ridge α per
  window; ``sleepfed.model.logistic.fit``: scikit-learn to the optimum) fitted on the pooled
  windows the
  boards train on (the upper reference);
* **local-only**: one model per training subject, fitted on that subject's windows alone,
  each scored on the fold's test people (figures are the mean over those models).

Figures are the mean over folds: window AUC, balanced accuracy (threshold 0.5: the balanced
class weights put the decision there), rounds for the federated AUC to reach 99% of its final
value, and the night sleep-efficiency MAE in points vs PSG.

Night sleep efficiency from window probabilities (``night_efficiency``): the balanced model's
probabilities are moved back to the population prior (log-odds + log(π/(1−π))), then each
window counts for the mean asleep share of Good windows (a_good) with its probability and of
Poor windows (a_poor) otherwise. π, a_good and a_poor are three label statistics of the
training subjects of the fold (for local-only: of the subject itself). They are the only thing
the federated figures take from pooled training labels; a deployment would collect them as a
federated count (they barely move: π ≈ 0.88, a_good ≈ 0.98, a_poor ≈ 0.37 on Walch 2019).

Personalisation (``sleepfed.model.personalisation``) is measured on the test people: each one's
labelled windows are split by the board's own rule (``sleepfed.board.training.client_app``: 80% for
training,
20% held out); the global model fine-tuned on the 80% is compared with the global model on
the same 20%, pooled over the fold's test people.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.serverapp.strategy import Strategy

from sleepfed.board.training import client_app as board_app
from sleepfed.model import logistic as model
from sleepfed.model import objective
from sleepfed.model.features import (
    WINDOW_EPOCHS,
    EpochSeries,
    NightWindows,
    at_prior,
    load_walch_subject,
    night_windows,
    reference_efficiency,
    walch_subjects,
)
from sleepfed.model.personalisation import DEFAULT_MU, personalise
from sleepfed.server.app.privacy import PrivacySettings, wrap_strategy
from sleepfed.server.app.strategies import StrategySettings, build_strategy
from sleepfed.server.research.simulation import prepare_buffers, run_federated, simulated_night_name

CENTRALISED_ITERATIONS = 500
METHODS = ("federated", "centralised", "local_only")


class EvaluationError(ValueError):
    """The data cannot be evaluated (too few subjects, no labels, …)."""


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


@dataclass
class Person:
    """One subject: their night's windows, which of them a board trains on, PSG truth."""

    subject: str
    night: NightWindows
    asleep_share: np.ndarray  # per window: share of its labelled epochs asleep (NaN if none)
    reference_efficiency: float | None
    trains_on: np.ndarray  # labelled and not held out by the board's rule
    held_out: np.ndarray  # labelled and held out

    @property
    def train_xy(self) -> tuple[np.ndarray, np.ndarray]:
        return self.night.features[self.trains_on], self.night.labels[self.trains_on]

    @property
    def labelled_xy(self) -> tuple[np.ndarray, np.ndarray]:
        mask = self.night.labelled
        return self.night.features[mask], self.night.labels[mask]


def _asleep_share(series: EpochSeries, n_windows: int) -> np.ndarray:
    asleep = series.asleep[: n_windows * WINDOW_EPOCHS].reshape(n_windows, WINDOW_EPOCHS)
    counted = np.isfinite(asleep).sum(axis=1)
    return np.where(counted > 0, np.nansum(asleep, axis=1) / np.maximum(counted, 1), np.nan)


def load_people(data_dir: str | Path, subjects: Sequence[str] | None = None) -> list[Person]:
    """Every (or the named) subject of a Walch-format folder, in the board's night naming."""
    chosen = list(subjects) if subjects is not None else walch_subjects(data_dir)
    people = []
    for subject in chosen:
        series = load_walch_subject(data_dir, subject)
        night = night_windows(series)
        # the name the prepared buffer gives this night
        # (sleepfed.server.research.simulation.prepare_buffers)
        name = simulated_night_name(subject, 0)
        held = np.array(
            [board_app._is_held_out(name, float(s) * 30.0) for s in night.start_epochs],
            dtype=bool,
        )
        people.append(
            Person(
                subject=subject,
                night=night,
                asleep_share=_asleep_share(series, len(night.labels)),
                reference_efficiency=reference_efficiency(series),
                trains_on=night.labelled & ~held,
                held_out=night.labelled & held,
            )
        )
    return people


def subject_folds(subjects: Sequence[str], folds: int, seed: int) -> list[list[str]]:
    """``folds`` disjoint groups of subjects, shuffled by ``seed``, sizes within one."""
    if folds < 2:
        raise EvaluationError(f"--folds must be >= 2, got {folds}")
    if len(subjects) < folds:
        raise EvaluationError(f"{len(subjects)} subjects cannot make {folds} folds")
    order = list(np.random.default_rng(seed).permutation(sorted(subjects)))
    return [sorted(str(s) for s in order[i::folds]) for i in range(folds)]


# -- night sleep efficiency -------------------------------------------------------------------
@dataclass(frozen=True)
class EfficiencyCalibration:
    good_share: float  # π: share of Good windows
    asleep_if_good: float  # a_good
    asleep_if_poor: float  # a_poor


def calibration_of(people: Sequence[Person]) -> EfficiencyCalibration:
    labels = np.concatenate([p.night.labels[p.trains_on] for p in people])
    shares = np.concatenate([p.asleep_share[p.trains_on] for p in people])
    good = labels == 1
    share = float(np.clip(good.mean(), 0.01, 0.99))
    return EfficiencyCalibration(
        good_share=share,
        asleep_if_good=float(shares[good].mean()) if good.any() else 1.0,
        asleep_if_poor=float(shares[~good].mean()) if (~good).any() else 0.5,
    )


def night_efficiency(
    arrays: model.Arrays, features: np.ndarray, calibration: EfficiencyCalibration
) -> float:
    """A night's estimated sleep efficiency (0..1) from a balanced model's window scores."""
    p = at_prior(model.good_probability(arrays, features), calibration.good_share)
    asleep = p * calibration.asleep_if_good + (1.0 - p) * calibration.asleep_if_poor
    return float(asleep.mean()) if len(asleep) else float("nan")


# -- scores ---------------------------------------------------------------------------------
def scores(
    arrays: model.Arrays, people: Sequence[Person], calibration: EfficiencyCalibration
) -> dict[str, float]:
    """AUC and balanced accuracy over the people's labelled windows, night SE MAE (points)."""
    features = np.vstack([p.labelled_xy[0] for p in people])
    labels = np.concatenate([p.labelled_xy[1] for p in people])
    probabilities = model.good_probability(arrays, features)
    errors = [
        abs(night_efficiency(arrays, p.night.features, calibration) - p.reference_efficiency)
        for p in people
        if p.reference_efficiency is not None and len(p.night.labels)
    ]
    return {
        "auc": model.auc(labels, probabilities),
        "balanced_accuracy": model.balanced_accuracy(labels, (probabilities >= 0.5).astype(int)),
        "night_se_mae": 100.0 * float(np.mean(errors)) if errors else float("nan"),
    }


def rounds_to_reach(curve: Sequence[float], share: float = 0.99) -> int:
    """First round (1-based) whose AUC is at least ``share`` of the final round's."""
    target = share * curve[-1]
    return next(i + 1 for i, value in enumerate(curve) if value >= target)


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
    from sleepfed.server.app.server_app import RecordingFedAvg

    inner = build_strategy(settings.strategy, RecordingFedAvg, uniform_weights=True, **common)
    return wrap_strategy(inner, settings.privacy, boards)


def _auc_recorder(
    curve: list[float], features: np.ndarray, labels: np.ndarray
) -> Callable[[int, model.Arrays], None]:
    def record(_round: int, arrays: model.Arrays) -> None:
        curve.append(model.auc(labels, model.good_probability(arrays, features)))

    return record


def _pooled_xy(people: Sequence[Person]) -> tuple[np.ndarray, np.ndarray]:
    return (
        np.vstack([p.train_xy[0] for p in people]),
        np.concatenate([p.train_xy[1] for p in people]),
    )


def _fit(features: np.ndarray, labels: np.ndarray) -> model.Arrays:
    return model.fit(features, labels, iterations=CENTRALISED_ITERATIONS)


def personalisation_scores(
    global_arrays: model.Arrays, people: Sequence[Person], mu: float
) -> dict[str, float]:
    """Global vs personalised model on the people's own held-out windows (pooled)."""
    global_p, personal_p, labels = [], [], []
    for person in people:
        x_train, y_train = person.train_xy
        x_test = person.night.features[person.held_out]
        if len(x_test) == 0:
            continue
        mine = personalise(global_arrays, x_train, y_train, mu=mu)
        global_p.append(model.good_probability(global_arrays, x_test))
        personal_p.append(model.good_probability(mine, x_test))
        labels.append(person.night.labels[person.held_out])
    if not labels:
        return {}
    y = np.concatenate(labels)
    out: dict[str, float] = {"windows": float(len(y))}
    for name, p in (("global", np.concatenate(global_p)), ("personal", np.concatenate(personal_p))):
        out[f"{name}_auc"] = model.auc(y, p)
        out[f"{name}_balanced_accuracy"] = model.balanced_accuracy(y, (p >= 0.5).astype(int))
    return out


def _mean_dicts(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    keys = rows[0].keys() if rows else []
    return {k: float(np.nanmean([r[k] for r in rows if k in r])) for k in keys}


def evaluate(
    data_dir: str | Path,
    settings: EvaluationSettings = EvaluationSettings(),
    subjects: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The three methods side by side; see the module's docstring."""
    from threadpoolctl import threadpool_limits

    # One BLAS thread: these models are tiny, and threads only spin on a shared machine.
    with threadpool_limits(limits=1):
        return _evaluate(data_dir, settings, subjects)


def _evaluate(
    data_dir: str | Path, settings: EvaluationSettings, subjects: Sequence[str] | None
) -> dict[str, Any]:
    people = load_people(data_dir, subjects)
    people = [p for p in people if p.trains_on.any()]
    if len(people) < 3:
        raise EvaluationError(
            f"{data_dir}: {len(people)} subjects with labelled windows, at least 3 needed"
        )
    by_subject = {p.subject: p for p in people}
    folds = subject_folds(list(by_subject), settings.folds, settings.seed)
    per_fold: dict[str, list[dict[str, float]]] = {m: [] for m in METHODS}
    personal_rows: list[dict[str, float]] = []
    curves = []
    for test_subjects in folds:
        test = [by_subject[s] for s in test_subjects]
        train = [p for p in people if p.subject not in test_subjects]
        calibration = calibration_of(train)

        # federated: the ClientApp on one buffer per training subject
        curve: list[float] = []
        test_x = np.vstack([p.labelled_xy[0] for p in test])
        test_y = np.concatenate([p.labelled_xy[1] for p in test])
        with tempfile.TemporaryDirectory(prefix="sleepfed-eval-") as buffers:
            prepare_buffers(buffers, [p.night for p in train], [p.subject for p in train])
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
        federated = per_round[-1]
        curves.append(curve)
        per_fold["federated"].append(scores(federated, test, calibration))

        centralised = _fit(*_pooled_xy(train))
        per_fold["centralised"].append(scores(centralised, test, calibration))

        local_rows = []
        for person in train:
            x, y = person.train_xy
            if len(np.unique(y)) < 2:
                continue
            local_rows.append(scores(_fit(x, y), test, calibration_of([person])))
        per_fold["local_only"].append(_mean_dicts(local_rows))
        personal_rows.append(personalisation_scores(federated, test, settings.personalise_mu))

    mean_curve = np.nanmean(np.array(curves), axis=0)
    result: dict[str, Any] = {m: _mean_dicts(per_fold[m]) for m in METHODS}
    result["federated"]["rounds_to_99pct_auc"] = rounds_to_reach(list(mean_curve))
    result["federated"]["auc_by_round"] = [round(float(v), 4) for v in mean_curve]
    result["personalisation"] = _mean_dicts([r for r in personal_rows if r])
    result["setup"] = {
        "subjects": len(people),
        "folds": settings.folds,
        "rounds": settings.rounds,
        "local_iterations": settings.local_iterations,
        "learning_rate": settings.learning_rate,
        "strategy": settings.strategy.name,
        "engine": settings.engine,
        "seed": settings.seed,
        "dp_noise_multiplier": settings.privacy.noise_multiplier if settings.privacy else 0.0,
    }
    return result


def format_table(result: dict[str, Any]) -> str:
    """The side-by-side table printed by ``sleepfed-server evaluate``."""

    def cell(value: object, digits: int = 3) -> str:
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return "-"
        return f"{value:.{digits}f}" if isinstance(value, float) else str(value)

    setup = result["setup"]
    lines = [
        f"{setup['subjects']} subjects, {setup['folds']} leave-subjects-out folds, "
        f"strategy {setup['strategy']}, {setup['rounds']} rounds "
        f"x {setup['local_iterations']} local gradient steps of {setup['learning_rate']}",
        f"{'method':<12} {'AUC':>6} {'bal.acc':>8} {'SE MAE (pts)':>13} {'rounds to 99%':>14}",
    ]
    for method in METHODS:
        row = result[method]
        lines.append(
            f"{method:<12} {cell(row['auc']):>6} {cell(row['balanced_accuracy']):>8} "
            f"{cell(row['night_se_mae'], 2):>13} {cell(row.get('rounds_to_99pct_auc')):>14}"
        )
    personal = result.get("personalisation") or {}
    if personal:
        lines.append(
            "personalisation on the test people's own held-out windows: "
            f"AUC {cell(personal['global_auc'])} global -> {cell(personal['personal_auc'])} "
            f"personal, balanced accuracy {cell(personal['global_balanced_accuracy'])} -> "
            f"{cell(personal['personal_balanced_accuracy'])}"
        )
    return "\n".join(lines)
