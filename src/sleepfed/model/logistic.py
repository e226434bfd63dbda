"""The sleep-quality model shared by boards and server: logistic regression over the window
features of :mod:`sleepfed.model.features`, in two **heads** exchanged as one array ``theta``
of shape ``(2, F + 1)`` (a row per head: the F coefficients, then the intercept):

* ``full`` (row 0): all F features, for nights with movement readings;
* ``no_movement`` (row 1): the same regression with the movement features
  (``features.MOVEMENT_COLUMNS``) held at 0, for nights without a single ``MOV`` reading (a
  plain heart-rate strap, or a night whose movement stream failed). Its movement
  coefficients multiply 0: training leaves them to the ridge, prediction ignores them.

The same federation trains both: a board trains the full head on its nights with movement and
the movement-free head on all its nights, so a board without movement contributes to the
movement-free head and returns the full head as it received it. One array, not one per head:
Flower sends every array of a message as objects of their own, each a request of ~800 B of
headers (docs/benchmarks.md#load). Models saved earlier (one head, ``(1, F + 1)``, or the
two arrays ``[coef (1, F), intercept (1,)]``) still load (:func:`arrays_from_bytes`).

Prediction is plain numpy (the daemon's idle path never imports scikit-learn). A board trains
with fixed-size gradient steps from the global arrays (:mod:`sleepfed.model.objective`); the
references that fit one data set to the optimum use scikit-learn's LogisticRegression on the
same objective.
"""

from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np

from sleepfed.model import objective
from sleepfed.model.features import MOVEMENT_COLUMNS, N_FEATURES

Arrays = list[np.ndarray]
HEADS = ("full", "no_movement")
FULL, NO_MOVEMENT = 0, 1
SHAPE = (len(HEADS), N_FEATURES + 1)  # per head: the coefficients, then the intercept
ONE_HEAD_SHAPE = (1, N_FEATURES + 1)  # the model before the movement-free head


def initial_arrays() -> Arrays:
    return [np.zeros(SHAPE)]


def check_arrays(arrays: Arrays) -> None:
    if len(arrays) != 1:
        raise ValueError(f"model has 1 array, got {len(arrays)}")
    if arrays[0].shape != SHAPE:
        raise ValueError(f"model array of shape {arrays[0].shape}, expected {SHAPE}")
    if not np.isfinite(arrays[0]).all():
        raise ValueError("model array holds NaN or inf")


def head_inputs(features: np.ndarray, head: int) -> np.ndarray:
    """The features as ``head`` sees them: the movement-free head sees movement as 0."""
    if head == FULL:
        return features
    inputs = np.array(features, dtype=float)
    inputs[:, list(MOVEMENT_COLUMNS)] = 0.0
    return inputs


def coefficients(arrays: Arrays, head: int = FULL) -> np.ndarray:
    return arrays[0][head, :N_FEATURES]


def intercept(arrays: Arrays, head: int = FULL) -> float:
    return float(arrays[0][head, N_FEATURES])


def from_parts(coef: np.ndarray, bias: np.ndarray | float) -> Arrays:
    """A one-head model (its coefficients and intercept) as both heads: the movement-free
    head starts from the same regression with its movement coefficients at 0."""
    row = np.concatenate([np.ravel(coef), np.ravel([bias])]).astype(float)
    free = row.copy()
    free[list(MOVEMENT_COLUMNS)] = 0.0
    return [np.vstack([row, free])]


def good_probability(arrays: Arrays, features: np.ndarray, head: int = FULL) -> np.ndarray:
    """P(window is Good) for each row of ``features``, by ``head``."""
    inputs = head_inputs(np.asarray(features, dtype=float), head)
    logits = inputs @ coefficients(arrays, head) + intercept(arrays, head)
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -50, 50)))


def probability_by_window(arrays: Arrays, features: np.ndarray, movement: np.ndarray) -> np.ndarray:
    """P(Good) of each window by the head its night calls for (``movement``: per window)."""
    return np.where(
        movement,
        good_probability(arrays, features, FULL),
        good_probability(arrays, features, NO_MOVEMENT),
    )


def each_head(
    arrays: Arrays,
    features: np.ndarray,
    labels: np.ndarray,
    movement: np.ndarray | None,
    fit_head: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
) -> Arrays:
    """Both heads fitted by ``fit_head(theta, inputs, labels)``: the full one on the windows
    with movement, the movement-free one on all; a head without windows stays as it was."""
    theta = np.array(arrays[0], dtype=float)
    features = np.asarray(features, dtype=float).reshape(-1, N_FEATURES)
    labels = np.asarray(labels, dtype=int)
    with_movement = np.ones(len(labels), bool) if movement is None else np.asarray(movement)
    for head, rows in ((FULL, with_movement), (NO_MOVEMENT, np.ones(len(labels), bool))):
        if rows.any():
            theta[head] = fit_head(theta[head], head_inputs(features[rows], head), labels[rows])
    return [theta]


def train(
    arrays: Arrays,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    movement: np.ndarray | None = None,
    steps: int = objective.DEFAULT_STEPS,
    learning_rate: float = objective.DEFAULT_LEARNING_RATE,
    alpha: float = objective.DEFAULT_ALPHA,
    mu: float = 0.0,
) -> Arrays:
    """A board's training in a round: fixed-size gradient steps from the global ``arrays``
    (balanced classes; ``mu`` > 0 adds FedProx's proximal term), each head on its windows
    (``movement``: which windows' nights have movement; None: all). See
    :mod:`sleepfed.model.objective`."""
    return each_head(
        arrays,
        features,
        labels,
        movement,
        lambda theta, x, y: objective.descend(
            theta, x, y, steps=steps, learning_rate=learning_rate, alpha=alpha, mu=mu
        ),
    )


def fit(
    features: np.ndarray,
    labels: np.ndarray,
    *,
    movement: np.ndarray | None = None,
    alpha: float = objective.DEFAULT_ALPHA,
    iterations: int = 500,
) -> Arrays:
    """Each head's optimum on these windows alone (the centralised and local-only
    references): scikit-learn's LogisticRegression, balanced classes, ``C = 1/(alpha·n)``."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    def fit_head(theta: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if len(np.unique(y)) < 2:
            return theta  # one class only: nothing to learn
        fitted = LogisticRegression(
            C=1.0 / (alpha * len(y)), max_iter=iterations, class_weight="balanced"
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            fitted.fit(x, y)
        return np.concatenate([fitted.coef_.ravel(), fitted.intercept_]).astype(float)

    return each_head(initial_arrays(), features, labels, movement, fit_head)


def log_loss(
    arrays: Arrays, features: np.ndarray, labels: np.ndarray, movement: np.ndarray | None = None
) -> float:
    """Mean log loss, each window by the head its night calls for (None: the full head)."""
    if movement is None:
        p = good_probability(arrays, features)
    else:
        p = probability_by_window(arrays, features, movement)
    p = np.clip(p, 1e-7, 1 - 1e-7)
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
    """The arrays saved by :func:`arrays_to_bytes`. A model saved before the movement-free
    head (one head (1, F + 1), or the two arrays coefficients (1, F), intercept (1,)), in a
    history or a board's buffer, as both heads (:func:`from_parts`)."""
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        arrays = [data[f"arr_{i}"] for i in range(len(data.files))]
    if [a.shape for a in arrays] == [(1, N_FEATURES), (1,)]:
        return from_parts(arrays[0], arrays[1])
    if [a.shape for a in arrays] == [ONE_HEAD_SHAPE]:
        return from_parts(arrays[0][0, :N_FEATURES], arrays[0][0, N_FEATURES])
    return arrays
