"""Image datasets as uint8 arrays: loading, the disk cache, validation split, subsampling."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dpmed.data.root import cache_dir, resolve_data_root
from dpmed.data.splits import grouped_stratified_split, stratified_subsample

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


def load_dataset(
    name: str,
    *,
    image_size: int,
    data_root: str | None = None,
    val_fraction: float = 0.1,
    max_images: int | None = None,
    seed: int = 0,
) -> ImageDataset:
    """Load train/val/test; carve a patient-grouped validation split where there is none.

    `max_images` caps every split with a stratified, seeded subsample (quick runs, tests).
    """
    from dpmed.data.chest_xray import load_chest_xray
    from dpmed.data.pneumoniamnist import load_pneumoniamnist

    root = resolve_data_root(data_root)
    if name == "chest-xray":
        splits = load_chest_xray(root, image_size)
        keep, held = grouped_stratified_split(
            splits["train"].labels, splits["train"].patients, val_fraction, seed
        )
        splits = {
            "train": splits["train"].take(keep),
            "val": splits["train"].take(held),
            "test": splits["test"],
        }
    else:
        splits = load_pneumoniamnist(root, image_size)
    if max_images is not None:
        splits = {
            split: data.take(stratified_subsample(data.labels, max_images, seed))
            for split, data in splits.items()
        }
    return ImageDataset(
        name, {split: splits[split] for split in SPLITS}, patient_ids=name != "pneumoniamnist"
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
