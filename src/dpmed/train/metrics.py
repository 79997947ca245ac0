"""Binary classification metrics, positive class = pneumonia (label 1)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

METRICS = ("accuracy", "roc_auc", "sensitivity", "specificity", "loss")


def binary_metrics(labels: np.ndarray, probs: np.ndarray, loss: float) -> dict[str, float | None]:
    """Accuracy, ROC-AUC, sensitivity (recall on 1), specificity (recall on 0), loss.

    A metric with no defined value (ROC-AUC with one class present) is None.

    >>> binary_metrics(np.array([0, 1, 1]), np.array([0.2, 0.9, 0.4]), 0.5)["sensitivity"]
    0.5
    """
    predicted = probs >= 0.5
    positive = labels == 1

    def rate(hits: np.ndarray, of: np.ndarray) -> float | None:
        return float(hits[of].mean()) if of.any() else None

    both = positive.any() and (~positive).any()
    return {
        "accuracy": float((predicted == positive).mean()),
        "roc_auc": float(roc_auc_score(labels, probs)) if both else None,
        "sensitivity": rate(predicted, positive),
        "specificity": rate(~predicted, ~positive),
        "loss": float(loss),
    }
