"""Speed of dpmed's hot paths, each as a ratio against a baseline run in the same process.

- release: noisy pixels/s of `Laplace().release` (draw + add + cast to float16) against
  numpy's own Laplace sampler drawing the same number of values;
- training: images/s of `dpmed.train.fit` against a bare PyTorch loop (same model, data,
  batch size, optimizer) for each model.

    python benchmarks/throughput.py [--out benchmarks/results/throughput.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from timing import best_of

from dpmed.models import build_model
from dpmed.privacy import Laplace
from dpmed.progress import quiet
from dpmed.train.loop import PIXEL_MEAN, PIXEL_STD, TrainSettings, fit


def release_speed(n_images: int = 2000, size: int = 64) -> dict:
    images = np.random.default_rng(0).integers(0, 256, (n_images, size, size), dtype=np.uint8)
    pixels = images.size
    ours = best_of(3, lambda: Laplace().release(images, 1.0, np.random.default_rng(1)))
    numpy_only = best_of(3, lambda: np.random.default_rng(1).laplace(0.0, 1.0, images.shape))
    return {
        "pixels": pixels,
        "dpmed_noisy_pixels_per_second": pixels / ours,
        "numpy_laplace_values_per_second": pixels / numpy_only,
        "ratio_dpmed_over_numpy": numpy_only / ours,
    }


def training_speed(model_name: str, n_images: int = 512, size: int = 64, batch: int = 64) -> dict:
    rng = np.random.default_rng(0)
    images = rng.random((n_images, size, size)).astype(np.float16)
    labels = rng.integers(0, 2, n_images)
    small = (images[:batch], labels[:batch])
    data = {"train": (images, labels), "val": small, "test": small}
    settings = TrainSettings(epochs=1, batch_size=batch, lr=1e-3)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def dpmed_fit() -> float:
        torch.manual_seed(0)
        model, _ = build_model(model_name)
        record = fit(model, data, settings, device=device, checkpoint=Path("/dev/null"))[0]
        return record.train_images_per_second

    def bare_loop() -> float:
        torch.manual_seed(0)
        model, _ = build_model(model_name)
        model.to(device).train()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        x_all = torch.from_numpy(images).float().unsqueeze(1)
        y_all = torch.from_numpy(labels)
        start = time.perf_counter()
        for i in range(0, n_images, batch):
            x = ((x_all[i : i + batch] - PIXEL_MEAN) / PIXEL_STD).to(device)
            loss = F.cross_entropy(model(x), y_all[i : i + batch].to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return n_images / (time.perf_counter() - start)

    dpmed_fit(), bare_loop()  # warm up
    ours = max(dpmed_fit() for _ in range(2))
    bare = max(bare_loop() for _ in range(2))
    return {
        "image_size": size,
        "batch_size": batch,
        "dpmed_images_per_second": ours,
        "bare_pytorch_images_per_second": bare,
        "ratio_dpmed_over_bare": ours / bare,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/throughput.json"))
    args = parser.parse_args()
    quiet()
    results = {
        "machine": {
            "platform": platform.platform(),
            "cpu_threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
            "torch": torch.__version__,
        },
        "release": release_speed(),
        "training": {name: training_speed(name) for name in ("small-cnn", "resnet18")},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
