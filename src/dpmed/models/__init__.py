"""Models dpmed trains."""

from dpmed.models.vision import build_model

__all__ = ["build_model"]
