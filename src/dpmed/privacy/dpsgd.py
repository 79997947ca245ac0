"""DP-SGD (Abadi et al. 2016) through Opacus: Poisson-sampled batches, per-example
gradients clipped to `max_grad_norm`, Gaussian noise of std `noise_multiplier *
max_grad_norm` on their sum, and an accountant over the steps taken.

The guarantee is (epsilon, delta)-DP per training *image* under replace-one adjacency:
what the replace-one PLD accountant (dpmed.privacy.dpsgd_accounting) reports for the noisy
steps actually taken; a target epsilon is calibrated with it and never exceeded. Poisson
sampling is what the accounting assumes, so batches are drawn that way (their size
varies); a logical batch may be cut into physical chunks to fit memory without changing
the guarantee. Augmentation multiplicity (K augmented copies per image, dpmed.train.loop)
does not change it either: an image's K gradients are averaged before clipping, so each
image still adds one vector of norm <= max_grad_norm to a noisy sum divided by the
expected batch of images.

`grad_sample_mode` says how Opacus gets each example's gradient norm: from per-example
gradients (hooks, functorch, ew), or by ghost clipping (Li et al. 2022; Opacus's fast
gradient clipping): a first backward pass gives each layer's per-example norms from its
activations and output gradients, a second one the gradient of the loss with each
example's term scaled by its clip factor. Same clipped sum, same guarantee; per-example
gradients are never all held at once, and for Linear and most Conv2d layers never formed
(dpmed.privacy.ghost_norms). Unlike Opacus's DPTensorFastGradientClipping, the first pass
stops at the first trained layers (at a parameter; bk at their outputs): it forms no other
weight gradient, which it would discard, nor the model input's gradient.
Book-keeping (`bk`, Bu et al. 2023) keeps each layer's input and output gradient from that
first pass and forms the clipped sum from them (dpmed.privacy.bookkeeping): no second pass.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from opacus.grad_sample.utils import prepare_module
from opacus.optimizers import DPOptimizer
from opacus.utils.module_utils import trainable_modules
from opacus.validators import ModuleValidator
from torch import nn

import dpmed.privacy.ghost_norms  # noqa: F401  (registers Opacus's Conv2d norm sampler)
from dpmed.errors import ConfigError
from dpmed.privacy import secret
from dpmed.privacy.adaptive_dpsgd import (
    AdaptiveClipping,
    NoiseAllocation,
    count_noise_std,
    gradient_noise_multiplier,
    layer_groups,
)
from dpmed.privacy.bookkeeping import BookKeeping
from dpmed.privacy.dpsgd_accounting import (
    ACCOUNTANT,
    ADJACENCY,
    ReplaceOneAccountant,
    calibrate_noise,
    composed_epsilon,
)
from dpmed.privacy.dpsgd_noise import NoisedClippedSum, NoisedSum, noise_generator
from dpmed.privacy.guarantee import PrivacyGuarantee

# Opacus's hooks fire on module outputs when the input needs no gradient: expected here.
warnings.filterwarnings("ignore", message="Full backward hook is firing")


def default_delta(n_train: int) -> float:
    """delta = 1 / n^1.1: below 1/n, so the guarantee does not allow leaking one record."""
    return 1.0 / n_train**1.1


def steps_for(epochs: int, sample_rate: float) -> int:
    return epochs * math.ceil(1 / sample_rate)


def epsilon_after(
    *, noise_multiplier: float, sample_rate: float, steps: int, delta: float
) -> float:
    """Replace-one epsilon at `delta` of one training's steps."""
    return composed_epsilon([(noise_multiplier, sample_rate, steps)], delta=delta)


def check_accountant(name: str) -> None:
    """Refuse an accountant other than the replace-one PLD (Opacus's prv and rdp bound
    add/remove adjacency, which the other guarantees do not use)."""
    if name != ACCOUNTANT:
        raise ConfigError(
            f"accountant {name!r} is not available: DP-SGD is accounted under replace-one "
            f"adjacency, like every dpmed guarantee; use accountant {ACCOUNTANT!r}"
        )


