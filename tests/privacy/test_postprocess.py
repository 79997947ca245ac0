import numpy as np
import pytest

from dpmed.errors import ConfigError
from dpmed.privacy.postprocess import Step, check_postprocess, parse_postprocess, postprocess


def test_parse_the_documented_form():
    assert parse_postprocess("pool2, blur1.5,median3,nlm") == (
        Step("pool", 2),
        Step("blur", 1.5),
        Step("median", 3),
        Step("nlm"),
    )
    assert parse_postprocess(None) == parse_postprocess("") == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sharpen2", "unknown post-processing step 'sharpen2'; use comma-separated steps"),
        ("pool", "pool needs a whole size >= 2"),
        ("pool1", "pool needs a whole size >= 2"),
        ("median2.5", "median needs a whole size >= 2"),
        ("blur", "blur needs a size > 0"),
        ("nlm3", "nlm takes no number"),
        ("blur-1", "unknown post-processing step 'blur-1'"),
    ],
)
def test_bad_steps_are_refused(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_postprocess(text)


def test_pooling_must_divide_the_image():
    with pytest.raises(ConfigError, match="pool3 does not divide the image size 28"):
        check_postprocess(parse_postprocess("pool3"), 28)
    check_postprocess(parse_postprocess("pool4,blur1"), 28)


def _gradient(n=40, size=28):
    """Smooth images (a diagonal ramp with a per-image brightness) in [0, 1]."""
    ramp = np.add.outer(np.arange(size), np.arange(size)) / (2 * size - 2)
    return np.clip(ramp[None] * np.linspace(0.5, 1, n)[:, None, None], 0, 1)


def test_pool_averages_blocks_at_the_original_size():
    images = np.arange(16, dtype=np.float16).reshape(1, 4, 4)
    pooled = postprocess(images, parse_postprocess("pool2"), noise_std=0)
    assert pooled.dtype == np.float16 and pooled.shape == (1, 4, 4)
    assert pooled[0, :, 0].tolist() == [2.5, 2.5, 10.5, 10.5]


@pytest.mark.parametrize("pipeline", ["pool2", "blur1", "median3", "nlm", "pool2,blur1"])
def test_every_denoiser_brings_a_noisy_release_closer_to_the_clean_images(pipeline):
    clean = _gradient()
    noisy = (clean + np.random.default_rng(0).normal(0, 0.2, clean.shape)).astype(np.float16)
    denoised = postprocess(noisy, parse_postprocess(pipeline), noise_std=0.2)
    before = np.mean((noisy - clean) ** 2)
    assert np.mean((denoised - clean) ** 2) < 0.5 * before


def test_median_removes_isolated_spikes_and_no_steps_is_identity():
    images = np.zeros((1, 9, 9), dtype=np.float16)
    images[0, 4, 4] = 50
    assert postprocess(images, parse_postprocess("median3"), noise_std=0).max() == 0
    assert postprocess(images, (), noise_std=0) is images
