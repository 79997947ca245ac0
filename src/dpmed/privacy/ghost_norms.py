"""Per-image gradient norms of Conv2d layers for ghost clipping, without forming per-image
gradients where that is cheaper (mixed ghost clipping, Bu et al. 2022).

For one image, with the layer's unfolded input A (D x T: D = input channels x kernel area,
T = output positions) and its output gradient G (O x T, O = output channels), the weight
gradient is G A^T (O x D) and ||G A^T||^2 = <A^T A, G^T G>: two T x T Gram matrices,
T^2 (D + O) work and T^2 numbers per image instead of T D O work and D O numbers (written,
then read again for the norm). Deep layers (few positions, many channels) take the Gram
matrices; early layers, where T (D + O) >= 2 D O, form the gradient (`_formed_gradients`)
and take its norm, and so do layers whose per-image gradient is small, D O <= 2^14 (64 KiB):
book-keeping's clipped sum then weights the formed gradients, where the Grams need a
weight-gradient call besides. (ScatterNet's CNN head, T = 16, D = 729, O = 16, 64 images
on 2 CPU cores: 1.0 ms formed, 2.6 ms by the Grams and that call; ResNet-18's 128-channel
3x3 convs at 4 px, D O = 147k: 51 ms formed, 3.6 ms by the Grams.)
At stride 1 the input's Gram comes from the padded input without unfolding it (where the
unfolded copy cost more than the products: `_shifted_grams`).

Opacus's ghost mode has norm samplers for Linear and Embedding only and forms every
other layer's per-image gradients; importing this module registers the Conv2d one.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from opacus.grad_sample import register_norm_sampler
from opacus.grad_sample.conv import compute_conv_grad_sample
from opacus.utils.tensor_utils import unfold2d
from torch import nn

Norms = dict[nn.Parameter, torch.Tensor]
SMALL_GRADIENT = 1 << 14  # values of a per-image gradient that is always formed


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
    out, positions = layer.out_channels, math.prod(backprops.shape[2:])
    inputs = layer.in_channels // layer.groups * math.prod(layer.kernel_size)
    x, g = activations[0].to(backprops.dtype), backprops
    small = inputs * out <= SMALL_GRADIENT
    if layer.groups != 1 or small or positions * (inputs + out) >= 2 * inputs * out:
        grads = _formed_gradients(layer, x, g)
        return norms_of(grads), grads
    norms = {}
    if layer.weight.requires_grad:
        shifted = layer.stride == layer.dilation == (1, 1) and not isinstance(layer.padding, str)
        gram = _shifted_grams if shifted and positions > 1 else _unfolded_grams
        gram_a, gram_g = gram(layer, x, g)
        norms[layer.weight] = (gram_a * gram_g).sum(dim=(1, 2)).clamp(min=0).sqrt()
    if layer.bias is not None and layer.bias.requires_grad:
        norms[layer.bias] = g.flatten(2).sum(dim=2).norm(2, dim=1)
    return norms, None


def _formed_gradients(layer: nn.Conv2d, x: torch.Tensor, g: torch.Tensor) -> Norms:
    """Each image's gradients, (n, ...) each: the weight's from one convolution whose
    groups are the images (the backend's weight-gradient kernel, not Opacus's unfold and
    einsum: 3.4 ms against 5.5 for 32 -> 64 channels at 14 px, 59 against 120 ms for
    16 images at 112 px; Opacus's where the padding is a string)."""
    if isinstance(layer.padding, str):
        return compute_conv_grad_sample(layer, [x], g)
    n, grads = len(x), {}
    if layer.weight.requires_grad:
        weight = torch.nn.grad.conv2d_weight(
            x.reshape(1, -1, *x.shape[2:]),
            (n * layer.out_channels, *layer.weight.shape[1:]),
            g.reshape(1, -1, *g.shape[2:]),
            layer.stride,
            layer.padding,
            layer.dilation,
            n * layer.groups,
        )
        grads[layer.weight] = weight.view(n, *layer.weight.shape)
    if layer.bias is not None and layer.bias.requires_grad:
        grads[layer.bias] = g.sum(dim=(2, 3))
    return grads


def unfolded(layer: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """The layer's unfolded input A, (n, D, T)."""
    return unfold2d(
        x,
        kernel_size=layer.kernel_size,
        padding=layer.padding,
        stride=layer.stride,
        dilation=layer.dilation,
    )


def _unfolded_grams(layer: nn.Conv2d, x: torch.Tensor, g: torch.Tensor):
    """A^T A and G^T G, (n, T, T) each, from the unfolded input A."""
    a = unfolded(layer, x)
    g = g.flatten(2)  # (n, O, T)
    return torch.einsum("ndt,nds->nts", a, a), torch.einsum("not,nos->nts", g, g)


def _shifted_grams(layer: nn.Conv2d, x: torch.Tensor, g: torch.Tensor):
    """The same inner product from Gram matrices on the padded input's grid, stride 1: the
    patches of positions t and s are the padded input at t + k and s + k over the kernel
    offsets k, so (A^T A)[t, s] = sum_k X[t + k, s + k], X the padded input's one Gram
    matrix over channels, and no unfolded copy is formed (64 channels at 7 px: 1.7 ms
    against 3.9 ms; 128 at 3 px: 0.6 against 2.5). Positions are flattened on the padded
    width; G is zero at those beyond the output's width."""
    (kh, kw), (ph, pw) = layer.kernel_size, layer.padding
    n, width = len(x), x.shape[3] + 2 * pw
    rows, cols = g.shape[2:]
    grid = rows * width  # output positions on the padded width
    xs = F.pad(F.pad(x, (pw, pw, ph, ph)).flatten(2), (0, kw - 1))  # room for the last shifts
    gram_x = torch.bmm(xs.transpose(1, 2), xs)
    gram_a = torch.zeros(n, grid, grid, dtype=x.dtype, device=x.device)
    for shift in (i * width + j for i in range(kh) for j in range(kw)):
        gram_a += gram_x[:, shift : shift + grid, shift : shift + grid]
    gs = F.pad(g, (0, width - cols)).flatten(2)  # (n, O, grid)
    return gram_a, torch.bmm(gs.transpose(1, 2), gs)
