"""Book-keeping clipping (Bu et al. 2023): the clipped sum of per-example gradients from
each layer's activations and output gradients, with no second backward pass.

Ghost clipping's first pass leaves, per trained layer, its input X (n examples) and the
output gradient G of each example's own loss. With c_i each example's clip factor, the
clipped sum of the weight gradients is the layer's ordinary weight gradient with G_i
scaled by c_i: one GEMM-shaped call per layer (for Conv2d the backend's weight-gradient
kernel), where ghost clipping backpropagates sum_i c_i loss_i through the whole model
again. Supported layers: Conv2d, Linear, GroupNorm (those of dpmed's image models). Where
the norms already formed per-example gradients (Opacus's grad samplers for GroupNorm, and
dpmed.privacy.ghost_norms for the early Conv2d layers), the clipped sum weights those instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dpmed.errors import ConfigError


def clipped_sums(
    layer: nn.Module,
    x: torch.Tensor,
    g: torch.Tensor,
    factors: torch.Tensor,
    grads: dict[nn.Parameter, torch.Tensor] | None = None,
) -> dict[nn.Parameter, torch.Tensor]:
    """sum_i c_i dloss_i/dp for each trained parameter p of `layer`, from its input x,
    the output gradients g of the examples' own losses and their clip factors c (n,);
    from the per-example gradients `grads` where the norms already formed them."""
    if grads is not None:
        return {
            p: torch.einsum("n...,n->...", grad, factors.to(grad.dtype))
            for p, grad in grads.items()
        }
    gc = g * factors.to(g.dtype).view(-1, *[1] * (g.dim() - 1))
    x = x.to(g.dtype)
    if isinstance(layer, nn.Conv2d):
        weight = torch.nn.grad.conv2d_weight(
            x, layer.weight.shape, gc, layer.stride, layer.padding, layer.dilation, layer.groups
        )
        sums = {layer.weight: weight, layer.bias: gc.sum(dim=(0, 2, 3))}
    elif isinstance(layer, nn.Linear):
        weight = torch.einsum("n...o,n...i->oi", gc, x)
        sums = {layer.weight: weight, layer.bias: gc.reshape(-1, gc.shape[-1]).sum(dim=0)}
    elif isinstance(layer, nn.GroupNorm):
        normalised = F.group_norm(x, layer.num_groups, eps=layer.eps)
        over = (0, *range(2, g.dim()))
        sums = {layer.weight: (gc * normalised).sum(dim=over), layer.bias: gc.sum(dim=over)}
    else:
        raise ConfigError(
            f"grad_sample_mode bk has no clipped sum for {type(layer).__name__}; "
            "use grad_sample_mode ghost"
        )
    return {p: s for p, s in sums.items() if p is not None and p.requires_grad}