def check_trainable(model: nn.Module) -> None:
    """Refuse a model Opacus cannot give per-example gradients for, naming the layer."""
    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ConfigError(
            f"DP-SGD cannot train this model: {errors[0]} "
            "(BatchNorm mixes examples in a batch; use a model with GroupNorm)"
        )


@dataclass
class DPSGD:
    """One DP-SGD training: wraps the model and optimizer, draws batches, counts steps."""

    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    delta: float
    accountant_name: str  # "pld", the replace-one accountant (dpmed.privacy.dpsgd_accounting)
    physical_batch_size: int
    grad_sample_mode: str = "hooks"
    clipping: str = "flat"  # or "adaptive" (dpmed.privacy.adaptive_dpsgd)
    target_unclipped_quantile: float = 0.5
    noise_allocation: str | None = None  # per-group clipping: "equal" or "entropy" shares
    # Names this training for the secret noise and batches (dpmed.privacy.secret): the
    # settings and training data; with a noise key, equal identities give equal noise.
    identity: dict = field(default_factory=dict, repr=False)
    optimizer: DPOptimizer | None = field(default=None, init=False, repr=False)
    module: nn.Module | None = field(default=None, init=False, repr=False)
    _stops: list[tuple] = field(default_factory=list, init=False, repr=False)
    _bookkeeping: BookKeeping | None = field(default=None, init=False, repr=False)
    _sampler: torch.Generator | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.ghost and (self.clipping == "adaptive" or self.noise_allocation):
            raise ValueError("the adaptive variants need per-image gradients, which ghost lacks")
        check_accountant(self.accountant_name)
        self.accountant = ReplaceOneAccountant()

    @property
    def ghost(self) -> bool:
        """Norms without per-image gradients: ghost clipping, or book-keeping (bk)."""
        return self.grad_sample_mode in ("ghost", "bk")

    @property
    def bookkeeping(self) -> bool:
        return self.grad_sample_mode == "bk"

    def wrap(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, n_train: int
    ) -> tuple[nn.Module, DPOptimizer]:
        """The model with per-example gradients and the optimizer that clips and noises."""
        check_trainable(model)
        if self.bookkeeping:  # its own hooks, not Opacus's module
            private, self._bookkeeping = model, BookKeeping(model, self.max_grad_norm)
        else:
            ghost = {"max_grad_norm": self.max_grad_norm} if self.ghost else {}
            mode = "ghost" if self.ghost else self.grad_sample_mode
            private = prepare_module(model, mode, loss_reduction="mean", **ghost)
        settings = {
            "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": self.max_grad_norm,
            "expected_batch_size": max(1, round(self.sample_rate * n_train)),
            "loss_reduction": "mean",
            "generator": noise_generator(
                self.identity | {"draw": "dp-sgd noise"}, next(model.parameters()).device
            ),
        }
        if self.clipping == "adaptive":
            quantile = self.target_unclipped_quantile
            dp_optimizer = AdaptiveClipping(
                optimizer, target_unclipped_quantile=quantile, **settings
            )
        elif self.noise_allocation:
            dp_optimizer = NoiseAllocation(
                optimizer,
                groups=layer_groups(model),
                allocation=self.noise_allocation,
                steps_per_update=math.ceil(1 / self.sample_rate),  # once per epoch
                **settings,
            )
        elif self.ghost:
            dp_optimizer = NoisedClippedSum(optimizer, **settings)
        else:
            dp_optimizer = NoisedSum(optimizer, **settings)
        dp_optimizer.attach_step_hook(self.accountant.get_optimizer_hook_fn(self.sample_rate))
        self.module, self.optimizer = private, dp_optimizer
        if self.ghost:
            for _, layer in trainable_modules(model):
                layer.register_forward_hook(self._stop_at)
        return private, dp_optimizer

    def _stop_at(self, layer: nn.Module, args: tuple, output: torch.Tensor) -> None:
        """Ghost, training: the first backward pass stops at each trained layer whose input
        needs no gradient (the model's input, or a fixed stage's output), so that no input
        gradient is formed there (a small CNN's first conv: 3.8 ms of a 60 ms step for the
        image's gradient, against 0.3 ms for the weight's). Ghost stops at one of its
        parameters; bk, which needs only the layer's output gradient, at its output (no
        weight gradient either: ScatterNet's CNN head, 0.24 ms of a 6 ms step), unless
        that output is changed in place later (then its gradient is not the layer's)."""
        x = args[0] if args else None
        training = layer.training and torch.is_grad_enabled()
        if training and isinstance(x, torch.Tensor) and not x.requires_grad:
            parameter = next(p for p in layer.parameters() if p.requires_grad)
            self._stops.append((parameter, output if self.bookkeeping else None, output._version))

    def _stop_tensors(self) -> list[torch.Tensor]:
        stops, self._stops = self._stops, []
        return [p if out is None or out._version != version else out for p, out, version in stops]

    def backward(self, losses: torch.Tensor) -> None:
        """Backpropagate one chunk's per-example losses (as their mean). Ghost: a first
        pass, hooks on, down to the first trained layers gives each example's norm (no
        weight gradients); a second, hooks off, backpropagates sum_i c_i loss_i with c_i
        its clip factor. Book-keeping: the first pass (of sum_i loss_i) alone, its clipped
        sums formed from what its hooks kept."""
        if not self.ghost:
            losses.mean().backward()
            return
        stops = self._stop_tensors()
        if self.bookkeeping:
            torch.autograd.grad(losses.sum(), stops, allow_unused=True)
            for p, clipped in self._bookkeeping.clipped_sums().items():
                p.grad = clipped if p.grad is None else p.grad + clipped
            return
        for p in self.optimizer.params:
            p._norm_sample = None
        torch.autograd.grad(losses.mean(), stops, retain_graph=True, allow_unused=True)
        if any(p._norm_sample is None for p in self.optimizer.params):
            raise ConfigError(
                "grad_sample_mode ghost got no gradient norm for a trained layer: every "
                "trained layer must take a tensor input and its output must reach the loss"
            )
        factors = self.module.get_clipping_coef()
        self.module.disable_hooks()
        (factors * losses).sum().backward()
        self.module.enable_hooks()

    def empty_batch(self) -> None:
        """Gradients of a batch of no images (per-example ones for the hook modes, their
        zero sum for ghost), so that its step adds noise alone."""
        for p in self.optimizer.params:
            if self.ghost:
                p.grad = torch.zeros_like(p)
            else:
                p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)

    def batches(self, n_train: int) -> Iterator[list[torch.Tensor]]:
        """One epoch: 1/q logical batches, each every image independently with prob q,
        cut into physical chunks (an empty batch is an empty list: a noise-only step).
        The sampling is secret, like the noise: the accountant assumes nobody knows it."""
        if self._sampler is None:
            self._sampler = secret.torch_generator(self.identity | {"draw": "poisson batches"})
        for _ in range(math.ceil(1 / self.sample_rate)):
            draws = torch.rand(n_train, dtype=torch.float64, generator=self._sampler)
            chosen = draws < self.sample_rate  # 53-bit uniforms: the accounted rate, to 1e-16
            indices = chosen.nonzero().flatten()
            yield list(indices.split(self.physical_batch_size)) if len(indices) else []

    @property
    def steps(self) -> int:
        return sum(steps for _, _, steps in self.accountant.history)

    def epsilon(self) -> float:
        return float(self.accountant.get_epsilon(delta=self.delta)) if self.steps else 0.0

    @property
    def adaptive(self) -> AdaptiveClipping | NoiseAllocation | None:
        """The optimizer of an adaptive variant once wrapped; None for flat DP-SGD."""
        adaptive = isinstance(self.optimizer, AdaptiveClipping | NoiseAllocation)
        return self.optimizer if adaptive else None


