"""Scoring each round's global model on the server, on a held-out data set (Walch format):
windows of people whose data was never used for training."""

from __future__ import annotations

import numpy as np

from sleepfed.model import logistic as model
from sleepfed.model.walch import walch_dataset


def held_out_scores(
    arrays: model.Arrays, features: np.ndarray, labels: np.ndarray
) -> dict[str, float]:
    probabilities = model.good_probability(arrays, features)
    predicted = (probabilities >= 0.5).astype(int)
    return {
        "auc": model.auc(labels, probabilities),
        "accuracy": float((predicted == labels).mean()),
        "balanced_accuracy": model.balanced_accuracy(labels, predicted),
        "loss": model.log_loss(arrays, features, labels),
        "windows": float(len(labels)),
        # the same windows as a plain heart-rate strap's board sees them (no movement)
        "auc_no_movement": model.auc(
            labels, model.good_probability(arrays, features, model.NO_MOVEMENT)
        ),
    }


def held_out_set(data_dir: str, subjects: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The labelled windows (features, labels) of ``subjects`` (comma- or space-separated;
    empty: every subject) in ``data_dir``, or None when no folder is given."""
    if not data_dir:
        return None
    chosen = [s for s in subjects.replace(",", " ").split() if s] or None
    nights = walch_dataset(data_dir, chosen)
    features = np.vstack([n.features[n.labelled] for n in nights.values()])
    labels = np.concatenate([n.labels[n.labelled] for n in nights.values()])
    return features, labels
