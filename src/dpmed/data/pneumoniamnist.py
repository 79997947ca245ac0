"""PneumoniaMNIST (MedMNIST v2): the Kermany chest X-rays centre-cropped to 1 x 28 x 28.

Yang et al., "MedMNIST v2 - A large-scale lightweight benchmark for 2D and 3D biomedical
image classification", Scientific Data 10, 41 (2023); CC BY 4.0. Official split:
train 4,708, val 524, test 624 images; label 0 = normal, 1 = pneumonia.

Read from ``<data root>/pneumoniamnist.npz``; when absent it is downloaded from the
official MedMNIST record and its official md5 checked.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from dpmed.data.images import Listing, atomic_write
from dpmed.errors import DataError
from dpmed.progress import make_progress

FILENAME = "pneumoniamnist.npz"
URL = "https://zenodo.org/records/10519652/files/pneumoniamnist.npz?download=1"
MD5 = "28209eda62fecd6e6a2d98b1501bb15f"
_SPLITS = {"train": "train", "val": "val", "test": "test"}


def list_pneumoniamnist(root: Path, image_size: int = 28) -> Listing:
    """The official splits, their images and labels checked; resized to `image_size` when
    it is not 28 and they are asked for."""
    path = root / FILENAME
    if not path.exists():
        download(URL, path, MD5)
    try:
        with np.load(path) as stored:
            missing = [
                f"{split}_{part}"
                for split in _SPLITS
                for part in ("images", "labels")
                if f"{split}_{part}" not in stored.files
            ]
            if missing:
                raise DataError(
                    f"{path} lacks the keys {', '.join(missing)}; expected the MedMNIST "
                    f"npz (train_images, train_labels, val_..., test_...): delete it to re-download"
                )
            arrays = {key: stored[key] for key in stored.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise DataError(
            f"cannot read {path} as an npz file ({exc}); delete it to re-download"
        ) from None
    images = {split: _images(arrays[f"{split}_images"], path, split) for split in _SPLITS}
    labels = {
        split: _labels(arrays[f"{split}_labels"], images[split], path, split) for split in _SPLITS
    }

    def decode() -> dict[str, np.ndarray]:
        return {
            split: x if x.shape[1] == image_size else np.stack([_resize(i, image_size) for i in x])
            for split, x in images.items()
        }

    # MedMNIST keeps no patient ids: every image counts as its own patient.
    patients = {
        split: np.array([f"{split}-{i}" for i in range(len(labels[split]))]) for split in _SPLITS
    }
    return Listing(labels, patients, decode)


def _images(images: np.ndarray, path: Path, split: str) -> np.ndarray:
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"{path}: {split}_images must be uint8 of shape (N, H, W), "
            f"got {images.dtype} {images.shape}"
        )
    return images


def _labels(labels: np.ndarray, images: np.ndarray, path: Path, split: str) -> np.ndarray:
    """One 0 (normal) or 1 (pneumonia) per image, shape (N,) or MedMNIST's (N, 1)."""
    key = f"{split}_labels"
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        one_hot = labels.ndim == 2 and labels.shape[1] == 2
        hint = "; one-hot labels? store the class index, labels.argmax(axis=1)" * one_hot
        raise DataError(f"{path}: {key} must have shape (N,) or (N, 1), got {labels.shape}{hint}")
    if len(labels) != len(images):
        raise DataError(
            f"{path}: {len(labels)} labels for {len(images)} images in {split}; "
            "give one label per image"
        )
    valid = np.isin(labels, (0, 1))
    if not valid.all():
        raise DataError(
            f"{path}: {key} must be 0 or 1 (normal, pneumonia), found "
            f"{labels[~valid][0].item()!r} at index {np.flatnonzero(~valid)[0]}"
        )
    return labels.astype(np.int64)


def _resize(image: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))


def download(url: str, path: Path, md5: str) -> None:
    """Fetch `url` to `path` with a progress bar; keep it only if its md5 is `md5`."""
    digest = hashlib.md5()

    def write(handle) -> None:
        with urllib.request.urlopen(url, timeout=60) as response, make_progress() as progress:
            total = int(response.headers.get("Content-Length") or 0) or None
            task = progress.add_task(f"downloading {path.name}", total=total, status="")
            while chunk := response.read(1 << 16):
                handle.write(chunk)
                digest.update(chunk)
                progress.advance(task, len(chunk))
        if digest.hexdigest() != md5:
            raise DataError(
                f"download of {url} has md5 {digest.hexdigest()}, expected {md5}; "
                f"nothing was saved: try again, or place {path.name} in {path.parent} by hand"
            )

    try:
        atomic_write(path, write)
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise DataError(
            f"{path.name} is not in {path.parent} and downloading it failed ({reason}); "
            f"place the file there or pass --data-root DIR"
        ) from None
