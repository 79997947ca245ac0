"""Input perturbation: a noise mechanism applied once to every image, and its release.

An `InputMechanism` turns clean uint8 images into a noisy *release* and says what that
release guarantees. Every mechanism here treats an image as a vector of pixels in [0, 1]:
neighbouring data sets differ in `changed_pixels` pixels (one, m, a whole image, or all
images of a patient, see `Unit`), each by at most 1, and the mechanism's sensitivity and
epsilon follow from that number. Calibration goes both ways: `epsilon(noise_scale)` and
`noise_scale(epsilon)`, each the exact inverse of the other.

Mechanisms register themselves by name (`@register("laplace")`); their settings are
dataclass fields named like the `RunConfig` fields that hold them (`cell_size`,
`snapping`), so a new mechanism plugs in without touching the training loop.

The noisy copy is a release: drawn once per identity (the clean images, dataset, split,
mechanism and its settings, noise scale, seed) from secret noise, saved under the cache
and reused by every epoch and every run that asks for exactly that release.
"""

from __future__ import annotations

import dataclasses
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from dpmed.data.images import atomic_write
from dpmed.data.root import cache_dir
from dpmed.errors import ConfigError
from dpmed.privacy import secret
from dpmed.privacy.guarantee import NO_PRIVACY, PrivacyGuarantee, Unit

ASSUMPTIONS = (
    "pixel values are scaled to [0, 1] before the noise (each pixel moves by at most 1)",
    "a pixel is one pixel of the image as released (after resizing)",
    "neighbouring data sets replace one unit's data; the number of images is public",
    "labels and patient ids are released without noise and are not protected",
    "the noise is drawn once per image from secret randomness (operating-system entropy "
    "or a secret noise key), never from the public seed",
)

MECHANISMS: dict[str, type[InputMechanism]] = {}
_CHUNK = 1 << 16  # pixels released at a time (whole images): the buffers stay in cache
_BLOCK = 1 << 20  # pixels of one thread's block (whole images), drawn from its own stream
FLOAT16_MAX = float(np.finfo(np.float16).max)  # 65,504
_M = TypeVar("_M", bound="type[InputMechanism]")


def register(name: str) -> Callable[[_M], _M]:
    """Class decorator: make an `InputMechanism` available as technique `name`."""

    def add(cls: _M) -> _M:
        cls.name = name
        MECHANISMS[name] = cls
        return cls

    return add


@dataclass(frozen=True)
class InputMechanism(ABC):
    """Noise added once to every image; its calibration in both directions.

    Subclasses are frozen dataclasses whose fields are the mechanism's settings.
    `noise_scale` is the mechanism's own scale parameter (Laplace b, Gaussian sigma).
    """

    name: ClassVar[str]
    approximate: ClassVar[bool] = False  # True: (epsilon, delta)-DP with delta > 0

    @abstractmethod
    def epsilon(self, noise_scale: float, *, changed_pixels: int, delta: float) -> float:
        """Epsilon when neighbours differ in `changed_pixels` pixels (noise_scale > 0)."""

    @abstractmethod
    def noise_scale(self, epsilon: float, *, changed_pixels: int, delta: float) -> float:
        """The smallest noise scale giving `epsilon` (> 0) for `changed_pixels`."""

    @abstractmethod
    def release(
        self, images: np.ndarray, noise_scale: float, rng: np.random.Generator
    ) -> np.ndarray:
        """uint8 images (N, H, W) -> the noisy release (N, H, W) float16, pixels in [0, 1]."""

    @abstractmethod
    def noise_std(self, noise_scale: float) -> float:
        """Standard deviation of the noise on one released pixel (public: for denoisers)."""

    @property
    @abstractmethod
    def accounting(self) -> str:
        """How epsilon is computed, as a formula a reader can check."""

    @property
    def assumptions(self) -> tuple[str, ...]:
        """What the guarantee relies on."""
        return ASSUMPTIONS

    @property
    def label(self) -> str:
        """The mechanism and its settings, e.g. `dppix-cell4` (file names, tables)."""
        return self.name

    def check(self, *, delta: float, image_size: int) -> None:
        """Refuse settings under which the guarantee would not hold (ConfigError)."""
        if self.approximate and not 0 < delta < 1:
            raise ConfigError(
                f"{self.name} needs delta in (0, 1), got {delta:g}; "
                "e.g. --delta 1e-5 (well below 1 / number of images)"
            )
        if not self.approximate and delta != 0:
            raise ConfigError(
                f"{self.name} is pure epsilon-DP: delta must be 0, got {delta:g} "
                "(delta is for technique gaussian)"
            )

    def guarantee(
        self, noise_scale: float, unit: Unit, *, pixels_per_image: int, delta: float
    ) -> PrivacyGuarantee:
        """The guarantee of a release with `noise_scale` at `unit`; 0 gives none."""
        if noise_scale == 0:
            return dataclasses.replace(NO_PRIVACY, unit=str(unit), mechanism=self.label)
        changed = unit.changed_pixels(pixels_per_image)
        return PrivacyGuarantee(
            mechanism=self.label,
            unit=str(unit),
            epsilon=self.epsilon(noise_scale, changed_pixels=changed, delta=delta),
            delta=delta,
            accounting=f"{self.accounting}; {unit} = {changed} changed pixels",
            assumptions=self.assumptions,
        )

    def calibrate(
        self, target_epsilon: float, unit: Unit, *, pixels_per_image: int, delta: float
    ) -> float:
        """The noise scale that gives `target_epsilon` per `unit`."""
        if not target_epsilon > 0:
            raise ConfigError(f"target_epsilon must be > 0, got {target_epsilon:g}")
        changed = unit.changed_pixels(pixels_per_image)
        return self.noise_scale(target_epsilon, changed_pixels=changed, delta=delta)


