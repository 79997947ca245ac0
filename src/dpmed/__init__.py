"""dpmed: benchmark differential privacy on medical data, with honest guarantees."""

__version__ = "0.1.0"
