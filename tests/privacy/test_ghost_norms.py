import pytest
import torch
from opacus.grad_sample.conv import compute_conv_grad_sample
from torch import nn

from dpmed.privacy import ghost_norms


@pytest.mark.parametrize(
    ("layer", "size", "gram"),
    [
        (nn.Conv2d(64, 96, 3, padding=1), 4, True),
        (nn.Conv2d(48, 64, 3, stride=2, padding=1, bias=False), 7, True),
        (nn.Conv2d(32, 64, 3, dilation=2, padding="same"), 5, True),
        (nn.Conv2d(64, 64, (1, 3), padding="valid"), 6, True),
        (nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False), 28, False),
        (nn.Conv2d(32, 64, 3, padding=1, groups=2), 4, False),
    ],
)
def test_conv_norms_are_those_of_the_per_image_gradients(monkeypatch, layer, size, gram):
    """Gram-matrix norms (deep layers) and formed-gradient norms (early or grouped layers)
    equal the norms of Opacus's per-image gradients."""
    formed = []
    monkeypatch.setattr(
        ghost_norms,
        "compute_conv_grad_sample",
        lambda *args: formed.append(1) or compute_conv_grad_sample(*args),
    )
    torch.manual_seed(0)
    x = torch.randn(5, layer.in_channels, size, size)
    backprops = torch.randn_like(layer(x))
    norms = ghost_norms.conv2d_norm_sample(layer, [x], backprops)
    assert bool(formed) != gram  # the path the layer's shape calls for
    grads = compute_conv_grad_sample(layer, [x], backprops)
    assert norms.keys() == grads.keys()
    for p, grad in grads.items():
        assert torch.allclose(norms[p], grad.flatten(1).norm(dim=1), rtol=1e-4)
