"""Release speed of every input mechanism, as ratios measured in the same process.

For each mechanism (Laplace, snapped Laplace, Gaussian, DP-Pix 4x4) at the noise scale
that gives epsilon = 1 per pixel (delta = 1e-5 for Gaussian):

- dpmed: noisy pixels/s of `mechanism.release` on uint8 images (draw + add + float16),
  on torch's number of threads and on one;
- numpy: values/s of numpy's own sampler (`Generator.laplace` / `.normal`) drawing one
  value per pixel, the floor any vectorised release pays;
- diffprivlib: noisy pixels/s of its matching mechanism (`Laplace`, `Snapping`,
  `GaussianAnalytic`; `Laplace` on the cell means for DP-Pix) called the way its API
  offers, `randomise(value)` once per value, on a smaller sample.

    python benchmarks/release_speed.py [--out benchmarks/results/release_speed.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import diffprivlib.mechanisms
import numpy as np
import torch
from timing import best_of

from dpmed.privacy import DPPix, Gaussian, Laplace
from dpmed.privacy.dppix import cell_means
from dpmed.privacy.mechanism import InputMechanism

DELTA = 1e-5


def diffprivlib_rate(mechanism: InputMechanism, scale: float, images: np.ndarray) -> float:
    """Noisy pixels/s of diffprivlib's matching mechanism, one randomise() per value."""
    dp = diffprivlib.mechanisms
    values = images.reshape(-1) / 255
    pixels_per_value = 1
    if isinstance(mechanism, Gaussian):
        reference = dp.GaussianAnalytic(epsilon=1.0, delta=DELTA, sensitivity=1.0)
    elif isinstance(mechanism, DPPix):
        cell = mechanism.cell_size
        values = cell_means(images / 255, cell).reshape(-1)
        pixels_per_value = cell * cell
        reference = dp.Laplace(epsilon=1 / (cell * cell * scale), sensitivity=1 / cell**2)
    elif mechanism.snapping:
        reference = dp.Snapping(epsilon=1.0, sensitivity=1.0, lower=0.0, upper=1.0)
    else:
        reference = dp.Laplace(epsilon=1.0, sensitivity=1.0)
    seconds = best_of(2, lambda: [reference.randomise(float(v)) for v in values])
    return len(values) * pixels_per_value / seconds


def release_speed(mechanism: InputMechanism, images: np.ndarray, sample: np.ndarray) -> dict:
    scale = mechanism.noise_scale(1.0, changed_pixels=1, delta=DELTA)
    pixels = images.size
    ours = best_of(5, lambda: mechanism.release(images, scale, np.random.default_rng(1)))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    one_thread = best_of(5, lambda: mechanism.release(images, scale, np.random.default_rng(1)))
    torch.set_num_threads(threads)
    draw = (
        np.random.Generator.normal
        if isinstance(mechanism, Gaussian)
        else (np.random.Generator.laplace)
    )
    numpy_only = best_of(5, lambda: draw(np.random.default_rng(1), 0.0, scale, images.shape))
    dpl = diffprivlib_rate(mechanism, scale, sample)
    return {
        "noise_scale": scale,
        "dpmed_noisy_pixels_per_second": pixels / ours,
        "dpmed_one_thread_noisy_pixels_per_second": pixels / one_thread,
        "numpy_sampler_values_per_second": pixels / numpy_only,
        "diffprivlib_noisy_pixels_per_second": dpl,
        "ratio_dpmed_over_numpy": numpy_only / ours,
        "ratio_dpmed_over_diffprivlib": pixels / ours / dpl,
        "ratio_dpmed_one_thread_over_diffprivlib": pixels / one_thread / dpl,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/release_speed.json"))
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2000, 64, 64), dtype=np.uint8)  # 8.2 M pixels
    sample = images[:8]  # 32,768 pixels for diffprivlib's per-value calls
    mechanisms = (Laplace(), Laplace(snapping=True), Gaussian(), DPPix(cell_size=4))
    results = {
        "machine": {"platform": platform.platform(), "numpy": np.__version__},
        "threads": torch.get_num_threads(),
        "pixels": images.size,
        "diffprivlib_pixels": sample.size,
        "epsilon_per_pixel": 1.0,
        "load_average_before": round(os.getloadavg()[0], 2),
        "mechanisms": {m.label: release_speed(m, images, sample) for m in mechanisms},
        "load_average_after": round(os.getloadavg()[0], 2),
    }
    plain = results["mechanisms"]["laplace"]["dpmed_noisy_pixels_per_second"]
    snapped = results["mechanisms"]["laplace-snapped"]["dpmed_noisy_pixels_per_second"]
    results["snapping_cost_x_slower_than_laplace"] = plain / snapped
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
