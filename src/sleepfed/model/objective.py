"""The sleep model's training objective and the board's two ways of lowering it, for one
head of the model (:mod:`sleepfed.model.logistic` applies them to each head).

One objective, per window ``i`` of a board's ``n`` training windows, with ``θ = (w, b)``::

    mean_i( s_i · logloss_i(θ) ) + (α/2)·‖w‖² + (μ/2)·‖θ − θ_anchor‖²

``s_i = n / (2·n_class(i))`` balances the board's classes (scikit-learn's
``class_weight="balanced"``); ``α`` is a ridge **per window**, so that FedAvg's average of the
boards' objectives, weighted by their window counts, is the same objective on the pooled windows
(scikit-learn's ``C`` is ``1/(α·n)``: with μ = 0 this is exactly what its LogisticRegression
minimises, divided by ``C·n``; the tests check the two agree). ``μ`` > 0 keeps the model near
the anchor (FedProx's proximal term, Li et al. 2020; personalisation).

* :func:`descend`: fixed-size full-batch gradient steps from the global model, the board's
  training in a round. Every board takes steps of the same size: averaged by window counts,
  one step of every board is one gradient step on the pooled objective, so FedAvg heads for
  the pooled optimum. (One L-BFGS step per board, as before, lets each board's line search
  choose its own step; FedAvg then settles away from the pooled optimum: AUC 0.876 vs 0.888 on
  Walch 2019. scikit-learn has no fixed-step full-batch optimiser for this model.)
* :func:`fit_proximal`: SciPy's L-BFGS to the optimum of the objective with its proximal term
  (personalisation). Without one, ``sleepfed.model.logistic.fit`` uses scikit-learn's
  LogisticRegression.
"""

from __future__ import annotations

import numpy as np

DEFAULT_ALPHA = 1e-3  # ridge per window (about scikit-learn's C = 1 on ~1,000 windows)
DEFAULT_STEPS = 20
DEFAULT_LEARNING_RATE = 0.5


def balanced_weights(labels: np.ndarray) -> np.ndarray:
    n = len(labels)
    counts = np.bincount(labels, minlength=2).astype(float)
    return n / (2.0 * counts[labels])


def value_and_gradient(
    theta: np.ndarray,
    features: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    *,
    alpha: float,
    anchor: np.ndarray,
    mu: float,
) -> tuple[float, np.ndarray]:
    n_features = features.shape[1]
    w, b = theta[:n_features], theta[n_features]
    logits = features @ w + b
    losses = np.logaddexp(0.0, logits) - labels * logits  # log(1 + e^z) - y z, stably
    residual = weights * (1.0 / (1.0 + np.exp(-np.clip(logits, -50, 50))) - labels) / len(labels)
    drift = theta - anchor
    value = float((weights * losses).mean() + 0.5 * alpha * w @ w + 0.5 * mu * drift @ drift)
    gradient = np.empty_like(theta)
    gradient[:n_features] = features.T @ residual + alpha * w
    gradient[n_features] = residual.sum()
    gradient += mu * drift
    return value, gradient


def _two_classes(labels: np.ndarray) -> bool:
    return len(np.unique(labels)) == 2


def descend(
    start: np.ndarray,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    steps: int = DEFAULT_STEPS,
    learning_rate: float = DEFAULT_LEARNING_RATE,
    alpha: float = DEFAULT_ALPHA,
    mu: float = 0.0,
) -> np.ndarray:
    """``steps`` gradient steps of size ``learning_rate`` from ``start`` = θ (also the
    anchor); a new θ, ``start`` unchanged."""
    if mu < 0 or learning_rate <= 0 or steps < 0:
        raise ValueError(
            f"bad training settings: steps {steps}, learning rate {learning_rate}, mu {mu}"
        )
    labels = np.asarray(labels, dtype=int)
    anchor = np.array(start, dtype=float)  # a copy: the caller's θ stays as it is
    if not _two_classes(labels):
        return anchor  # one class only: nothing to learn locally
    theta = anchor.copy()
    weights = balanced_weights(labels)
    for _ in range(steps):
        _, gradient = value_and_gradient(
            theta, features, labels, weights, alpha=alpha, anchor=anchor, mu=mu
        )
        theta -= learning_rate * gradient
    return theta


def fit_proximal(
    start: np.ndarray,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    mu: float,
    alpha: float = DEFAULT_ALPHA,
    iterations: int = 100,
) -> np.ndarray:
    """Minimise the objective with its proximal term around ``start`` = θ (L-BFGS)."""
    from scipy.optimize import minimize

    if mu < 0:
        raise ValueError(f"proximal mu must be >= 0, got {mu}")
    labels = np.asarray(labels, dtype=int)
    anchor = np.array(start, dtype=float)
    if not _two_classes(labels):
        return anchor  # one class only: nothing to learn locally
    weights = balanced_weights(labels)
    result = minimize(
        lambda theta: value_and_gradient(
            theta, features, labels, weights, alpha=alpha, anchor=anchor, mu=mu
        ),
        anchor,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": iterations},
    )
    return np.asarray(result.x, dtype=float)
