"""DP-SGD training throughput over non-private training of the same model and batch,
in the same process, for each model and each Opacus per-image-gradient mode.

    python benchmarks/dpsgd_speed.py [--out benchmarks/results/dpsgd_speed.json] [--models ...]

Each model's row is merged into `--out` (rows of other models are kept), with the settings
it ran with and the load average around it: on a shared machine the rates vary between
runs, a ratio measured in one process less so. Each mode's memory is the peak resident
set size one epoch adds over the process's size before it, measured in a fresh process
per mode (Linux: /proc/self/status VmHWM; freed memory a long-lived process keeps would
hide a later mode's peak), and per image of the batch. The goal the issue sets is DP-SGD at most
1.3x the non-private time per epoch. The fastest mode per model feeds `auto`
(dpmed.config.FASTEST_MODES_MEASURED_BY_DPSGD_SPEED).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
from pathlib import Path

import numpy as np
import torch

from dpmed.config import FASTEST_MODES_MEASURED_BY_DPSGD_SPEED, GRAD_SAMPLE_MODES
from dpmed.models import build_model
from dpmed.privacy.dpsgd import DPSGD
from dpmed.progress import quiet
from dpmed.train.loop import TrainSettings, fit

MODES = [mode for mode in GRAD_SAMPLE_MODES if mode != "auto"]
PER_IMAGE_MODES = [mode for mode in MODES if mode not in ("ghost", "bk")]  # adaptive needs them


def images_per_second(model_name: str, data: dict, batch: int, mode: str | None) -> float:
    """Training images/s of one epoch, non-private when `mode` is None. For scatternet,
    whose fixed features are computed once before the first epoch, this is the head's
    training rate: the one-off feature pass is the same with or without DP."""
    torch.manual_seed(0)
    model, _ = build_model(model_name, image_size=data["train"][0].shape[-1])
    n = len(data["train"][1])
    dp = mode and DPSGD(
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        sample_rate=batch / n,
        delta=1e-5,
        accountant_name="pld",
        physical_batch_size=batch * 4,
        grad_sample_mode=mode,
    )
    settings = TrainSettings(epochs=1, batch_size=batch, lr=0.1, optimizer="sgd")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    [record] = fit(model, data, settings, device=device, checkpoint=Path("/dev/null"), dp=dp)
    return record.train_images_per_second


def _status_mib(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM), in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def _epoch_peak_mib(model_name: str, data: dict, batch: int, mode: str | None) -> float:
    """In a fresh process: the peak RSS one training epoch adds, in MiB."""
    quiet()
    images_per_second(model_name, {**data, "train": data["val"]}, 8, mode)  # warm-up
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)
    before = _status_mib("VmRSS")
    images_per_second(model_name, data, batch, mode)
    return _status_mib("VmHWM") - before


def peak_memory(model_name: str, data: dict, batch: int, mode: str | None) -> float:
    context = multiprocessing.get_context("spawn")
    with context.Pool(1) as pool:
        return pool.apply(_epoch_peak_mib, (model_name, data, batch, mode))


def measure(name: str, data: dict, batch: int, rounds: int) -> dict:
    """One model's row: the non-private rate, each mode's rate and slowdown, the fastest.
    Each round times every mode once, so that every mode's best is taken over the same
    stretch of time: the load of a shared machine changes over minutes."""
    row = {
        "images": len(data["train"][1]),
        "image_size": data["train"][0].shape[-1],
        "batch_size": batch,
        "rounds": rounds,
        "load_average_before": round(os.getloadavg()[0], 2),
    }
    rates = {mode: 0.0 for mode in (None, *MODES)}
    for _ in range(rounds):
        for mode in rates:
            rates[mode] = max(rates[mode], images_per_second(name, data, batch, mode))
    plain = row["non_private_images_per_second"] = rates[None]
    memory = {mode: peak_memory(name, data, batch, mode) for mode in rates}
    row["non_private_peak_rss_mib"] = memory[None]
    for mode in MODES:
        row[mode] = {
            "images_per_second": rates[mode],
            "slowdown": plain / rates[mode],
            "peak_rss_mib": memory[mode],
            "peak_rss_kib_per_image": memory[mode] * 1024 / batch,
        }
    for key, modes in (("fastest", MODES), ("fastest_per_image", PER_IMAGE_MODES)):
        best = min(modes, key=lambda m: row[m]["slowdown"])
        row[f"{key}_mode"], row[f"{key}_slowdown"] = best, row[best]["slowdown"]
    row["load_average_after"] = round(os.getloadavg()[0], 2)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dpsgd_speed.json"))
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="timings per mode (best kept)")
    parser.add_argument("--models", nargs="+", default=list(FASTEST_MODES_MEASURED_BY_DPSGD_SPEED))
    args = parser.parse_args()
    quiet()
    rng = np.random.default_rng(0)
    train = (
        rng.random((args.images, args.size, args.size)).astype(np.float16),
        rng.integers(0, 2, args.images),
    )
    small = (train[0][:8], train[1][:8])
    data = {"train": train, "val": small, "test": small}
    results = json.loads(args.out.read_text()) if args.out.exists() else {"models": {}}
    results["machine"] = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
    }
    for name in args.models:
        results["models"][name] = measure(name, data, args.batch, args.rounds)
        print(name, json.dumps(results["models"][name]), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
