import dataclasses
import math

import pytest
import torch
from torch import nn

from dpmed import cli
from dpmed.bench.sweep import load_sweep
from dpmed.config import RunConfig
from dpmed.errors import ConfigError
from dpmed.privacy.adaptive_dpsgd import (
    SHARE_FLOOR,
    AdaptiveClipping,
    NoiseAllocation,
    count_noise_std,
    gradient_noise_multiplier,
    information_shares,
    layer_groups,
)
from dpmed.privacy.dpsgd import dpsgd_privacy, epsilon_after, plan_dpsgd
from dpmed.train.loop import TrainSettings, fit
from tests.privacy.test_dpsgd import _toy


def _step(optimizer, per_image: list[torch.Tensor], *, skip: bool = False) -> None:
    """One optimizer step on given per-image gradients (one tensor per parameter)."""
    optimizer.zero_grad()
    for p, grad_sample in zip(optimizer.params, per_image, strict=True):
        p.grad_sample = grad_sample.clone()
    if skip:
        optimizer.signal_skip_step(True)
    optimizer.step()


def _adaptive(dim=8, *, sigma=1.0, clip=1.0, batch=200, quantile=0.5, seed=0):
    model = nn.Linear(dim, 1, bias=False)
    return AdaptiveClipping(
        torch.optim.SGD(model.parameters(), lr=0.0),
        noise_multiplier=sigma,
        max_grad_norm=clip,
        expected_batch_size=batch,
        target_unclipped_quantile=quantile,
        generator=torch.Generator().manual_seed(seed),
    )


def test_the_count_of_unclipped_images_has_sensitivity_one_half():
    opt = _adaptive(clip=1.0)
    grads = torch.randn(10, 1, 8)
    grads[0] *= 0.01 / grads[0].norm()  # unclipped
    for with_first, without_first in [(grads, grads[1:]), (grads[1:], grads)]:
        counts = []
        for batch in (with_first, without_first):
            opt.zero_grad()
            opt.params[0].grad_sample = batch.clone()
            opt.clip_and_accumulate()
            counts.append(float(opt.unclipped_num))
        assert abs(counts[0] - counts[1]) == 0.5


def test_adaptive_clipping_keeps_the_accounted_noise_multiplier():
    """The gradient noise (z_grad C) and the count noise (s_b), measured, compose by
    Theorem 1 to the multiplier the accountant is fed; the epsilon reported is its."""
    sigma, batch = 2.5, 40  # count noise std 2: the count takes a visible part of the budget
    opt = _adaptive(dim=100, sigma=sigma, batch=batch, clip=1.0)
    opt.update_max_grad_norm = lambda: None  # hold C at 1 to measure the noise
    gradient_noise, count_noise = [], []
    for _ in range(800):
        _step(opt, [torch.zeros(batch, 1, 100)])  # every image unclipped: count = batch/2
        gradient_noise.append(opt.params[0].grad.flatten() * batch)  # undo the mean
        count_noise.append(float(opt.unclipped_num) - batch / 2)
    z_grad = torch.cat(gradient_noise).std().item()
    s_b = torch.tensor(count_noise).std().item()
    assert z_grad == pytest.approx(gradient_noise_multiplier(sigma, count_noise_std(batch)), 0.02)
    assert s_b == pytest.approx(count_noise_std(batch), rel=0.1)
    composed = (z_grad**-2 + (2 * s_b) ** -2) ** -0.5
    assert composed == pytest.approx(sigma, rel=0.03)
    assert z_grad > 1.2 * sigma  # the count's budget is paid by more gradient noise

    dp = plan_dpsgd(
        n_train=1000,
        batch_size=batch,
        epochs=2,
        target_epsilon=None,
        noise_multiplier=sigma,
        delta=1e-5,
        max_grad_norm=1.0,
        accountant="pld",
        physical_batch_size=None,
        clipping="adaptive",
    )
    model = nn.Linear(4, 2)
    _, dp_opt = dp.wrap(model, torch.optim.SGD(model.parameters(), lr=0.1), 1000)
    for _ in range(7):
        _step(dp_opt, [torch.randn(batch, 2, 4), torch.randn(batch, 2)])
    assert {m for m, _, _ in dp.accountant.history} == {sigma}
    expected = epsilon_after(noise_multiplier=sigma, sample_rate=batch / 1000, steps=7, delta=1e-5)
    privacy = dpsgd_privacy(dp, target_epsilon=None, images_per_patient=1)
    assert privacy["epsilon"] == pytest.approx(expected, rel=1e-9)
    assert privacy["adapted"]["final_max_grad_norm"] != 1.0
    assert "Theorem 1" in privacy["accounting"]


