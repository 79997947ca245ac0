import numpy as np
import pytest
from scipy import stats

from dpmed.config import RunConfig
from dpmed.errors import ConfigError
from dpmed.privacy.accounting import account
from dpmed.privacy.guarantee import Unit
from dpmed.privacy.laplace import Laplace
from dpmed.privacy.weighted_laplace import DEFAULT_FLOOR, WeightedLaplace, lung_weights

SIZE, PIXELS = 28, 28 * 28
WEIGHTED = WeightedLaplace(image_size=SIZE)


def per_pixel_budgets(b: float, floor: float = DEFAULT_FLOOR) -> np.ndarray:
    """1 / b_i straight from the brief's formula: eps_image w_i / sum(w), eps_image = d / b."""
    weights = lung_weights(SIZE, floor)
    return (PIXELS / b) * weights / weights.sum()


@pytest.mark.parametrize("changed", [1, 16, PIXELS, 3 * PIXELS])
@pytest.mark.parametrize("epsilon", [0.5, 8.0, 200.0, 3200.0])
def test_calibration_both_ways_is_one_inverse(changed, epsilon):
    b = WEIGHTED.noise_scale(epsilon, changed_pixels=changed, delta=0)
    assert WEIGHTED.epsilon(b, changed_pixels=changed, delta=0) == pytest.approx(epsilon, rel=1e-12)
    back = WEIGHTED.noise_scale(
        WEIGHTED.epsilon(b, changed_pixels=changed, delta=0), changed_pixels=changed, delta=0
    )
    assert back == pytest.approx(b, rel=1e-12)


@pytest.mark.parametrize("b", [0.25, 1.0, 4.0])
def test_epsilon_per_unit_is_the_sum_of_the_worst_per_pixel_budgets(b):
    budgets = np.sort(per_pixel_budgets(b), axis=None)[::-1]
    report = account(WEIGHTED, noise_scale=b, pixels_per_image=PIXELS, images_per_patient=3)
    assert report.epsilon("pixel") == pytest.approx(budgets[0], rel=1e-12)
    assert report.epsilon("image") == pytest.approx(budgets.sum(), rel=1e-12)
    assert report.epsilon("image") == pytest.approx(PIXELS / b, rel=1e-12)  # as plain Laplace
    assert report.epsilon("patient") == pytest.approx(3 * budgets.sum(), rel=1e-12)
    sixteen = WEIGHTED.guarantee(b, Unit.parse("16-pixels"), pixels_per_image=PIXELS, delta=0)
    assert sixteen.epsilon == pytest.approx(budgets[:16].sum(), rel=1e-12)
    assert budgets[0] < sixteen.epsilon < 16 * budgets[0]  # budgets differ across pixels
    released = 1 / WEIGHTED.scales(b)  # the scales the release draws with
    assert released.sum() == pytest.approx(report.epsilon("image"), rel=1e-12)


def test_calibrating_to_an_epsilon_per_image_gives_plain_laplaces_scale():
    report = account(WEIGHTED, target_epsilon=800.0, pixels_per_image=PIXELS)
    assert report.noise_scale == pytest.approx(
        Laplace().noise_scale(800.0, changed_pixels=PIXELS, delta=0)
    )
    assert per_pixel_budgets(report.noise_scale).sum() == pytest.approx(800.0, rel=1e-12)
    per_pixel = account(WEIGHTED, target_epsilon=2.0, unit=Unit("pixel"), pixels_per_image=PIXELS)
    assert per_pixel_budgets(per_pixel.noise_scale).max() == pytest.approx(2.0, rel=1e-12)


def test_noise_in_each_region_is_laplace_with_its_own_scale():
    """KS per region (lung fields, background) of the noise divided by b_i against
    Laplace(0, 1); dividing by the other region's scale, or by plain Laplace's b, fails."""
    b = 0.5
    noise = WEIGHTED.release(np.zeros((400, SIZE, SIZE), np.uint8), b, np.random.default_rng(5))
    noise = noise.astype(np.float64)
    scales = WEIGHTED.scales(b)
    weights = lung_weights(SIZE, DEFAULT_FLOOR)
    lungs, background = weights > 0.95, weights < DEFAULT_FLOOR + 0.01
    assert lungs.sum() > 50 and background.sum() > 50
    for region, other in ((lungs, background), (background, lungs)):
        own = (noise[:, region] / scales[region]).ravel()
        assert stats.kstest(own, "laplace").pvalue > 1e-3
        wrong = (noise[:, region] / scales[other].mean()).ravel()
        assert stats.kstest(wrong, "laplace").pvalue < 1e-6
        assert stats.kstest((noise[:, region] / b).ravel(), "laplace").pvalue < 1e-6
    assert noise[:, lungs].std() < noise[:, background].std() / 2


