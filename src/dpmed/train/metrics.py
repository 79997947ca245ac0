"""Binary classification metrics, positive class = pneumonia (label 1)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score

METRICS = ("accuracy", "roc_auc", "sensitivity", "specificity", "loss")
# Where a probability turns into "pneumonia": "fixed" at 0.5, or the cut with the best
# balanced accuracy on the validation split (chosen again after every epoch).
THRESHOLDS = ("fixed", "validation")
Scores = tuple[np.ndarray, np.ndarray, float]  # labels, predicted probabilities, mean loss


def split_metrics(
    scores: dict[str, Scores], threshold: str
) -> tuple[dict[str, dict[str, float | None]], float]:
    """Every split's metrics at one decision threshold, and that threshold: 0.5 ("fixed"), or for
    "validation" the one `balanced_threshold` reads from scores["val"]. Test scores never
    choose it."""
    cut = balanced_threshold(*scores["val"][:2]) if threshold == "validation" else 0.5
    return {split: binary_metrics(*s, threshold=cut) for split, s in scores.items()}, cut


def balanced_threshold(labels: np.ndarray, probs: np.ndarray) -> float:
    """The cut (predict 1 when prob >= cut) with the highest mean of sensitivity and
    specificity on `labels`: the lowest probability, or a midpoint between two consecutive
    distinct probabilities. Ties go to the cut nearest 0.5; one class present gives 0.5.

    >>> balanced_threshold(np.array([0, 0, 1, 1]), np.array([0.6, 0.7, 0.8, 0.9]))
    0.75
    """
    positive = labels == 1
    if positive.all() or not positive.any():
        return 0.5
    distinct = np.unique(probs)
    cuts = np.concatenate([distinct[:1], (distinct[1:] + distinct[:-1]) / 2])
    # below the cut: missed positives and correctly rejected negatives
    missed = np.searchsorted(np.sort(probs[positive]), cuts) / positive.sum()
    rejected = np.searchsorted(np.sort(probs[~positive]), cuts) / (~positive).sum()
    balanced = 1 - missed + rejected
    best = np.flatnonzero(balanced == balanced.max())
    return float(cuts[best[np.argmin(np.abs(cuts[best] - 0.5))]])


def binary_metrics(
    labels: np.ndarray, probs: np.ndarray, loss: float, *, threshold: float = 0.5
) -> dict[str, float | None]:
    """Accuracy, ROC-AUC, sensitivity (recall on 1), specificity (recall on 0), loss;
    an image is predicted 1 when its probability is at least `threshold`.

    A metric with no defined value (ROC-AUC with one class present) is None.

    >>> binary_metrics(np.array([0, 1, 1]), np.array([0.2, 0.9, 0.4]), 0.5)["sensitivity"]
    0.5
    """
    predicted = probs >= threshold
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
