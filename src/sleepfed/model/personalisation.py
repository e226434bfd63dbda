"""On-device personalisation: the global model adapted to one person's own labelled windows.

A board fine-tunes the global model on its own labelled windows with a strong proximal
term (:mod:`sleepfed.model.objective`): the person's intercept (their base rate of restless windows)
and, less so, the weights of the features that behave differently for them move towards
their data, while μ keeps the model near the global one where their few nights say little.
The result never leaves the board. With one class only among the labels the global model is
kept unchanged.
"""

from __future__ import annotations

import numpy as np

from sleepfed.model import logistic as model
from sleepfed.model import objective

DEFAULT_MU = 0.5
DEFAULT_ITERATIONS = 100


def personalise(
    global_arrays: model.Arrays,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    movement: np.ndarray | None = None,
    mu: float = DEFAULT_MU,
    iterations: int = DEFAULT_ITERATIONS,
) -> model.Arrays:
    """The person's own model: the global one fine-tuned on their labelled windows, each
    head on its windows (``movement``: which windows' nights have movement; None: all)."""
    return model.each_head(
        global_arrays,
        features,
        labels,
        movement,
        lambda theta, x, y: objective.fit_proximal(theta, x, y, mu=mu, iterations=iterations),
    )
