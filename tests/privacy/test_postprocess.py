import numpy as np
import pytest

from dpmed.errors import ConfigError
from dpmed.privacy.postprocess import Step, parse_postprocess, postprocess, postprocessed_size


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


def test_block_sizes_must_divide_the_image_as_it_is_then():
    with pytest.raises(ConfigError, match="pool3 does not divide the image size 28"):
        postprocessed_size(parse_postprocess("pool3"), 28)
    with pytest.raises(ConfigError, match="down3 does not divide the image size 56"):
        postprocessed_size(parse_postprocess("down4,down3"), 224)
    assert postprocessed_size(parse_postprocess("pool4,blur1"), 28) == 28
    assert postprocessed_size(parse_postprocess("down2,down7"), 224) == 16


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
    assert np.array_equal(postprocess(images, (), noise_std=0), images)


def test_down_averages_blocks_into_a_smaller_image():
    images = np.arange(32, dtype=np.float16).reshape(2, 4, 4)
    down = postprocess(images, parse_postprocess("down2"), noise_std=0)
    assert down.dtype == np.float16 and down.shape == (2, 2, 2)
    assert down[0].tolist() == [[2.5, 4.5], [10.5, 12.5]]


def test_clean_uint8_images_are_scaled_and_a_release_clipped_first():
    clean = np.full((1, 4, 4), 255, dtype=np.uint8)
    assert postprocess(clean, (), noise_std=0).tolist() == np.ones((1, 4, 4)).tolist()
    release = np.full((1, 4, 4), 3.0, dtype=np.float16)
    assert postprocess(release, parse_postprocess("down4"), noise_std=0, clip=True) == 1.0


def test_steps_after_an_average_see_its_smaller_noise(monkeypatch):
    seen = []
    spy = (lambda images, size, std: seen.append(std) or images, None)
    monkeypatch.setitem(postprocess.__globals__["_STEPS"], "nlm", spy)
    postprocess(np.zeros((1, 8, 8), np.float16), parse_postprocess("down2,nlm"), noise_std=1.0)
    assert seen == [0.5]


def test_a_release_is_post_processed_in_chunks_like_all_at_once(monkeypatch):
    noisy = np.random.default_rng(0).normal(0.5, 0.3, (600, 8, 8)).astype(np.float16)
    steps = parse_postprocess("down2,blur1")
    whole = postprocess(noisy, steps, noise_std=0.3)
    monkeypatch.setattr("dpmed.privacy.postprocess._CHUNK", 7)
    assert np.array_equal(postprocess(noisy, steps, noise_std=0.3), whole)
