"""One experiment, end to end: data -> technique -> model -> train -> guarantee -> run folder.

The run folder is built in a hidden staging folder beside `out` and renamed into place
only when everything is written, so a failed run leaves nothing half-written.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from dpmed import __version__
from dpmed.config import RunConfig
from dpmed.data import ImageDataset, load_dataset
from dpmed.errors import ConfigError
from dpmed.models import build_model
from dpmed.privacy.laplace import laplace_guarantee, released_split
from dpmed.report.plots import learning_curve
from dpmed.train.loop import EpochRecord, TrainSettings, best_epoch, fit
from dpmed.train.metrics import METRICS

SUMMARY = "summary.json"


@dataclass(frozen=True)
class RunResult:
    summary: dict[str, Any]
    epochs: list[EpochRecord]


def run_experiment(
    config: RunConfig,
    out: str | Path,
    *,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> RunResult:
    """Run `config`, write its run folder at `out`; the summary and the per-epoch records."""
    started = time.perf_counter()
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(
            f"run folder {out} already exists; choose another --out or pass --overwrite"
        )
    device = pick_device(config.device)
    image_size = config.resolved_image_size
    dataset = load_dataset(
        config.dataset,
        image_size=image_size,
        data_root=config.data_root,
        val_fraction=config.val_fraction,
        max_images=config.max_images,
        seed=config.seed,
    )
    torch.manual_seed(config.seed)
    model, model_init = build_model(config.model, weights=config.weights)
    log(
        f"{config.dataset} {image_size}px: "
        + ", ".join(f"{s} {len(d)}" for s, d in dataset.splits.items())
        + f" images; {model_init}"
    )
    inputs, privacy = apply_technique(dataset, config)
    log(f"privacy: {privacy['description']}")

    staging = out.parent / f".{out.name}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        records = fit(
            model,
            inputs,
            _settings(config),
            device=device,
            checkpoint=staging / "best.pt",
            on_epoch=on_epoch,
        )
        best = best_epoch(records)
        summary = {
            "dataset": config.dataset,
            "technique": config.technique,
            "model": config.model,
            "image_size": image_size,
            "seed": config.seed,
            "epochs": config.epochs,
            "best_epoch": best.epoch,
            **{split: best.metrics[split] for split in ("train", "val", "test")},
            "privacy": privacy,
            "timing": {
                "total_seconds": round(time.perf_counter() - started, 2),
                "train_images_per_second": round(
                    float(np.mean([r.train_images_per_second for r in records])), 1
                ),
            },
            "images": {split: len(data) for split, data in dataset.splits.items()},
            "model_init": model_init,
            "device": str(device),
            "dpmed_version": __version__,
        }
        _write_run(staging, config.replace(image_size=image_size), records, summary)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return RunResult(summary, records)


def apply_technique(
    dataset: ImageDataset, config: RunConfig
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, Any]]:
    """Per split the images the model sees (float in [0, 1] plus noise) and the guarantee."""
    b = config.noise_scale
    guarantees = laplace_guarantee(b, dataset.pixels_per_image)
    per_image = guarantees["image"]
    inputs, hashes = {}, {}
    for split, data in dataset.splits.items():
        if b > 0 and (split != "test" or config.perturb_test):
            images, hashes[split] = released_split(
                data.images, noise_scale=b, seed=config.seed, dataset=config.dataset, split=split
            )
            if config.clip_after_release:  # post-processing of the release: free
                images = images.clip(0, 1)
        else:
            images = (data.images * np.float32(1 / 255)).astype(np.float16)
        inputs[split] = (images, data.labels)
    privacy = {
        "mechanism": per_image.mechanism,
        "noise_scale": b,
        "unit": per_image.unit,
        "epsilon": per_image.epsilon,
        "delta": per_image.delta,
        "epsilon_per_pixel": guarantees["pixel"].epsilon,
        "epsilon_per_image": per_image.epsilon,
        "release_sha256": hashes,
        "perturbed_splits": sorted(hashes),
        "accounting": per_image.accounting,
        "assumptions": list(per_image.assumptions),
        "description": per_image.describe()
        + (f" (epsilon = {guarantees['pixel'].epsilon:g} per pixel)" if b > 0 else ""),
    }
    return inputs, privacy


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device 'cuda' was asked for but no CUDA GPU is visible; use --device cpu"
        )
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _settings(config: RunConfig) -> TrainSettings:
    return TrainSettings(
        epochs=config.epochs,
        batch_size=config.batch_size,
        lr=config.lr,
        optimizer=config.optimizer,
        weight_decay=config.weight_decay,
        augment=config.augment,
        balanced_loss=config.balanced_loss,
        seed=config.seed,
    )


def _write_run(folder: Path, config: RunConfig, records: list[EpochRecord], summary: dict) -> None:
    (folder / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    splits = list(records[0].metrics)
    with open(folder / "metrics.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["epoch", "seconds", "train_images_per_second"]
            + [f"{s}_{m}" for s in splits for m in METRICS]
        )
        for r in records:
            writer.writerow(
                [r.epoch, round(r.seconds, 3), round(r.train_images_per_second, 1)]
                + [r.metrics[s][m] for s in splits for m in METRICS]
            )
    (folder / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    title = f"{config.dataset}, {config.model}, b = {config.noise_scale:g}"
    learning_curve(records, summary["best_epoch"], folder / "learning_curve.png", title)
