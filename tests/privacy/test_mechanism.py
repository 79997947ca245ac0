import hashlib

import numpy as np
import pytest
import torch

from dpmed.errors import ConfigError
from dpmed.privacy import MECHANISMS, DPPix, Gaussian, Laplace, WeightedLaplace, build_mechanism
from dpmed.privacy import mechanism as mech
from dpmed.privacy.guarantee import Unit
from dpmed.privacy.mechanism import released_split


def test_registry_builds_every_mechanism_from_config_fields():
    settings = {"cell_size": 4, "snapping": True, "image_size": 28, "weight_floor": 0.5}
    assert set(MECHANISMS) == {"laplace", "gaussian", "dppix", "weighted-laplace"}
    assert build_mechanism("laplace", settings) == Laplace(snapping=True)
    assert build_mechanism("gaussian", settings) == Gaussian()
    assert build_mechanism("dppix", settings) == DPPix(cell_size=4)
    assert build_mechanism("weighted-laplace", settings) == WeightedLaplace(28, 0.5)
    with pytest.raises(ConfigError, match="unknown mechanism 'exp'"):
        build_mechanism("exp", settings)


@pytest.mark.parametrize(
    ("mechanism", "delta", "message"),
    [
        (Laplace(), 1e-5, "laplace is pure epsilon-DP: delta must be 0"),
        (Gaussian(), 0.0, r"gaussian needs delta in \(0, 1\)"),
        (Gaussian(), 1.0, r"gaussian needs delta in \(0, 1\)"),
    ],
)
def test_delta_rules(mechanism, delta, message):
    with pytest.raises(ConfigError, match=message):
        mechanism.check(delta=delta, image_size=28)


def test_guarantee_and_calibration_at_a_unit():
    g = Laplace().guarantee(2.0, Unit.parse("16-pixels"), pixels_per_image=784, delta=0)
    assert (g.epsilon, g.unit, g.delta) == (8.0, "16-pixels", 0)
    assert "16 changed pixels" in g.accounting
    none = Laplace().guarantee(0.0, Unit("image"), pixels_per_image=784, delta=0)
    assert none.epsilon is None and "infinite" in none.describe()
    patient = Unit("patient", images=3)
    assert Laplace().calibrate(8.0, patient, pixels_per_image=784, delta=0) == 3 * 784 / 8
    with pytest.raises(ConfigError, match="target_epsilon must be > 0"):
        Laplace().calibrate(0.0, patient, pixels_per_image=784, delta=0)


def _images(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (20, 16, 16), dtype=np.uint8)


@pytest.mark.parametrize(
    "mechanism", [Laplace(), Laplace(snapping=True), Gaussian(), DPPix(4), WeightedLaplace(16)]
)
def test_release_is_drawn_once_and_reproducible_with_the_noise_key(
    mechanism, private_cache, monkeypatch, noise_key
):
    images = _images()
    args = {"noise_scale": 0.5, "seed": 3, "dataset": "d", "split": "train"}
    first, sha = released_split(images, mechanism, **args)
    calls = []
    monkeypatch.setattr(type(mechanism), "release", lambda *a: calls.append(a))
    again, sha_again = released_split(images, mechanism, **args)
    assert calls == [] and sha == sha_again and np.array_equal(first, again)

    monkeypatch.undo()
    monkeypatch.setenv("DPMED_NOISE_KEY_FILE", str(noise_key))
    elsewhere = private_cache / "elsewhere" / mechanism.label
    monkeypatch.setenv("DPMED_CACHE", str(elsewhere))
    redrawn, sha_redrawn = released_split(images, mechanism, **args)
    assert sha_redrawn == sha and np.array_equal(redrawn, first)
    [saved] = (elsewhere / "releases").glob("*.npy")
    assert mech.file_sha256(saved) == sha and mechanism.label in saved.name


def test_without_a_key_the_public_seed_does_not_regenerate_a_release(private_cache, monkeypatch):
    """The review's attack: knowing the seed (config.yaml, summary, cache names) regenerated
    99.3% of a Laplace release's noise. Without a key, the same seed on another machine (a
    fresh cache) draws other noise, and no cached file name holds the seed or a plain hash
    of the private images."""
    images = np.random.default_rng(0).integers(0, 256, (40, 32, 32), dtype=np.uint8)
    args = {"noise_scale": 2.0, "seed": 0, "dataset": "d", "split": "train"}
    first, _ = released_split(images, LAPLACE, **args)
    monkeypatch.setenv("DPMED_CACHE", str(private_cache / "attacker"))
    attacker, _ = released_split(images, LAPLACE, **args)
    assert np.mean(first == attacker) < 0.01
    noise = first.astype(np.float64) - images / 255
    seeded = np.random.default_rng(0).laplace(0, 2.0, images.shape)  # the seed's own stream
    assert abs(np.corrcoef(noise.ravel(), seeded.ravel())[0, 1]) < 0.05
    names = " ".join(p.name for p in (private_cache / "releases").glob("*"))
    plain_hash = hashlib.sha256(images.tobytes()).hexdigest()
    assert "seed" not in names and plain_hash[:8] not in names


