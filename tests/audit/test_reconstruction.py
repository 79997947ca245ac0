import numpy as np
import pytest

from dpmed.audit.reconstruction import denoise, reconstruction_attack, wiener
from dpmed.privacy import Gaussian, Laplace


def _images(n=60, size=28):
    """Smooth uint8 images that differ from one another (ramps of random direction)."""
    rng = np.random.default_rng(0)
    grid = np.linspace(-1, 1, size)
    angles = rng.uniform(0, np.pi, n)
    ramps = (
        np.cos(angles)[:, None, None] * grid[None, :, None]
        + np.sin(angles)[:, None, None] * grid[None, None, :]
    )
    return ((ramps + 2) / 4 * 255).astype(np.uint8)


def test_less_noise_lets_the_attacker_recover_more():
    clean = _images()
    rng = np.random.default_rng(1)
    results = [
        reconstruction_attack(clean, Gaussian().release(clean, s, rng), noise_std=s)
        for s in (1.0, 0.3, 0.05)
    ]
    psnr = [r["psnr"] for r in results]
    ssim = [r["ssim"] for r in results]
    assert psnr[0] < psnr[1] < psnr[2] and ssim[0] < ssim[1] < ssim[2]
    assert psnr[2] > 30 and ssim[2] > 0.9  # almost no noise: the image is there
    for result in results:  # the best is the best of all the denoisers it tried
        assert result["psnr"] == max(s["psnr"] for s in result["denoisers"].values())
        assert result["best"] in result["denoisers"]
    assert set(results[0]["population_mean"]) == {"psnr", "ssim"}


def test_denoisers_beat_the_raw_release_at_high_noise():
    clean = _images()
    released = Laplace().release(clean, 0.5, np.random.default_rng(2))
    result = reconstruction_attack(clean, released, noise_std=Laplace().noise_std(0.5))
    assert result["best"] != "none"
    assert result["psnr"] > result["denoisers"]["none"]["psnr"] + 5


def test_wiener_shrinks_towards_the_mean_by_the_known_noise():
    rng = np.random.default_rng(3)
    signal = rng.normal(0.5, 0.1, (20000, 1, 1))
    released = signal + rng.normal(0, 0.2, signal.shape)
    estimate = wiener(released, 0.2)
    gain = np.polyfit(released.ravel(), estimate.ravel(), 1)[0]
    assert gain == pytest.approx(0.01 / (0.01 + 0.04), abs=0.02)
    assert np.array_equal(wiener(released, 0.0), released)
    guess = denoise(released[:5], "wiener,blur1", 0.2)
    assert guess.min() >= 0 and guess.max() <= 1
