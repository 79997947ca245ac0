"""DP-SGD's noise: standard normal to its 8.57-std tail, drawn from the secret generator."""

import math

import numpy as np
import pytest
import scipy.stats
import torch
from opacus.optimizers import (
    DPOptimizer,
    adaclipoptimizer,
    optimizer,
    optimizer_fast_gradient_clipping,
)

from dpmed.privacy import dpsgd_noise
from dpmed.privacy.dpsgd_noise import add_gaussian_noise_, gaussian_noise, noise_generator

GENERATORS = {
    "pcg64": lambda: np.random.Generator(np.random.PCG64(0)),
    "torch": lambda: torch.Generator().manual_seed(0),
}


@pytest.mark.parametrize("name", GENERATORS)
def test_noise_is_normal_with_the_std_asked_for_and_the_same_from_the_same_seed(name):
    reference = torch.empty(301, 333, dtype=torch.float64)  # an odd count: half a pair unused
    noise = gaussian_noise(2.5, reference, GENERATORS[name]())
    assert noise.shape == reference.shape and noise.dtype == torch.float64
    assert scipy.stats.kstest(noise.flatten().numpy() / 2.5, "norm").pvalue > 1e-3
    assert torch.equal(gaussian_noise(2.5, reference, GENERATORS[name]()), noise)
    assert gaussian_noise(0.0, reference, GENERATORS[name]()).count_nonzero() == 0


@pytest.mark.parametrize("name", GENERATORS)
def test_noise_added_in_place_in_chunks_is_the_noise_drawn_on_its_own(name, monkeypatch):
    monkeypatch.setattr(dpsgd_noise, "_CHUNK_PAIRS", 1000)  # 50 chunks, the last one short
    target = torch.arange(99_999, dtype=torch.float32)
    added = add_gaussian_noise_(target.clone(), 3.0, GENERATORS[name]())
    noise = gaussian_noise(3.0, target, GENERATORS[name]())
    assert torch.equal(added, target + noise)
    assert scipy.stats.kstest(noise.numpy() / 3.0, "norm").pvalue > 1e-3
    first, second = noise[:49_999], noise[50_000:]  # the two halves of each pair
    assert abs(np.corrcoef(first[:49_999], second)[0, 1]) < 0.03  # 6.7 standard errors
    assert torch.unique(noise).numel() > 99_000  # no chunk drawn twice


def test_torchs_cpu_sampler_stops_at_5_77_std_and_ours_reaches_8_57():
    """torch's Box-Muller on 24-bit uniforms: no pair (values j and j + 8 of each 16) has
    radius above sqrt(-2 ln 2^-24), a tail the accountant assumes. Ours takes the radius
    from 1 - u with u a 53-bit uniform: at the largest u, 1 - 2^-53, it is sqrt(-2 ln 2^-53)."""
    draws = torch.randn(4_000_000, generator=torch.Generator().manual_seed(0)).double()
    radius = draws.view(-1, 2, 8).square().sum(dim=1).sqrt()
    assert radius.max().item() <= math.sqrt(-2 * math.log(2**-24)) + 1e-6  # 5.77
    for u in (
        np.random.default_rng(0).random(100_000),
        torch.rand(100_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)),
    ):
        assert ((u * 2**24) % 1 != 0).sum() > 99_000  # finer than torch's 24-bit grid
    out = np.empty((2, 1), dtype=np.float32)
    dpsgd_noise._box_muller(np.float32([2**-53]), np.float32([0.0]), 2.0, out)
    assert out[0, 0] == pytest.approx(2.0 * math.sqrt(-2 * math.log(2**-53)), rel=1e-6)  # 8.57


def test_every_opacus_optimizer_draws_our_noise_from_the_generator_given():
    for module in (optimizer, optimizer_fast_gradient_clipping, adaclipoptimizer):
        assert module._generate_noise is gaussian_noise
    weight = torch.nn.Parameter(torch.zeros(4, 5))
    dp = DPOptimizer(
        torch.optim.SGD([weight], lr=1.0),
        noise_multiplier=0.5,
        max_grad_norm=2.0,
        expected_batch_size=1,
        generator=np.random.Generator(np.random.PCG64(7)),
    )
    weight.grad_sample = torch.zeros(3, 4, 5)
    dp.step()
    expected = gaussian_noise(1.0, weight, np.random.Generator(np.random.PCG64(7)))
    assert torch.equal(weight.detach(), -expected)


def test_on_cpu_the_noise_generator_is_pcg64_from_the_secret(noise_key):
    generator = noise_generator({"draw": "test"}, "cpu")
    assert isinstance(generator.bit_generator, np.random.PCG64)
    again = noise_generator({"draw": "test"}, torch.device("cpu"))
    assert generator.random() == again.random()
