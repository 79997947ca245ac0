"""Input perturbation for patient tables: Laplace noise on every feature of every record.

Features are scaled into [0, 1] by their public bounds, so replacing a record moves each
feature by at most 1. Feature j released with Laplace noise of scale 1 / epsilon_j is
epsilon_j-DP for that value; a whole record, released once, is (sum_j epsilon_j)-DP by
composition. This is local DP: each released record is safe on its own, whatever the
analyst then does with it (training any model on it is post-processing).

Constant noise splits a record's epsilon equally over its features. The task-specific
budget (after Utaliyeva, Shin & Choi 2023, *Sensors* 23(4) 1980) gives more of it to the
features that matter for the task. It adapts the split to an importance c_j, the absolute
coefficient of a logistic regression on the training records, trained with diffprivlib
at a stated share of the epsilon, so the importance is itself private. Noise of variance
2 / epsilon_j^2 on feature j moves a linear score by c_j^2 * 2 / epsilon_j^2; minimising the
sum over features for a fixed total epsilon gives epsilon_j proportional to c_j^(2/3): a
feature with zero importance gets no budget and is released as the constant 0.5.
The guarantee per training record is the sum of both parts (sequential composition; the
split is chosen from the private importance, which adaptive composition allows).

>>> split_budget(3.0, np.array([1.0, 1.0, 1.0])).tolist()
[1.0, 1.0, 1.0]
>>> split_budget(3.0, np.array([8.0, 1.0, 0.0])).round(3).tolist()
[2.4, 0.6, 0.0]
"""

from __future__ import annotations

import numpy as np

from dpmed.errors import ConfigError
from dpmed.privacy import secret


def split_budget(epsilon: float, importance: np.ndarray) -> np.ndarray:
    """Per-feature epsilons summing to `epsilon`, proportional to importance^(2/3)."""
    if epsilon <= 0:
        raise ConfigError(f"epsilon must be > 0, got {epsilon:g}")
    if (importance < 0).any() or not np.isfinite(importance).all():
        raise ValueError("importances must be finite and >= 0")
    weights = np.abs(importance) ** (2 / 3)
    if weights.sum() == 0:
        weights = np.ones_like(weights)
    return epsilon * weights / weights.sum()


def private_importance(
    features: np.ndarray, labels: np.ndarray, *, epsilon: float, identity: dict
) -> np.ndarray:
    """|coefficients| of an epsilon-DP logistic regression (diffprivlib's objective
    perturbation) on features in [0, 1], centred by the model."""
    from dpmed.models.tabular import build_classifier

    model = build_classifier(
        "logistic-regression",
        n_features=features.shape[1],
        epsilon=epsilon,
        identity=identity | {"draw": "feature importance", "features": features},
    )
    return np.abs(model.fit(features, labels)[-1].coef_[0])


def release_features(features: np.ndarray, budgets: np.ndarray, *, identity: dict) -> np.ndarray:
    """Each value plus Laplace(1 / epsilon_j) noise, drawn once from secret randomness
    named by `identity`, the records and the budgets (dpmed.privacy.secret); a feature
    with zero budget is replaced by 0.5 (it carries nothing)."""
    rng = secret.numpy_generator(
        identity | {"draw": "table release", "features": features, "budgets": budgets}
    )
    scale = np.divide(1.0, budgets, out=np.zeros_like(budgets), where=budgets > 0)
    noisy = features + rng.laplace(size=features.shape) * scale
    return np.where(budgets > 0, noisy, 0.5).astype(np.float32)
