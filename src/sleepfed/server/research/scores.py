"""How ``sleepfed-server evaluate`` scores a model on a fold's test people: window AUC and
balanced accuracy, night sleep efficiency against PSG, rounds to converge, and the gain of
personalisation on each person's own held-out windows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sleepfed.model import logistic as model
from sleepfed.model.features import at_prior
from sleepfed.model.personalisation import personalise
from sleepfed.server.research.people import Person


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
    heart_rate_only = model.good_probability(arrays, features, model.NO_MOVEMENT)
    errors = [
        abs(night_efficiency(arrays, p.night.features, calibration) - p.reference_efficiency)
        for p in people
        if p.reference_efficiency is not None and len(p.night.labels)
    ]
    return {
        "auc": model.auc(labels, probabilities),
        "balanced_accuracy": model.balanced_accuracy(labels, (probabilities >= 0.5).astype(int)),
        "night_se_mae": 100.0 * float(np.mean(errors)) if errors else float("nan"),
        # the movement-free head on the same windows, as a plain heart-rate strap's board
        "auc_no_movement": model.auc(labels, heart_rate_only),
    }


def rounds_to_reach(curve: Sequence[float], share: float = 0.99) -> int:
    """First round (1-based) whose AUC is at least ``share`` of the final round's."""
    target = share * curve[-1]
    return next(i + 1 for i, value in enumerate(curve) if value >= target)


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


def mean_dicts(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """Key by key mean of ``rows`` (NaN ignored), over the rows that have the key."""
    keys = rows[0].keys() if rows else []
    return {k: float(np.nanmean([r[k] for r in rows if k in r])) for k in keys}
