import numpy as np
import pytest
from scipy import stats

from dpmed.privacy import laplace as lp
from dpmed.privacy.laplace import laplace_guarantee, release_laplace, released_split


@pytest.mark.parametrize("b", [0.5, 1.0, 2.0, 4.0])
def test_noise_is_laplace_with_scale_b(b):
    """Kolmogorov-Smirnov against Laplace(0, b) on 200k draws; a wrong scale (10% off) fails."""
    clean = np.zeros((50, 64, 64), dtype=np.uint8)
    noise = release_laplace(clean, b, np.random.default_rng(7)).astype(np.float64).ravel()
    assert stats.kstest(noise, "laplace", args=(0, b)).pvalue > 1e-3
    assert stats.kstest(noise, "laplace", args=(0, 1.1 * b)).pvalue < 1e-6
    assert abs(noise.mean()) < 0.01 * b
    assert noise.var() == pytest.approx(2 * b * b, rel=0.02)


def test_release_adds_noise_to_pixels_scaled_to_unit_interval():
    images = np.array([[[0, 255]]], dtype=np.uint8).repeat(20000, axis=0)
    released = release_laplace(images, 1.0, np.random.default_rng(1))
    assert released.dtype == np.float16
    assert np.median(released[:, 0, 0]) == pytest.approx(0.0, abs=0.03)
    assert np.median(released[:, 0, 1]) == pytest.approx(1.0, abs=0.03)


def test_epsilon_per_pixel_and_per_image():
    g = laplace_guarantee(2.0, 28 * 28)
    assert g["pixel"].epsilon == 0.5 and g["image"].epsilon == 392.0
    assert g["image"].delta == 0 and g["image"].unit == "image"
    assert laplace_guarantee(1.0, 224 * 224)["image"].epsilon == 50176.0
    none = laplace_guarantee(0.0, 64 * 64)
    assert none["pixel"].epsilon is None and none["image"].epsilon is None
    assert "infinite" in none["image"].describe()


def _images(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (20, 16, 16), dtype=np.uint8)


def test_release_is_drawn_once_and_reproducible_from_its_seed(private_cache, monkeypatch):
    images = _images()
    first, sha = released_split(images, noise_scale=1.0, seed=3, dataset="d", split="train")
    calls = []
    monkeypatch.setattr(lp, "release_laplace", lambda *a: calls.append(a))
    again, sha_again = released_split(images, noise_scale=1.0, seed=3, dataset="d", split="train")
    assert calls == [] and sha == sha_again and np.array_equal(first, again)

    monkeypatch.undo()
    monkeypatch.setenv("DPMED_CACHE", str(private_cache / "elsewhere"))
    redrawn, sha_redrawn = released_split(
        images, noise_scale=1.0, seed=3, dataset="d", split="train"
    )
    assert sha_redrawn == sha and np.array_equal(redrawn, first)


def test_releases_are_independent_across_seed_split_and_scale():
    images = np.zeros((20, 16, 16), dtype=np.uint8)

    def noise(**changes):
        args = {"noise_scale": 1.0, "seed": 0, "dataset": "d", "split": "train"} | changes
        released, _ = released_split(images, **args)
        return released.astype(np.float64).ravel() / args["noise_scale"]

    base = noise()
    for other in (noise(seed=1), noise(split="val"), noise(noise_scale=2.0)):
        assert abs(np.corrcoef(base, other)[0, 1]) < 0.05
