"""Training and evaluation."""

from dpmed.train.loop import EpochRecord, best_epoch, fit
from dpmed.train.metrics import binary_metrics

__all__ = ["EpochRecord", "best_epoch", "binary_metrics", "fit"]
