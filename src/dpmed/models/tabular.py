"""Classifiers for patient tables: scikit-learn models, their diffprivlib DP twins, an MLP.

Features arrive scaled into [0, 1] by public bounds. Each classifier first centres them
into [-0.5, 0.5], which gives diffprivlib the bounds it needs without reading them from
the data (`bounds` = ([-0.5]*F, [0.5]*F), `data_norm` = sqrt(F) / 2: half the norm, so
half the noise, of uncentred rows). Each DP model spends its epsilon through its own
`BudgetAccountant` (`model[-1].accountant`), read back after fitting, so the guarantee
reported is what diffprivlib actually spent. Naive Bayes and the forest state add/remove
epsilon: they are fitted at half the target, so that their replace-one epsilon is the
target (dpmed.privacy.tables.REPLACE_ONE_FACTOR says why).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer
from torch import nn

from dpmed.privacy import secret

CLASSIFIERS = ("logistic-regression", "gaussian-nb", "random-forest")
TABLE_MODELS = (*CLASSIFIERS, "mlp")
FOREST = {"n_estimators": 10, "max_depth": 5}  # diffprivlib's defaults, for both twins


def build_classifier(
    name: str,
    *,
    n_features: int,
    seed: int = 0,
    epsilon: float | None = None,
    identity: Mapping[str, Any] | None = None,
) -> Pipeline:
    """The scikit-learn model `name` (`seed` for a forest's public randomness), or with
    `epsilon` its diffprivlib twin, which records what it spends in its own `accountant`
    and draws its noise from secret randomness named by `identity`
    (dpmed.privacy.secret); both after centring the features."""
    if epsilon is None:
        estimator = _estimator(name, seed)
    else:
        draw = {"draw": "diffprivlib", "model": name, "epsilon": epsilon, **(identity or {})}
        estimator = _private_estimator(name, n_features, epsilon, secret.random_state(draw))
    return make_pipeline(FunctionTransformer(_centre), estimator)


def _centre(features: np.ndarray) -> np.ndarray:
    return np.asarray(features, dtype=np.float64) - 0.5


def _estimator(name: str, seed: int) -> Any:
    from sklearn import ensemble, linear_model, naive_bayes

    return {
        "logistic-regression": lambda: linear_model.LogisticRegression(max_iter=1000),
        "gaussian-nb": naive_bayes.GaussianNB,
        "random-forest": lambda: ensemble.RandomForestClassifier(**FOREST, random_state=seed),
    }[name]()


def _private_estimator(
    name: str, n_features: int, epsilon: float, random_state: np.random.RandomState | None
) -> Any:
    from diffprivlib import BudgetAccountant, models

    from dpmed.privacy.tables import REPLACE_ONE_FACTOR

    bounds = (np.full(n_features, -0.5), np.full(n_features, 0.5))
    private = {"epsilon": epsilon, "accountant": BudgetAccountant(), "random_state": random_state}
    estimator = {
        "logistic-regression": lambda: models.LogisticRegression(
            data_norm=float(np.sqrt(n_features)) / 2, max_iter=1000, **private
        ),
        "gaussian-nb": lambda: models.GaussianNB(bounds=bounds, **private),
        "random-forest": lambda: models.RandomForestClassifier(
            bounds=bounds, classes=[0, 1], **FOREST, **private
        ),
    }[name]()
    estimator.epsilon = epsilon / REPLACE_ONE_FACTOR[type(estimator).__name__]
    return estimator


class MLP(nn.Module):
    """Two hidden layers of `width` with ReLU: small enough for DP-SGD on a few hundred rows."""

    def __init__(self, n_features: int, num_classes: int = 2, width: int = 64) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(n_features, width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.ReLU(),
            nn.Linear(width, num_classes),
        )

    def forward(self, x):
        return self.layers(x)
