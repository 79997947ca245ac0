"""Image datasets as uint8 arrays: loading, the disk cache, validation split, subsampling."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dpmed.data.root import cache_dir, resolve_data_root
from dpmed.data.splits import grouped_stratified_split, stratified_subsample
from dpmed.errors import ConfigError

SPLITS = ("train", "val", "test")
CLASS_NAMES = ("normal", "pneumonia")


@dataclass(frozen=True)
class ImageSplit:
    """Grey-scale images (N, H, W) uint8, labels (N,) 0 = normal / 1 = pneumonia, patient ids."""

    images: np.ndarray
    labels: np.ndarray
    patients: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices: np.ndarray) -> ImageSplit:
        return ImageSplit(self.images[indices], self.labels[indices], self.patients[indices])


@dataclass(frozen=True)
class ImageDataset:
    name: str
    splits: dict[str, ImageSplit]
    patient_ids: bool = True  # False: every image stands for its own patient

    @property
    def pixels_per_image(self) -> int:
        _, height, width = self.splits["train"].images.shape
        return height * width


@dataclass(frozen=True)
class Listing:
    """A source's official splits before decoding: per split the labels and patient ids,
    and `decode()`, the images (N, size, size) uint8 of every split (cached where it can)."""

    labels: dict[str, np.ndarray]
    patients: dict[str, np.ndarray]
    decode: Callable[[], dict[str, np.ndarray]]

    def splits(self) -> dict[str, ImageSplit]:
        images = self.decode()
        return {s: ImageSplit(images[s], self.labels[s], self.patients[s]) for s in self.labels}


@dataclass(frozen=True)
class PlannedDataset:
    """A data set listed and split, nothing decoded yet: how many images each split will
    hold is known, so settings can be checked against it before any work is done."""

    name: str
    listing: Listing
    chosen: dict[str, tuple[str, np.ndarray]]  # split -> (official split, indices into it)

    @property
    def sizes(self) -> dict[str, int]:
        return {split: len(indices) for split, (_, indices) in self.chosen.items()}

    @property
    def patient_ids(self) -> bool:
        """Whether images carry real patient ids (PneumoniaMNIST's do not)."""
        return self.name != "pneumoniamnist"

    def patients(self, split: str) -> np.ndarray:
        """The patient id of each image of `split`, before anything is decoded."""
        of, indices = self.chosen[split]
        return self.listing.patients[of][indices]

    def load(self) -> ImageDataset:
        official = self.listing.splits()
        splits = {split: official[of].take(idx) for split, (of, idx) in self.chosen.items()}
        return ImageDataset(self.name, splits, patient_ids=self.patient_ids)


def plan_dataset(
    name: str,
    *,
    image_size: int,
    data_root: str | None = None,
    val_fraction: float = 0.1,
    max_images: int | None = None,
    seed: int = 0,
) -> PlannedDataset:
    """List train/val/test, carving a patient-grouped validation split where there is none,
    and check that their arrays fit in memory; nothing is decoded or written yet.

    `max_images` caps every split with a stratified, seeded subsample (quick runs, tests).
    """
    from dpmed.data.chest_xray import list_chest_xray
    from dpmed.data.pneumoniamnist import list_pneumoniamnist

    root = resolve_data_root(data_root)
    if name == "chest-xray":
        listing = list_chest_xray(root, image_size)
        keep, held = grouped_stratified_split(
            listing.labels["train"], listing.patients["train"], val_fraction, seed
        )
        chosen = {"train": ("train", keep), "val": ("train", held)}
        chosen["test"] = ("test", np.arange(len(listing.labels["test"])))
    else:
        listing = list_pneumoniamnist(root, image_size)
        chosen = {split: (split, np.arange(len(listing.labels[split]))) for split in SPLITS}
    if max_images is not None:
        chosen = {
            split: (of, idx[stratified_subsample(listing.labels[of][idx], max_images, seed)])
            for split, (of, idx) in chosen.items()
        }
    planned = PlannedDataset(name, listing, chosen)
    decoded = sum(len(labels) for labels in listing.labels.values())
    check_memory(decoded=decoded, trained=sum(planned.sizes.values()), image_size=image_size)
    return planned


def load_dataset(name: str, **settings: Any) -> ImageDataset:
    """`plan_dataset(name, **settings)`, decoded."""
    return plan_dataset(name, **settings).load()


# Bytes per pixel: every image is decoded to uint8 (1); each image trained on is then held
# as a float16 release or scaled copy (2) and as the float16 model input (2).
DECODED_BYTES, TRAINED_BYTES = 1, 4


def check_memory(*, decoded: int, trained: int, image_size: int) -> None:
    """Refuse, before any decoding, arrays that cannot fit in this machine's memory."""
    pixels = image_size * image_size
    need = pixels * (decoded * DECODED_BYTES + trained * TRAINED_BYTES)
    have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    if need > have:
        fewer = " or --max-images" if pixels * decoded * DECODED_BYTES < have else ""
        raise ConfigError(
            f"{decoded:,} images at {image_size}x{image_size} px need about "
            f"{need / 2**30:,.1f} GiB of memory, more than this machine's {have / 2**30:,.1f} "
            f"GiB; use a smaller --image-size{fewer}"
        )


def cached_arrays(name: str, build: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Arrays stored under the cache dir as `name`.npz, built once by `build()`."""
    path = cache_dir() / "decoded" / f"{name}.npz"
    if path.exists():
        with np.load(path) as stored:
            return {key: stored[key] for key in stored.files}
    arrays = build()
    atomic_write(path, lambda handle: np.savez(handle, **arrays))
    return arrays


def atomic_write(path: Path, write: Callable, mode: str = "wb") -> None:
    """Write through a temporary file in the same folder, then rename: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(mode, dir=path.parent, prefix=".tmp-", delete=False) as tmp:
        try:
            write(tmp)
        except BaseException:
            tmp.close()
            Path(tmp.name).unlink()
            raise
    os.replace(tmp.name, path)
