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

from dpmed.data.images import Listing, cached_arrays
from dpmed.data.splits import patient_id
from dpmed.errors import DataError
from dpmed.progress import progress_bar

FOLDER = "chest_xray"
CLASSES = ("NORMAL", "PNEUMONIA")
SPLITS = ("train", "test")
_EXTENSIONS = {".jpeg", ".jpg", ".png"}
_CACHE_VERSION = 2  # 2: 16-bit PNGs scaled by their bit depth; images only


def list_chest_xray(root: Path, image_size: int) -> Listing:
    """The official train and test splits at `image_size` x `image_size`: labels and
    patient ids from the file names now, the images decoded once when asked for."""
    files = _scan(root)
    key = _cache_key(root / FOLDER, files, image_size)
    chosen = {split: [(path, label) for path, label, s in files if s == split] for split in SPLITS}

    def decode() -> dict[str, np.ndarray]:
        return cached_arrays(
            f"chest-xray-{image_size}px-{key}",
            lambda: {s: _decode(root / FOLDER, chosen[s], image_size, s) for s in SPLITS},
        )

    return Listing(
        labels={s: np.array([label for _, label in chosen[s]], dtype=np.int64) for s in SPLITS},
        patients={s: np.array([patient_id(Path(p).name) for p, _ in chosen[s]]) for s in SPLITS},
        decode=decode,
    )


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
    """One image as a size x size uint8 grey-scale array; a DataError names a bad file.
    16-bit grey PNGs (common for X-rays) are scaled by their bit depth, v * 255 / 65535."""
    try:
        with Image.open(path) as image:
            image.draft("L", (size, size))  # JPEG: decode at a reduced scale when possible
            grey = _eight_bit_grey(image).resize((size, size), Image.Resampling.BILINEAR)
            return np.asarray(grey, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(
            f"cannot read image {path}: {exc}; remove or replace the file and run again"
        ) from None


def _eight_bit_grey(image: Image.Image) -> Image.Image:
    """Pillow's "L" conversion clips 16-bit grey levels above 255 (an X-ray turns white)."""
    if image.mode.startswith("I;16"):
        levels = np.asarray(image).astype(np.float32) * np.float32(255 / 65535)
        return Image.fromarray(np.round(levels).astype(np.uint8))
    return image.convert("L")
