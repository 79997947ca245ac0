"""The Gaussian mechanism on every pixel, with the analytic calibration.

N(0, sigma^2) added once to every pixel in [0, 1]. Neighbours that differ in m pixels
differ in L2 norm by at most sqrt(m): sqrt(d) for an image of d pixels, sqrt(k d) for a
patient's k images (their noise is independent, so the release of all k is one Gaussian
mechanism; this is tighter than group privacy's (k eps, k e^((k-1) eps) delta)).

Balle & Wang (2018, Thm 8): the Gaussian mechanism with L2 sensitivity D is
(epsilon, delta)-DP if and only if

    Phi(D / (2 sigma) - epsilon sigma / D) - e^epsilon Phi(-D / (2 sigma) - epsilon sigma / D)
        <= delta.

This is exact, unlike the classical sigma = D sqrt(2 ln(1.25 / delta)) / epsilon that only
holds for epsilon < 1. Both directions solve it numerically (in log space, so epsilon in
the thousands does not overflow) and round the answer to the safe side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.special import log_ndtr, ndtr

from dpmed.privacy.gaussian_sampler import add_gaussian_noise_
from dpmed.privacy.mechanism import InputMechanism, register, release_pixels


def gaussian_delta(epsilon: float, *, sigma: float, sensitivity: float) -> float:
    """The smallest delta for which N(0, sigma^2) noise is (epsilon, delta)-DP (Balle-Wang).

    >>> round(gaussian_delta(1.0, sigma=3.7306, sensitivity=1.0), 7)
    1e-05
    """
    ratio = sensitivity / sigma
    upper = ndtr(ratio / 2 - epsilon / ratio)
    lower = math.exp(epsilon + log_ndtr(-ratio / 2 - epsilon / ratio))
    return max(float(upper - lower), 0.0)


def analytic_epsilon(*, sigma: float, delta: float, sensitivity: float) -> float:
    """The smallest epsilon with gaussian_delta(epsilon) <= delta."""

    def excess(epsilon: float) -> float:
        return gaussian_delta(epsilon, sigma=sigma, sensitivity=sensitivity) - delta

    if excess(0.0) <= 0:
        return 0.0
    high = 1.0
    while excess(high) > 0:
        high *= 2
    epsilon = brentq(excess, 0.0, high, xtol=1e-12, rtol=1e-13)
    while excess(epsilon) > 0:  # the root to the safe side: never report too small
        epsilon = math.nextafter(epsilon, math.inf) * (1 + 1e-13)
    return epsilon


def analytic_sigma(*, epsilon: float, delta: float, sensitivity: float) -> float:
    """The smallest sigma with gaussian_delta(epsilon, sigma) <= delta."""

    def excess(log_sigma: float) -> float:
        sigma = math.exp(log_sigma)
        return gaussian_delta(epsilon, sigma=sigma, sensitivity=sensitivity) - delta

    low = high = math.log(sensitivity)
    while excess(low) <= 0:
        low -= 1.0
    while excess(high) > 0:
        high += 1.0
    log_sigma = brentq(excess, low, high, xtol=1e-13, rtol=1e-14)
    while excess(log_sigma) > 0:  # the root to the safe side: never too little noise
        log_sigma = math.nextafter(log_sigma, math.inf) + 1e-14
    return math.exp(log_sigma)


@register("gaussian")
@dataclass(frozen=True)
class Gaussian(InputMechanism):
    """N(0, sigma^2) on every pixel: (epsilon, delta)-DP with L2 sensitivity sqrt(changed).

    >>> sigma = Gaussian().noise_scale(8.0, changed_pixels=28 * 28, delta=1e-5)
    >>> round(sigma, 4), round(Gaussian().epsilon(sigma, changed_pixels=784, delta=1e-5), 6)
    (16.8064, 8.0)
    """

    approximate = True

    @property
    def accounting(self) -> str:
        return (
            "analytic Gaussian mechanism (Balle & Wang 2018, Thm 8): "
            "L2 sensitivity sqrt(changed pixels), epsilon solved exactly for delta"
        )

    def epsilon(self, noise_scale: float, *, changed_pixels: int, delta: float) -> float:
        return analytic_epsilon(sigma=noise_scale, delta=delta, sensitivity=changed_pixels**0.5)

    def noise_scale(self, epsilon: float, *, changed_pixels: int, delta: float) -> float:
        return analytic_sigma(epsilon=epsilon, delta=delta, sensitivity=changed_pixels**0.5)

    def noise_std(self, noise_scale: float) -> float:
        return noise_scale

    def release(
        self, images: np.ndarray, noise_scale: float, rng: np.random.Generator
    ) -> np.ndarray:
        """uint8 images -> images / 255 + N(0, sigma^2) noise, as float16. The noise has its
        whole tail (dpmed.privacy.gaussian_sampler; by its source numpy's `normal` stops near
        13.7 std)."""

        def noisy(pixels: np.ndarray, generator: np.random.Generator) -> np.ndarray:
            return add_gaussian_noise_(torch.from_numpy(pixels), noise_scale, generator).numpy()

        return release_pixels(images, rng, noisy)
