import numpy as np
import pytest
from scipy import stats

from dpmed.errors import ConfigError
from dpmed.privacy.laplace import (
    ETA,
    SNAP_BOUND,
    Laplace,
    power_of_two_above,
    snap,
    uniform_doubles,
)

PLAIN, SNAPPED = Laplace(), Laplace(snapping=True)


@pytest.mark.parametrize("b", [0.5, 1.0, 2.0, 4.0])
def test_noise_is_laplace_with_scale_b(b):
    """Kolmogorov-Smirnov against Laplace(0, b) on 200k draws; a wrong scale (10% off) fails."""
    clean = np.zeros((50, 64, 64), dtype=np.uint8)
    noise = PLAIN.release(clean, b, np.random.default_rng(7)).astype(np.float64).ravel()
    assert stats.kstest(noise, "laplace", args=(0, b)).pvalue > 1e-3
    assert stats.kstest(noise, "laplace", args=(0, 1.1 * b)).pvalue < 1e-6
    assert abs(noise.mean()) < 0.01 * b
    assert noise.var() == pytest.approx(2 * b * b, rel=0.02)


def test_noise_signs_are_fair_and_independent_of_each_other_and_of_the_magnitude():
    """One random bit per pixel flips an exponential's sign: a bit reused across pixels (a
    byte's 8 pixels, or the chunk boundaries) or tied to the magnitude would leak the pixel
    where the marginal distribution still looks right."""
    clean = np.zeros((40, 50, 50), dtype=np.uint8)  # 100,000 pixels, chunks not a multiple of 8
    noise = PLAIN.release(clean, 1.0, np.random.default_rng(3)).astype(np.float64).ravel()
    positive = (noise > 0).astype(np.float64)
    assert abs(positive.mean() - 0.5) < 0.01  # sd 0.0016
    for lag in range(1, 17):  # sd of r on 100k pairs: 0.003
        assert abs(np.corrcoef(positive[:-lag], positive[lag:])[0, 1]) < 0.02, lag
    assert abs(np.corrcoef(positive, np.abs(noise))[0, 1]) < 0.02
    assert stats.kstest(np.abs(noise[noise > 0]), np.abs(noise[noise < 0])).pvalue > 1e-3


def test_release_adds_noise_to_pixels_scaled_to_unit_interval():
    images = np.array([[[0, 255]]], dtype=np.uint8).repeat(20000, axis=0)
    released = PLAIN.release(images, 1.0, np.random.default_rng(1))
    assert released.dtype == np.float16
    assert np.median(released[:, 0, 0]) == pytest.approx(0.0, abs=0.03)
    assert np.median(released[:, 0, 1]) == pytest.approx(1.0, abs=0.03)


def test_epsilon_by_changed_pixels_and_its_inverse():
    assert PLAIN.epsilon(2.0, changed_pixels=1, delta=0) == 0.5
    assert PLAIN.epsilon(2.0, changed_pixels=784, delta=0) == 392.0
    assert PLAIN.epsilon(1.0, changed_pixels=224 * 224, delta=0) == 50176.0
    assert PLAIN.noise_scale(8.0, changed_pixels=784, delta=0) == 98.0
    for mechanism in (PLAIN, SNAPPED):
        for changed in (1, 16, 784, 3 * 784):
            for epsilon in (0.1, 1.0, 8.0, 1000.0):
                b = mechanism.noise_scale(epsilon, changed_pixels=changed, delta=0)
                back = mechanism.epsilon(b, changed_pixels=changed, delta=0)
                assert back == pytest.approx(epsilon, rel=1e-12)


@pytest.mark.parametrize("sensitivity", [1, 16, 784, 50176])
@pytest.mark.parametrize("epsilon", [0.1, 1.0, 8.0, 392.0])
def test_scale_matches_diffprivlib_laplace(diffprivlib_mechanisms, sensitivity, epsilon):
    """diffprivlib's Laplace has variance 2 scale^2 with scale = sensitivity / epsilon."""
    reference = diffprivlib_mechanisms.Laplace(epsilon=epsilon, sensitivity=sensitivity)
    scale = PLAIN.noise_scale(epsilon, changed_pixels=sensitivity, delta=0)
    assert scale == pytest.approx(np.sqrt(reference.variance(0) / 2), rel=1e-12)