@pytest.mark.parametrize("quantile", [0.5, 0.8])
def test_the_clip_bound_moves_to_the_target_quantile(quantile):
    batch, gen = 400, torch.Generator().manual_seed(1)
    norms = torch.exp(torch.randn(20_000, generator=gen) * 0.5 + math.log(5.0))  # median 5
    opt = _adaptive(dim=4, sigma=1.0, batch=batch, clip=0.5, quantile=quantile)
    for step in range(150):
        chosen = norms[step * 100 : step * 100 + batch]
        direction = torch.nn.functional.normalize(torch.randn(batch, 1, 4, generator=gen), dim=2)
        _step(opt, [direction * chosen[:, None, None]])
    target = norms.quantile(quantile).item()
    assert opt.max_grad_norm == pytest.approx(target, rel=0.15)


def test_adaptive_clipping_counts_every_chunk_of_a_logical_batch():
    grads = torch.randn(30, 1, 8) * torch.linspace(0.1, 3, 30)[:, None, None]
    whole = _adaptive()
    whole.params[0].grad_sample = grads.clone()
    whole.clip_and_accumulate()
    chunked = _adaptive()
    _step(chunked, [grads[:11]], skip=True)
    chunked.zero_grad()  # between chunks the loop clears per-image gradients only
    chunked.params[0].grad_sample = grads[11:].clone()
    chunked.clip_and_accumulate()
    assert float(chunked.unclipped_num) == float(whole.unclipped_num)


def _allocation(shares=None, *, sigma=1.0, clip=1.0, batch=50, allocation="equal", every=1000):
    model = nn.Sequential(nn.Linear(30, 20), nn.Linear(20, 10), nn.Linear(10, 5))
    opt = NoiseAllocation(
        torch.optim.SGD(model.parameters(), lr=0.0),
        groups=layer_groups(model),
        allocation=allocation,
        steps_per_update=every,
        noise_multiplier=sigma,
        max_grad_norm=clip,
        expected_batch_size=batch,
        generator=torch.Generator().manual_seed(0),
    )
    if shares is not None:
        opt.shares = torch.tensor(shares)
    return opt


def _per_image(opt, n, scale=1.0):
    return [scale * torch.randn(n, *p.shape) for p in opt.params]


def test_per_group_noise_scaled_by_its_std_is_standard_normal():
    sigma, clip, shares = 0.8, 2.0, [0.7, 0.2, 0.1]
    opt = _allocation(shares, sigma=sigma, clip=clip)
    group_std = sigma / torch.tensor(shares).sqrt() * clip / math.sqrt(3)  # sigma_g C_g
    scaled = {g: [] for g in range(3)}
    for _ in range(100):
        _step(opt, [torch.zeros(opt.expected_batch_size, *p.shape) for p in opt.params])
        for p, g in zip(opt.params, opt.group_of, strict=True):
            scaled[g].append((p.grad * opt.expected_batch_size / group_std[g]).flatten())
    for values in scaled.values():
        values = torch.cat(values)
        assert values.mean().abs() < 0.02
        assert values.pow(2).mean().item() == pytest.approx(1.0, abs=0.03)


def test_one_image_moves_the_scaled_sum_by_one_over_the_accounted_multiplier():
    """Scaled by 1/(sigma_g C_g), one image (clipped per group) moves the sum by at most
    sqrt(sum_g 1/sigma_g^2) = 1/sigma_eff, reached by a large gradient."""
    sigma, shares = 1.3, [0.5, 0.3, 0.2]
    opt = _allocation(shares, sigma=sigma)
    batch = _per_image(opt, 20, scale=100.0)  # every image's groups are clipped to C_g
    sums = []
    for images in (slice(0, 20), slice(1, 20)):
        opt.zero_grad()
        for p, grad_sample in zip(opt.params, batch, strict=True):
            p.grad_sample = grad_sample[images].clone()
        opt.clip_and_accumulate()
        sums.append([p.summed_grad for p in opt.params])
    scale = opt.group_noise_multipliers() * opt.group_clip
    moved = sum(
        ((a - b) / scale[g]).pow(2).sum() for a, b, g in zip(*sums, opt.group_of, strict=True)
    )
    assert moved.sqrt().item() == pytest.approx(1 / sigma, rel=1e-4)
    assert (opt.group_noise_multipliers() ** -2).sum().item() == pytest.approx(sigma**-2)


def test_shares_sum_to_one_and_follow_the_information():
    sizes = torch.tensor([100.0, 100.0, 1000.0, 10.0])
    shares = information_shares(torch.tensor([0.0, 50.0, 500.0, -3.0]), sizes, torch.ones(4))
    assert shares.sum().item() == pytest.approx(1.0)
    assert shares[0] == shares.min() == pytest.approx(SHARE_FLOOR / 4)  # no signal: the floor
    assert shares[3] == pytest.approx(SHARE_FLOOR / 4)  # estimate below zero counts as none
    assert shares[2] > shares[1] > shares[0]
    nothing = information_shares(torch.zeros(4), sizes, torch.ones(4))
    assert torch.allclose(nothing, torch.full((4,), 0.25))


