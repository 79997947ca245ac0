import copy
import dataclasses
import functools
import math

import dp_accounting
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from opacus.optimizers import DPOptimizer
from scipy.optimize import brentq
from scipy.stats import norm
from torch import nn
from torchvision.models import resnet18

from dpmed.errors import ConfigError
from dpmed.models import build_model
from dpmed.privacy.dpsgd import (
    BALANCED_LOSS,
    DPSGD,
    calibrate_noise,
    check_trainable,
    dpsgd_guarantee,
    epsilon_after,
)
from dpmed.train.loop import TrainSettings, _average_copies, _losses, fit, random_affine
from tests.train.helpers import assert_trained_alike, flat


def _google_epsilon(sigma: float, q: float, steps: int, delta: float, relation) -> float:
    """Google's dp-accounting PLD (its default, finer grid) for the Poisson-subsampled
    Gaussian under `relation`."""
    pld = dp_accounting.pld.PLDAccountant(relation)
    pld.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps)
    return pld.get_epsilon(delta)


REPLACE_ONE = dp_accounting.NeighboringRelation.REPLACE_ONE
ADD_REMOVE = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE


def _hockey_stick(epsilon: float, *, sigma: float, q: float, a: float, b: float) -> float:
    """delta(epsilon) of one Poisson-sampled Gaussian step when one record's clipped
    gradient (in units of C, along one direction) a is replaced by b: the larger of
    int max(0, p - e^eps p') and its mirror, p = (1-q) N(0, s^2) + q N(a, s^2),
    p' = (1-q) N(0, s^2) + q N(b, s^2), on a fine grid (step s / 2,000)."""
    x = np.linspace(-40 * sigma - 2, 40 * sigma + 2, 160_001)
    p, p_other = ((1 - q) * norm.pdf(x, scale=sigma) + q * norm.pdf(x, m, sigma) for m in (a, b))
    return max(
        np.trapezoid(np.maximum(0.0, first - math.exp(epsilon) * second), x)
        for first, second in ((p, p_other), (p_other, p))
    )


@pytest.mark.parametrize(("sigma", "q"), [(0.8, 0.5), (1.5, 0.1), (3.0, 1.0)])
def test_one_step_epsilon_is_the_replace_one_hockey_stick_divergence(sigma, q):
    """One step: our epsilon at delta against an independent numeric evaluation of the two
    Gaussian mixtures, gradient e replaced by -e (the worst pair: e by 0, which is
    add/remove, or by -e/2 gives a smaller delta)."""
    delta = 1e-5
    ours = epsilon_after(noise_multiplier=sigma, sample_rate=q, steps=1, delta=delta)
    worst = functools.partial(_hockey_stick, sigma=sigma, q=q, a=1.0, b=-1.0)
    exact = brentq(lambda eps: worst(eps) - delta, 1e-6, 50, xtol=1e-10)
    assert exact <= ours <= 1.01 * exact  # an upper bound (pessimistic grid), and tight
    for b in (0.0, -0.5):
        assert _hockey_stick(ours, sigma=sigma, q=q, a=1.0, b=b) < worst(ours)


@pytest.mark.parametrize(
    ("sigma", "q", "steps"), [(1.0, 0.01, 1000), (0.8, 0.05, 300), (3.97, 256 / 4708, 95)]
)
def test_replace_one_lies_between_add_remove_and_its_group_privacy_conversion(sigma, q, steps):
    """Many steps: at least the add/remove epsilon (removing a record is one way to replace
    it), at most replace = remove + add: (2 eps, (1 + e^eps) delta) of add/remove."""
    delta = 1e-5
    ours = epsilon_after(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta)
    add_remove = _google_epsilon(sigma, q, steps, delta, ADD_REMOVE)
    assert ours > 1.1 * add_remove
    assert ours == pytest.approx(_google_epsilon(sigma, q, steps, delta, REPLACE_ONE), rel=0.01)
    half = _google_epsilon(sigma, q, steps, delta / 3, ADD_REMOVE)  # delta' for the conversion
    converted_delta = (1 + math.exp(half)) * delta / 3
    at_converted = epsilon_after(
        noise_multiplier=sigma, sample_rate=q, steps=steps, delta=converted_delta
    )
    assert at_converted <= 2 * half


