"""Fit a scikit-learn style classifier once and score every split, as one epoch record."""

from __future__ import annotations

import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np

from dpmed.privacy import secret
from dpmed.train.loop import EpochRecord
from dpmed.train.metrics import Scores, split_metrics


def fit_classifier(
    model: Any,
    data: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    checkpoint: Path,
    score_train: bool = True,
    threshold: str = "fixed",
) -> EpochRecord:
    """Fit on data["train"], evaluate each split (not train when `score_train` is False:
    a DP model's clean training metrics would be published without a guarantee), pickle
    the fitted model to `checkpoint`."""
    start = time.perf_counter()
    features, labels = data["train"]
    model.fit(features, labels)
    train_seconds = time.perf_counter() - start
    metrics, cut = split_metrics(
        {
            split: _score(model, *arrays)
            for split, arrays in data.items()
            if score_train or split != "train"
        },
        threshold,
    )
    secret.forget_states(model)  # the pickled model must not hold the noise's generator
    checkpoint.write_bytes(pickle.dumps(model))
    return EpochRecord(1, metrics, time.perf_counter() - start, len(labels) / train_seconds, cut)


def _score(model: Any, features: np.ndarray, labels: np.ndarray) -> Scores:
    probs = model.predict_proba(features)
    if probs.shape[1] == 1:  # a model that saw one class predicts it with certainty
        probs = (
            np.hstack([1 - probs, probs])
            if model.classes_[0] == 1
            else np.hstack([probs, 0 * probs])
        )
    likelihood = probs[np.arange(len(labels)), labels].clip(1e-12, 1)
    return labels, probs[:, 1], float(-np.log(likelihood).mean())