@pytest.mark.parametrize("keyed", [False, True])
def test_releases_of_other_sizes_or_subsets_do_not_cancel(request, keyed):
    """The review's attack on images: releases at two image sizes (or of two subsets) drew
    the same noise stream, so their difference gave the private pixel difference to float16
    rounding. Now the difference carries both noises: its error is sqrt(2) noise sds."""
    if keyed:
        request.getfixturevalue("noise_key")
    large = np.random.default_rng(1).integers(0, 256, (40, 32, 32), dtype=np.uint8)
    small = large[:, ::2, ::2].copy()
    args = {"noise_scale": 0.5, "seed": 0, "dataset": "d", "split": "train"}
    pairs = (
        (large, small),  # another image size
        (large, large[:30]),  # another subset (max_images, validation fraction)
    )
    for a, b in pairs:
        ra, _ = released_split(a, LAPLACE, **args)
        rb, _ = released_split(b, LAPLACE, **args)
        n = b.size
        clean_difference = (a.ravel()[:n] - b.ravel()[:n].astype(np.float64)) / 255
        found = ra.ravel()[:n].astype(np.float64) - rb.ravel()[:n]
        error = np.std(found - clean_difference)
        assert error > 0.9 * np.sqrt(2) * LAPLACE.noise_std(0.5)


LAPLACE = Laplace()


@pytest.mark.parametrize("keyed", [False, True])
def test_releases_are_independent_across_seed_split_scale_and_mechanism(request, keyed):
    if keyed:
        request.getfixturevalue("noise_key")
    images = np.zeros((40, 32, 32), dtype=np.uint8)  # |r| of independent noise: sd 0.005

    def noise(mechanism=LAPLACE, **changes):
        args = {"noise_scale": 1.0, "seed": 0, "dataset": "d", "split": "train"} | changes
        released, _ = released_split(images, mechanism, **args)
        return released.astype(np.float64).ravel() / args["noise_scale"]

    base = noise()
    others = (
        noise(seed=1),
        noise(split="val"),
        noise(noise_scale=2.0),
        noise(Gaussian()),
        noise(DPPix(1)),
    )
    for other in others:
        assert abs(np.corrcoef(base, other)[0, 1]) < 0.05
    assert np.array_equal(noise(DPPix(1)), noise(DPPix(1)))  # one release, reused


@pytest.mark.parametrize(
    "mechanism", [Laplace(), Laplace(snapping=True), Gaussian(), WeightedLaplace(image_size=8)]
)
def test_a_release_drawn_in_chunks_and_blocks_has_fresh_noise_for_every_image(
    mechanism, monkeypatch
):
    """Chunks of 7 images, blocks of 14 (each from its own stream, on threads): every
    image gets its own draws, none repeats another chunk's or another block's, and the
    release does not depend on the number of threads."""
    monkeypatch.setattr(mech, "_CHUNK", 7 * 64)
    monkeypatch.setattr(mech, "_BLOCK", 14 * 64)
    images = np.zeros((30, 8, 8), np.uint8)
    released = mechanism.release(images, 1.0, np.random.default_rng(0))
    assert released.dtype == np.float16 and released.shape == (30, 8, 8)
    rows = released.reshape(30, -1).astype(np.float64)
    assert len(np.unique(rows, axis=0)) == 30
    for other in (rows[7:14], rows[14:21], rows[28:30]):  # the next chunk, block, last
        correlation = np.corrcoef(rows[: len(other)].ravel(), other.ravel())[0, 1]
        assert abs(correlation) < 0.25  # sd of r on 128-448 independent pairs: 0.05-0.09
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    alone = mechanism.release(images, 1.0, np.random.default_rng(0))
    assert np.array_equal(alone, released)


@pytest.mark.parametrize(
    "mechanism", [Laplace(), Laplace(snapping=True), DPPix(1), WeightedLaplace(image_size=64)]
)
def test_noise_beyond_float16_is_clamped_not_stored_as_inf(mechanism):
    """Epsilon 8 per 224 px image is b = 6,272 per pixel: |noise| > 65,504 on ~3e-5 of the
    pixels. Stored as inf, one such pixel made training on the release NaN."""
    released = mechanism.release(
        np.zeros((128, 64, 64), np.uint8), 6272.0, np.random.default_rng(0)
    )
    assert released.dtype == np.float16 and np.isfinite(released).all()
    values = released.astype(np.float64)
    assert abs(values).max() == mech.FLOAT16_MAX  # clamped: ~15 of these 524,288 pixels
