"""Adaptive DP-SGD: the clip bound or the split of the noise across layers changes during
training, and the accountant still sees one Gaussian mechanism per step.

`AdaptiveClipping` (Andrew et al. 2021, "Differentially private learning with adaptive
clipping") moves the clip bound C toward the `target_unclipped_quantile` of the per-image
gradient norms, on the signal of a private count of unclipped images released at every
step. Each image adds b - 1/2 (b = 1 if its gradient was not clipped) to the count, so
the count has sensitivity 1/2; with noise std s_b on it and z_grad * C on the gradient
sum, the step is one Gaussian mechanism with noise multiplier z where
1 / z^2 = 1 / z_grad^2 + 1 / (2 s_b)^2 (their Theorem 1). The gradient noise is raised to
z_grad so that the accountant is fed the requested z. (Opacus's `AdaClipDPOptimizer` uses
this formula but counts b in {0, 1}, of sensitivity 1, and divides by the actual batch
size, which is private under Poisson sampling: both are fixed here.) Under replace-one
adjacency: scaled by 1 / (z_grad C) and 1 / s_b (so the noise is N(0, I)), one image's
contribution, its clipped gradient and its b - 1/2, lies in a ball of radius 1/z around 0,
so replacing it is the Poisson-sampled Gaussian that the replace-one accountant assumes
for multiplier z (dpmed.privacy.dpsgd_accounting).

`NoiseAllocation` (after Zhang et al. 2023, "Adaptive differential privacy mechanism based
on entropy theory for preserving deep neural networks") clips each layer group g of the
per-image gradient to C_g = C / sqrt(G) and adds noise of std sigma_g * C_g to its sum.
Scaled by 1 / (sigma_g C_g) the noise is N(0, I) and one image moves the scaled sum by at
most sqrt(sum_g 1 / sigma_g^2): one Gaussian mechanism with noise multiplier sigma_eff,
1 / sigma_eff^2 = sum_g 1 / sigma_g^2. Shares a_g = sigma_eff^2 / sigma_g^2 sum to 1, so
sigma_eff stays the calibrated multiplier whatever the shares. The scaled contribution
of one image lies in a ball of radius 1 / sigma_eff around 0, so replacing an image is the
Poisson-sampled Gaussian the replace-one accountant assumes, too. With `entropy` the shares
follow, once per epoch, the information each group's released noisy gradient carried
about the true one, (d_g / 2) log(1 + signal / noise) (the entropy of the noisy gradient
minus that of the noise), estimated from the released noisy sums alone: post-processing,
free. Every group keeps at least `SHARE_FLOOR / G`. With `equal` the shares stay 1 / G
(the constant twin: the noise on every coordinate is then sigma_eff * C, as flat DP-SGD).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from opacus.optimizers import DPOptimizer
from opacus.optimizers.adaclipoptimizer import AdaClipDPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from torch import nn

from dpmed.privacy.dpsgd_noise import gaussian_noise

NOISE_ALLOCATIONS = ("equal", "entropy")

# Andrew et al.'s recommended settings: geometric step 0.2, count noise std = batch / 20.
CLIP_LEARNING_RATE = 0.2
COUNT_NOISE_PER_IMAGE = 1 / 20
CLIP_RANGE = (1e-3, 1e3)  # the clip bound stays within these factors of the initial one
SHARE_FLOOR = 0.2  # every group keeps at least SHARE_FLOOR / G of the noise budget


def count_noise_std(expected_batch_size: int) -> float:
    """s_b, the noise std on the count of unclipped images (Andrew et al.: batch / 20)."""
    return COUNT_NOISE_PER_IMAGE * expected_batch_size


def gradient_noise_multiplier(noise_multiplier: float, count_std: float) -> float:
    """z_grad with 1/z^2 = 1/z_grad^2 + 1/(2 s_b)^2: the gradient's share of the budget."""
    if noise_multiplier >= 2 * count_std:
        raise ValueError(
            f"adaptive clipping needs noise multiplier {noise_multiplier:.4g} < 2 x count "
            f"noise std {count_std:.4g}; raise the batch size"
        )
    return (noise_multiplier**-2 - (2 * count_std) ** -2) ** -0.5


