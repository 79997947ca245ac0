import pytest
import torch
from opacus.grad_sample.conv import compute_conv_grad_sample
from torch import nn

from dpmed.privacy import ghost_norms


@pytest.mark.parametrize(
    ("layer", "size", "path"),
    [
        (nn.Conv2d(64, 96, 3, padding=1), 4, "shifted"),
        (nn.Conv2d(64, 48, (3, 2), padding=(1, 2)), 5, "shifted"),
        (nn.Conv2d(64, 64, 3), 5, "shifted"),
        (nn.Conv2d(128, 64, 3, padding=1), 1, "unfolded"),  # one position
        (nn.Conv2d(48, 64, 3, stride=2, padding=1, bias=False), 7, "unfolded"),
        (nn.Conv2d(32, 64, 3, dilation=2, padding="same"), 5, "unfolded"),
        (nn.Conv2d(64, 128, (1, 3), padding="valid"), 6, "unfolded"),
        (nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False), 28, "formed"),
        (nn.Conv2d(32, 64, 3, padding=1, groups=2), 4, "formed"),
        (nn.Conv2d(81, 16, 3, stride=2, padding=1), 7, "formed"),  # a small gradient
        (nn.Conv2d(4, 8, (3, 2), stride=(1, 2), dilation=(2, 1), padding=(2, 0)), 9, "formed"),
        (nn.Conv2d(4, 8, 3, padding="same"), 9, "formed"),
    ],
)
def test_conv_norms_are_those_of_the_per_image_gradients(monkeypatch, layer, size, path):
    """Gram-matrix norms (deep layers; on the padded grid where the stride is 1) and
    formed-gradient norms (early or grouped layers) equal the norms of Opacus's per-image
    gradients; gradients formed are Opacus's."""
    taken = []
    for name in ("_formed_gradients", "_shifted_grams", "_unfolded_grams"):
        function = getattr(ghost_norms, name)
        spy = lambda *args, name=name, function=function: taken.append(name) or function(*args)  # noqa: E731
        monkeypatch.setattr(ghost_norms, name, spy)
    torch.manual_seed(0)
    x = torch.randn(5, layer.in_channels, size, size)
    backprops = torch.randn_like(layer(x))
    norms, formed = ghost_norms.conv2d_norms_and_gradients(layer, [x], backprops)
    paths = {"_formed_gradients": "formed", "_shifted_grams": "shifted"}
    assert [paths.get(name, "unfolded") for name in taken] == [path]
    grads = compute_conv_grad_sample(layer, [x], backprops)
    assert norms.keys() == grads.keys()
    assert (formed is not None) == (path == "formed")
    for p, grad in grads.items():
        assert torch.allclose(norms[p], grad.flatten(1).norm(dim=1), rtol=1e-4)
        if formed is not None:
            assert torch.allclose(formed[p], grad, atol=1e-5)
