"""The Gaussian sampler (no cut-off tail) and DP-SGD drawing its noise from it, secretly."""

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

from dpmed.privacy import gaussian_sampler
from dpmed.privacy.dpsgd_noise import gaussian_noise, noise_generator
from dpmed.privacy.gaussian_sampler import add_gaussian_noise_

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
    monkeypatch.setattr(gaussian_sampler, "_CHUNK_PAIRS", 1000)  # 50 chunks, the last one short
    target = torch.arange(99_999, dtype=torch.float32)
    added = add_gaussian_noise_(target.clone(), 3.0, GENERATORS[name]())
    noise = gaussian_noise(3.0, target, GENERATORS[name]())
    assert torch.equal(added, target + noise)
    assert scipy.stats.kstest(noise.numpy() / 3.0, "norm").pvalue > 1e-3
    first, second = noise[:49_999], noise[50_000:]  # the two halves of each pair
    assert abs(np.corrcoef(first[:49_999], second)[0, 1]) < 0.03  # 6.7 standard errors
    assert torch.unique(noise).numel() > 99_000  # no chunk drawn twice


def test_a_large_targets_blocks_come_from_their_own_streams_whatever_the_thread_count(
    monkeypatch,
):
    """Beyond one block of pairs, block i is pair j's noise from the generator's i-th
    child: the same noise on one thread as on two, normal, no block a copy of another."""
    monkeypatch.setattr(gaussian_sampler, "_CHUNK_PAIRS", 300)
    monkeypatch.setattr(gaussian_sampler, "_BLOCK_PAIRS", 1000)  # 5 blocks, the last short
    target = torch.zeros(8_999)  # 4_500 pairs
    threads = torch.get_num_threads()
    try:
        noises = []
        for count in (1, 2):
            torch.set_num_threads(count)
            noises.append(add_gaussian_noise_(target.clone(), 1.0, GENERATORS["pcg64"]()))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(*noises)
    noise = noises[0]
    children = GENERATORS["pcg64"]().spawn(5)
    for i, child in enumerate(children):  # each block is its child's pairs, drawn alone
        pairs = range(1000 * i, min(1000 * (i + 1), 4_500))
        alone = add_gaussian_noise_(torch.zeros(2 * len(pairs)), 1.0, child)
        assert torch.equal(noise[pairs.start : pairs.stop], alone[: len(pairs)])
        second = noise[4_500 + pairs.start : 4_500 + pairs.stop]  # one short at the end
        assert torch.equal(second, alone[len(pairs) : len(pairs) + len(second)])
    assert scipy.stats.kstest(noise.numpy(), "norm").pvalue > 1e-3
    assert torch.unique(noise).numel() > 8_900


@pytest.mark.parametrize("name", GENERATORS)
def test_several_tensors_get_the_noise_of_one_holding_their_values_in_turn(name, monkeypatch):
    """One draw over a model's parameters, whatever their sizes: the pairs and blocks
    span the tensors (4 blocks here, the small tensors inside them and across a border)."""
    monkeypatch.setattr(gaussian_sampler, "_CHUNK_PAIRS", 300)
    monkeypatch.setattr(gaussian_sampler, "_BLOCK_PAIRS", 1000)
    shapes = [(3,), (40, 50), (1,), (7, 11, 13), (2,)]
    tensors = [torch.full(shape, float(i)) for i, shape in enumerate(shapes)]
    joined = torch.cat([t.flatten() for t in tensors])
    added = add_gaussian_noise_(tensors, 2.0, GENERATORS[name]())
    assert added is tensors and [t.shape for t in tensors] == [torch.Size(s) for s in shapes]
    alone = add_gaussian_noise_(joined.clone(), 2.0, GENERATORS[name]())
    assert torch.equal(torch.cat([t.flatten() for t in tensors]), alone)
    noise = (alone - joined).numpy()
    assert scipy.stats.kstest(noise / 2.0, "norm").pvalue > 1e-3
    assert np.unique(noise).size > 2_900  # no block drawn twice (3_007 values)