class AdaptiveClipping(AdaClipDPOptimizer):
    """Opacus's adaptive clipping with a count of sensitivity 1/2 over the expected batch,
    kept across physical chunks of one logical batch.

    >>> model = nn.Linear(3, 2)
    >>> opt = AdaptiveClipping(torch.optim.SGD(model.parameters(), lr=0.1),
    ...     noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=64)
    >>> opt.unclipped_num_std, round(opt.adapted()["gradient_noise_multiplier"], 4)
    (3.2, 1.0124)
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: int,
        target_unclipped_quantile: float = 0.5,
        **kwargs: Any,
    ) -> None:
        count_std = count_noise_std(expected_batch_size)
        gradient_noise_multiplier(noise_multiplier, count_std)  # refuses an impossible split
        super().__init__(
            optimizer,
            noise_multiplier=noise_multiplier,
            target_unclipped_quantile=target_unclipped_quantile,
            clipbound_learning_rate=CLIP_LEARNING_RATE,
            max_clipbound=CLIP_RANGE[1] * max_grad_norm,
            min_clipbound=CLIP_RANGE[0] * max_grad_norm,
            unclipped_num_std=count_std,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            **kwargs,
        )
        self.initial_max_grad_norm = max_grad_norm
        self.unclipped_num = torch.zeros(())

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Clear the count only after a real step (not between chunks of one batch)."""
        if not self._is_last_step_skipped:
            self.unclipped_num = torch.zeros(())
        DPOptimizer.zero_grad(self, set_to_none)

    def clip_and_accumulate(self) -> None:
        """Clip as flat DP-SGD; add sum(b - 1/2) over the images to the count."""
        grad_samples = self.grad_samples
        n = len(grad_samples[0])
        norms = torch.stack([g.flatten(1).norm(2, dim=1) for g in grad_samples], 1).norm(2, dim=1)
        unclipped = (norms + 1e-6 <= self.max_grad_norm).sum().cpu()  # clip factor 1
        self.unclipped_num = self.unclipped_num + (unclipped - n / 2)
        DPOptimizer.clip_and_accumulate(self)

    def update_max_grad_norm(self) -> None:
        """C <- C exp(-lr (unclipped fraction - target)), the fraction estimated from the
        noisy centred count over the expected batch size (public)."""
        unclipped_fraction = float(self.unclipped_num) / self.expected_batch_size + 0.5
        step = -self.clipbound_learning_rate * (unclipped_fraction - self.target_unclipped_quantile)
        self.max_grad_norm = min(
            max(self.max_grad_norm * math.exp(step), self.min_clipbound), self.max_clipbound
        )

    def accounting_note(self) -> str:
        z_grad = gradient_noise_multiplier(self.noise_multiplier, self.unclipped_num_std)
        return (
            f"adaptive clipping: gradient noise multiplier {z_grad:.4g} and a count of "
            f"unclipped images (sensitivity 1/2) with noise std {self.unclipped_num_std:.4g} "
            f"compose to {self.noise_multiplier:.4g} (Andrew et al. 2021, Theorem 1; each "
            "image's scaled contribution lies in a ball of radius 1/z around 0, as replace-one "
            "accounting needs)"
        )

    def adapted(self) -> dict[str, Any]:
        """What was adapted: the clip bound, from its initial to its final value."""
        return {
            "clipping": "adaptive",
            "target_unclipped_quantile": self.target_unclipped_quantile,
            "initial_max_grad_norm": self.initial_max_grad_norm,
            "final_max_grad_norm": self.max_grad_norm,
            "count_noise_std": self.unclipped_num_std,
            "gradient_noise_multiplier": gradient_noise_multiplier(
                self.noise_multiplier, self.unclipped_num_std
            ),
        }