@pytest.mark.parametrize("target", [0.5, 2.0, 8.0])
def test_calibrated_noise_never_exceeds_the_target_under_replace_one(target):
    sigma = calibrate_noise(target_epsilon=target, delta=1e-5, sample_rate=0.02, steps=500)
    spent = epsilon_after(noise_multiplier=sigma, sample_rate=0.02, steps=500, delta=1e-5)
    assert 0.97 * target <= spent <= target
    finer = _google_epsilon(sigma, 0.02, 500, 1e-5, REPLACE_ONE)  # also an upper bound
    assert 0.97 * target <= finer <= target * (1 + 1e-3)


def _dpsgd(**changes):
    """A DPSGD plan with plain settings (noise 1, clip 1, rate 0.1), `changes` applied."""
    settings = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "sample_rate": 0.1}
    settings |= {"delta": 1e-5, "accountant_name": "pld", "physical_batch_size": 8}
    return DPSGD(**settings | changes)


def test_only_the_replace_one_accountant_is_accepted():
    with pytest.raises(ConfigError, match="replace-one"):
        _dpsgd(accountant_name="prv")


def test_batchnorm_is_refused_with_the_layer_named():
    with pytest.raises(ConfigError, match="BatchNorm"):
        check_trainable(resnet18())
    check_trainable(build_model("small-cnn")[0])
    check_trainable(build_model("resnet18-gn")[0])


