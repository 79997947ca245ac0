"""The training loop: epochs over in-memory arrays, per-epoch metrics, best on validation."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from dpmed.errors import ConfigError
from dpmed.progress import make_progress, progress_bar
from dpmed.train.metrics import Scores, split_metrics

if TYPE_CHECKING:
    from dpmed.privacy.dpsgd import DPSGD

# Fixed input normalisation: statistics read from private images would leak.
PIXEL_MEAN, PIXEL_STD = 0.5, 0.25


@dataclass(frozen=True)
class EpochRecord:
    epoch: int
    metrics: dict[str, dict[str, float | None]]  # split -> metric -> value (no train under DP)
    seconds: float
    train_images_per_second: float
    threshold: float = 0.5  # the decision threshold the metrics were computed at


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "adam"
    weight_decay: float = 0.0
    augment: bool = False
    augment_multiplicity: int = 1  # augmented copies of each image per step (De et al. 2022)
    balanced_loss: bool = False
    seed: int = 0
    ema_decay: float | None = None  # evaluate an exponential moving average of the weights
    threshold: str = "fixed"  # 0.5, or "validation": see metrics.split_metrics


def best_epoch(records: list[EpochRecord]) -> EpochRecord:
    """The epoch with the highest validation accuracy; lower validation loss, then the
    earlier epoch, break ties. Test metrics never take part."""
    return max(
        records,
        key=lambda r: (r.metrics["val"]["accuracy"], -r.metrics["val"]["loss"], -r.epoch),
    )


def fit(
    model: nn.Module,
    data: dict[str, tuple[np.ndarray, np.ndarray]],
    settings: TrainSettings,
    *,
    device: torch.device,
    checkpoint: Path,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    dp: DPSGD | None = None,
) -> list[EpochRecord]:
    """Train on data["train"], evaluate every split after each epoch, and save the best
    model (on validation) to `checkpoint`. `data` maps split -> (images (N,H,W) or
    table rows (N,F), labels).

    With `dp`, training is DP-SGD: Poisson batches, per-example clipping and noise, and
    the clean training images are never scored (their metrics would be published without
    a guarantee): the records hold val and test only.
    With `augment_multiplicity` K, every image is seen as K (augmented) copies: the loss is
    the mean over all copies, and under DP-SGD an image's gradient is its copies' mean.
    A model with a `frozen` stage (fixed, no trainable weights, e.g. ScatterNet) has every
    split passed through it once; its `head` is then trained, evaluated and checkpointed."""
    model.to(device)
    if hasattr(model, "frozen"):
        if settings.augment:
            raise ConfigError("augment cannot be used with a frozen feature stage")
        data = {split: (_features(model.frozen, x, device), y) for split, (x, y) in data.items()}
        model = model.head
    images, labels = data["train"]
    generator = torch.Generator().manual_seed(settings.seed)
    optimizer = _optimizer(model, settings)
    steps_per_epoch = math.ceil(len(labels) / settings.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=settings.epochs * steps_per_epoch
    )
    ema = None
    if settings.ema_decay:  # averaging the trained weights is post-processing: free under DP
        average = get_ema_multi_avg_fn(settings.ema_decay)
        ema = AveragedModel(model, multi_avg_fn=average, use_buffers=True)
    evaluated = ema.module if ema else model  # what is evaluated and checkpointed
    trained = model
    if dp:
        trained, optimizer = dp.wrap(model, optimizer, len(labels))
    class_weights = _class_weights(labels, device) if settings.balanced_loss else None
    targets = torch.from_numpy(labels)
    copies = settings.augment_multiplicity
    scored = [split for split in data if not (dp and split == "train")]
    records: list[EpochRecord] = []
    with make_progress() as progress:
        task = progress.add_task("training", total=settings.epochs * steps_per_epoch, status="")
        for epoch in range(1, settings.epochs + 1):
            progress.update(task, description=f"epoch {epoch}/{settings.epochs}")
            start = time.perf_counter()
            trained.train()
            if dp:
                batches = dp.batches(len(labels))
            else:
                order = torch.randperm(len(labels), generator=generator)
                batches = ([batch] for batch in order.split(settings.batch_size))
            for chunks in batches:
                optimizer.zero_grad(set_to_none=True)
                if not chunks:  # an empty Poisson batch still takes its noisy step
                    dp.empty_batch()
                for i, chunk in enumerate(chunks):
                    x, y = _to_input(images[chunk.numpy()], device), targets[chunk].to(device)
                    if copies > 1:
                        x, y = x.repeat_interleave(copies, 0), y.repeat_interleave(copies)
                    if settings.augment:
                        x = random_affine(x, generator)
                    with _autocast(device, exact=bool(dp and dp.ghost)):
                        logits = trained(x)
                    losses = _losses(logits.float(), y, class_weights)
                    if dp:
                        dp.backward(losses)
                        if copies > 1:
                            _average_copies(trained, copies)
                    else:
                        losses.mean().backward()
                    if i < len(chunks) - 1:  # DP-SGD: sum clipped chunks, noise once
                        optimizer.signal_skip_step(True)
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                optimizer.step()
                schedule.step()
                if ema:
                    ema.update_parameters(model)
                progress.advance(task)
            train_seconds = time.perf_counter() - start
            metrics, threshold = split_metrics(
                {split: predict(evaluated, *data[split], device=device) for split in scored},
                settings.threshold,
            )
            record = EpochRecord(
                epoch, metrics, time.perf_counter() - start, len(labels) / train_seconds, threshold
            )
            records.append(record)
            if best_epoch(records) is record:
                torch.save(evaluated.state_dict(), checkpoint)
            status = f"val acc {metrics['val']['accuracy']:.3f}"
            if dp and not progress.disable:  # the accountant takes 0.02-1 s: only when shown
                status += f", eps {dp.epsilon():.2f}"
            progress.update(task, status=status)
            if on_epoch:
                on_epoch(record)
    return records


def _average_copies(model: nn.Module, copies: int) -> None:
    """Each image's per-example gradient: the mean of its `copies` adjacent rows, taken
    before clipping, so one image still adds one clipped vector and the accounting holds.
    With the "mean" loss Opacus stores each row's own gradient; after one backward pass
    (the loop steps and zeroes after each) `grad_sample` is one tensor, never a list."""
    for p in model.parameters():
        if p.requires_grad:
            rows = p.grad_sample
            p.grad_sample = rows.reshape(-1, copies, *rows.shape[1:]).mean(dim=1)


@torch.no_grad()
def predict(
    model: nn.Module,
    images: np.ndarray,
    labels: np.ndarray,
    *,
    device: torch.device,
    batch_size: int = 256,
) -> Scores:
    """The labels, the model's probability of class 1 for each image, and the mean loss."""
    model.eval()
    probs, total_loss = [], 0.0
    for start in range(0, len(labels), batch_size):
        x = _to_input(images[start : start + batch_size], device)
        y = torch.from_numpy(labels[start : start + batch_size]).to(device)
        with _autocast(device):
            logits = model(x).float()
        total_loss += F.cross_entropy(logits, y, reduction="sum").item()
        probs.append(logits.softmax(dim=1)[:, 1].cpu())
    return labels, torch.cat(probs).numpy(), total_loss / len(labels)


