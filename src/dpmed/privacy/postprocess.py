"""Free post-processing of a release: denoise it after the noise, before training.

Any function of the released images alone (and of public settings such as the noise
scale) keeps the release's guarantee (Dwork & Roth 2014, Prop. 2.1): it costs no epsilon
and may buy accuracy. It is never stored in the release; every run applies it afresh.

A pipeline is a comma-separated list of steps, applied left to right:

- ``pool<k>``: average over k x k blocks (down-sampling), shown at the original size;
- ``blur<sigma>``: Gaussian blur with standard deviation sigma pixels;
- ``median<k>``: median filter over k x k pixels;
- ``nlm``: non-local means (Buades et al. 2005) tuned to the known noise level.

>>> [str(step) for step in parse_postprocess("pool2, blur1.5,nlm")]
['pool2', 'blur1.5', 'nlm']
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from dpmed.errors import ConfigError
from dpmed.privacy.dppix import cell_means, spread_cells

SYNTAX = "comma-separated steps: pool<k>, blur<sigma>, median<k>, nlm (e.g. pool2,blur1)"
_STEP = re.compile(r"^([a-z]+)(\d+(?:\.\d+)?)?$")


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


def check_postprocess(steps: tuple[Step, ...], image_size: int) -> None:
    """Pooling needs a block size that divides the image size."""
    for step in steps:
        if step.name == "pool" and image_size % int(step.size):
            raise ConfigError(
                f"post-processing step {step} does not divide the image size {image_size}"
            )


def postprocess(images: np.ndarray, steps: tuple[Step, ...], *, noise_std: float) -> np.ndarray:
    """Apply `steps` to (N, H, W) images; float16 in and out (computed in float32)."""
    if not steps:
        return images
    work = images.astype(np.float32)
    for step in steps:
        work = step(work, noise_std)
    return work.astype(np.float16)