@pytest.mark.parametrize("name", GENERATORS)
def test_the_noised_sum_is_scaled_in_the_same_pass(name, monkeypatch):
    """(target + noise) * scale, each value scaled once (DP-SGD's mean over the expected
    batch), also without noise; the same as scaling after the noise is added."""
    monkeypatch.setattr(gaussian_sampler, "_CHUNK_PAIRS", 300)
    monkeypatch.setattr(gaussian_sampler, "_BLOCK_PAIRS", 1000)
    tensors = [torch.arange(3_001.0), torch.ones(5)]
    noised = add_gaussian_noise_([t.clone() for t in tensors], 2.0, GENERATORS[name]())
    scaled = add_gaussian_noise_([t.clone() for t in tensors], 2.0, GENERATORS[name](), scale=0.25)
    for a, b in zip(scaled, noised, strict=True):
        assert torch.equal(a, b * 0.25)
    unnoised = add_gaussian_noise_(
        [t.clone() for t in tensors], 0.0, GENERATORS[name](), scale=0.25
    )
    for a, b in zip(unnoised, tensors, strict=True):
        assert torch.equal(a, b * 0.25)


def test_torchs_cpu_sampler_stops_at_5_77_std_and_ours_has_uniforms_finer_than_its():
    """torch's Box-Muller on 24-bit uniforms: no pair (values j and j + 8 of each 16) has
    radius above sqrt(-2 ln 2^-24), a tail the accountant assumes. Ours takes the radius
    from 1 - u with u a 53-bit uniform."""
    draws = torch.randn(4_000_000, generator=torch.Generator().manual_seed(0)).double()
    radius = draws.view(-1, 2, 8).square().sum(dim=1).sqrt()
    assert radius.max().item() <= math.sqrt(-2 * math.log(2**-24)) + 1e-6  # 5.77
    for u in (
        np.random.default_rng(0).random(100_000),
        torch.rand(100_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)),
    ):
        assert ((u * 2**24) % 1 != 0).sum() > 99_000  # finer than torch's 24-bit grid


def _scripted(values, xp):
    """A uniform(count) that hands out `values` in turn, as xp float64 arrays."""
    queue = list(values)
    return lambda count: xp.asarray([queue.pop(0) for _ in range(count)], dtype=xp.float64)


@pytest.mark.parametrize("xp", [np, torch], ids=["numpy", "torch"])
def test_the_radius_has_no_cut_off_at_the_smallest_53_bit_uniform(xp):
    """v = 2^-53, the smallest 1 - u, stands for all of (0, 2^-53]: it is redrawn within it
    (here the first to the smallest again, 2^-106, then to 2^-107; the last to 0.75 2^-53),
    so the radius passes 8.57 std; other values keep theirs; redraws that always hit the
    smallest stop at 2^-1007."""
    largest = 1 - 2.0**-53
    v = xp.asarray([2.0**-53, 2.0**-52, 0.5, 2.0**-53], dtype=xp.float64)
    out = xp.empty(4, dtype=xp.float32)
    gaussian_sampler._radii(v, 2.0, _scripted([largest, 0.25, 0.5], xp), out)
    final = (2.0**-107, 2.0**-52, 0.5, 0.75 * 2.0**-53)
    expected = [2 * math.sqrt(-2 * math.log(x)) for x in final]  # std 2: 24.4 = 2 x 12.2
    assert np.allclose(np.asarray(out, dtype=np.float64), expected, rtol=1e-6)
    v = xp.asarray([2.0**-53], dtype=xp.float64)
    gaussian_sampler._radii(
        v, 1.0, lambda count: xp.full((count,), largest, dtype=xp.float64), out[:1]
    )
    assert float(v[0]) == 2.0**-1007 and float(out[0]) == pytest.approx(37.4, abs=0.05)


def test_a_cut_off_radius_would_cost_delta_the_accountant_does_not_count():
    """Why the tail matters: with noise cut off at radius R std, a neighbour's sum moved by
    2C = 2 std / z along one pair (z = 0.5) puts outputs within R of one centre and beyond
    R of the other; their probability, a delta no accountant counts, is ~exp(-(R - 4)^2/2)."""
    rng = np.random.default_rng(0)
    pairs = rng.standard_normal((4_000_000, 2))
    shifted = pairs + [4.0, 0.0]  # the neighbour's centre, 2 / z = 4 std away
    for cut, at_least in ((5.77, 1e-3), (8.57, 1e-6)):
        inside = np.hypot(*pairs.T) <= cut  # drawn under D, possible under a cut-off
        beyond = np.hypot(*shifted.T) > cut  # impossible for D' under the same cut-off
        assert (inside & beyond).mean() >= at_least


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
