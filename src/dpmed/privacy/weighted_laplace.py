"""Importance-weighted Laplace: more of the image's budget, less noise, on the lung fields.

Plain Laplace spends the budget of an image evenly: every pixel gets scale b, and an image
of d pixels is (d / b)-DP. Here pixel i gets its own scale b_i from a fixed weight map w:

    b_i = b mean(w) / w_i,  so  1 / b_i = (w_i / mean(w)) / b  and  sum_i 1 / b_i = d / b.

Each released pixel is Laplace(b_i)-noised with sensitivity 1, so it is (1 / b_i)-DP, and
by basic composition over independent pixels a change of a set C of pixels costs
sum_{i in C} 1 / b_i. Hence, with the same b, the image has the same epsilon d / b as plain
Laplace: the weights only move budget between pixels. Per unit (the worst case over C):

- pixel:     max_i 1 / b_i (the most-weighted pixel);
- m pixels:  the sum of the m largest 1 / b_i (m pixels of one image, m <= d);
- image:     sum_i 1 / b_i = d / b;
- patient:   k d / b for k images (group privacy over the patient's independent releases).

The map is a public prior, never read from the images, so it costs nothing: two soft
ellipses where the lungs sit in a centred frontal chest X-ray, defined on the unit square
(u across from the image's left edge, v down from the top) for any image size,

    lung(u, v) = max over centres (c_u, c_v) in {(0.30, 0.47), (0.70, 0.47)} of
                 1 / (1 + exp((r - 1) / 0.1)),
             r = sqrt(((u - c_u) / 0.16)^2 + ((v - c_v) / 0.30)^2),
    w = floor + (1 - floor) lung,

evaluated at pixel centres. `floor` (0 < floor <= 1, `--weight-floor`) keeps some budget
on every pixel; floor = 1 is the uniform map, which is plain Laplace exactly.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from dpmed.errors import ConfigError
from dpmed.privacy.mechanism import ASSUMPTIONS, InputMechanism, add_noise, laplace_noise, register

DEFAULT_FLOOR = 0.25
LUNG_CENTRES = ((0.30, 0.47), (0.70, 0.47))  # (u, v): right lung (image left), left lung
LUNG_SEMI_AXES = (0.16, 0.30)  # (across, down)
EDGE_WIDTH = 0.1  # softness of the ellipse edge, in units of the ellipse radius


def lung_weights(size: int, floor: float) -> np.ndarray:
    """The prior weight map (size, size): about 1 on the lung fields, `floor` elsewhere.

    >>> weights = lung_weights(28, 0.25)
    >>> [round(float(weights[13, col]), 2) for col in (1, 8, 14, 19)]  # across the chest
    [0.25, 1.0, 0.4, 1.0]
    >>> bool((lung_weights(5, 1.0) == 1.0).all())
    True
    """
    centres = (np.arange(size) + 0.5) / size
    v, u = np.meshgrid(centres, centres, indexing="ij")
    lung = np.zeros((size, size))
    for centre_u, centre_v in LUNG_CENTRES:
        radius = np.hypot((u - centre_u) / LUNG_SEMI_AXES[0], (v - centre_v) / LUNG_SEMI_AXES[1])
        lung = np.maximum(lung, 1 / (1 + np.exp((radius - 1) / EDGE_WIDTH)))
    return floor + (1 - floor) * lung


@register("weighted-laplace")
@dataclass(frozen=True)
class WeightedLaplace(InputMechanism):
    """Laplace(b_i) per pixel with b_i = b mean(w) / w_i for the lung prior w.

    `noise_scale` is b, the scale plain Laplace would use for the same epsilon per image.

    >>> mechanism = WeightedLaplace(image_size=28)
    >>> round(mechanism.epsilon(2.0, changed_pixels=28 * 28, delta=0), 9)  # d / b, as Laplace
    392.0
    >>> round(mechanism.epsilon(2.0, changed_pixels=1, delta=0), 3)  # 1 / min_i b_i
    1.035
    >>> round(mechanism.noise_scale(392.0, changed_pixels=28 * 28, delta=0), 9)
    2.0
    """

    image_size: int
    weight_floor: float | None = None

    @property
    def floor(self) -> float:
        return DEFAULT_FLOOR if self.weight_floor is None else self.weight_floor

    @property
    def label(self) -> str:
        return f"weighted-laplace-floor{self.floor:g}"

    @property
    def accounting(self) -> str:
        return (
            f"weighted Laplace, lung prior with floor {self.floor:g}: b_i = b mean(w) / w_i, "
            "epsilon = sum of 1 / b_i over the changed pixels (the largest ones for m pixels "
            "of one image; d / b per image of d pixels)"
        )

    @property
    def assumptions(self) -> tuple[str, ...]:
        return (
            *ASSUMPTIONS,
            "the weight map is a fixed public prior (lung fields of a centred frontal chest "
            "X-ray), never read from the images",
            "m pixels means m pixels of one image; spread over several images they cost up "
            "to m x the per-pixel epsilon",
        )

    @functools.cached_property
    def relative_budget(self) -> np.ndarray:
        """w / mean(w) (size, size): pixel i's share of the budget, b / b_i (mean 1)."""
        weights = lung_weights(self.image_size, self.floor)
        return weights / weights.mean()

    @functools.cached_property
    def _largest_budgets(self) -> np.ndarray:
        """Running sums of the relative budgets, largest first: [k - 1] is the top k's."""
        return np.cumsum(np.sort(self.relative_budget, axis=None)[::-1])

    def scales(self, noise_scale: float) -> np.ndarray:
        """b_i for every pixel (size, size)."""
        return noise_scale / self.relative_budget

    def check(self, *, delta: float, image_size: int) -> None:
        super().check(delta=delta, image_size=image_size)
        if not 0 < self.floor <= 1:
            raise ConfigError(
                f"weight_floor must lie in (0, 1] (1 = plain Laplace), got {self.floor:g}"
            )
        if image_size != self.image_size:
            raise ConfigError(
                f"weighted-laplace was built for {self.image_size}px images, not {image_size}px"
            )

    def _budget(self, changed_pixels: int) -> float:
        """sum of b / b_i over the worst `changed_pixels`: the m largest in one image, or
        k whole images."""
        pixels = self.image_size**2
        if changed_pixels <= pixels:
            return float(self._largest_budgets[changed_pixels - 1])
        if changed_pixels % pixels:
            raise ConfigError(
                f"weighted-laplace accounts m pixels of one image (m <= {pixels}) or whole "
                f"images, not {changed_pixels} pixels"
            )
        return changed_pixels // pixels * float(self._largest_budgets[-1])

    def epsilon(self, noise_scale: float, *, changed_pixels: int, delta: float) -> float:
        return self._budget(changed_pixels) / noise_scale

    def noise_scale(self, epsilon: float, *, changed_pixels: int, delta: float) -> float:
        return self._budget(changed_pixels) / epsilon

    def noise_std(self, noise_scale: float) -> float:
        """Root mean square over the pixels of sqrt(2) b_i (the map is public)."""
        return float(np.sqrt(2) * noise_scale * np.sqrt(np.mean(self.relative_budget**-2.0)))

    def release(
        self, images: np.ndarray, noise_scale: float, rng: np.random.Generator
    ) -> np.ndarray:
        """uint8 images -> images / 255 + Laplace(0, b_i) noise on pixel i, as float16."""
        if images.shape[1:] != (self.image_size, self.image_size):
            raise ValueError(
                f"images of shape {images.shape[1:]} for a {self.image_size}px weight map"
            )
        scales = self.scales(noise_scale)
        return add_noise(images, rng, lambda g, shape: laplace_noise(g, scales, shape))