ASSUMPTIONS = (
    "one unit is one training example (an image or a record) with its label; neighbouring "
    "training sets replace one example (replace-one adjacency; the number of examples is "
    "public)",
    "batches are Poisson samples of the training set, as the accountant assumes",
    "every intermediate model is covered; validation and test data are not training data",
    "hyper-parameters are not tuned on the training images (tuning on them is not accounted)",
)


def plan_dpsgd(
    *,
    n_train: int,
    batch_size: int,
    epochs: int,
    target_epsilon: float | None,
    noise_multiplier: float | None,
    delta: float,
    max_grad_norm: float,
    accountant: str,
    physical_batch_size: int | None,
    grad_sample_mode: str = "hooks",
    clipping: str = "flat",
    target_unclipped_quantile: float | None = None,
    noise_allocation: str | None = None,
    identity: dict | None = None,
) -> DPSGD:
    """DP-SGD for `n_train` images: sample rate batch/N, delta (0 -> 1/N^1.1), and the
    noise multiplier given or calibrated so that `target_epsilon` is never exceeded.
    Adaptive variants keep that multiplier for the whole step (see adaptive_dpsgd)."""
    if batch_size > n_train:
        raise ConfigError(
            f"batch_size {batch_size} is larger than the {n_train} training images; lower it"
        )
    check_accountant(accountant)
    sample_rate = batch_size / n_train
    delta = delta or default_delta(n_train)
    if noise_multiplier is None:
        noise_multiplier = calibrate_noise(
            target_epsilon=target_epsilon,
            delta=delta,
            sample_rate=sample_rate,
            steps=steps_for(epochs, sample_rate),
        )
    if clipping == "adaptive":
        try:
            gradient_noise_multiplier(noise_multiplier, count_noise_std(batch_size))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return DPSGD(
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        sample_rate=sample_rate,
        delta=delta,
        accountant_name=accountant,
        physical_batch_size=physical_batch_size or batch_size,
        grad_sample_mode=grad_sample_mode,
        clipping=clipping,
        target_unclipped_quantile=target_unclipped_quantile or 0.5,
        noise_allocation=noise_allocation,
        identity=identity or {},
    )