def layer_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters grouped by the layer (module) holding them, in model order."""
    groups: dict[str, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups.setdefault(name.rpartition(".")[0] or name, []).append(p)
    return groups


def information_shares(
    signal_energy: torch.Tensor, sizes: torch.Tensor, noise_var: torch.Tensor
) -> torch.Tensor:
    """Shares proportional to (d_g / 2) log(1 + signal_g / (d_g noise_var_g)), mixed with
    equal shares so that each keeps SHARE_FLOOR / G; equal shares when nothing is seen."""
    information = sizes / 2 * torch.log1p(signal_energy.clamp(min=0) / (sizes * noise_var))
    equal = torch.full_like(information, 1 / len(information))
    if information.sum() <= 0:
        return equal
    return (1 - SHARE_FLOOR) * information / information.sum() + SHARE_FLOOR * equal


class NoiseAllocation(DPOptimizer):
    """Per-group clipping to C / sqrt(G) and per-group noise std sigma_g C_g, with
    sum_g 1 / sigma_g^2 = 1 / noise_multiplier^2 (the accountant's multiplier).

    >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> opt = NoiseAllocation(torch.optim.SGD(model.parameters(), lr=0.1),
    ...     groups=layer_groups(model), allocation="entropy", steps_per_update=10,
    ...     noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=8)
    >>> opt.group_noise_multipliers().tolist()  # equal shares: sigma * sqrt(G)
    [1.4142135381698608, 1.4142135381698608]
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        groups: dict[str, list[nn.Parameter]],
        allocation: str,
        steps_per_update: int,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: int,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            **kwargs,
        )
        if allocation not in NOISE_ALLOCATIONS:
            raise ValueError(f"allocation must be one of {NOISE_ALLOCATIONS}, got {allocation!r}")
        index = {id(p): g for g, params in enumerate(groups.values()) for p in params}
        if set(index) != {id(p) for p in self.params}:
            raise ValueError("the groups must hold exactly the optimizer's parameters")
        self.group_names = list(groups)
        self.group_of = [index[id(p)] for p in self.params]
        self.allocation = allocation
        self.steps_per_update = steps_per_update
        n_groups = len(groups)
        self.group_clip = max_grad_norm / math.sqrt(n_groups)
        self.sizes = torch.zeros(n_groups)
        for p, g in zip(self.params, self.group_of, strict=True):
            self.sizes[g] += p.numel()
        self.shares = torch.full((n_groups,), 1 / n_groups)
        self._signal_energy = torch.zeros(n_groups)
        self._steps_seen = 0

    def group_noise_multipliers(self) -> torch.Tensor:
        """sigma_g = sigma_eff / sqrt(a_g)."""
        return self.noise_multiplier / self.shares.sqrt()

    def clip_and_accumulate(self) -> None:
        """Clip each image's gradient on group g to norm C_g, then sum over the images."""
        grad_samples = self.grad_samples
        n = len(grad_samples[0])
        squares = torch.zeros(n, len(self.shares), device=grad_samples[0].device)
        for grad_sample, g in zip(grad_samples, self.group_of, strict=True):
            squares[:, g] += grad_sample.flatten(1).float().pow(2).sum(1)
        factors = (self.group_clip / (squares.sqrt() + 1e-6)).clamp(max=1.0)
        for p, grad_sample, g in zip(self.params, grad_samples, self.group_of, strict=True):
            _check_processed_flag(p.grad_sample)
            grad = torch.einsum("i,i...", factors[:, g].to(p.dtype), grad_sample.to(p.dtype))
            p.summed_grad = grad if p.summed_grad is None else p.summed_grad + grad
            _mark_as_processed(p.grad_sample)

    def add_noise(self) -> None:
        """Noise N(0, (sigma_g C_g)^2) on group g's sum; then learn from the release."""
        stds = (self.group_noise_multipliers() * self.group_clip).tolist()
        energy = torch.zeros(len(stds))
        for p, g in zip(self.params, self.group_of, strict=True):
            _check_processed_flag(p.summed_grad)
            noise = gaussian_noise(
                std=stds[g],
                reference=p.summed_grad,
                generator=self.generator,
                secure_mode=self.secure_mode,
            )
            p.grad = (p.summed_grad + noise).view_as(p)
            energy[g] += p.grad.detach().float().pow(2).sum().cpu()
            _mark_as_processed(p.summed_grad)
        self._observe(energy, torch.tensor(stds) ** 2)

    def _observe(self, released_energy: torch.Tensor, noise_var: torch.Tensor) -> None:
        """Accumulate each group's signal energy, |released sum|^2 - d_g noise_var_g (an
        unbiased estimate of |clipped sum|^2), and re-allocate once per epoch."""
        self._signal_energy += released_energy - self.sizes * noise_var
        self._steps_seen += 1
        if self._steps_seen % self.steps_per_update or self.allocation != "entropy":
            return
        reference_var = (self.noise_multiplier * self.group_clip) ** 2 * len(self.shares)
        self.shares = information_shares(
            self._signal_energy / self.steps_per_update,
            self.sizes,
            torch.full_like(self.shares, reference_var),
        )
        self._signal_energy.zero_()

    def accounting_note(self) -> str:
        return (
            f"{self.allocation} noise shares over {len(self.shares)} layers: per-layer "
            f"multipliers sigma_g with sum 1/sigma_g^2 = 1/{self.noise_multiplier:.4g}^2 (each "
            "image's scaled contribution lies in a ball of radius 1/sigma around 0, as "
            "replace-one accounting needs)"
        )

    def adapted(self) -> dict[str, Any]:
        """What was adapted: each layer's final share of the noise budget."""
        multipliers = self.group_noise_multipliers().tolist()
        return {
            "noise_allocation": self.allocation,
            "group_max_grad_norm": self.group_clip,
            "final_shares": dict(zip(self.group_names, self.shares.tolist(), strict=True)),
            "final_group_noise_multipliers": dict(zip(self.group_names, multipliers, strict=True)),
        }
