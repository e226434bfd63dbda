"""Logistic regression with a proximal term, for FedProx and for personalisation.

scikit-learn's LogisticRegression has no proximal term, so this is the same model fitted
directly with SciPy's L-BFGS on the objective (per window, classes balanced as in
:func:`agent.model.train`)::

    mean_i( s_i * logloss_i(θ) ) + ||w||² / (2·C·n) + (μ/2)·||θ − θ_global||²

with ``θ = (w, b)`` (coefficients and intercept), ``s_i = n / (2·n_class(i))``. With μ = 0
it is the objective scikit-learn minimises (divided by C·n), so the two agree; μ > 0 keeps
a board's model near the global one (FedProx, Li et al. 2020: the proximal term
bounds client drift on non-IID data).
"""

from __future__ import annotations

import numpy as np

from agent import model


def _balanced_weights(labels: np.ndarray) -> np.ndarray:
    n = len(labels)
    counts = np.bincount(labels, minlength=2).astype(float)
    return n / (2.0 * counts[labels])


def fit(
    arrays: model.Arrays,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    mu: float,
    c: float = model.DEFAULT_C,
    iterations: int = model.DEFAULT_LOCAL_ITERATIONS,
) -> model.Arrays:
    """Minimise the proximal objective from ``arrays`` (also the anchor θ_global)."""
    from scipy.optimize import minimize

    if mu < 0:
        raise ValueError(f"proximal mu must be >= 0, got {mu}")
    labels = np.asarray(labels, dtype=int)
    if len(np.unique(labels)) < 2:
        return [a.copy() for a in arrays]  # one class only: nothing to learn locally
    n, n_features = features.shape
    anchor = np.concatenate([arrays[0][0], arrays[1]]).astype(float)
    weights = _balanced_weights(labels)
    ridge = 1.0 / (c * n)

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:n_features], theta[n_features]
        logits = features @ w + b
        # log(1 + e^z) - y z, stably
        losses = np.logaddexp(0.0, logits) - labels * logits
        residual = weights * (1.0 / (1.0 + np.exp(-np.clip(logits, -50, 50))) - labels) / n
        drift = theta - anchor
        value = float((weights * losses).mean() + 0.5 * ridge * w @ w + 0.5 * mu * drift @ drift)
        grad = np.empty_like(theta)
        grad[:n_features] = features.T @ residual + ridge * w
        grad[n_features] = residual.sum()
        grad += mu * drift
        return value, grad

    result = minimize(
        objective, anchor, jac=True, method="L-BFGS-B", options={"maxiter": iterations}
    )
    theta = result.x
    return [theta[:n_features].reshape(1, n_features).copy(), theta[n_features:].copy()]