@pytest.mark.parametrize("epsilon", [0.01, 0.5, 2.0, 100.0])
def test_snapping_scale_matches_diffprivlib_snapping(diffprivlib_mechanisms, epsilon):
    """diffprivlib's Snapping uses scale 1 / effective epsilon (Mironov Sec. 5.2); with our
    bound B around the pixel range's centre it must give our b exactly."""
    reference = diffprivlib_mechanisms.Snapping(
        epsilon=epsilon, sensitivity=1.0, lower=0.5 - SNAP_BOUND, upper=0.5 + SNAP_BOUND
    )
    scale = SNAPPED.noise_scale(epsilon, changed_pixels=1, delta=0)
    assert scale == pytest.approx(1 / reference.effective_epsilon(), rel=1e-12)
    assert scale > 1 / epsilon  # snapping pays a little epsilon for floating point


@pytest.mark.parametrize(("pixel", "b"), [(0.3, 0.3), (0.9, 1.0), (0.0, 0.12)])
def test_snapped_release_has_the_exact_snapping_distribution(pixel, b):
    """Chi-square of 200k snapped values against the exact probability of every grid
    point (Laplace mass of its rounding interval); a 10% wrong b fails."""
    grid = power_of_two_above(b)
    values = snap(np.full(200_000, pixel), b, np.random.default_rng(3))
    steps = (values - 0.5) / grid
    assert np.array_equal(steps, np.round(steps))  # on the grid 1/2 + k Lambda
    counts = np.bincount((steps - steps.min()).astype(int))
    ks = np.arange(steps.min(), steps.min() + len(counts))

    def expected(scale):
        shift = pixel - 0.5
        mass = stats.laplace.cdf((ks + 0.5) * grid - shift, scale=scale) - stats.laplace.cdf(
            (ks - 0.5) * grid - shift, scale=scale
        )
        mass[0] = stats.laplace.cdf((ks[0] + 0.5) * grid - shift, scale=scale)  # lower tail
        mass[-1] = stats.laplace.sf((ks[-1] - 0.5) * grid - shift, scale=scale)  # upper tail
        return mass * len(values)

    keep = expected(b) > 20  # pool the sparse tails into their neighbours' test
    assert stats.chisquare(counts[keep], expected(b)[keep], sum_check=False).pvalue > 1e-3
    wrong = expected(1.1 * b)
    assert stats.chisquare(counts[keep], wrong[keep], sum_check=False).pvalue < 1e-6


def test_snapping_uniform_covers_all_doubles_in_the_unit_interval():
    """Uniform by KS; P(U < 2^-k) = 2^-k down to tiny k; below 2^-12 the values keep bits
    finer than 2^-53, which numpy's random() never has (the negative control)."""
    rng = np.random.default_rng(11)
    u = uniform_doubles(rng, (1 << 20,))
    assert u.min() > 0 and u.max() < 1
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    exponents = -np.frexp(u)[1]  # u in [2^-(e+1), 2^-e)
    counts = np.bincount(exponents)[:12]
    expected = len(u) * 0.5 ** np.arange(1, 13)
    assert stats.chisquare(counts, expected, sum_check=False).pvalue > 1e-3

    def fine_bits(values):
        small = values[values < 2.0**-12]
        return np.mean(small * 2.0**53 % 1 != 0)

    assert fine_bits(u) > 0.99
    assert fine_bits(rng.random(1 << 24)) == 0.0


def test_snapping_refuses_scales_outside_its_proof():
    with pytest.raises(ConfigError, match="snapping needs a noise scale"):
        SNAPPED.epsilon(2.0**21, changed_pixels=1, delta=0)
    with pytest.raises(ConfigError, match="snapping needs a noise scale"):
        SNAPPED.noise_scale(1e12, changed_pixels=1, delta=0)
    assert SNAPPED.epsilon(1.0, changed_pixels=1, delta=0) == 1 + 12 * SNAP_BOUND * ETA + 2 * ETA


def test_release_dispatches_on_snapping():
    images = np.full((100, 8, 8), 128, dtype=np.uint8)
    snapped = SNAPPED.release(images, 0.3, np.random.default_rng(0)).astype(np.float64)
    assert snapped.dtype == np.float64 and set(np.unique((snapped - 0.5) / 0.5 % 1)) == {0.0}
    assert PLAIN.label == "laplace" and SNAPPED.label == "laplace-snapped"
    assert any("correctly rounded" in a for a in SNAPPED.assumptions)