def random_affine(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-image rotation (+-10 deg), scale (0.9-1.1) and shift (+-8%): a small, seeded jitter."""
    n = x.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    angle, scale = uniform(-math.pi / 18, math.pi / 18), uniform(0.9, 1.1)
    shift = torch.stack([uniform(-0.08, 0.08), uniform(-0.08, 0.08)], dim=1)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], dim=1)
    theta = torch.cat([theta, shift.unsqueeze(2)], dim=2).to(x.device, x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


@torch.no_grad()
def _features(
    stage: nn.Module, images: np.ndarray, device: torch.device, batch_size: int = 256
) -> np.ndarray:
    """A fixed stage's output for every image: (N, C, H', W') float32, computed once per
    image array (with a progress bar) and cached on disk beside the releases: the stage is
    fixed, so its output depends on the images alone, and later runs on the same images (a
    sweep's seeds and epsilons, a rerun) read it back. The file's name is an HMAC under the
    cache's secret (`secret.cache_tag`): it reveals nothing about the images."""
    from dpmed.data.images import atomic_write
    from dpmed.data.root import cache_dir
    from dpmed.privacy import secret

    tag = secret.cache_tag({"draw": "fixed-stage features", "stage": repr(stage), "images": images})
    path = cache_dir() / "features" / f"{type(stage).__name__.lower()}-{tag}.npy"
    if not path.exists():
        stage.eval()
        starts = range(0, len(images), batch_size)
        features = np.concatenate(
            [
                stage(_to_input(images[start : start + batch_size], device)).float().cpu().numpy()
                for start in progress_bar(starts, f"{type(stage).__name__} features")
            ]
        )
        atomic_write(path, lambda handle: np.save(handle, features))
    return np.load(path)


def _to_input(batch: np.ndarray, device: torch.device) -> torch.Tensor:
    """Pixels (N, H, W) in [0, 1] -> normalised (N, 1, H, W); features (N, C, H, W) and
    table rows (N, F) as they are."""
    x = torch.from_numpy(np.ascontiguousarray(batch)).to(device).float()
    return x if x.ndim != 3 else (x.unsqueeze(1) - PIXEL_MEAN) / PIXEL_STD


def _optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=settings.lr, momentum=0.9, weight_decay=settings.weight_decay
        )
    return torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)


def _losses(
    logits: torch.Tensor, targets: torch.Tensor, class_weights: torch.Tensor | None
) -> torch.Tensor:
    """Per-example cross-entropy, each weighted by its class; training takes their mean.
    Not PyTorch's weighted mean (which divides by the batch's summed weights): there one
    example's gradient would depend on the other examples' labels, and DP-SGD's
    per-example clipping bounds one example's effect only if its gradient is its own."""
    losses = F.cross_entropy(logits, targets, reduction="none")
    return losses * class_weights[targets] if class_weights is not None else losses


def _class_weights(labels: np.ndarray, device: torch.device) -> torch.Tensor:
    """Inverse class frequencies of the training labels. Under DP-SGD these counts are
    treated as public, and the guarantee says so (dpmed.privacy.dpsgd.BALANCED_LOSS)."""
    counts = np.bincount(labels, minlength=2).clip(min=1)
    return torch.tensor(len(labels) / (2 * counts), dtype=torch.float32, device=device)


def _autocast(device: torch.device, *, exact: bool = False) -> torch.autocast:
    """bf16 on CUDA, unless `exact`: ghost clipping takes each image's gradient norm and
    its clipped gradient from two separate passes, and bf16 rounding in either could let
    a clipped contribution exceed the bound; in float32 both agree."""
    return torch.autocast(
        device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and not exact
    )
