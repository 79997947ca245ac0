import pytest
import torch
from opacus.grad_sample.group_norm import compute_group_norm_grad_sample
from torch import nn

from dpmed.errors import ConfigError
from dpmed.privacy.bookkeeping import NORMS_AND_GRADIENTS, BookKeeping, clipped_sums

LAYERS = {
    "conv": (lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1), (5, 3, 9, 9)),
    "conv-grouped": (lambda: nn.Conv2d(4, 6, 3, groups=2, dilation=2), (5, 4, 9, 9)),
    # Gradients above ghost_norms.SMALL_GRADIENT, not formed:
    "conv-deep": (lambda: nn.Conv2d(64, 32, 3), (5, 64, 4, 4)),  # Gram-matrix norms
    "conv-one-position": (  # a GEMM of the unfolded input (strided), then of a 1-px input
        lambda: nn.Sequential(
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.Conv2d(64, 32, 3, padding=1),
        ),
        (5, 32, 2, 2),
    ),
    "conv-one-position-over-padding": (
        lambda: nn.Conv2d(4, 3, 1, stride=4, padding=1),
        (5, 4, 1, 1),
    ),
    "linear": (lambda: nn.Linear(7, 3), (5, 7)),
    "linear-sequence": (lambda: nn.Linear(7, 3), (5, 4, 7)),
    "groupnorm": (lambda: nn.GroupNorm(2, 4), (5, 4, 6, 6)),
    "conv-groupnorm-inplace-relu-linear": (
        lambda: nn.Sequential(
            nn.Conv2d(2, 4, 3),
            nn.GroupNorm(2, 4),
            nn.ReLU(inplace=True),  # modifies the GroupNorm's output after its hook
            nn.Flatten(),
            nn.Linear(4 * 4 * 4, 3),
        ),
        (5, 2, 6, 6),
    ),
}


def _loss(model, x, targets):
    return ((model(x) - targets) ** 2).flatten(1).sum(dim=1)


@pytest.mark.parametrize("name", LAYERS)
def test_clipped_sums_are_the_sums_of_clipped_per_example_gradients(name):
    """Against one backward pass per example: sum_i min(1, C / ||g_i||) g_i, with C the
    median norm so that some examples are clipped and some are not."""
    build, shape = LAYERS[name]
    torch.manual_seed(0)
    model, x = build(), torch.randn(shape)
    targets = torch.randn_like(model(x))
    params = list(model.parameters())
    per_example = [
        torch.autograd.grad(_loss(model, x[i : i + 1], targets[i : i + 1]).sum(), params)
        for i in range(shape[0])
    ]
    norms = torch.stack([torch.cat([g.flatten() for g in grads]).norm() for grads in per_example])
    clip = norms.median().item()
    factors = (clip / (norms + 1e-6)).clamp(max=1)
    assert (factors < 1).any() and (factors == 1).any()
    bookkeeping = BookKeeping(model, clip)
    leaf = x.clone().requires_grad_()
    torch.autograd.grad(_loss(model, leaf, targets).sum(), leaf)
    sums = bookkeeping.clipped_sums()
    assert set(sums) == set(params)
    for j, p in enumerate(params):
        expected = sum(c * grads[j] for c, grads in zip(factors, per_example, strict=True))
        assert torch.allclose(sums[p], expected, atol=1e-5), name


@pytest.mark.parametrize("size", [(5, 5), (2, 2), (1, 1)])
def test_group_norm_gradients_are_opacuss_per_example_gradients(size):
    """The batch as one example of n C channels in n G groups gives each example's own
    gradients (a frozen bias gets none)."""
    torch.manual_seed(0)
    layer = nn.GroupNorm(3, 6)
    nn.init.normal_(layer.weight)
    layer.bias.requires_grad_(False)
    x, g = torch.randn(4, 6, *size) * 3 + 1, torch.randn(4, 6, *size)
    norms, grads = NORMS_AND_GRADIENTS[nn.GroupNorm](layer, [x], g)
    expected = compute_group_norm_grad_sample(layer, [x], g)
    assert grads.keys() == norms.keys() == {layer.weight}
    assert torch.allclose(grads[layer.weight], expected[layer.weight], atol=1e-5)
    assert torch.allclose(norms[layer.weight], expected[layer.weight].norm(dim=1), atol=1e-5)


def test_a_layer_whose_output_misses_the_loss_is_refused():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    bookkeeping = BookKeeping(model, 1.0)
    x = torch.randn(4, 3, requires_grad=True)
    hidden = model[0](x)
    model[1](hidden)  # called, but its output is not backpropagated
    torch.autograd.grad(hidden.sum(), x)
    with pytest.raises(ConfigError, match="no gradient norm for a trained layer"):
        bookkeeping.clipped_sums()


def test_evaluation_keeps_nothing():
    model = nn.Linear(3, 2)
    bookkeeping = BookKeeping(model, 1.0)
    model.eval()
    model(torch.randn(4, 3))
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3))
    assert bookkeeping._kept == []


def test_per_example_gradients_already_formed_are_weighted_by_the_factors():
    grads = {"w": torch.randn(5, 3, 2), "b": torch.randn(5, 3)}
    factors = torch.rand(5)
    sums = clipped_sums(nn.GroupNorm(1, 3), None, None, factors, grads)
    for name, grad in grads.items():
        expected = sum(factors[i] * grad[i] for i in range(5))
        assert torch.allclose(sums[name], expected, atol=1e-6)


def test_a_frozen_bias_gets_no_sum():
    layer = nn.Linear(3, 2)
    layer.bias.requires_grad_(False)
    sums = clipped_sums(layer, torch.randn(4, 3), torch.randn(4, 2), torch.ones(4))
    assert list(sums) == [layer.weight]


def test_a_layer_without_a_clipped_sum_is_refused_with_what_to_do():
    with pytest.raises(ConfigError, match="use grad_sample_mode ghost"):
        BookKeeping(nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3)), 1.0)
