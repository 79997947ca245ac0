import pytest
import torch
from torch import nn

from dpmed.errors import ConfigError
from dpmed.privacy.bookkeeping import clipped_sums

LAYERS = {
    "conv": (lambda: nn.Conv2d(3, 4, 3, stride=2, padding=1), (5, 3, 9, 9)),
    "conv-grouped": (lambda: nn.Conv2d(4, 6, 3, groups=2, dilation=2), (5, 4, 9, 9)),
    "linear": (lambda: nn.Linear(7, 3), (5, 7)),
    "linear-sequence": (lambda: nn.Linear(7, 3), (5, 4, 7)),
    "groupnorm": (lambda: nn.GroupNorm(2, 4), (5, 4, 6, 6)),
}


@pytest.mark.parametrize("name", LAYERS)
def test_clipped_sums_are_the_factor_weighted_sums_of_per_example_gradients(name):
    """Against one backward pass per example: sum_i c_i dloss_i/dp."""
    build, shape = LAYERS[name]
    torch.manual_seed(0)
    layer, x = build(), torch.randn(shape)
    factors = torch.rand(shape[0])
    targets = torch.randn_like(layer(x))
    expected = {p: torch.zeros_like(p) for p in layer.parameters()}
    for i in range(shape[0]):
        loss = ((layer(x[i : i + 1]) - targets[i : i + 1]) ** 2).sum()
        for p, grad in zip(
            layer.parameters(), torch.autograd.grad(loss, list(layer.parameters())), strict=True
        ):
            expected[p] += factors[i] * grad
    out = layer(x)
    g = 2 * (out - targets).detach()  # each example's own loss, by its own output
    sums = clipped_sums(layer, x, g, factors)
    assert set(sums) == set(layer.parameters())
    for p, value in sums.items():
        assert torch.allclose(value, expected[p], atol=1e-5), name


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
        clipped_sums(
            nn.BatchNorm2d(3), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.ones(2)
        )
