"""One experiment, end to end: data -> technique -> model -> train -> guarantee -> run folder.

The run folder is built in a hidden staging folder beside `out` and renamed into place
only when everything is written, so a failed run leaves nothing half-written.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import yaml

from dpmed import __version__, provenance
from dpmed.audit.game import audit_draw, play
from dpmed.audit.membership import confidence_of_true_label
from dpmed.config import RunConfig
from dpmed.data import ImageDataset
from dpmed.data.images import ImageSplit, PlannedDataset, plan_dataset
from dpmed.data.tabular import TableDataset, load_table
from dpmed.errors import ConfigError
from dpmed.files import check_output_folder
from dpmed.models import build_model
from dpmed.models.tabular import MLP, build_classifier
from dpmed.privacy import Unit, released_split, secret
from dpmed.privacy.accounting import NO_PATIENTS, account
from dpmed.privacy.postprocess import parse_postprocess, postprocess
from dpmed.privacy.tables import diffprivlib_guarantee, perturb_table, record_privacy
from dpmed.report.plots import learning_curve
from dpmed.train.classifier import fit_classifier
from dpmed.train.loop import EpochRecord, TrainSettings, best_epoch, fit, predict
from dpmed.train.metrics import METRICS

if TYPE_CHECKING:
    from dpmed.privacy.dpsgd import DPSGD

SUMMARY = "summary.json"
# an audit run's pool scores, its public membership draw and the pool's patients (0, 1, ...)
AUDIT_SCORES = "audit.npz"


@dataclass(frozen=True)
class RunResult:
    summary: dict[str, Any]
    epochs: list[EpochRecord]


@dataclass(frozen=True)
class Prepared:
    """What a run trains on: the data set, per split the model's inputs and labels, the
    privacy entry so far, and a fresh model with a line saying how it was initialised."""

    data: ImageDataset | TableDataset
    inputs: dict[str, tuple[np.ndarray, np.ndarray]]
    privacy: dict[str, Any]
    model: Any
    model_init: str


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
    check_output_folder(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(
            f"run folder {out} already exists; choose another --out or pass --overwrite"
        )
    device = pick_device(config.device)
    torch.manual_seed(config.seed)
    draw = None  # an audit run's membership draw (images only)
    if config.is_table:
        prepared = _prepare_table(config, log)
        dp = _plan_dpsgd(config, prepared.model, len(prepared.inputs["train"][1]))
    else:
        planned = plan_images(config)
        model, model_init = build_model(
            config.model, weights=config.weights, image_size=config.input_size
        )
        n_train = planned.sizes["train"]
        if config.audit_seed is not None:
            draw = audit_draw(planned, audit_seed=config.audit_seed, canaries=config.canaries)
            n_train = int(draw.members.sum())
        # planned before the images are decoded: settings it refuses leave no cache entry
        dp = _plan_dpsgd(config, model, n_train)
        dataset = planned.load()
        if draw:
            dataset, pool = play(dataset, draw)
        prepared = _prepare_images(config, dataset, model, model_init, log)
    inputs, privacy, model = prepared.inputs, prepared.privacy, prepared.model
    if dp:
        dp = dataclasses.replace(dp, identity=noise_identity(config, inputs["train"]))
        log(
            f"privacy: DP-SGD with noise multiplier {dp.noise_multiplier:.4g}, clipping "
            f"{dp.max_grad_norm:g}, sample rate {dp.sample_rate:.4g}, delta {dp.delta:.3g}"
        )
    elif config.technique != "diffprivlib":
        log(f"privacy: {privacy['description']}")

    staging = staging_folder(out)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        if isinstance(model, torch.nn.Module):
            records = fit(
                model,
                inputs,
                _settings(config),
                device=device,
                checkpoint=staging / "best.pt",
                on_epoch=on_epoch,
                dp=dp,
            )
        else:
            records = [
                fit_classifier(
                    model,
                    inputs,
                    checkpoint=staging / "model.pkl",
                    score_train=config.technique != "diffprivlib",
                    threshold=config.threshold,
                )
            ]
            if on_epoch:
                on_epoch(records[0])
        if dp and config.is_table:
            from dpmed.privacy.dpsgd import dpsgd_guarantee, dpsgd_settings

            privacy = record_privacy(
                dpsgd_guarantee(dp, unit="record", balanced_loss=config.balanced_loss),
                prepared.data,
                **dpsgd_settings(dp, target_epsilon=config.target_epsilon),
            )
        elif dp:
            from dpmed.privacy.dpsgd import dpsgd_privacy

            privacy = dpsgd_privacy(
                dp,
                target_epsilon=config.target_epsilon,
                images_per_patient=privacy["images_per_patient"],
                assumptions=privacy["assumptions"],
                balanced_loss=config.balanced_loss,
            ) | {"postprocess": privacy["postprocess"]}
        if config.technique == "diffprivlib":
            privacy = record_privacy(diffprivlib_guarantee(model), prepared.data)
            log(f"privacy: {privacy['description']}")
        if privacy["epsilon"] is not None:
            privacy |= secret.noise_source()
        best = best_epoch(records)
        sizes = {split: len(labels) for split, (_, labels) in inputs.items()}
        # under DP training the training labels are protected: their count is not published
        dp_trained = config.technique in ("dp-sgd", "diffprivlib")
        positives = {
            split: int(np.sum(labels))
            for split, (_, labels) in inputs.items()
            if not (dp_trained and split == "train")
        }
        summary = {
            "dataset": config.dataset,
            "technique": config.technique,
            "model": config.model,
            **(
                {"features": prepared.data.feature_names}
                if config.is_table
                else {"image_size": config.resolved_image_size, "input_size": config.input_size}
            ),
            "seed": config.seed,
            "epochs": len(records),
            "best_epoch": best.epoch,
            "threshold": best.threshold,  # the decision threshold of the metrics below
            # None under DP training: the clean training images are not scored
            **{split: best.metrics.get(split) for split in ("train", "val", "test")},
            "privacy": privacy,
            "timing": {
                "total_seconds": round(time.perf_counter() - started, 2),
                "train_images_per_second": round(
                    float(np.mean([r.train_images_per_second for r in records])), 1
                ),
                "cpu_cores": os.cpu_count(),
                "load_average": round(os.getloadavg()[0], 2),  # 1 minute, at the end
            },
            ("records" if config.is_table else "images"): sizes,
            "positives": positives,  # per split: the majority-class rate is chance
            "model_init": prepared.model_init,
            "device": str(device),
            "machine": provenance.machine(),
            "finished_at": provenance.now(),
            "dpmed_version": __version__,
            "git_commit": provenance.git_commit(),
        }
        _write_run(staging, *_resolved(config, privacy), records, summary)
        if draw:
            scores = _score_pool(config, model, pool, privacy, staging / "best.pt", device)
            patients = {} if draw.patients is None else {"patients": draw.patients}
            np.savez(
                staging / AUDIT_SCORES,
                confidence=scores,
                members=draw.members,
                canaries=draw.canaries,
                **patients,
            )
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return RunResult(summary, records)


def _score_pool(
    config: RunConfig,
    model: torch.nn.Module,
    pool: ImageSplit,
    privacy: dict[str, Any],
    checkpoint: Path,
    device: torch.device,
) -> np.ndarray:
    """The best model's confidence in each pool image's own label (a canary's flipped
    one), on the clean image post-processed as the release was: what an attacker who holds
    the candidate images and the model computes."""
    trained = model.head if hasattr(model, "frozen") else model
    trained.load_state_dict(torch.load(checkpoint, map_location=device, weights_only=True))
    images = postprocess(
        pool.images,
        parse_postprocess(config.postprocess),
        noise_std=privacy.get("noise_std") or 0.0,
    )
    labels, probs, _ = predict(model.to(device), images, pool.labels, device=device)
    return confidence_of_true_label(probs, labels)


def plan_images(config: RunConfig) -> PlannedDataset:
    """The image data set `config` trains on, listed and split, nothing decoded."""
    return plan_dataset(
        config.dataset,
        image_size=config.resolved_image_size,
        data_root=config.data_root,
        val_fraction=config.val_fraction,
        max_images=config.max_images,
        seed=config.seed,
    )


def staging_folder(out: Path) -> Path:
    """The hidden folder beside `out` where a run is built before it is renamed to `out`.
    Any exception (Ctrl-C, and SIGTERM in the CLI) removes it; after a SIGKILL it stays
    until the next run into the same `out` (a sweep's resume, say) replaces it, and may be
    deleted by hand when no dpmed run is writing `out`."""
    return out.parent / f".{out.name}.partial"


def _plan_dpsgd(config: RunConfig, model: Any, n_train: int) -> DPSGD | None:
    """DP-SGD's plan for `n_train` training images (noise calibrated to the target
    epsilon), before any data is decoded or trained on; None for other techniques."""
    if config.technique != "dp-sgd":
        return None
    from dpmed.privacy.dpsgd import check_trainable, plan_dpsgd  # loads Opacus (seconds)

    check_trainable(model)
    return plan_dpsgd(
        n_train=n_train,
        batch_size=config.batch_size,
        epochs=config.epochs,
        target_epsilon=config.target_epsilon,
        noise_multiplier=config.noise_multiplier,
        delta=config.delta,
        max_grad_norm=config.max_grad_norm,
        accountant=config.accountant,
        physical_batch_size=config.physical_batch_size,
        grad_sample_mode=config.resolved_grad_sample_mode,
        clipping=config.clipping,
        target_unclipped_quantile=config.target_unclipped_quantile,
        noise_allocation=config.noise_allocation,
    )


def _prepare_images(
    config: RunConfig,
    dataset: ImageDataset,
    model: torch.nn.Module,
    model_init: str,
    log: Callable[[str], None],
) -> Prepared:
    image_size = config.resolved_image_size
    trained_at = f", trained at {config.input_size}px" if config.input_size != image_size else ""
    log(
        f"{config.dataset} {image_size}px{trained_at}: "
        + ", ".join(f"{s} {len(d)}" for s, d in dataset.splits.items())
        + f" images; {model_init}"
    )
    return Prepared(dataset, *apply_technique(dataset, config), model, model_init)


def _prepare_table(config: RunConfig, log: Callable[[str], None]) -> Prepared:
    """A table's model is a torch MLP or a scikit-learn classifier (diffprivlib's twin for
    technique diffprivlib, which spends its epsilon while fitting)."""
    table = load_table(
        config.dataset,
        table=config.table,
        schema=config.schema,
        val_fraction=config.val_fraction,
        seed=config.seed,
        strict=config.strict,
    )
    n_features = len(table.features)
    private = config.technique == "diffprivlib"
    if config.model == "mlp":
        model, model_init = MLP(n_features), "mlp from random init"
    else:
        model = build_classifier(
            config.model,
            n_features=n_features,
            seed=config.seed,
            epsilon=config.target_epsilon if private else None,
            identity={
                "dataset": config.dataset,
                "seed": config.seed,
                "train_features": table.splits["train"].features,
            },
        )
        model_init = f"{config.model} ({'diffprivlib' if private else 'scikit-learn'})"
    log(
        f"{config.dataset}: {n_features} features, "
        + ", ".join(f"{s} {len(d)}" for s, d in table.splits.items())
        + f" records; {model_init}"
    )
    inputs, privacy = perturb_table(
        table,
        config.technique,
        epsilon=config.target_epsilon,
        importance_share=config.importance_share,
        perturb_test=config.perturb_test,
        clip_after_release=config.clip_after_release,
        seed=config.seed,
    )
    return Prepared(table, inputs, privacy, model, model_init)


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
        unit=Unit.parse(config.resolved_unit),
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
        else:
            images = data.images  # clean uint8, scaled to [0, 1] below
        images = postprocess(  # post-processing of the release: free
            images,
            steps,
            noise_std=accounting.noise_std,
            clip=config.clip_after_release and split in released,
        )
        inputs[split] = (images, data.labels)
    privacy = accounting.to_dict() | {
        "postprocess": [str(step) for step in steps],
        "release_sha256": hashes,
        "perturbed_splits": sorted(hashes),
    }
    return inputs, privacy


def _images_per_patient(dataset: ImageDataset, splits: list[str]) -> tuple[int | None, str]:
    """k, the largest number of images of one patient in the released splits (None where
    the data has no patient ids: the patient guarantee is then unknown), and a note."""
    if not dataset.patient_ids:
        return None, f"per patient: {NO_PATIENTS}"
    patients = np.concatenate([dataset.splits[s].patients for s in splits or dataset.splits])
    k = int(np.unique(patients, return_counts=True)[1].max())
    return k, (
        f"k = {k}: the most images of one patient in the released splits, read from the "
        "patient ids, which are released without noise"
    )


def noise_identity(config: RunConfig, train: tuple[np.ndarray, np.ndarray]) -> dict[str, Any]:
    """What names a training's secret draws: every setting that shapes it and the training
    data itself (with a noise key, another setting or another data set gets other noise)."""
    settings = {k: v for k, v in config.to_dict().items() if k not in ("data_root", "device")}
    return {"settings": settings, "train_inputs": train[0], "train_labels": train[1]}


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
        augment_multiplicity=config.augment_multiplicity,
        balanced_loss=config.balanced_loss,
        seed=config.seed,
        ema_decay=config.ema_decay,
        threshold=config.threshold,
    )


def _resolved(config: RunConfig, privacy: dict[str, Any]) -> tuple[RunConfig, str]:
    """The settings the run actually used (rerunning them repeats it), and a line saying
    what was resolved: image size, unit, and DP-SGD's delta, mode and noise multiplier, or
    an image release's noise scale, in place of the target epsilon they were calibrated to."""
    changes: dict[str, Any] = {
        "image_size": config.resolved_image_size,
        "unit": config.resolved_unit,
    }
    dp_sgd = config.technique == "dp-sgd"
    calibrated = config.target_epsilon is not None and (dp_sgd or not config.is_table)
    if dp_sgd:
        changes |= {
            "delta": privacy["delta"],
            "grad_sample_mode": privacy["grad_sample_mode"],
            "noise_multiplier": privacy["noise_multiplier"],
        }
    elif calibrated:
        changes["noise_scale"] = privacy["noise_scale"]
    note = "# the settings this run used, defaults and calibrations resolved"
    if calibrated:
        changes["target_epsilon"] = None  # replaced by the noise it was calibrated to
        note += (
            f" (calibrated to target_epsilon {config.target_epsilon:g} per {config.resolved_unit})"
        )
    return config.replace(**changes), note