def _toy(n=256, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = rng.random((n, 16, 16)) * 0.5
    images[labels == 1, 4:12, 4:12] += 0.5
    return images.astype(np.float16), labels


def _initial(model="small-cnn") -> nn.Module:
    """The model every _dp_fit starts from: a name for build_model, or a factory."""
    torch.manual_seed(0)
    return build_model(model)[0] if isinstance(model, str) else model()


def _dp_fit(
    tmp_path,
    *,
    sigma,
    epochs=1,
    lr=0.05,
    physical=1000,
    data=None,
    model="small-cnn",
    batch=32,
    clip=1.0,
    mode="hooks",
    **settings,
):
    model = _initial(model)
    data = data or {"train": _toy(), "val": _toy(64, 1), "test": _toy(64, 2)}
    dp = DPSGD(
        noise_multiplier=sigma,
        max_grad_norm=clip,
        sample_rate=batch / len(data["train"][1]),
        delta=1e-5,
        accountant_name="pld",
        physical_batch_size=physical,
        grad_sample_mode=mode,
    )
    settings = TrainSettings(
        epochs=epochs, batch_size=batch, lr=lr, optimizer="sgd", seed=0, **settings
    )
    records = fit(
        model, data, settings, device=torch.device("cpu"), checkpoint=tmp_path / "m.pt", dp=dp
    )
    return model, dp, records


def test_a_dp_run_records_its_steps_and_its_epsilon(tmp_path):
    _, dp, _ = _dp_fit(tmp_path, sigma=1.0, epochs=2)
    assert dp.steps == 2 * 8  # 1/q logical batches per epoch
    expected = _google_epsilon(1.0, 32 / 256, dp.steps, 1e-5, REPLACE_ONE)
    assert dp.epsilon() == pytest.approx(expected, rel=0.01)


def test_physical_chunks_do_not_change_the_result(tmp_path, noise_key):
    whole, dp_whole, _ = _dp_fit(tmp_path, sigma=0.0)
    chunked, dp_chunked, _ = _dp_fit(tmp_path, sigma=0.0, physical=13)
    assert dp_whole.steps == dp_chunked.steps
    assert_trained_alike(flat(_initial()), whole, chunked)


def _rows(n=64, seed=0):
    """Table rows (N, 5) for a linear model: class 1 shifts the first feature."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    rows = rng.normal(size=(n, 5)) + 3 * labels[:, None] * np.eye(5)[0]
    return rows.astype(np.float32), labels


LINEAR = {
    "model": lambda: nn.Linear(5, 2),
    "data": {"train": _rows(), "val": _rows(16, 1), "test": _rows(16, 2)},
    "batch": 2,  # q = 1/32: a few of the 32 Poisson batches are empty (noise-only steps)
}
SMALL_CNN = {"model": "small-cnn"}


@pytest.mark.parametrize(
    ("physical", "sigma"), [(1000, 0.0), (3, 0.0), (1000, 0.5)], ids=["whole", "chunked", "noised"]
)
@pytest.mark.parametrize("setup", [SMALL_CNN, LINEAR], ids=["small-cnn", "linear"])
@pytest.mark.parametrize("mode", ["ghost", "bk", "ew"])
def test_faster_modes_train_the_same_model_as_hooks(
    tmp_path, noise_key, mode, setup, physical, sigma
):
    """With the same seed and the same noise (one noise key), ghost clipping's,
    book-keeping's and expanded weights' clipped, noised sums are the one of Opacus's
    per-sample hooks (auto picks them): the same parameters after an epoch, the same
    steps for the accountant. Without noise the clipped sums alone are compared."""
    fits = {
        mode: _dp_fit(tmp_path, sigma=sigma, clip=0.1, physical=physical, mode=mode, **setup)
        for mode in ("hooks", mode)
    }
    (hooks, dp_hooks, _), (other, dp_other, _) = fits.values()
    assert_trained_alike(flat(_initial(setup["model"])), hooks, other)
    assert dp_other.accountant.history == dp_hooks.accountant.history
    assert dp_other.steps == dp_hooks.steps == round(1 / dp_hooks.sample_rate)


def test_ghost_clipping_takes_noise_only_steps_and_spends_the_same_epsilon(tmp_path, noise_key):
    _, dp_hooks, _ = _dp_fit(tmp_path, sigma=1.0, **LINEAR)
    model, dp_ghost, _ = _dp_fit(tmp_path, sigma=1.0, mode="ghost", **LINEAR)
    epoch = dataclasses.replace(dp_ghost).batches(64)  # with the noise key: the epoch fit drew
    assert [] in list(epoch)
    assert dp_ghost.steps == dp_hooks.steps == 32
    assert dp_ghost.epsilon() == dp_hooks.epsilon() > 0
    assert all(torch.isfinite(p).all() for p in model.parameters())


def _noiseless_step(model, mode, x, targets, *, clip, lr=0.7):
    """One DP-SGD step without noise on the batch x, as if 1 in 25 of 100 images."""
    dp = DPSGD(
        noise_multiplier=0.0,
        max_grad_norm=clip,
        sample_rate=len(x) / 100,
        delta=1e-5,
        accountant_name="pld",
        physical_batch_size=len(x),
        grad_sample_mode=mode,
    )
    private, optimizer = dp.wrap(model, torch.optim.SGD(model.parameters(), lr=lr), 100)
    optimizer.zero_grad()
    dp.backward(F.cross_entropy(private(x), targets, reduction="none"))
    optimizer.step()


@pytest.mark.parametrize("mode", ["hooks", "ghost", "bk"])
def test_one_huge_gradient_moves_the_model_by_at_most_lr_clip_over_batch(mode):
    """Three examples with zero gradient and one whose gradient is ~1e3: without noise,
    one SGD step moves the weights by exactly lr * C / B, the clipped example's share."""
    lr, clip, batch = 0.7, 0.3, 4
    torch.manual_seed(0)
    model = nn.Linear(3, 2, bias=False)
    before = model.weight.detach().clone()
    x = torch.zeros(batch, 3)
    x[0] = 1e3  # the others have input 0: no weight gradient
    wrong = model(x).argmin(dim=1)  # a confident mistake: a gradient of norm ~1e3
    _noiseless_step(model, mode, x, wrong, clip=clip, lr=lr)
    moved = (model.weight - before).norm().item()
    assert moved == pytest.approx(lr * clip / batch, rel=1e-4)


@pytest.mark.parametrize("mode", ["ghost", "bk"])
def test_ghost_and_bookkeeping_step_resnet18_gn_as_per_image_gradients(mode):
    """Strided, 1x1 and deep convolutions (Gram-matrix norms), convolutions at one output
    position (layers 3 and 4 at 16 px: a GEMM for bk) and GroupNorm."""
    x, targets = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 1, 0])
    models = {}
    for name in ("hooks", mode):
        torch.manual_seed(0)
        models[name] = build_model("resnet18-gn")[0]
        _noiseless_step(models[name], name, x, targets, clip=0.5)
    hooks, other = models.values()
    for a, b in zip(hooks.parameters(), other.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_bookkeeping_stops_at_the_first_layers_output_unless_it_is_changed_in_place():
    """bk's one backward pass needs the first conv's output gradient, not its weight's: it
    stops at that output, and no weight gradient is formed (the weight's hook never fires).
    An in-place ReLU changes the output, so the pass stops at the weight instead; the
    two take the same step."""
    x, targets = torch.randn(6, 1, 5, 5), torch.tensor([0, 1, 1, 0, 1, 0])
    stepped, formed = [], []
    for inplace in (False, True):
        torch.manual_seed(0)
        conv = nn.Conv2d(1, 3, 3)
        model = nn.Sequential(conv, nn.ReLU(inplace=inplace), nn.Flatten(), nn.Linear(27, 2))
        conv.weight.register_hook(lambda grad, inplace=inplace: formed.append(inplace))
        _noiseless_step(model, "bk", x, targets, clip=0.5)
        stepped.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert formed == [True]
    assert torch.allclose(*stepped, atol=1e-6)


class _UnusedLayer(nn.Module):
    def __init__(self):
        super().__init__()
        self.used, self.unused = nn.Linear(3, 2), nn.Linear(3, 2)

    def forward(self, x):
        self.unused(x)  # its output never reaches the loss: no gradient norm
        return self.used(x)


@pytest.mark.parametrize("mode", ["ghost", "bk"])
def test_ghost_clipping_refuses_a_layer_it_took_no_norm_for(mode):
    """A layer without a norm must not be clipped with an old one."""
    torch.manual_seed(0)
    x, targets = torch.randn(4, 3), torch.ones(4).long()
    with pytest.raises(ConfigError, match="no gradient norm for a trained layer"):
        _noiseless_step(_UnusedLayer(), mode, x, targets, clip=1.0)


def test_ghost_clipping_refuses_the_adaptive_variants():
    settings = dict(noise_multiplier=1.0, max_grad_norm=1.0, sample_rate=0.1, delta=1e-5)
    settings |= dict(accountant_name="pld", physical_batch_size=8, grad_sample_mode="ghost")
    with pytest.raises(ValueError, match="per-image gradients"):
        DPSGD(**settings, clipping="adaptive")
    with pytest.raises(ValueError, match="per-image gradients"):
        DPSGD(**settings, noise_allocation="equal")


def test_dp_sgd_learns_an_easy_task_with_moderate_noise(tmp_path):
    _, _, records = _dp_fit(tmp_path, sigma=0.5, epochs=4, lr=0.5)
    assert records[-1].metrics["test"]["roc_auc"] > 0.8


def _first_example_grad(loss_fn, labels: list[int]) -> torch.Tensor:
    """Opacus's per-example gradient of example 0 of a batch with these labels."""
    from opacus import GradSampleModule

    torch.manual_seed(0)
    model = GradSampleModule(torch.nn.Linear(3, 2))
    x = torch.ones(len(labels), 3)
    loss_fn(model(x), torch.tensor(labels)).backward()
    return model._module.weight.grad_sample[0].clone()


def test_a_balanced_loss_keeps_each_examples_gradient_its_own():
    """DP-SGD's clipping bounds one example's effect only if its gradient does not depend
    on the others; PyTorch's weighted mean divides by the batch's summed weights."""
    weights = torch.tensor([0.7, 1.9])
    ours = lambda logits, y: _losses(logits, y, weights).mean()  # noqa: E731
    assert torch.allclose(
        _first_example_grad(ours, [0, 0, 0]), _first_example_grad(ours, [0, 1, 1])
    )
    torch_mean = lambda logits, y: F.cross_entropy(logits, y, weight=weights)  # noqa: E731
    a, b = _first_example_grad(torch_mean, [0, 0, 0]), _first_example_grad(torch_mean, [0, 1, 1])
    assert not torch.allclose(a, b)


def test_a_balanced_loss_is_named_in_the_dp_sgd_guarantee():
    dp = _dpsgd()
    assert BALANCED_LOSS in dpsgd_guarantee(dp, balanced_loss=True).assumptions
    assert BALANCED_LOSS not in dpsgd_guarantee(dp).assumptions


def _clipped_sum(gradients: list[torch.Tensor], clip: float) -> torch.Tensor:
    """Sum of the rows of per-example gradients (one tensor per parameter), each row
    clipped to norm `clip` over all parameters."""
    flat = torch.cat([g.flatten(1) for g in gradients], dim=1)
    factors = (clip / (flat.norm(dim=1) + 1e-6)).clamp(max=1.0)
    return (factors[:, None] * flat).sum(dim=0)


def test_augmentation_multiplicity_clips_each_image_once(tmp_path):
    """One DP step (no noise, clip C) over B images with K = 4 augmented copies each: B
    per-image gradients, each the mean of its copies' gradients clipped to C, summed and
    divided by the expected B images. Clipping every copy instead would add up to K*B*C."""
    images, copies, n_train, clip = 5, 4, 50, 0.05
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.GroupNorm(1, 2), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 2)
    )
    plain = copy.deepcopy(net)
    x = random_affine(
        torch.randn(images, 1, 6, 6).repeat_interleave(copies, 0), torch.Generator().manual_seed(0)
    )
    y = torch.tensor([0, 1, 1, 0, 1]).repeat_interleave(copies)
    dp = DPSGD(
        noise_multiplier=0.0,
        max_grad_norm=clip,
        sample_rate=images / n_train,
        delta=1e-5,
        accountant_name="pld",
        physical_batch_size=images,
    )
    private, optimizer = dp.wrap(net, torch.optim.SGD(net.parameters(), lr=1.0), n_train)
    before = torch.cat([p.detach().flatten() for p in net.parameters()])
    _losses(private(x), y, None).mean().backward()
    _average_copies(private, copies)
    norms = torch.stack([g.flatten(1).norm(dim=1) for g in optimizer.grad_samples], 1).norm(dim=1)
    assert len(norms) == images and (norms > clip).all()  # one row per image, each clipped
    optimizer.step()
    summed = images * (before - torch.cat([p.detach().flatten() for p in net.parameters()]))

    rows = []  # every copy's own gradient, by plain autograd on an untouched twin
    for j in range(len(y)):
        plain.zero_grad()
        _losses(plain(x[j : j + 1]), y[j : j + 1], None).mean().backward()
        rows.append([p.grad.clone() for p in plain.parameters()])
    per_copy = [torch.stack(g) for g in zip(*rows, strict=True)]
    per_image = [g.view(images, copies, *g.shape[1:]).mean(dim=1) for g in per_copy]
    assert torch.allclose(summed, _clipped_sum(per_image, clip), atol=1e-6)
    assert summed.norm() <= images * clip * (1 + 1e-5)
    clipped_copies = _clipped_sum(per_copy, clip)  # what skipping the average would add
    assert not torch.allclose(summed, clipped_copies, atol=1e-3)
    assert clipped_copies.norm() > images * clip


