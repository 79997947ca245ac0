"""DP-SGD training throughput over non-private training of the same model and batch,
in the same process, for each model and each Opacus per-example-gradient mode.

    python benchmarks/dpsgd_speed.py [--out benchmarks/results/dpsgd_speed.json] [--models ...]

The goal the issue sets is DP-SGD at most 1.3x the non-private time per epoch.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

import numpy as np
import torch

from dpmed.config import GRAD_SAMPLE_MODES
from dpmed.models import build_model
from dpmed.privacy.dpsgd import DPSGD
from dpmed.progress import quiet
from dpmed.train.loop import TrainSettings, fit


def images_per_second(model_name: str, data: dict, batch: int, mode: str | None) -> float:
    """Training images/s of one epoch (best of two), non-private when `mode` is None.
    For scatternet, whose fixed features are computed once before the first epoch, this is
    the head's training rate: the one-off feature pass is the same with or without DP."""
    rates = []
    for _ in range(2):
        torch.manual_seed(0)
        model, _ = build_model(model_name, image_size=data["train"][0].shape[-1])
        n = len(data["train"][1])
        dp = mode and DPSGD(
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            sample_rate=batch / n,
            delta=1e-5,
            accountant_name="rdp",
            physical_batch_size=batch * 4,
            grad_sample_mode=mode,
        )
        settings = TrainSettings(epochs=1, batch_size=batch, lr=0.1, optimizer="sgd")
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        [record] = fit(model, data, settings, device=device, checkpoint=Path("/dev/null"), dp=dp)
        rates.append(record.train_images_per_second)
    return max(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dpsgd_speed.json"))
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--models", nargs="+", default=["small-cnn", "resnet18-gn", "scatternet"])
    args = parser.parse_args()
    quiet()
    rng = np.random.default_rng(0)
    train = (
        rng.random((args.images, args.size, args.size)).astype(np.float16),
        rng.integers(0, 2, args.images),
    )
    small = (train[0][:8], train[1][:8])
    data = {"train": train, "val": small, "test": small}
    results = {
        "machine": {
            "platform": platform.platform(),
            "threads": torch.get_num_threads(),
            "cuda": torch.cuda.is_available(),
        },
        "image_size": args.size,
        "batch_size": args.batch,
        "models": {},
    }
    for name in args.models:
        plain = images_per_second(name, data, args.batch, None)
        row = {"non_private_images_per_second": plain}
        for mode in GRAD_SAMPLE_MODES:
            rate = images_per_second(name, data, args.batch, mode)
            row[mode] = {"images_per_second": rate, "slowdown": plain / rate}
        row["fastest_mode"] = min(GRAD_SAMPLE_MODES, key=lambda m: row[m]["slowdown"])
        results["models"][name] = row
        print(name, json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