def epoch_epsilons(privacy: dict[str, Any], epochs: list[int]) -> list[float]:
    """Epsilon spent once each epoch is done: DP-SGD's accountant after that epoch's steps
    (after the last: the summary's epsilon); a release or a one-shot fit spends its epsilon at once,
    so it is constant; inf without noise."""
    epsilon = privacy["epsilon"]
    if epsilon is None:
        return [math.inf] * len(epochs)
    if privacy["mechanism"] != "dp-sgd":
        return [epsilon] * len(epochs)
    from dpmed.privacy.dpsgd import epsilon_after

    per_epoch = privacy["steps"] // max(epochs)
    return [
        epsilon_after(
            noise_multiplier=privacy["noise_multiplier"],
            sample_rate=privacy["sample_rate"],
            steps=epoch * per_epoch,
            delta=privacy["delta"],
        )
        for epoch in epochs
    ]


def _write_run(
    folder: Path, config: RunConfig, note: str, records: list[EpochRecord], summary: dict
) -> None:
    (folder / "config.yaml").write_text(
        f"{note}\n" + yaml.safe_dump(config.to_dict(), sort_keys=False)
    )
    splits = list(records[0].metrics)
    epsilons = epoch_epsilons(summary["privacy"], [r.epoch for r in records])
    with open(folder / "metrics.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["epoch", "seconds", "train_images_per_second"]
            + [f"{s}_{m}" for s in splits for m in METRICS]
            + ["threshold", f"epsilon_per_{summary['privacy']['unit']}"]
        )
        for r, epsilon in zip(records, epsilons, strict=True):
            writer.writerow(
                [r.epoch, round(r.seconds, 3), round(r.train_images_per_second, 1)]
                + [r.metrics[s][m] for s in splits for m in METRICS]
                + [r.threshold, epsilon]
            )
    (folder / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
    privacy = summary["privacy"]
    epsilon = privacy["epsilon"]
    title = f"{config.dataset}, {config.model}, {config.technique}" + (
        f", epsilon {epsilon:,.3g} per {privacy['unit']}" if epsilon is not None else ""
    )
    learning_curve(records, summary["best_epoch"], folder / "learning_curve.png", title)
