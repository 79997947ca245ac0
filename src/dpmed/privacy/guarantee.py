"""The privacy guarantee every result carries, and the unit of data it protects.

A guarantee is only meaningful with its unit: Laplace noise of scale 1 on pixels in [0, 1]
is epsilon = 1 per *pixel* but 784 per 28 x 28 *image*. `Unit` says what two neighbouring
data sets may differ in (one pixel, m pixels, one image, all images of one patient), and
`Unit.changed_pixels` turns that into the number of pixels an adversary's choice can move,
from which every mechanism computes its sensitivity.

>>> Unit.parse("16-pixels").changed_pixels(28 * 28), Unit.parse("image").changed_pixels(784)
(16, 784)
>>> Unit.parse("patient").with_images(3).changed_pixels(784)
2352
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from dpmed.errors import ConfigError

UNITS = ("pixel", "m-pixels", "image", "patient")
_M_PIXELS = re.compile(r"^(\d+)-pixels?$")


@dataclass(frozen=True)
class Unit:
    """What one protected record is: neighbouring data sets differ in one such unit.

    `pixels` is m for the m-pixels unit (any m pixels of one image change; with the same
    noise on every pixel, any m pixels anywhere cost the same); `images` is k for the
    patient unit (all k images of one patient change). Neighbours are formed by
    *replacing* the unit's data: the number of images is public.
    """

    name: str
    pixels: int = 1
    images: int = 1

    @classmethod
    def parse(cls, text: str) -> Unit:
        """`pixel`, `<m>-pixels` (e.g. `16-pixels`), `image` or `patient`."""
        text = text.strip().lower()
        if match := _M_PIXELS.match(text):
            if int(match.group(1)) < 1:
                raise ConfigError(f"unit {text!r} needs m >= 1 pixels, e.g. 16-pixels")
            return cls("m-pixels", pixels=int(match.group(1)))
        if text in ("pixel", "image", "patient"):
            return cls(text)
        hint = " (give m, e.g. 16-pixels)" if text == "m-pixels" else ""
        raise ConfigError(
            f"unknown unit {text!r}{hint}; choose one of: pixel, <m>-pixels, image, patient"
        )

    def with_images(self, images_per_patient: int) -> Unit:
        """The patient unit once k, the largest number of images of one patient, is known."""
        return dataclasses.replace(self, images=images_per_patient)

    def changed_pixels(self, pixels_per_image: int) -> int:
        """How many pixels neighbouring data sets may differ in (each by at most 1)."""
        return {
            "pixel": 1,
            "m-pixels": self.pixels,
            "image": pixels_per_image,
            "patient": self.images * pixels_per_image,
        }[self.name]

    def __str__(self) -> str:
        if self.name == "m-pixels":
            return f"{self.pixels}-pixels"
        if self.name == "patient":
            return f"patient ({self.images} image{'s' * (self.images > 1)})"
        return self.name


@dataclass(frozen=True)
class PrivacyGuarantee:
    """(epsilon, delta)-DP for one `unit` of data (a pixel, m pixels, an image, a patient).

    `epsilon` None means no guarantee at all (no noise: epsilon is infinite).
    `accounting` says how epsilon was computed (a formula or an accountant);
    `assumptions` what the guarantee relies on; `adjacency` how neighbouring data sets
    differ: every dpmed guarantee is stated under replace-one (one unit's data replaced,
    the number of units public), so that techniques compare side by side.
    """

    mechanism: str
    unit: str
    epsilon: float | None
    delta: float
    accounting: str
    assumptions: tuple[str, ...] = ()
    adjacency: str = "replace-one"

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
