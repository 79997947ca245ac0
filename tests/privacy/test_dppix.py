import numpy as np
import pytest
from scipy import stats

from dpmed.errors import ConfigError
from dpmed.privacy.dppix import DPPix, cell_means, spread_cells


def test_cell_means_of_a_hand_worked_image():
    """A 4 x 4 image in 2 x 2 cells: the means are worked out by hand."""
    image = np.array(
        [[0, 255, 51, 51], [255, 0, 51, 51], [0, 0, 255, 255], [0, 102, 255, 0]], np.uint8
    )
    means = cell_means(image[None] / 255, 2)[0]
    np.testing.assert_allclose(means, [[0.5, 0.2], [0.1, 0.75]])
    assert spread_cells(means[None], 2)[0, 3].tolist() == pytest.approx([0.1, 0.1, 0.75, 0.75])

    noisy = DPPix(cell_size=2).release(image[None], 0.1, np.random.default_rng(0))[0]
    noise = noisy.astype(np.float64) - spread_cells(means[None], 2)[0]
    for rows in (slice(0, 2), slice(2, 4)):
        for cols in (slice(0, 2), slice(2, 4)):
            assert np.ptp(noise[rows, cols]) < 1e-3  # one noise draw per cell
    assert len(np.unique(noise.round(3))) == 4


def test_scales_follow_the_formulas():
    """28 x 28 in 4 x 4 cells = 49 cells, b = 0.5: a pixel moves one cell mean by 1/16,
    so epsilon per pixel = 1 / (16 b) = 0.125, per 16 pixels 2, per image 49 / b = 98."""
    mechanism = DPPix(cell_size=4)
    assert mechanism.epsilon(0.5, changed_pixels=1, delta=0) == 0.125
    assert mechanism.epsilon(0.5, changed_pixels=16, delta=0) == 2.0
    assert mechanism.epsilon(0.5, changed_pixels=784, delta=0) == 98.0
    assert mechanism.noise_scale(98.0, changed_pixels=784, delta=0) == 0.5
    assert mechanism.epsilon(0.5, changed_pixels=3 * 784, delta=0) == 3 * 98.0


@pytest.mark.parametrize(("cell", "epsilon"), [(2, 1.0), (4, 100.0), (7, 8.0)])
def test_scale_matches_diffprivlib_laplace_on_cell_means(diffprivlib_mechanisms, cell, epsilon):
    cells = (28 // cell) ** 2
    reference = diffprivlib_mechanisms.Laplace(epsilon=epsilon, sensitivity=cells)
    scale = DPPix(cell_size=cell).noise_scale(epsilon, changed_pixels=784, delta=0)
    assert scale == pytest.approx(np.sqrt(reference.variance(0) / 2), rel=1e-12)


def test_cell_noise_is_laplace():
    clean = np.zeros((4000, 28, 28), dtype=np.uint8)
    noisy = DPPix(cell_size=4).release(clean, 0.49, np.random.default_rng(2))
    cells = noisy[:, ::4, ::4].astype(np.float64).ravel()  # one value per cell
    assert stats.kstest(cells, "laplace", args=(0, 0.49)).pvalue > 1e-3
    assert stats.kstest(cells, "laplace", args=(0, 0.54)).pvalue < 1e-6


def test_cell_size_must_divide_the_image():
    with pytest.raises(ConfigError, match="cell_size 3 does not divide the image size 28; .*4, 7"):
        DPPix(cell_size=3).check(delta=0, image_size=28)
    DPPix(cell_size=7).check(delta=0, image_size=28)
    with pytest.raises(ConfigError, match="delta must be 0"):
        DPPix(cell_size=7).check(delta=1e-5, image_size=28)
