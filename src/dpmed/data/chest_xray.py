"""Kermany et al. (2018) paediatric chest X-rays, NORMAL vs PNEUMONIA.

Kermany, Zhang, Goldbaum, "Labeled Optical Coherence Tomography (OCT) and Chest X-Ray
Images for Classification", Mendeley Data v2, doi:10.17632/rscbjbr9sj.2 (CC BY 4.0);
Cell 172(5):1122-1131. 5,856 images: train 1,341 normal + 3,875 pneumonia, test 234 + 390.

Layout under the data root: ``chest_xray/{train,test}/{NORMAL,PNEUMONIA}/*.jpeg``, any
image size. Images are read as grey-scale, resized to a square and decoded once into a
uint8 array cached on disk, keyed by the files (name, size, mtime) and the image size.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from dpmed.data.images import ImageSplit, cached_arrays
from dpmed.data.splits import patient_id
from dpmed.errors import DataError
from dpmed.progress import progress_bar

FOLDER = "chest_xray"
CLASSES = ("NORMAL", "PNEUMONIA")
SPLITS = ("train", "test")
_EXTENSIONS = {".jpeg", ".jpg", ".png"}
_CACHE_VERSION = 1


def load_chest_xray(root: Path, image_size: int) -> dict[str, ImageSplit]:
    """The official train and test splits at `image_size` x `image_size`, decoded once."""
    files = _scan(root)
    key = _cache_key(root / FOLDER, files, image_size)

    def decode() -> dict[str, np.ndarray]:
        arrays = {}
        for split in SPLITS:
            chosen = [(path, label) for path, label, s in files if s == split]
            arrays[f"{split}_images"] = _decode(root / FOLDER, chosen, image_size, split)
            arrays[f"{split}_labels"] = np.array([label for _, label in chosen], dtype=np.int64)
            arrays[f"{split}_patients"] = np.array([patient_id(Path(p).name) for p, _ in chosen])
        return arrays

    arrays = cached_arrays(f"chest-xray-{image_size}px-{key}", decode)
    return {
        split: ImageSplit(
            arrays[f"{split}_images"], arrays[f"{split}_labels"], arrays[f"{split}_patients"]
        )
        for split in SPLITS
    }


def _scan(root: Path) -> list[tuple[str, int, str]]:
    """(path relative to chest_xray/, label, split) for every image, sorted."""
    base = root / FOLDER
    expected = f"expected {base}/{{train,test}}/{{NORMAL,PNEUMONIA}}/*.jpeg"
    if not base.is_dir():
        raise DataError(f"no {FOLDER}/ folder under data root {root}; {expected}")
    files = []
    for split in SPLITS:
        for label, name in enumerate(CLASSES):
            folder = base / split / name
            if not folder.is_dir():
                raise DataError(f"missing folder {folder}; {expected}")
            found = sorted(p for p in folder.iterdir() if p.suffix.lower() in _EXTENSIONS)
            if not found:
                raise DataError(f"no images in {folder}; {expected}")
            files += [(str(p.relative_to(base)), label, split) for p in found]
    return files


def _cache_key(base: Path, files: list[tuple[str, int, str]], image_size: int) -> str:
    digest = hashlib.sha256(f"v{_CACHE_VERSION}:{image_size}".encode())
    for rel, _, _ in files:
        stat = (base / rel).stat()
        digest.update(f"{rel}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _decode(base: Path, files: list[tuple[str, int]], size: int, split: str) -> np.ndarray:
    images = np.empty((len(files), size, size), dtype=np.uint8)
    for i, (rel, _) in enumerate(progress_bar(files, f"decoding {split} X-rays to {size}px")):
        images[i] = read_grey(base / rel, size)
    return images


def read_grey(path: Path, size: int) -> np.ndarray:
    """One image as a size x size uint8 grey-scale array; a DataError names a bad file."""
    try:
        with Image.open(path) as image:
            image.draft("L", (size, size))  # JPEG: decode at a reduced scale when possible
            grey = image.convert("L").resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(grey, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(
            f"cannot read image {path}: {exc}; remove or replace the file and run again"
        ) from None
