"""The sleep-quality model shared by boards and server: a logistic regression over the window
features of :mod:`sleepfed.model.features`, exchanged as one array ``theta`` of shape
``(1, F + 1)``: the F coefficients, then the intercept. One array, not coefficients and
intercept apart: Flower sends every array of a message as objects of their own, each a
request of ~800 B of headers (docs/benchmarks.md#load). A model saved earlier as the two
arrays ``[coef (1, F), intercept (1,)]`` still loads (:func:`arrays_from_bytes`).

Prediction is plain numpy (the daemon's idle path never imports scikit-learn). A board trains
with fixed-size gradient steps from the global arrays (:mod:`sleepfed.model.objective`); the
references
that fit one data set to the optimum use scikit-learn's LogisticRegression on the same
objective.
"""

from __future__ import annotations

import io

import numpy as np

from sleepfed.model import objective
from sleepfed.model.features import N_FEATURES

Arrays = list[np.ndarray]
SHAPE = (1, N_FEATURES + 1)  # the coefficients, then the intercept


def initial_arrays() -> Arrays:
    return [np.zeros(SHAPE)]


def check_arrays(arrays: Arrays) -> None:
    if len(arrays) != 1:
        raise ValueError(f"model has 1 array, got {len(arrays)}")
    if arrays[0].shape != SHAPE:
        raise ValueError(f"model array of shape {arrays[0].shape}, expected {SHAPE}")
    if not np.isfinite(arrays[0]).all():
        raise ValueError("model array holds NaN or inf")


def coefficients(arrays: Arrays) -> np.ndarray:
    return arrays[0][0, :N_FEATURES]


def intercept(arrays: Arrays) -> float:
    return float(arrays[0][0, N_FEATURES])


def from_parts(coef: np.ndarray, bias: np.ndarray | float) -> Arrays:
    """The model from its coefficients (F values) and intercept."""
    theta = np.concatenate([np.ravel(coef), np.ravel([bias])]).astype(float)
    return [theta.reshape(SHAPE)]


def good_probability(arrays: Arrays, features: np.ndarray) -> np.ndarray:
    """P(window is Good) for each row of ``features``."""
    logits = features @ coefficients(arrays) + intercept(arrays)
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -50, 50)))


def train(
    arrays: Arrays,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    steps: int = objective.DEFAULT_STEPS,
    learning_rate: float = objective.DEFAULT_LEARNING_RATE,
    alpha: float = objective.DEFAULT_ALPHA,
    mu: float = 0.0,
) -> Arrays:
    """A board's training in a round: fixed-size gradient steps from the global ``arrays``
    (balanced classes; ``mu`` > 0 adds FedProx's proximal term). See
    :mod:`sleepfed.model.objective`."""
    return objective.descend(
        arrays, features, labels, steps=steps, learning_rate=learning_rate, alpha=alpha, mu=mu
    )


def fit(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    alpha: float = objective.DEFAULT_ALPHA,
    iterations: int = 500,
) -> Arrays:
    """The objective's optimum on these windows alone (the centralised and local-only
    references): scikit-learn's LogisticRegression, balanced classes, ``C = 1/(alpha·n)``."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(labels)) < 2:
        return initial_arrays()  # one class only: nothing to learn
    fitted = LogisticRegression(
        C=1.0 / (alpha * len(labels)), max_iter=iterations, class_weight="balanced"
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        fitted.fit(features, labels)
    return from_parts(fitted.coef_, fitted.intercept_)


def log_loss(arrays: Arrays, features: np.ndarray, labels: np.ndarray) -> float:
    p = np.clip(good_probability(arrays, features), 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (rank statistic, ties averaged); NaN with one class."""
    labels = np.asarray(labels)
    positives, negatives = int((labels == 1).sum()), int((labels == 0).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = np.asarray(scores)[order]
    # average ranks of ties
    _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    average = first + (counts - 1) / 2.0 + 1.0
    ranks[order] = np.repeat(average, counts)
    return float(
        (ranks[labels == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives)
    )


def balanced_accuracy(labels: np.ndarray, predicted: np.ndarray) -> float:
    recalls = [float((predicted[labels == c] == c).mean()) for c in (0, 1) if (labels == c).any()]
    return float(np.mean(recalls)) if recalls else float("nan")


def arrays_to_bytes(arrays: Arrays) -> bytes:
    out = io.BytesIO()
    np.savez(out, *arrays)
    return out.getvalue()


def arrays_from_bytes(blob: bytes) -> Arrays:
    """The arrays saved by :func:`arrays_to_bytes`; a model saved as the earlier two arrays
    (coefficients (1, F), intercept (1,)), in a history or a board's buffer, as one."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        arrays = [data[f"arr_{i}"] for i in range(len(data.files))]
    if [a.shape for a in arrays] == [(1, N_FEATURES), (1,)]:
        return from_parts(arrays[0], arrays[1])
    return arrays
