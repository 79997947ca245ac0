"""The privacy guarantee every result carries."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass(frozen=True)
class PrivacyGuarantee:
    """(epsilon, delta)-DP for one `unit` of data (a pixel, an image, a patient, a record).

    `epsilon` None means no guarantee at all (no noise: epsilon is infinite).
    `accounting` says how epsilon was computed; `assumptions` what it relies on.
    """

    mechanism: str
    unit: str
    epsilon: float | None
    delta: float
    accounting: str
    assumptions: tuple[str, ...] = ()

    def describe(self) -> str:
        if self.epsilon is None:
            return f"no privacy guarantee ({self.mechanism}): epsilon is infinite"
        delta = f", delta = {self.delta:g}" if self.delta else ""
        return f"epsilon = {self.epsilon:,.4g} per {self.unit}{delta} ({self.mechanism})"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"assumptions": list(self.assumptions)}


NO_PRIVACY = PrivacyGuarantee(
    mechanism="none", unit="image", epsilon=None, delta=0.0, accounting="no noise is added"
)