def test_fit_clips_one_row_per_image_with_copies(tmp_path, monkeypatch):
    """Inside fit, Opacus clips as many rows as the chunk has images, not images x K; an
    empty Poisson batch still takes its noise-only step."""
    drawn, clipped = [], []
    draw, clip = DPSGD.batches, DPOptimizer.clip_and_accumulate

    def batches(self, n_train):
        yield []  # an empty Poisson batch first
        yield from draw(self, n_train)

    def record_draws(self, n_train):
        for chunks in batches(self, n_train):
            drawn.extend([len(chunk) for chunk in chunks] or [0])
            yield chunks

    def record_clips(self):
        clipped.append(len(self.grad_samples[0]))
        clip(self)

    monkeypatch.setattr(DPSGD, "batches", record_draws)
    monkeypatch.setattr(DPOptimizer, "clip_and_accumulate", record_clips)
    _, dp, _ = _dp_fit(tmp_path, sigma=1.0, physical=13, augment=True, augment_multiplicity=4)
    assert clipped == drawn and sum(drawn) > 0
    assert dp.steps == 8 + 1


def test_identical_copies_take_the_same_dp_steps_as_one(tmp_path, noise_key):
    """Un-augmented copies average to the image's own gradient: K = 2 trains like K = 1
    (no noise, chunked). Without the average each image would count twice."""
    one, _, _ = _dp_fit(tmp_path, sigma=0.0, physical=13)
    two, _, _ = _dp_fit(tmp_path, sigma=0.0, physical=13, augment_multiplicity=2)
    assert_trained_alike(flat(_initial()), one, two)
