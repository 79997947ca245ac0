"""DP-Pix (Fan 2018): pixelise the image into c x c cell means, then add Laplace noise.

Each cell mean averages c^2 pixels in [0, 1], so one changed pixel moves one cell mean by
at most 1 / c^2, and m changed pixels move the vector of cell means by at most m / c^2 in
L1 norm, wherever they are (Fan's m-neighbourhood). Laplace(0, b) on every cell mean is
therefore (m / (c^2 b))-DP for m pixels; for a whole image of d pixels (d / c^2 cells,
each moving by at most 1) it is (d / (c^2 b))-DP. The cell means carry c^2 times less
sensitivity than pixels, at the price of a c-times coarser image.

L. Fan, "Image pixelization with differential privacy", DBSec 2018.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dpmed.errors import ConfigError
from dpmed.privacy.mechanism import InputMechanism, as_release, register


@register("dppix")
@dataclass(frozen=True)
class DPPix(InputMechanism):
    """c x c cell means + Laplace(0, b) per cell: epsilon = changed pixels / (c^2 b).

    >>> mechanism = DPPix(cell_size=4)
    >>> mechanism.epsilon(0.5, changed_pixels=28 * 28, delta=0)  # 49 cells, 1 each
    98.0
    >>> mechanism.noise_scale(100.0, changed_pixels=28 * 28, delta=0)
    0.49
    """

    cell_size: int

    @property
    def label(self) -> str:
        return f"dppix-cell{self.cell_size}"

    @property
    def accounting(self) -> str:
        return (
            f"DP-Pix (Fan 2018), {self.cell_size}x{self.cell_size} cells + Laplace: "
            f"epsilon = L1 sensitivity / b = changed pixels / ({self.cell_size}^2 b)"
        )

    def check(self, *, delta: float, image_size: int) -> None:
        super().check(delta=delta, image_size=image_size)
        if self.cell_size < 1 or image_size % self.cell_size:
            divisors = [c for c in range(2, image_size) if image_size % c == 0]
            raise ConfigError(
                f"cell_size {self.cell_size} does not divide the image size {image_size}; "
                f"choose one of: {', '.join(map(str, divisors)) or 'none (prime size)'}"
            )

    def epsilon(self, noise_scale: float, *, changed_pixels: int, delta: float) -> float:
        return changed_pixels / (self.cell_size**2 * noise_scale)

    def noise_scale(self, epsilon: float, *, changed_pixels: int, delta: float) -> float:
        return changed_pixels / (self.cell_size**2 * epsilon)

    def noise_std(self, noise_scale: float) -> float:
        return float(np.sqrt(2) * noise_scale)

    def release(
        self, images: np.ndarray, noise_scale: float, rng: np.random.Generator
    ) -> np.ndarray:
        """uint8 images -> noisy cell means, each shown over its c x c cell, as float16."""
        means = cell_means(images * (1 / 255), self.cell_size)
        means += rng.laplace(0.0, noise_scale, size=means.shape)
        return as_release(spread_cells(means, self.cell_size))


def cell_means(images: np.ndarray, cell: int) -> np.ndarray:
    """(N, H, W) -> (N, H / cell, W / cell): the mean of every cell x cell block.

    >>> cell_means(np.arange(16.0).reshape(1, 4, 4), 2)[0].tolist()
    [[2.5, 4.5], [10.5, 12.5]]
    """
    n, height, width = images.shape
    blocks = images.reshape(n, height // cell, cell, width // cell, cell)
    return blocks.mean(axis=(2, 4))


def spread_cells(means: np.ndarray, cell: int) -> np.ndarray:
    """(N, h, w) -> (N, h * cell, w * cell): every cell value repeated over its block."""
    return means.repeat(cell, axis=1).repeat(cell, axis=2)
