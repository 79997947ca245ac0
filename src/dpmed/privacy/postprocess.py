"""Free post-processing of a release: denoise it after the noise, before training.

Any function of the released images alone (and of public settings such as the noise
scale) keeps the release's guarantee (Dwork & Roth 2014, Prop. 2.1): it costs no epsilon
and may buy accuracy. It is never stored in the release; every run applies it afresh.

A pipeline is a comma-separated list of steps, applied left to right:

- ``down<k>``: average over k x k blocks into one pixel: the image shrinks k times
  (area down-sampling; the model then trains at the smaller size);
- ``pool<k>``: average over k x k blocks, shown at the original size;
- ``blur<sigma>``: Gaussian blur with standard deviation sigma pixels;
- ``median<k>``: median filter over k x k pixels;
- ``nlm``: non-local means (Buades et al. 2005) tuned to the known noise level.

Averaging k x k pixels (down, pool) divides the noise's standard deviation by k, and
the steps after it see that smaller noise.

>>> [str(step) for step in parse_postprocess("pool2, blur1.5,nlm")]
['pool2', 'blur1.5', 'nlm']
>>> postprocessed_size(parse_postprocess("down4,blur1"), 224)
56
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from dpmed.errors import ConfigError
from dpmed.privacy.dppix import cell_means, spread_cells

SYNTAX = "comma-separated steps: down<k>, pool<k>, blur<sigma>, median<k>, nlm (e.g. down4,blur1)"
_CHUNK = 256  # images post-processed at a time: a 224 px release need not fit in memory twice
_STEP = re.compile(r"^([a-z]+)(\d+(?:\.\d+)?)?$")


def _down(images: np.ndarray, size: float, noise_std: float) -> np.ndarray:
    return cell_means(images, int(size))


def _pool(images: np.ndarray, size: float, noise_std: float) -> np.ndarray:
    return spread_cells(cell_means(images, int(size)), int(size))


def _blur(images: np.ndarray, size: float, noise_std: float) -> np.ndarray:
    return ndimage.gaussian_filter(images, sigma=(0, size, size), mode="reflect")


def _median(images: np.ndarray, size: float, noise_std: float) -> np.ndarray:
    return ndimage.median_filter(images, size=(1, int(size), int(size)), mode="reflect")


def _nlm(images: np.ndarray, size: float, noise_std: float) -> np.ndarray:
    from skimage.restoration import denoise_nl_means

    if noise_std == 0:
        return images
    return np.stack(
        [
            denoise_nl_means(
                image,
                h=0.8 * noise_std,
                sigma=noise_std,
                patch_size=3,
                patch_distance=5,
                fast_mode=True,
            )
            for image in images
        ]
    ).astype(images.dtype)


# name -> (function(images, size, noise_std), kind of size: "int" >= 2, "float" > 0, None)
_STEPS: dict[str, tuple[Callable[[np.ndarray, float, float], np.ndarray], str | None]] = {
    "down": (_down, "int"),
    "pool": (_pool, "int"),
    "blur": (_blur, "float"),
    "median": (_median, "int"),
    "nlm": (_nlm, None),
}


@dataclass(frozen=True)
class Step:
    """One post-processing step, e.g. Step("blur", 1.0)."""

    name: str
    size: float | None = None

    def __str__(self) -> str:
        return self.name if self.size is None else f"{self.name}{self.size:g}"

    @property
    def averages(self) -> int:
        """Pixels averaged into one (k x k for down and pool, else 1)."""
        return int(self.size) ** 2 if self.name in ("down", "pool") else 1

    def __call__(self, images: np.ndarray, noise_std: float) -> np.ndarray:
        return _STEPS[self.name][0](images, self.size or 0.0, noise_std)


def parse_postprocess(text: str | None) -> tuple[Step, ...]:
    """`"pool2,blur1"` -> (Step("pool", 2), Step("blur", 1)); None or "" -> no steps."""
    steps = []
    for part in filter(None, (p.strip().lower() for p in (text or "").split(","))):
        match = _STEP.match(part)
        if not match or match.group(1) not in _STEPS:
            raise ConfigError(f"unknown post-processing step {part!r}; use {SYNTAX}")
        name, number = match.groups()
        kind = _STEPS[name][1]
        if kind is None and number is not None:
            raise ConfigError(f"post-processing step {name} takes no number, got {part!r}")
        if kind == "int" and (number is None or "." in number or int(number) < 2):
            raise ConfigError(f"post-processing step {name} needs a whole size >= 2, e.g. {name}3")
        if kind == "float" and (number is None or float(number) <= 0):
            raise ConfigError(f"post-processing step {name} needs a size > 0, e.g. {name}1")
        steps.append(Step(name, None if number is None else float(number)))
    return tuple(steps)


def postprocessed_size(steps: tuple[Step, ...], image_size: int) -> int:
    """The image side after `steps`; a ConfigError where a block size does not divide it."""
    for step in steps:
        if step.name in ("down", "pool") and image_size % int(step.size):
            raise ConfigError(
                f"post-processing step {step} does not divide the image size {image_size}"
            )
        if step.name == "down":
            image_size //= int(step.size)
    return image_size


def postprocess(
    images: np.ndarray, steps: tuple[Step, ...], *, noise_std: float, clip: bool = False
) -> np.ndarray:
    """Apply `steps` to (N, H, W) images, first clipping them to [0, 1] with `clip`.

    In: a release (float, a memory map too) or clean uint8 images (scaled to [0, 1]);
    out: float16, computed in float32 a chunk of images at a time.
    """
    scale = np.float32(1 / 255 if images.dtype == np.uint8 else 1)
    chunks = []
    for start in range(0, max(len(images), 1), _CHUNK):
        work = images[start : start + _CHUNK].astype(np.float32) * scale
        if clip:
            work = work.clip(0, 1)
        std = noise_std
        for step in steps:
            work = step(work, std)
            std /= np.sqrt(step.averages)
        chunks.append(work.astype(np.float16))
    return np.concatenate(chunks)
