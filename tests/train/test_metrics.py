import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, roc_auc_score

from dpmed.train.metrics import binary_metrics


def test_metrics_match_the_confusion_matrix():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500)
    probs = np.clip(labels * 0.3 + rng.random(500) * 0.7, 0, 1)
    m = binary_metrics(labels, probs, loss=0.25)
    tn, fp, fn, tp = confusion_matrix(labels, probs >= 0.5).ravel()
    assert m["accuracy"] == pytest.approx((tp + tn) / 500)
    assert m["sensitivity"] == pytest.approx(tp / (tp + fn))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["roc_auc"] == pytest.approx(roc_auc_score(labels, probs))
    assert m["loss"] == 0.25


def test_undefined_metrics_are_none():
    m = binary_metrics(np.array([1, 1]), np.array([0.9, 0.2]), loss=0.0)
    assert m["roc_auc"] is None and m["specificity"] is None and m["sensitivity"] == 0.5
