"""Shared fixtures: the real data under ../shared/data, a private cache, fake data folders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _real_data_root() -> Path | None:
    for candidate in (os.environ.get("DPMED_DATA"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "pneumoniamnist.npz").exists():
            return Path(candidate).resolve()
    return None


REAL_DATA = _real_data_root()
needs_real_data = pytest.mark.skipif(
    REAL_DATA is None, reason="real data not found: set DPMED_DATA or place ../shared/data"
)


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch) -> Path:
    """Every test session decodes and releases into its own cache, never the user's."""
    cache = tmp_path_factory.getbasetemp() / "dpmed-cache"
    monkeypatch.setenv("DPMED_CACHE", str(cache))
    monkeypatch.setenv("DPMED_QUIET", "1")
    monkeypatch.delenv("DPMED_DATA", raising=False)
    monkeypatch.delenv("DPMED_NOISE_KEY_FILE", raising=False)
    return cache


@pytest.fixture
def noise_key(tmp_path, monkeypatch) -> Path:
    """A secret noise key for this test: the privacy noise becomes reproducible."""
    key = tmp_path / "noise.key"
    key.write_bytes(bytes(range(32)))
    monkeypatch.setenv("DPMED_NOISE_KEY_FILE", str(key))
    return key


@pytest.fixture
def real_data() -> Path:
    if REAL_DATA is None:
        pytest.skip("real data not found: set DPMED_DATA or place ../shared/data")
    return REAL_DATA


def make_kermany(root: Path, per_class: int = 6, size: int = 40) -> Path:
    """A tiny folder in the Kermany layout with grey JPEGs; 2 images per patient."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for label, name in enumerate(("NORMAL", "PNEUMONIA")):
            folder = root / "chest_xray" / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                stem = f"IM-{i // 2:04d}-{i % 2:04d}" if label == 0 else f"person{i // 2}_virus_{i}"
                pixels = rng.integers(0, 256, (size, size), dtype=np.uint8) // (2 - label)
                Image.fromarray(pixels).convert("RGB").save(folder / f"{stem}.jpeg")
    return root


@pytest.fixture
def kermany_root(tmp_path) -> Path:
    return make_kermany(tmp_path / "data")


@pytest.fixture
def tiny_sweep(tmp_path, real_data) -> Path:
    """A 4-run sweep file (b = 0, 2 x seeds 0, 1) over a slice of PneumoniaMNIST."""
    from tests.bench.helpers import write_sweep

    return write_sweep(tmp_path / "tiny.yaml", data_root=str(real_data))