def dpsgd_plan(
    *,
    n_train: int,
    batch_size: int,
    epochs: int,
    target_epsilon: float | None = None,
    noise_multiplier: float | None = None,
    delta: float = 0.0,
    images_per_patient: int | None = None,
) -> dict:
    """DP-SGD planned without training, by `plan_dpsgd` as a training plans it: the noise
    multiplier for `target_epsilon` (or the one given), the replace-one epsilon its steps
    spend at `delta` (0: 1/N^1.1), and per patient of k images by group privacy.

    >>> plan = dpsgd_plan(n_train=1000, batch_size=100, epochs=2, noise_multiplier=1.0)
    >>> plan["steps"], round(plan["epsilon_per_image"], 2), plan["epsilon_per_patient"]
    (20, 3.25, None)
    """
    if (target_epsilon is None) == (noise_multiplier is None):
        raise ConfigError("DP-SGD planning needs target_epsilon or noise_multiplier, one")
    if images_per_patient is not None and images_per_patient < 1:
        raise ConfigError(f"images_per_patient must be >= 1, got {images_per_patient}")
    dp = plan_dpsgd(
        n_train=n_train,
        batch_size=batch_size,
        epochs=epochs,
        target_epsilon=target_epsilon,
        noise_multiplier=noise_multiplier,
        delta=delta,
        max_grad_norm=1.0,  # the guarantee does not depend on it
        accountant=ACCOUNTANT,
        physical_batch_size=None,
    )
    steps = steps_for(epochs, dp.sample_rate)
    epsilon = epsilon_after(
        noise_multiplier=dp.noise_multiplier,
        sample_rate=dp.sample_rate,
        steps=steps,
        delta=dp.delta,
    )
    k = images_per_patient
    patient_epsilon, patient_delta = group_privacy(epsilon, dp.delta, k) if k else (None, None)
    return {
        "mechanism": "dp-sgd",
        "n_train": n_train,
        "batch_size": batch_size,
        "epochs": epochs,
        "sample_rate": dp.sample_rate,
        "steps": steps,
        "noise_multiplier": dp.noise_multiplier,
        "target_epsilon": target_epsilon,
        "epsilon_per_image": epsilon,
        "delta": dp.delta,
        "images_per_patient": k,
        "epsilon_per_patient": patient_epsilon,
        "delta_per_patient": patient_delta,
        "accountant": f"{ADJACENCY} PLD accountant (dp-accounting), as in training",
        "adjacency": ADJACENCY,
    }


