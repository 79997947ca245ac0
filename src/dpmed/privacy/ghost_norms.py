"""Per-image gradient norms of Conv2d layers for ghost clipping, without forming per-image
gradients where that is cheaper (mixed ghost clipping, Bu et al. 2022).

For one image, with the layer's unfolded input A (D x T: D = input channels x kernel area,
T = output positions) and its output gradient G (O x T, O = output channels), the weight
gradient is G A^T (O x D) and ||G A^T||^2 = <A^T A, G^T G>: two T x T Gram matrices,
T^2 (D + O) work and T^2 numbers per image instead of T D O work and D O numbers (written,
then read again for the norm). Deep layers (few positions, many channels) take the Gram
matrices; early layers, where T (D + O) >= 2 D O, form the gradient (Opacus's conv grad
sampler) and take its norm. (At a tie in work, T = 16, D = 729, O = 16: ScatterNet's CNN
head, the Grams took 1.1 ms and the gradients 2.0 ms for 64 images on 2 CPU cores.)

Opacus's ghost mode has norm samplers for Linear and Embedding only and forms every
other layer's per-image gradients; importing this module registers the Conv2d one.
"""

from __future__ import annotations

import math

import torch
from opacus.grad_sample import register_norm_sampler
from opacus.grad_sample.conv import compute_conv_grad_sample
from opacus.utils.tensor_utils import unfold2d
from torch import nn

Norms = dict[nn.Parameter, torch.Tensor]


@register_norm_sampler(nn.Conv2d)
def conv2d_norm_sample(
    layer: nn.Conv2d, activations: list[torch.Tensor], backprops: torch.Tensor
) -> Norms:
    """Each image's gradient norm of the layer's weight and bias, shape (n,) each."""
    return conv2d_norms_and_gradients(layer, activations, backprops)[0]


def norms_of(grads: Norms) -> Norms:
    """Each example's norm of its per-example gradients (n, ...): shape (n,) each."""
    return {p: grad.reshape(len(grad), -1).norm(2, dim=1) for p, grad in grads.items()}


def conv2d_norms_and_gradients(
    layer: nn.Conv2d, activations: list[torch.Tensor], backprops: torch.Tensor
) -> tuple[Norms, Norms | None]:
    """The norms, and the per-image gradients where they were formed (else None)."""
    n, out, positions = len(backprops), layer.out_channels, math.prod(backprops.shape[2:])
    inputs = layer.in_channels // layer.groups * math.prod(layer.kernel_size)
    if layer.groups != 1 or positions * (inputs + out) >= 2 * inputs * out:
        grads = compute_conv_grad_sample(layer, activations, backprops)
        return norms_of(grads), grads
    a = unfold2d(
        activations[0].to(backprops.dtype),
        kernel_size=layer.kernel_size,
        padding=layer.padding,
        stride=layer.stride,
        dilation=layer.dilation,
    )  # (n, D, T)
    g = backprops.reshape(n, out, positions)  # (n, O, T)
    norms = {}
    if layer.weight.requires_grad:
        gram_a, gram_g = torch.einsum("ndt,nds->nts", a, a), torch.einsum("not,nos->nts", g, g)
        norms[layer.weight] = torch.einsum("nts,nts->n", gram_a, gram_g).clamp(min=0).sqrt()
    if layer.bias is not None and layer.bias.requires_grad:
        norms[layer.bias] = g.sum(dim=2).norm(2, dim=1)
    return norms, None
