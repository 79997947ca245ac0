"""The paper's input perturbation: Laplace(0, b) added once to every pixel in [0, 1].

One pixel moves by at most 1, so each released pixel is (1/b)-DP; an image of d pixels
differs from another in L1 norm by at most d, so the image is (d/b)-DP (Dwork & Roth
2014, Thm 3.6). The noisy copy is a *release*: drawn once, saved, and reused by every
epoch; clipping, augmentation or resizing it afterwards is post-processing and free.
"""

from __future__ import annotations

import dataclasses
import hashlib
import zlib
from pathlib import Path

import numpy as np

from dpmed.data.images import atomic_write
from dpmed.data.root import cache_dir
from dpmed.privacy.guarantee import NO_PRIVACY, PrivacyGuarantee

ASSUMPTIONS = (
    "pixel values are scaled to [0, 1] before the noise (sensitivity 1 per pixel)",
    "a pixel is one pixel of the image as released (after resizing)",
    "labels and patient ids are released without noise and are not protected",
    "the noise is drawn once per image; the release seed is kept secret",
)


def laplace_guarantee(noise_scale: float, pixels_per_image: int) -> dict[str, PrivacyGuarantee]:
    """The guarantee at the pixel and the image unit; b = 0 gives none (epsilon infinite).

    >>> g = laplace_guarantee(2.0, 28 * 28)
    >>> g["pixel"].epsilon, g["image"].epsilon
    (0.5, 392.0)
    """
    if noise_scale == 0:
        return {"pixel": dataclasses.replace(NO_PRIVACY, unit="pixel"), "image": NO_PRIVACY}
    return {
        unit: PrivacyGuarantee(
            mechanism="laplace",
            unit=unit,
            epsilon=sensitivity / noise_scale,
            delta=0.0,
            accounting=f"Laplace mechanism: epsilon = L1 sensitivity / b = {sensitivity} / b",
            assumptions=ASSUMPTIONS,
        )
        for unit, sensitivity in (("pixel", 1), ("image", pixels_per_image))
    }


def release_seed(seed: int, dataset: str, split: str, noise_scale: float) -> np.random.SeedSequence:
    """Independent noise for every (dataset, split, b, seed): two releases never share draws
    (sharing them across b would let anyone subtract the noise)."""
    tag = zlib.crc32(f"{dataset}/{split}/{noise_scale!r}".encode())
    return np.random.SeedSequence([seed, tag])


def release_laplace(images: np.ndarray, noise_scale: float, rng: np.random.Generator) -> np.ndarray:
    """uint8 images -> images / 255 + Laplace(0, b) noise, as float16 (rounding is free)."""
    noisy = rng.laplace(0.0, noise_scale, size=images.shape)
    noisy += images * (1 / 255)
    return noisy.astype(np.float16)


def released_split(
    images: np.ndarray, *, noise_scale: float, seed: int, dataset: str, split: str
) -> tuple[np.ndarray, str]:
    """The release of one split, drawn once and saved under the cache; (images, sha256).

    The file is keyed by the clean images, b, seed and split, so every run that asks for
    the same release gets the very same noisy copy.
    """
    digest = hashlib.sha256(images.tobytes()).hexdigest()[:16]
    name = f"{dataset}-{split}-b{noise_scale:g}-seed{seed}-{digest}.npy"
    path = cache_dir() / "releases" / name
    if not path.exists():
        rng = np.random.default_rng(release_seed(seed, dataset, split, noise_scale))
        noisy = release_laplace(images, noise_scale, rng)
        atomic_write(path, lambda handle: np.save(handle, noisy))
    return np.load(path), file_sha256(path)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
