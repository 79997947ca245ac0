import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, roc_auc_score

from dpmed.train.metrics import balanced_threshold, binary_metrics, split_metrics


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


def _balanced(labels, probs, cut):
    m = binary_metrics(labels, probs, 0.0, threshold=cut)
    return (m["sensitivity"] + m["specificity"]) / 2


def test_the_balanced_threshold_beats_every_other_cut():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    probs = np.clip(0.55 + labels * 0.3 + rng.normal(0, 0.15, 300), 0, 1)  # shifted upwards
    cut = balanced_threshold(labels, probs)
    best = _balanced(labels, probs, cut)
    assert cut > 0.6 and best > _balanced(labels, probs, 0.5) + 0.05
    assert all(_balanced(labels, probs, t) <= best for t in np.linspace(0, 1, 401))


def test_balanced_threshold_ties_go_to_the_cut_nearest_half():
    # every cut between 0.2 and 0.8 separates the classes: 0.5 itself is a midpoint
    assert balanced_threshold(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 0.5
    # one class only: nothing to balance
    assert balanced_threshold(np.array([1, 1]), np.array([0.1, 0.9])) == 0.5


def test_split_metrics_reads_the_threshold_from_validation_only():
    val = (np.array([0, 0, 1, 1]), np.array([0.6, 0.7, 0.8, 0.9]), 0.1)
    test = (np.array([0, 1]), np.array([0.7, 0.78]), 0.2)
    metrics, cut = split_metrics({"val": val, "test": test}, "validation")
    assert cut == 0.75 and metrics["val"]["accuracy"] == 1.0
    assert metrics["test"] == binary_metrics(*test, threshold=0.75)
    moved = (test[0], np.array([0.1, 0.2]), 0.2)  # test scores never move the cut
    assert split_metrics({"val": val, "test": moved}, "validation")[1] == 0.75
    fixed, cut = split_metrics({"val": val, "test": test}, "fixed")
    assert cut == 0.5 and fixed["val"]["accuracy"] == 0.5
