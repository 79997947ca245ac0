"""Book-keeping clipping (Bu et al. 2023): the clipped sum of per-example gradients from
each layer's activations and output gradients, in one backward pass.

`BookKeeping` keeps, per trained layer, its input X (n examples) during the forward pass
and, from a hook on its output, the output gradient G of each example's own loss during
one backward pass that computes no weight gradient. Each layer's per-example norms come
from X and G (dpmed.privacy.ghost_norms for Conv2d, ||G_i|| ||X_i|| for Linear); with c_i
each example's clip factor, the clipped sum of the weight gradients is the layer's ordinary
weight gradient with G_i scaled by c_i: one GEMM-shaped call per layer (for Conv2d the
backend's weight-gradient kernel; at one output position a GEMM), where ghost clipping
backpropagates sum_i c_i loss_i through the whole model again. Supported layers: Conv2d,
Linear, GroupNorm (those of dpmed's models). Where the norms already formed per-example
gradients (GroupNorm, and the early Conv2d layers), the clipped sum weights those instead.
"""

from __future__ import annotations

import math

import torch
from opacus.grad_sample.linear import compute_linear_norm_sample
from opacus.utils.module_utils import trainable_modules
from torch import nn

from dpmed.errors import ConfigError
from dpmed.privacy.ghost_norms import Norms, conv2d_norms_and_gradients, norms_of, unfolded


def _group_norm_gradients(layer, activations, backprops) -> tuple[Norms, Norms]:
    """A GroupNorm's per-example gradients and their norms: the batch taken as one example
    of n C channels in n G groups, whose per-channel weight gradients are the examples'
    own, from the backend's group statistics and its fused backward reduction (Opacus's
    normalises the input and multiplies in separate passes). One process, whole epochs
    alternating: small-cnn bk 1.43-1.46x against 1.51-1.63x; resnet18-gn the same (its
    2 x 2 px layers, where torch's kernel is slow, take back what the others gain)."""
    x = activations[0].to(backprops.dtype)
    n, positions = len(x), x[0, 0].numel()
    channels, groups = n * x.shape[1], n * layer.num_groups
    x, g = x.reshape(1, channels, positions), backprops.reshape(1, channels, positions)
    _, mean, rstd = torch.native_group_norm(
        x, None, None, 1, channels, positions, groups, layer.eps
    )
    _, weight, bias = torch.ops.aten.native_group_norm_backward(
        g, x, mean, rstd, None, 1, channels, positions, groups, [False, True, True]
    )
    grads = {layer.weight: weight.view(n, -1), layer.bias: bias.view(n, -1)}
    grads = {p: grad for p, grad in grads.items() if p is not None and p.requires_grad}
    return norms_of(grads), grads


def _linear_norms(layer, activations, backprops) -> tuple[Norms, None]:
    """||G_i|| ||X_i|| for one input row per example (Opacus's einsums cost more here)."""
    if backprops.dim() != 2:
        return compute_linear_norm_sample(layer, activations, backprops), None
    g2, x2 = backprops.square().sum(dim=1), activations[0].to(backprops.dtype).square().sum(dim=1)
    norms = {layer.weight: (g2 * x2).sqrt(), layer.bias: g2.sqrt()}
    return {p: norm for p, norm in norms.items() if p is not None and p.requires_grad}, None


# layer type -> (layer, [input], output gradient) -> (norms, per-example gradients or None)
NORMS_AND_GRADIENTS = {
    nn.Conv2d: conv2d_norms_and_gradients,
    nn.Linear: _linear_norms,
    nn.GroupNorm: _group_norm_gradients,
}


