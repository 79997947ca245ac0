"""The paper's input perturbation: Laplace(0, b) added once to every pixel in [0, 1].

One pixel moves by at most 1, so each released pixel is (1/b)-DP; neighbours that differ
in m pixels differ in L1 norm by at most m, so the release is (m/b)-DP for them: an image
of d pixels is (d/b)-DP (Dwork & Roth 2014, Thm 3.6), a patient with k images (k d / b)-DP,
which is group privacy, k times the image's epsilon.

`snapping=True` gives the floating-point-safe variant for real releases. Textbook
Laplace sampling in doubles leaves holes in the set of outputs that depend on the input,
and an attacker can read the pixel from the low-order bits of the noisy value (Mironov
2012). The snapping mechanism (Mironov 2012, Sec. 5.2) samples the noise from a uniform
double over *all* doubles in (0, 1), rounds the sum to a multiple of Lambda (the smallest
power of two >= b) and clamps it to [-B, B] around the pixel range's centre. It is
epsilon-DP per pixel with epsilon = (1 + 12 B eta) / b + 2 eta, eta = 2^-53, for
b < B < 2^46 b; here B = 2^20. Its output is coarse: multiples of Lambda.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dpmed.errors import ConfigError
from dpmed.privacy.mechanism import (
    ASSUMPTIONS,
    InputMechanism,
    add_noise,
    laplace_noise,
    register,
    release_pixels,
)

ETA = 2.0**-53  # half the spacing of doubles in [1, 2): the relative rounding error
SNAP_BOUND = 2.0**20  # B: the output clamp, far outside [0, 1]; costs 12 B eta ~ 1e-9


@register("laplace")
@dataclass(frozen=True)
class Laplace(InputMechanism):
    """Laplace(0, b) on every pixel: epsilon = changed pixels / b (pure DP).

    >>> mechanism = Laplace()
    >>> mechanism.epsilon(2.0, changed_pixels=1, delta=0), mechanism.epsilon(
    ...     2.0, changed_pixels=28 * 28, delta=0)
    (0.5, 392.0)
    >>> mechanism.noise_scale(8.0, changed_pixels=28 * 28, delta=0)
    98.0
    """

    snapping: bool = False

    @property
    def label(self) -> str:
        return "laplace-snapped" if self.snapping else "laplace"

    @property
    def assumptions(self) -> tuple[str, ...]:
        if not self.snapping:
            return ASSUMPTIONS
        return (
            *ASSUMPTIONS,
            "snapping: numpy's log is taken as correctly rounded, as Mironov's proof assumes "
            "(it is accurate to about 1 ulp but not proven correctly rounded)",
        )

    @property
    def accounting(self) -> str:
        if self.snapping:
            return (
                "snapping mechanism (Mironov 2012) per pixel: epsilon = changed pixels x "
                "((1 + 12 B eta) / b + 2 eta), B = 2^20, eta = 2^-53 (basic composition)"
            )
        return "Laplace mechanism: epsilon = L1 sensitivity / b = changed pixels / b"

    def epsilon(self, noise_scale: float, *, changed_pixels: int, delta: float) -> float:
        if not self.snapping:
            return changed_pixels / noise_scale
        _check_snapping_range(noise_scale)
        return changed_pixels * ((1 + 12 * SNAP_BOUND * ETA) / noise_scale + 2 * ETA)

    def noise_scale(self, epsilon: float, *, changed_pixels: int, delta: float) -> float:
        if not self.snapping:
            return changed_pixels / epsilon
        per_pixel = epsilon / changed_pixels
        if per_pixel <= 2 * ETA:
            raise ConfigError(f"epsilon {epsilon:g} is too small for snapping (below 2^-52)")
        scale = (1 + 12 * SNAP_BOUND * ETA) / (per_pixel - 2 * ETA)
        _check_snapping_range(scale)
        return scale

    def noise_std(self, noise_scale: float) -> float:
        return float(np.sqrt(2) * noise_scale)

    def release(
        self, images: np.ndarray, noise_scale: float, rng: np.random.Generator
    ) -> np.ndarray:
        """uint8 images -> images / 255 + Laplace(0, b) noise, as float16 (rounding is free)."""
        if self.snapping:
            return release_pixels(images, rng, lambda pixels, g: snap(pixels, noise_scale, g))
        return add_noise(images, rng, lambda g, shape: laplace_noise(g, noise_scale, shape))


def _check_snapping_range(noise_scale: float) -> None:
    if not SNAP_BOUND / 2**46 < noise_scale < SNAP_BOUND:
        raise ConfigError(
            f"snapping needs a noise scale b between 2^-26 and 2^20, got {noise_scale:g}"
        )


def snap(pixels: np.ndarray, noise_scale: float, rng: np.random.Generator) -> np.ndarray:
    """Mironov's snapping mechanism on values in [0, 1], vectorised (float64 out).

    clamp_B(round_Lambda((x - 1/2) + S * b * ln U)) + 1/2, with U uniform over all doubles
    in (0, 1) (exponent from a geometric(1/2) draw, 52 random mantissa bits), S a random
    sign, Lambda the smallest power of two >= b, ties rounded up.
    """
    uniform = uniform_doubles(rng, pixels.shape)
    sign = np.where(rng.bit_generator.random_raw(pixels.shape) & np.uint64(1), 1.0, -1.0)
    noisy = (pixels - 0.5) + sign * noise_scale * np.log(uniform)
    grid = power_of_two_above(noise_scale)  # Lambda
    steps = np.floor(noisy / grid)  # division by a power of two is exact
    steps += noisy / grid - steps >= 0.5
    return np.clip(steps * grid, -SNAP_BOUND, SNAP_BOUND) + 0.5


def uniform_doubles(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Uniform over all doubles in (0, 1), each with the mass of the interval it stands for.

    numpy's random() only gives multiples of 2^-53; here the exponent comes from the
    trailing zeros of a 64-bit draw (geometric(1/2)) and the mantissa from 52 more bits
    (Mironov 2012, Sec. 5.2; Python's `random` docs recipe).
    """
    mantissa_bits, exponent_bits = rng.bit_generator.random_raw((2, *shape))
    mantissa = ((mantissa_bits >> np.uint64(12)) | np.uint64(1 << 52)).astype(np.float64)
    lowest_set = exponent_bits & (~exponent_bits + np.uint64(1))
    with np.errstate(divide="ignore"):
        zeros = np.log2(lowest_set.astype(np.float64))  # exact: a power of two (or -inf)
    zeros = np.where(exponent_bits == 0, 64, zeros).astype(np.int64)
    return np.ldexp(mantissa, -53 - zeros)  # in [2^-(z+1), 2^-z), P(z) = 2^-(z+1)


def power_of_two_above(value: float) -> float:
    """The smallest power of two >= value, exactly.

    >>> power_of_two_above(3.0), power_of_two_above(4.0), power_of_two_above(0.3)
    (4.0, 4.0, 0.5)
    """
    fraction, exponent = np.frexp(value)  # value = fraction * 2^exponent, fraction in [.5, 1)
    return float(np.ldexp(1.0, int(exponent) - (fraction == 0.5)))
