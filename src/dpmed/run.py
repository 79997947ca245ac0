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
from dpmed.privacy import Unit, released_split
from dpmed.privacy.accounting import account
from dpmed.privacy.postprocess import parse_postprocess, postprocess
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
    dp = None
    if config.technique == "dp-sgd":
        from dpmed.privacy.dpsgd import check_trainable, plan_dpsgd  # loads Opacus (seconds)

        check_trainable(model)
        dp = plan_dpsgd(
            n_train=len(dataset.splits["train"]),
            batch_size=config.batch_size,
            epochs=config.epochs,
            target_epsilon=config.target_epsilon,
            noise_multiplier=config.noise_multiplier,
            delta=config.delta,
            max_grad_norm=config.max_grad_norm,
            accountant=config.accountant,
            physical_batch_size=config.physical_batch_size,
            grad_sample_mode=config.grad_sample_mode,
            clipping=config.clipping,
            target_unclipped_quantile=config.target_unclipped_quantile,
            noise_allocation=config.noise_allocation,
        )
        log(
            f"privacy: DP-SGD with noise multiplier {dp.noise_multiplier:.4g}, clipping "
            f"{dp.max_grad_norm:g}, sample rate {dp.sample_rate:.4g}, delta {dp.delta:.3g}"
        )
    else:
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
            dp=dp,
        )
        if dp:
            from dpmed.privacy.dpsgd import dpsgd_privacy

            privacy |= dpsgd_privacy(
                dp,
                target_epsilon=config.target_epsilon,
                images_per_patient=privacy["images_per_patient"],
                assumptions=privacy["assumptions"],
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
    """Per split the images the model sees (float in [0, 1] plus noise, then the free
    post-processing) and the `privacy` entry of the summary."""
    mechanism = config.input_mechanism()  # None for none and dp-sgd: no input noise
    noisy = mechanism is not None and (config.noise_scale > 0 or config.target_epsilon is not None)
    released = [s for s in dataset.splits if noisy and (s != "test" or config.perturb_test)]
    protected = ["train"] if config.technique == "dp-sgd" else released
    images_per_patient, patient_note = _images_per_patient(dataset, protected)
    accounting = account(
        mechanism,
        pixels_per_image=dataset.pixels_per_image,
        noise_scale=config.noise_scale,
        target_epsilon=config.target_epsilon if mechanism else None,
        unit=Unit.parse(config.unit),
        delta=config.delta,
        images_per_patient=images_per_patient,
        assumptions=(patient_note,),
    )
    steps = parse_postprocess(config.postprocess)
    inputs, hashes = {}, {}
    for split, data in dataset.splits.items():
        if split in released:
            images, hashes[split] = released_split(
                data.images,
                mechanism,
                noise_scale=accounting.noise_scale,
                seed=config.seed,
                dataset=config.dataset,
                split=split,
            )
            if config.clip_after_release:  # post-processing of the release: free
                images = images.clip(0, 1)
        else:
            images = (data.images * np.float32(1 / 255)).astype(np.float16)
        inputs[split] = (postprocess(images, steps, noise_std=accounting.noise_std), data.labels)
    privacy = accounting.to_dict() | {
        "postprocess": [str(step) for step in steps],
        "release_sha256": hashes,
        "perturbed_splits": sorted(hashes),
    }
    return inputs, privacy


def _images_per_patient(dataset: ImageDataset, splits: list[str]) -> tuple[int, str]:
    """k, the largest number of images of one patient in the released splits, and a note."""
    if not dataset.patient_ids:
        return 1, "the dataset has no patient ids: every image counts as its own patient (k = 1)"
    patients = np.concatenate([dataset.splits[s].patients for s in splits or dataset.splits])
    k = int(np.unique(patients, return_counts=True)[1].max())
    return k, f"k = {k}: the most images of one patient in the released splits (patient ids)"


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
        ema_decay=config.ema_decay,
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
    privacy = summary["privacy"]
    epsilon = privacy["epsilon_per_image"]
    title = f"{config.dataset}, {config.model}, {config.technique}" + (
        f", epsilon {epsilon:,.3g} per image" if epsilon is not None else ""
    )
    learning_curve(records, summary["best_epoch"], folder / "learning_curve.png", title)
