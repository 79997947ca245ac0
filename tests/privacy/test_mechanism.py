import numpy as np
import pytest

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
def test_release_is_drawn_once_and_reproducible_from_its_seed(
    mechanism, private_cache, monkeypatch
):
    images = _images()
    args = {"noise_scale": 0.5, "seed": 3, "dataset": "d", "split": "train"}
    first, sha = released_split(images, mechanism, **args)
    calls = []
    monkeypatch.setattr(type(mechanism), "release", lambda *a: calls.append(a))
    again, sha_again = released_split(images, mechanism, **args)
    assert calls == [] and sha == sha_again and np.array_equal(first, again)

    monkeypatch.undo()
    elsewhere = private_cache / "elsewhere" / mechanism.label
    monkeypatch.setenv("DPMED_CACHE", str(elsewhere))
    redrawn, sha_redrawn = released_split(images, mechanism, **args)
    assert sha_redrawn == sha and np.array_equal(redrawn, first)
    [saved] = (elsewhere / "releases").glob("*.npy")
    assert mech.file_sha256(saved) == sha and mechanism.label in saved.name


LAPLACE = Laplace()


def test_releases_are_independent_across_seed_split_scale_and_mechanism():
    images = np.zeros((20, 16, 16), dtype=np.uint8)

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
    assert np.array_equal(noise(DPPix(1)), noise(DPPix(1)))