def as_release(values: np.ndarray) -> np.ndarray:
    """Noisy values as float16, clamped to its finite range (post-processing, free): noise
    of scale 6,272 (epsilon 8 per 224 px image) passes 65,504 on a pixel or two of every
    image, which would otherwise be stored as inf and train to NaN. torch casts (numpy's
    float16 cast is scalar code, ~30x slower); any rounding of the noisy value is free."""
    np.clip(values, -FLOAT16_MAX, FLOAT16_MAX, out=values)
    return torch.from_numpy(values).to(torch.float16).numpy()


def add_noise(
    images: np.ndarray,
    rng: np.random.Generator,
    draw: Callable[[np.random.Generator, tuple[int, ...]], np.ndarray],
) -> np.ndarray:
    """uint8 images (N, H, W) -> images / 255 + `draw(generator, shape)` noise (float64),
    as a float16 release (`release_pixels`)."""

    def noisy(pixels: np.ndarray, generator: np.random.Generator) -> np.ndarray:
        values = draw(generator, pixels.shape)
        values += pixels
        return values

    return release_pixels(images, rng, noisy)


def release_pixels(
    images: np.ndarray,
    rng: np.random.Generator,
    noisy: Callable[[np.ndarray, np.random.Generator], np.ndarray],
) -> np.ndarray:
    """uint8 images (N, H, W) -> `noisy(pixels, generator)` of pixels = images / 255
    (float64), clamped to float16's range and stored as float16 (see `as_release`).

    Drawn in blocks of whole images (about `_BLOCK` pixels), block i from rng's i-th child
    (`Generator.spawn`: independent streams from the same secret), on torch's number of
    threads; the release depends on rng only, not on the thread count. Within a block,
    a few images at a time (about `_CHUNK` pixels): the release never sits in memory in
    float64, and each pass over a chunk runs in cache.
    """
    noisy_images = np.empty(images.shape, dtype=np.float16)
    stored = torch.from_numpy(noisy_images)  # the same memory
    step = max(1, _CHUNK // max(1, images[0].size)) if len(images) else 1
    block = step * (_BLOCK // _CHUNK)

    def release_block(first: int, generator: np.random.Generator) -> None:
        for start in range(first, min(first + block, len(images)), step):
            values = noisy(np.multiply(images[start : start + step], 1 / 255), generator)
            np.clip(values, -FLOAT16_MAX, FLOAT16_MAX, out=values)
            stored[start : start + step].copy_(torch.from_numpy(values))

    firsts = range(0, len(images), block)
    with ThreadPoolExecutor(max_workers=torch.get_num_threads()) as pool:
        list(pool.map(release_block, firsts, rng.spawn(len(firsts))))
    return noisy_images


def laplace_noise(rng: np.random.Generator, scale: np.ndarray | float, shape: tuple[int, ...]):
    """Laplace(0, scale) draws as scale S E: E a standard exponential (double precision,
    numpy's ziggurat), S a random sign, one random bit flipping E's sign bit. The same
    distribution as numpy's `laplace` (|X| is exponential, its sign independent and fair),
    about 2x faster than it."""
    noise = rng.standard_exponential(shape)
    signs = np.unpackbits(np.frombuffer(rng.bytes(-(-noise.size // 8)), np.uint8))
    sign_bits = signs[: noise.size].astype(np.uint64) << np.uint64(63)
    noise.reshape(-1).view(np.uint64)[:] ^= sign_bits
    noise *= scale
    return noise


def build_mechanism(name: str, settings: Mapping[str, Any]) -> InputMechanism:
    """The mechanism registered as `name`, its fields read from `settings` (a config dict).

    >>> build_mechanism("dppix", {"cell_size": 4, "snapping": False}).label
    'dppix-cell4'
    """
    if name not in MECHANISMS:
        raise ConfigError(f"unknown mechanism {name!r}; choose one of: {', '.join(MECHANISMS)}")
    cls = MECHANISMS[name]
    return cls(**{field.name: settings[field.name] for field in dataclasses.fields(cls)})


def released_split(
    images: np.ndarray,
    mechanism: InputMechanism,
    *,
    noise_scale: float,
    seed: int,
    dataset: str,
    split: str,
) -> tuple[np.ndarray, str]:
    """The release of one split, drawn once and saved under the cache; (images, sha256).

    Its identity is everything that makes it this release: the clean images themselves
    (so their size, number and membership), the dataset, split, mechanism with all its
    settings, noise scale and the run's seed (a repeat). The noise is secret
    (`dpmed.privacy.secret`): seeded by the noise key and this identity, or by
    operating-system entropy, so two releases never share draws. A cached release is
    reused only for exactly the same identity and noise source.
    """
    identity = {
        "draw": "input release",
        "dataset": dataset,
        "split": split,
        "images": images,
        "mechanism": repr(mechanism),
        "noise_scale": noise_scale,
        "seed": seed,
    }
    tag = secret.cache_tag(identity)
    name = f"{dataset}-{split}-{mechanism.label}-scale{noise_scale:.4g}-{tag}.npy"
    path = cache_dir() / "releases" / name
    if not path.exists():
        noisy = mechanism.release(images, noise_scale, secret.numpy_generator(identity))
        atomic_write(path, lambda handle: np.save(handle, noisy))
    return np.load(path, mmap_mode="r"), file_sha256(path)  # mapped: read as needed


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
