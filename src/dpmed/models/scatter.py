"""ScatterNet: fixed wavelet-scattering features and a linear head (Tramer & Boneh 2021,
*Differentially private learning needs better features (or much more data)*).

The scattering transform (Mallat; kymatio's Morlet filters, J scales, L angles) is fixed
and data-independent: it has no weights and reads nothing from the training images, so it
costs no privacy and its output may be computed once per image. Only the head is trained
(with DP-SGD: a linear model on good features learns more from few noisy steps than a CNN
from pixels). Its normalisation is GroupNorm without learned weights: per image, so it
reads no statistics of other (private) images.

>>> model = ScatterNet(image_size=28)
>>> tuple(model.frozen(torch.zeros(2, 1, 28, 28)).shape)  # 1 + J L + L^2 J (J - 1) / 2
(2, 81, 7, 7)
>>> tuple(model(torch.zeros(2, 1, 28, 28)).shape)
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


class ScatterNet(nn.Module):
    """A `frozen` scattering stage (no trainable weights) and a trainable `head`:
    GroupNorm, then one linear layer over all scattering coefficients.

    dpmed's training loop passes every split through `frozen` once and trains `head` alone.
    """

    def __init__(self, image_size: int, num_classes: int = 2) -> None:
        super().__init__()
        self.frozen = Scattering(image_size).requires_grad_(False)
        channels, height, width = self.frozen(torch.zeros(1, 1, image_size, image_size)).shape[1:]
        self.head = nn.Sequential(
            nn.GroupNorm(GROUPS, channels, affine=False),
            nn.Flatten(),
            nn.Linear(channels * height * width, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.frozen(x))
