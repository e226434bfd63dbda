"""The sleep-quality model shared by boards and server: a logistic regression over the window
features of :mod:`agent.features`, exchanged as two arrays ``[coef (1, F), intercept (1,)]``.

Prediction is plain numpy (the daemon's idle path never imports scikit-learn); training uses
scikit-learn's LogisticRegression warm-started from the global arrays.
"""

from __future__ import annotations

import io

import numpy as np

from agent.features import N_FEATURES

Arrays = list[np.ndarray]

DEFAULT_C = 1.0
DEFAULT_LOCAL_ITERATIONS = 20


def initial_arrays() -> Arrays:
    return [np.zeros((1, N_FEATURES)), np.zeros(1)]


def check_arrays(arrays: Arrays) -> None:
    if len(arrays) != 2:
        raise ValueError(f"model has 2 arrays, got {len(arrays)}")
    coef, intercept = arrays
    if coef.shape != (1, N_FEATURES) or intercept.shape != (1,):
        raise ValueError(f"model arrays of shape {coef.shape}, {intercept.shape}")
    if not (np.isfinite(coef).all() and np.isfinite(intercept).all()):
        raise ValueError("model arrays hold NaN or inf")


def good_probability(arrays: Arrays, features: np.ndarray) -> np.ndarray:
    """P(window is Good) for each row of ``features``."""
    coef, intercept = arrays
    logits = features @ coef[0] + intercept[0]
    return 1.0 / (1.0 + np.exp(-np.clip(logits, -50, 50)))


def train(
    arrays: Arrays,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    c: float = DEFAULT_C,
    iterations: int = DEFAULT_LOCAL_ITERATIONS,
) -> Arrays:
    """Local training: LogisticRegression warm-started from ``arrays`` (balanced classes)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    if len(np.unique(labels)) < 2:
        return [a.copy() for a in arrays]  # one class only: nothing to learn locally
    model = LogisticRegression(
        C=c, max_iter=iterations, warm_start=True, class_weight="balanced", solver="lbfgs"
    )
    model.classes_ = np.array([0, 1])
    model.coef_ = arrays[0].copy()
    model.intercept_ = arrays[1].copy()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(features, labels)
    return [model.coef_.astype(float), model.intercept_.astype(float)]


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
    with np.load(io.BytesIO(blob), allow_pickle=False) as data:
        return [data[f"arr_{i}"] for i in range(len(data.files))]
