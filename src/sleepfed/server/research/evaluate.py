"""``sleepfed-server evaluate``: federated vs centralised vs local-only on real people.

Any folder in the Walch 2019 format; one federated board per subject; leave-subjects-out
folds (every subject is tested exactly once, by models that never saw any of their data).
Per fold:

* **federated**: the boards' own ClientApp (``sleepfed.board.training.client_app``) on one
  real SQLite buffer per training subject, driven by the chosen Flower strategy for ``rounds``
  rounds (:mod:`sleepfed.server.research.simulation`); each round's global model is scored on
  the fold's test people;
* **centralised**: the same model and objective (balanced logistic regression, ridge α per
  window; ``sleepfed.model.logistic.fit``: scikit-learn to the optimum) fitted on the pooled
  windows the boards train on (the upper reference);
* **local-only**: one model per training subject, fitted on that subject's windows alone,
  each scored on the fold's test people (figures are the mean over those models).

Figures are the mean over folds: window AUC, balanced accuracy (threshold 0.5: the balanced
class weights put the decision there), rounds for the federated AUC to reach 99% of its final
value, and the night sleep-efficiency MAE in points vs PSG.

Night sleep efficiency from window probabilities
(:func:`sleepfed.server.research.scores.night_efficiency`): the balanced model's
probabilities are moved back to the population prior (log-odds + log(π/(1−π))), then each
window counts for the mean asleep share of Good windows (a_good) with its probability and of
Poor windows (a_poor) otherwise. π, a_good and a_poor are three label statistics of the
training subjects of the fold (for local-only: of the subject itself). They are the only thing
the federated figures take from pooled training labels; a deployment would collect them as a
federated count (they barely move: π ≈ 0.88, a_good ≈ 0.98, a_poor ≈ 0.37 on Walch 2019).

Personalisation (``sleepfed.model.personalisation``) is measured on the test people: each one's
labelled windows are split by the board's own rule (``sleepfed.board.training.client_app``:
80% for training, 20% held out); the global model fine-tuned on the 80% is compared with the
global model on the same 20%, pooled over the fold's test people.

The people are loaded by :mod:`sleepfed.server.research.people`, the methods trained by
:mod:`sleepfed.server.research.methods` and scored by :mod:`sleepfed.server.research.scores`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sleepfed.server.research.methods import (
    EvaluationSettings,
    local_only_scores,
    train_centralised,
    train_federated,
)
from sleepfed.server.research.people import Person, load_people
from sleepfed.server.research.scores import (
    calibration_of,
    mean_dicts,
    personalisation_scores,
    rounds_to_reach,
    scores,
)

METHODS = ("federated", "centralised", "local_only")
# one shared default, as a frozen dataclass it cannot be changed by a caller
DEFAULT_SETTINGS = EvaluationSettings()


class EvaluationError(ValueError):
    """The data cannot be evaluated (too few subjects, no labels, …)."""


def subject_folds(subjects: Sequence[str], folds: int, seed: int) -> list[list[str]]:
    """``folds`` disjoint groups of subjects, shuffled by ``seed``, sizes within one."""
    if folds < 2:
        raise EvaluationError(f"--folds must be >= 2, got {folds}")
    if len(subjects) < folds:
        raise EvaluationError(f"{len(subjects)} subjects cannot make {folds} folds")
    order = list(np.random.default_rng(seed).permutation(sorted(subjects)))
    return [sorted(str(s) for s in order[i::folds]) for i in range(folds)]


def evaluate(
    data_dir: str | Path,
    settings: EvaluationSettings = DEFAULT_SETTINGS,
    subjects: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The three methods side by side; see the module's docstring."""
    from threadpoolctl import threadpool_limits

    # One BLAS thread: these models are tiny, and threads only spin on a shared machine.
    with threadpool_limits(limits=1):
        return _evaluate(data_dir, settings, subjects)


def _run_fold(
    test: Sequence[Person], train: Sequence[Person], settings: EvaluationSettings
) -> tuple[dict[str, dict[str, float]], list[float], dict[str, float]]:
    """One fold: each method's scores on the test people, the federated AUC by round, and
    the personalisation scores of the federated model."""
    calibration = calibration_of(train)
    federated, curve = train_federated(train, test, settings)
    figures = {"federated": scores(federated, test, calibration)}
    figures["centralised"] = scores(train_centralised(train), test, calibration)
    figures["local_only"] = local_only_scores(train, test)
    personal = personalisation_scores(federated, test, settings.personalise_mu)
    return figures, curve, personal


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
        figures, curve, personal = _run_fold(test, train, settings)
        for method in METHODS:
            per_fold[method].append(figures[method])
        curves.append(curve)
        personal_rows.append(personal)

    mean_curve = np.nanmean(np.array(curves), axis=0)
    result: dict[str, Any] = {m: mean_dicts(per_fold[m]) for m in METHODS}
    result["federated"]["rounds_to_99pct_auc"] = rounds_to_reach(list(mean_curve))
    result["federated"]["auc_by_round"] = [round(float(v), 4) for v in mean_curve]
    result["personalisation"] = mean_dicts([r for r in personal_rows if r])
    result["setup"] = _setup(settings, len(people))
    return result


def _setup(settings: EvaluationSettings, subjects: int) -> dict[str, Any]:
    return {
        "subjects": subjects,
        "folds": settings.folds,
        "rounds": settings.rounds,
        "local_iterations": settings.local_iterations,
        "learning_rate": settings.learning_rate,
        "strategy": settings.strategy.name,
        "engine": settings.engine,
        "seed": settings.seed,
        "dp_noise_multiplier": settings.privacy.noise_multiplier if settings.privacy else 0.0,
    }


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
        f"{'method':<12} {'AUC':>6} {'bal.acc':>8} {'SE MAE (pts)':>13} {'rounds to 99%':>14}"
        f" {'AUC no movement':>16}",
    ]
    for method in METHODS:
        row = result[method]
        lines.append(
            f"{method:<12} {cell(row['auc']):>6} {cell(row['balanced_accuracy']):>8} "
            f"{cell(row['night_se_mae'], 2):>13} {cell(row.get('rounds_to_99pct_auc')):>14}"
            f" {cell(row.get('auc_no_movement')):>16}"
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