def test_entropy_shares_move_away_from_a_group_without_gradient():
    opt = _allocation(sigma=1.0, batch=50, allocation="entropy", every=5)
    for _ in range(5):
        per_image = _per_image(opt, 50)
        for grad_sample, g in zip(per_image, opt.group_of, strict=True):
            grad_sample[:] = 0 if g == 1 else 1.0  # group 1: no gradient
        _step(opt, per_image)
    assert opt.shares.sum().item() == pytest.approx(1.0)
    assert opt.shares.argmin().item() == 1
    # group 1's estimated signal is noise alone: clamped to none, or small next to the others'
    assert SHARE_FLOOR / 3 <= opt.shares[1].item() < 0.5 / 3
    constant = _allocation(allocation="equal", every=5)
    for _ in range(5):
        _step(constant, _per_image(constant, 50))
    assert torch.allclose(constant.shares, torch.full((3,), 1 / 3))


def test_adaptive_variants_spend_the_epsilon_of_their_constant_twin(tmp_path):
    data = {"train": _toy(), "val": _toy(64, 1), "test": _toy(64, 2)}
    settings = TrainSettings(epochs=1, batch_size=64, lr=0.1, optimizer="sgd", seed=0)
    planned = plan_dpsgd(
        n_train=256,
        batch_size=64,
        epochs=1,
        target_epsilon=2.0,
        noise_multiplier=None,
        delta=1e-5,
        max_grad_norm=1.0,
        accountant="pld",
        physical_batch_size=None,
    )
    spent = {}
    for variant in (
        {},
        {"clipping": "adaptive"},
        *({"noise_allocation": a} for a in ("equal", "entropy")),
    ):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Flatten(), nn.Linear(256, 8), nn.ReLU(), nn.Linear(8, 2))
        dp = dataclasses.replace(planned, **variant)  # a fresh accountant
        fit(model, data, settings, device=torch.device("cpu"), checkpoint=tmp_path / "m.pt", dp=dp)
        spent[str(variant)] = dpsgd_privacy(dp, target_epsilon=2.0, images_per_patient=1)
    flat = spent.pop("{}")
    assert flat["adapted"] == {} and 1.9 <= flat["epsilon"] <= 2.0
    for privacy in spent.values():
        assert privacy["epsilon"] == flat["epsilon"]
        assert privacy["noise_multiplier"] == flat["noise_multiplier"]
        assert privacy["adapted"]
        assert "Theorem 1" in privacy["accounting"] or "sum 1/sigma_g^2" in privacy["accounting"]
    shares = spent[str({"noise_allocation": "entropy"})]["adapted"]["final_shares"]
    assert set(shares) == set(layer_groups(model))
    assert sum(shares.values()) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"technique": "laplace", "clipping": "adaptive"}, "are for dp-sgd"),
        ({"clipping": "smart"}, "unknown clipping 'smart'"),
        ({"noise_allocation": "random"}, "unknown noise_allocation"),
        ({"clipping": "adaptive", "noise_allocation": "entropy"}, "not adaptive"),
        ({"target_unclipped_quantile": 0.5}, "is for clipping adaptive"),
        ({"clipping": "adaptive", "target_unclipped_quantile": 1.0}, r"lie in \(0, 1\)"),
    ],
)
def test_bad_adaptive_settings_are_refused(values, message):
    base = {"technique": "dp-sgd", "target_epsilon": 1.0}
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_mapping(base | values)


def test_adaptive_clipping_refuses_a_batch_too_small_for_its_count():
    with pytest.raises(ConfigError, match="raise the batch size"):
        plan_dpsgd(
            n_train=1000,
            batch_size=10,  # count noise std 0.5: the multiplier must stay below 1
            epochs=1,
            target_epsilon=None,
            noise_multiplier=1.5,
            delta=1e-5,
            max_grad_norm=1.0,
            accountant="pld",
            physical_batch_size=None,
            clipping="adaptive",
        )


def test_a_bad_adaptive_flag_ends_in_one_line_and_exit_code_2(capsys):
    flags = ["run", "--technique", "dp-sgd", "--target-epsilon", "1", "--clipping", "smart"]
    assert cli.main(flags) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_the_preset_pairs_every_variant_with_its_twin_at_each_epsilon():
    runs = [run.config for run in load_sweep("adaptive-dpsgd").runs()]
    configs = [c for c in runs if c.technique == "dp-sgd"]
    variants = {(c.clipping, c.noise_allocation, c.target_epsilon) for c in configs}
    assert len(variants) == 8 and len(configs) == 40
    assert {c.technique for c in runs} == {"dp-sgd", "none"} and len(runs) == 45