class BookKeeping:
    """Hooks on a model's trained layers that keep what each layer's clipped sum needs
    from a training forward and backward pass, and the clipped sums they give."""

    def __init__(self, model: nn.Module, max_grad_norm: float) -> None:
        self.max_grad_norm = max_grad_norm
        self.layers = [layer for _, layer in trainable_modules(model)]
        for layer in self.layers:
            if type(layer) not in NORMS_AND_GRADIENTS:
                raise ConfigError(
                    f"grad_sample_mode bk has no clipped sum for {type(layer).__name__}; "
                    "use grad_sample_mode ghost"
                )
            layer.register_forward_hook(self._keep)
        self._kept: list[list] = []  # [layer, its input, its output gradient] per call

    def _keep(self, layer: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if not (layer.training and torch.is_grad_enabled()):
            return
        kept = [layer, args[0].detach(), None]
        self._kept.append(kept)
        # A hook registered before any in-place op on the output gets the output's own gradient.
        output.register_hook(lambda grad: kept.__setitem__(2, grad.detach()))

    @torch.no_grad()
    def clipped_sums(self) -> dict[nn.Parameter, torch.Tensor]:
        """sum_i c_i dloss_i/dp per trained parameter p, after the backward pass of
        sum_i loss_i: c_i = min(1, C / (||dloss_i/dtheta|| + 1e-6)), as Opacus clips."""
        kept, self._kept = self._kept, []
        called = [layer for layer, _, _ in kept]
        if any(g is None for _, _, g in kept) or sorted(map(id, called)) != sorted(
            map(id, self.layers)
        ):
            raise ConfigError(
                "grad_sample_mode bk got no gradient norm for a trained layer (or one used "
                "twice): every trained layer must be called once, on a tensor, and its output "
                "must reach the loss"
            )
        formed = [NORMS_AND_GRADIENTS[type(layer)](layer, [x], g) for layer, x, g in kept]
        norms = [norm for layer_norms, _ in formed for norm in layer_norms.values()]
        factors = (self.max_grad_norm / (torch.stack(norms).norm(2, dim=0) + 1e-6)).clamp(max=1)
        sums = {}
        for (layer, x, g), (_, grads) in zip(kept, formed, strict=True):
            sums |= clipped_sums(layer, x, g, factors, grads)
        return sums


def clipped_sums(
    layer: nn.Module,
    x: torch.Tensor,
    g: torch.Tensor,
    factors: torch.Tensor,
    grads: dict[nn.Parameter, torch.Tensor] | None = None,
) -> dict[nn.Parameter, torch.Tensor]:
    """sum_i c_i dloss_i/dp for each trained parameter p of `layer` (Conv2d, Linear), from
    its input x, the output gradients g of the examples' own losses and their clip factors
    c (n,); from the per-example gradients `grads` where the norms already formed them."""
    if grads is not None:
        return {
            p: (factors.to(grad.dtype) @ grad.reshape(len(grad), -1)).view(grad.shape[1:])
            for p, grad in grads.items()
        }
    gc = g * factors.to(g.dtype).view(-1, *[1] * (g.dim() - 1))
    x = x.to(g.dtype)
    if isinstance(layer, nn.Conv2d) and layer.groups == 1 and math.prod(g.shape[2:]) == 1:
        gc = gc.reshape(len(gc), -1)
        sums = {layer.weight: _one_position_sum(layer, x, gc), layer.bias: gc.sum(dim=0)}
    elif isinstance(layer, nn.Conv2d):
        weight = torch.nn.grad.conv2d_weight(
            x, layer.weight.shape, gc, layer.stride, layer.padding, layer.dilation, layer.groups
        )
        sums = {layer.weight: weight, layer.bias: gc.sum(dim=(0, 2, 3))}
    elif isinstance(layer, nn.Linear):
        gc, x = gc.reshape(-1, gc.shape[-1]), x.reshape(-1, x.shape[-1])  # rows of all examples
        sums = {layer.weight: gc.T @ x, layer.bias: gc.sum(dim=0)}
    else:  # GroupNorm's per-example gradients are always formed
        raise TypeError(f"no clipped sum from the output gradient of {type(layer).__name__}")
    return {p: s for p, s in sums.items() if p is not None and p.requires_grad}


def _one_position_sum(layer: nn.Conv2d, x: torch.Tensor, gc: torch.Tensor) -> torch.Tensor:
    """A Conv2d's weight sum at one output position, gc (n, O) the scaled output gradients:
    a GEMM of the unfolded input; of a 1-pixel input, a GEMM for the one tap over it, the
    others (over padding) zero. ResNet-18's 512-channel convs at 1 px: 0.8 ms, against 3.6
    by the unfolded input and 10.9 by the backend's weight-gradient kernel. (Where a few
    taps cover the input, writing them into the weight's layout cost more than the GEMM
    of the whole unfolded input: 2.7 against 1.7 ms for ResNet-18's 256 -> 512 at 2 px.)"""
    (kh, kw), padding = layer.kernel_size, layer.padding
    if x.shape[2:] == (1, 1) and layer.dilation == (1, 1) and not isinstance(padding, str):
        weight = gc.new_zeros(layer.weight.shape)
        if padding[0] < kh and padding[1] < kw:  # else no tap covers the pixel
            weight[:, :, padding[0], padding[1]] = gc.T @ x.reshape(len(x), -1)
        return weight
    a = unfolded(layer, x)
    return (gc.T @ a.reshape(len(a), -1)).view(layer.weight.shape)
