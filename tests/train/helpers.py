"""Comparing two trainings in a way that holds on any CPU."""

import torch
from torch import nn

# Float32 trainings differ between CPUs (kernel choice and summation order): after a small
# training the updates of two equivalent runs differ by up to ~1e-5 of their size (measured
# 3e-6 with Adam, <1e-6 with SGD, on AVX2 and SSE4.1 kernels, 1 or 2 threads). A real
# difference (a gradient counted twice, labels misaligned) changes the update by a
# sizeable fraction of itself: 1e-3 sits between the two with 100x margin either way.
SAME_UPDATE = 1e-3


def flat(model: nn.Module) -> torch.Tensor:
    """All parameters of `model`, detached, as one vector."""
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def assert_trained_alike(start: torch.Tensor, a: nn.Module, b: nn.Module) -> None:
    """Two trainings from the same `start` parameters moved them by the same update, to
    SAME_UPDATE of its size."""
    moved_a, moved_b = flat(a) - start, flat(b) - start
    assert moved_a.norm() > 0, "the first training did not move the weights"
    gap = (moved_a - moved_b).norm() / moved_a.norm()
    assert gap <= SAME_UPDATE, f"the updates differ by {gap:.2e} of their size"