def test_uniform_map_is_plain_laplace_exactly():
    uniform, plain = WeightedLaplace(image_size=SIZE, weight_floor=1.0), Laplace()
    assert (lung_weights(SIZE, 1.0) == 1.0).all()
    images = np.random.default_rng(0).integers(0, 256, (30, SIZE, SIZE), dtype=np.uint8)
    ours = uniform.release(images, 0.7, np.random.default_rng(9))
    theirs = plain.release(images, 0.7, np.random.default_rng(9))
    assert np.array_equal(ours, theirs)
    for changed in (1, 16, PIXELS, 3 * PIXELS):
        assert uniform.epsilon(0.7, changed_pixels=changed, delta=0) == plain.epsilon(
            0.7, changed_pixels=changed, delta=0
        )
        assert uniform.noise_scale(50.0, changed_pixels=changed, delta=0) == plain.noise_scale(
            50.0, changed_pixels=changed, delta=0
        )
    assert uniform.noise_std(0.7) == plain.noise_std(0.7)


def test_weights_respond_more_budget_less_noise_where_the_weight_is_higher():
    weights = lung_weights(SIZE, 0.1)
    high, low = np.unravel_index(weights.argmax(), weights.shape), (0, 0)
    assert weights[high] > 0.99 and weights[low] == pytest.approx(0.1, abs=1e-3)
    strong, mild = WeightedLaplace(SIZE, 0.1), WeightedLaplace(SIZE, 0.5)
    assert strong.scales(1.0)[high] < mild.scales(1.0)[high] < 1.0
    assert strong.scales(1.0)[low] > mild.scales(1.0)[low] > 1.0
    epsilon = {
        f: WeightedLaplace(SIZE, f).epsilon(1.0, changed_pixels=1, delta=0) for f in (0.1, 0.5)
    }
    assert epsilon[0.1] > epsilon[0.5] > 1.0  # the most-weighted pixel pays for its low noise


def test_map_is_a_fixed_prior_and_the_noise_ignores_the_images():
    for size in (7, 28, 64):
        weights = lung_weights(size, 0.2)
        assert weights.shape == (size, size) and weights.min() >= 0.2 and weights.max() <= 1
        assert np.allclose(weights, weights[:, ::-1])  # the two lungs mirror each other
        assert weights[size // 2, size // 4] > 0.9 and weights[0, 0] < 0.21
    bright = np.full((50, SIZE, SIZE), 255, np.uint8)
    noise_bright = WEIGHTED.release(bright, 1.0, np.random.default_rng(2)).astype(np.float64) - 1
    noise_dark = WEIGHTED.release(bright * 0, 1.0, np.random.default_rng(2)).astype(np.float64)
    assert np.allclose(noise_bright, noise_dark, atol=2e-2, rtol=2e-3)  # float16 rounding


def test_config_builds_it_for_the_image_size_and_refuses_bad_settings():
    config = RunConfig(dataset="pneumoniamnist", technique="weighted-laplace", noise_scale=1)
    assert config.input_mechanism() == WeightedLaplace(image_size=28)
    assert config.input_mechanism().label == "weighted-laplace-floor0.25"
    for values, message in [
        (
            {"technique": "weighted-laplace", "weight_floor": 0.0},
            r"weight_floor must lie in \(0, 1\]",
        ),
        (
            {"technique": "weighted-laplace", "weight_floor": 1.5},
            r"weight_floor must lie in \(0, 1\]",
        ),
        ({"technique": "laplace", "weight_floor": 0.5}, "weight_floor is only for technique"),
        ({"technique": "weighted-laplace", "delta": 1e-5}, "pure epsilon-DP"),
    ]:
        with pytest.raises(ConfigError, match=message):
            RunConfig(dataset="pneumoniamnist", **values)
    with pytest.raises(ConfigError, match="m pixels of one image"):
        WEIGHTED.epsilon(1.0, changed_pixels=PIXELS + 1, delta=0)
    with pytest.raises(ConfigError, match="built for 28px"):
        WEIGHTED.check(delta=0, image_size=64)
    with pytest.raises(ValueError, match="28px weight map"):
        WEIGHTED.release(np.zeros((2, 64, 64), np.uint8), 1.0, np.random.default_rng(0))


def test_guarantee_states_the_prior_and_the_m_pixels_reading():
    guarantee = WEIGHTED.guarantee(1.0, Unit.parse("4-pixels"), pixels_per_image=PIXELS, delta=0)
    assert any("fixed public prior" in a for a in guarantee.assumptions)
    assert any("m pixels of one image" in a for a in guarantee.assumptions)
    assert "floor 0.25" in guarantee.accounting and guarantee.mechanism == WEIGHTED.label