BALANCED_LOSS = (
    "balanced loss: the training set's class counts, which set the loss weights, are "
    "treated as public (e.g. a published prevalence)"
)

ADAPTIVE_ASSUMPTION = (
    "the clip bound or the noise shares adapt only on noisy values already released "
    "(post-processing); the noise multiplier accounted covers the whole step"
)


def dpsgd_guarantee(
    dp: DPSGD, *, unit: str = "image", balanced_loss: bool = False
) -> PrivacyGuarantee:
    """What the accountant says was spent per training example (an image or a record)."""
    adaptive = dp.adaptive
    extra = ((ADAPTIVE_ASSUMPTION,) if adaptive else ()) + (
        (BALANCED_LOSS,) if balanced_loss else ()
    )
    return PrivacyGuarantee(
        mechanism="dp-sgd",
        unit=unit,
        epsilon=dp.epsilon(),
        delta=dp.delta,
        accounting=f"{ADJACENCY} PLD accountant (dp-accounting) over {dp.steps} Poisson-"
        f"sampled Gaussian steps (noise multiplier {dp.noise_multiplier:.4g}, sample rate "
        f"{dp.sample_rate:.4g})" + (f"; {adaptive.accounting_note()}" if adaptive else ""),
        assumptions=ASSUMPTIONS + extra,
    )


def dpsgd_settings(dp: DPSGD, *, target_epsilon: float | None) -> dict:
    """The DP-SGD settings the summary records beside its guarantee, and what adapted."""
    return {
        "noise_multiplier": dp.noise_multiplier,
        "max_grad_norm": dp.max_grad_norm,
        "grad_sample_mode": dp.grad_sample_mode,
        "clipping": dp.clipping,
        "noise_allocation": dp.noise_allocation,
        "adapted": dp.adaptive.adapted() if dp.adaptive else {},
        "sample_rate": dp.sample_rate,
        "steps": dp.steps,
        "accountant": dp.accountant_name,
        "target_epsilon": target_epsilon,
    }


def group_privacy(epsilon: float, delta: float, k: int) -> tuple[float, float]:
    """(epsilon, delta) for a group of k records, each covered by (epsilon, delta):
    (k eps, k e^((k-1) eps) delta), delta capped at 1."""
    return k * epsilon, min(1.0, k * math.exp(min((k - 1) * epsilon, 700)) * delta)


def dpsgd_privacy(
    dp: DPSGD,
    *,
    target_epsilon: float | None,
    images_per_patient: int | None,
    assumptions: list[str] = (),
    balanced_loss: bool = False,
) -> dict:
    """The `privacy` entry of summary.json after training on images: the epsilon actually
    spent per image, and per patient by group privacy: (k eps, k e^((k-1) eps) delta),
    unknown (None) when k is (no patient ids)."""
    image = dpsgd_guarantee(dp, balanced_loss=balanced_loss)
    epsilon, k = image.epsilon, images_per_patient
    patient_epsilon, patient_delta = group_privacy(epsilon, dp.delta, k) if k else (None, None)
    per_patient = (
        f"per patient of up to {k} images: epsilon = {patient_epsilon:.4g}, "
        f"delta = {patient_delta:.3g}"
        if k
        else "unknown per patient: no patient ids"
    )
    return {
        "mechanism": "dp-sgd",
        **dpsgd_settings(dp, target_epsilon=target_epsilon),
        "unit": "image",
        "adjacency": image.adjacency,
        "epsilon": epsilon,
        "delta": dp.delta,
        "epsilon_per_pixel": None,  # the image guarantee covers every part of the image
        "epsilon_per_image": epsilon,
        "epsilon_per_patient": patient_epsilon,
        "delta_per_patient": patient_delta,
        "images_per_patient": k,
        "accounting": image.accounting,
        "assumptions": [*image.assumptions, *assumptions],
        "description": f"{image.describe()} ({per_patient})",
    }
