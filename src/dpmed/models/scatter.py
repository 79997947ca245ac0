"""ScatterNet: fixed wavelet-scattering features and a linear or small CNN head (Tramer &
Boneh 2021, *Differentially private learning needs better features (or much more data)*).

The scattering transform (Mallat; kymatio's Morlet filters, J scales, L angles) is fixed
and data-independent: it has no weights and reads nothing from the training images, so it
costs no privacy and its output may be computed once per image. Only the head is trained
(with DP-SGD: a linear model, or a CNN of ~33k weights, on good features learns more from
few noisy steps than a CNN from pixels). Its normalisation is GroupNorm without learned
weights: per image, so it reads no statistics of other (private) images.

>>> model = ScatterNet(image_size=28)
>>> tuple(model.frozen(torch.zeros(2, 1, 28, 28)).shape)  # 1 + J L + L^2 J (J - 1) / 2
(2, 81, 7, 7)
>>> tuple(model(torch.zeros(2, 1, 28, 28)).shape)
(2, 2)
>>> tuple(ScatterNet(image_size=64, head="cnn")(torch.zeros(2, 1, 64, 64)).shape)
(2, 2)
"""

from __future__ import annotations

import torch

# not kymatio.torch: it loads the 3-D transform too, which imports scipy's sph_harm (gone in 1.17)
from kymatio.scattering2d.frontend.torch_frontend import ScatteringTorch2D
from torch import nn

SCALES, ANGLES = 2, 8  # J and L, Tramer & Boneh's setting
GROUPS = 27  # GroupNorm groups over the 81 scattering channels (3 channels each)


class Scattering(nn.Module):
    """The 2-D scattering transform of 1-channel images, orders 0 to 2:
    (N, 1, H, W) -> (N, 1 + J L + L^2 J (J - 1) / 2, H / 2^J, W / 2^J)."""

    def __init__(self, image_size: int, *, scales: int = SCALES, angles: int = ANGLES) -> None:
        super().__init__()
        self.transform = ScatteringTorch2D(J=scales, shape=(image_size, image_size), L=angles)

    def extra_repr(self) -> str:
        t = self.transform
        return f"J={t.J}, L={t.L}, shape={tuple(t.shape)}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(x).flatten(1, 2)  # kymatio keeps the input channel as a dim


def linear_head(features: torch.Size, num_classes: int) -> nn.Sequential:
    """GroupNorm, then one linear layer over all scattering coefficients (C, H, W)."""
    return nn.Sequential(
        nn.GroupNorm(GROUPS, features[0], affine=False),
        nn.Flatten(),
        nn.Linear(features.numel(), num_classes),
    )


def cnn_head(features: torch.Size, num_classes: int) -> nn.Sequential:
    """Tramer & Boneh's CNN on MNIST scattering features: GroupNorm, a 3x3 stride-2 conv to
    16 channels, a 3x3 conv to 32, tanh after each, then a 32-unit tanh layer over the
    4x4 map (7x7 features at 28 px give 4x4 directly; larger maps are max-pooled down to
    it, as their CIFAR-10 head pools 8x8, so the size of the head does not grow with the
    image)."""
    return nn.Sequential(
        nn.GroupNorm(GROUPS, features[0], affine=False),
        nn.Conv2d(features[0], 16, kernel_size=3, stride=2, padding=1),
        nn.Tanh(),
        nn.Conv2d(16, 32, kernel_size=3, padding=1),
        nn.Tanh(),
        nn.AdaptiveMaxPool2d(4),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 32),
        nn.Tanh(),
        nn.Linear(32, num_classes),
    )


HEADS = {"linear": linear_head, "cnn": cnn_head}


class ScatterNet(nn.Module):
    """A `frozen` scattering stage (no trainable weights) and a trainable `head`: one of
    HEADS, each starting with GroupNorm without learned weights.

    dpmed's training loop passes every split through `frozen` once and trains `head` alone.
    """

    def __init__(self, image_size: int, num_classes: int = 2, *, head: str = "linear") -> None:
        super().__init__()
        self.frozen = Scattering(image_size).requires_grad_(False)
        features = self.frozen(torch.zeros(1, 1, image_size, image_size)).shape[1:]
        self.head = HEADS[head](features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.frozen(x))
