"""DP-SGD's Gaussian noise, with the tails the accountant assumes.

torch's CPU sampler (Box-Muller on 24-bit uniforms, for tensors of 16 values or more)
never draws a pair of values of radius above sqrt(-2 ln 2^-24) = 5.77 std: a truncated
Gaussian, whose missing tail (2^-24 per pair, 0.3 per step for ResNet-18's 5.6M pairs)
the accounted delta does not cover. Here each pair's radius comes from a 53-bit uniform:
it reaches sqrt(-2 ln 2^-53) = 8.57 std, and the mass beyond is 2^-53 per pair (below
1e-9 per step for 10^7 parameters). On CPU the uniforms are drawn by numpy's PCG64,
seeded with 256 secret bits (dpmed.privacy.secret) and faster than torch's MT19937; on
CUDA by torch's generator on the device.

Opacus's optimizers (and dpmed's adaptive variants) draw every noise vector through
`_generate_noise`; importing this module makes it `gaussian_noise`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from opacus.optimizers import adaclipoptimizer, optimizer, optimizer_fast_gradient_clipping

from dpmed.privacy import secret

Generator = np.random.Generator | torch.Generator


def noise_generator(identity: dict, device: torch.device | str) -> Generator:
    """The secret generator of one training's noise: PCG64 on CPU, torch's on CUDA."""
    if torch.device(device).type == "cpu":
        return secret.numpy_generator(identity)
    return secret.torch_generator(identity, device)


def gaussian_noise(
    std: float, reference: torch.Tensor, generator: Generator, secure_mode: bool = False
) -> torch.Tensor:
    """N(0, std^2) noise of `reference`'s shape, dtype and device (Opacus's signature)."""
    if secure_mode:
        raise ValueError("dpmed draws its own noise; Opacus's secure_mode is not used")
    if std == 0:
        return torch.zeros_like(reference)
    pairs = (reference.numel() + 1) // 2
    u, turns = _uniforms(generator, pairs, reference.device)  # [0, 1): 53 and 24 bits
    radius = torch.sub(1, u, out=u).float().log_().mul_(-2 * std**2).sqrt_()  # 1 - u > 0
    angle = turns.mul_(2 * math.pi)
    noise = torch.empty(2, pairs, device=reference.device)
    torch.mul(radius, angle.cos(), out=noise[0])
    torch.mul(radius, angle.sin_(), out=noise[1])
    return noise.view(-1)[: reference.numel()].view(reference.shape).to(reference.dtype)


def _uniforms(
    generator: Generator, n: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """n float64 and n float32 uniforms in [0, 1) on `device`."""
    if isinstance(generator, np.random.Generator):
        u = torch.from_numpy(generator.random(n)).to(device)
        return u, torch.from_numpy(generator.random(n, dtype=np.float32)).to(device)
    draw = {"generator": generator, "device": device}
    return torch.rand(n, dtype=torch.float64, **draw), torch.rand(n, **draw)


for _module in (optimizer, optimizer_fast_gradient_clipping, adaclipoptimizer):
    _module._generate_noise = gaussian_noise
