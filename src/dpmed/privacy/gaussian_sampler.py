"""Gaussian noise with the whole tail: Box-Muller from uniforms that reach it.

A Gaussian cut off at radius R std is not the mechanism an accountant analyses. Take a
neighbour whose mean moves by D std along one pair of coordinates (DP-SGD: 2C = 2 std / z
under replace-one, z the noise multiplier): some outputs are within R of one centre and
beyond R of the other, possible under one data set and not under its neighbour, with
probability about exp(-(R - D)^2 / 2): a delta nobody counts.

torch's CPU sampler (Box-Muller on 24-bit uniforms, for tensors of 16 values or more)
cuts off at sqrt(-2 ln 2^-24) = 5.77 std: 5% a sampled DP-SGD step at z = 0.5.
Box-Muller on a 53-bit uniform u would cut off at sqrt(-2 ln 2^-53) = 8.57 std: 5e-6 a
sampled step at z = 0.5. Here each pair's radius is sqrt(-2 ln v) std with v = 1 - u, and
where v is its smallest value 2^-53 (which stands for all of (0, 2^-53]) it is redrawn
within that interval, again and again: the radius reaches 36 std, beyond which nothing
is missing. From a numpy generator (PCG64 from the secret, dpmed.privacy.secret) the noise
is added into the target a chunk at a time, in cache: 4 ns a value, faster than torch's
own sampler (5 ns, which forms the noise tensor) and numpy's `normal` (10 ns), and a large
target's blocks on torch's threads, each from its own stream; from a torch generator
(CUDA) in one go on its device.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

Generator = np.random.Generator | torch.Generator
Array = np.ndarray | torch.Tensor


def add_gaussian_noise_(
    target: torch.Tensor | Sequence[torch.Tensor],
    std: float,
    generator: Generator,
    *,
    scale: float = 1.0,
) -> torch.Tensor | Sequence[torch.Tensor]:
    """target = (target + N(0, std^2) noise) * scale, in place, in one pass over target;
    returns target (contiguous tensors).

    The noise is a vector of pairs: value j and value j + pairs of the flattened target
    (pairs = half the count, rounded up) are one Box-Muller pair. Several tensors get the
    noise of one holding their values in turn: one draw, whatever their sizes (a model's
    biases and small layers share the large ones' blocks and threads). On CPU the pairs are
    drawn and added a chunk at a time, in cache: no tensor of noise is ever formed. Beyond
    one block of pairs, block i is drawn from the generator's i-th child (`spawn`) on
    torch's number of threads: the noise depends on the generator only, not on the thread
    count (ResNet-18-GN's 11.2M values: 35 ms on 2 threads against 50 ms on one)."""
    tensors = [target] if isinstance(target, torch.Tensor) else list(target)
    flats = [t.detach().view(-1) for t in tensors]
    count = sum(len(flat) for flat in flats)
    if std == 0 or not count:
        if scale != 1:
            for flat in flats:
                flat.mul_(scale)
        return target
    pairs = (count + 1) // 2
    if isinstance(generator, np.random.Generator):
        values = _Joined([flat.numpy() for flat in flats], scale)
        blocks = [range(i, min(i + _BLOCK_PAIRS, pairs)) for i in range(0, pairs, _BLOCK_PAIRS)]
        if len(blocks) == 1:
            _add_numpy_pairs(generator, blocks[0], pairs, std, values)
        else:
            add = lambda block, child: _add_numpy_pairs(child, block, pairs, std, values)  # noqa: E731
            with ThreadPoolExecutor(max_workers=torch.get_num_threads()) as pool:
                list(pool.map(add, blocks, generator.spawn(len(blocks))))
    else:
        noise = _torch_pairs(generator, pairs, std, flats[0].device).view(-1)[:count]
        for flat, part in zip(flats, noise.split([len(flat) for flat in flats]), strict=True):
            flat.add_(part)
            if scale != 1:
                flat.mul_(scale)
    return target


class _Joined:
    """Flat arrays as one vector, without a copy: `add` adds into a range of it."""

    def __init__(self, arrays: list[np.ndarray], scale: float) -> None:
        self.arrays, self.scale = arrays, scale
        self.starts = np.cumsum([0] + [len(a) for a in arrays]).tolist()

    def add(self, start: int, values: np.ndarray) -> None:
        """vector[start : start + len(values)] = (it + values) * scale, cut at the
        vector's end (each value is added to once: the pairs' two halves)."""
        i = bisect.bisect_right(self.starts, start) - 1
        while len(values) and i < len(self.arrays):
            array, offset = self.arrays[i], start - self.starts[i]
            part = array[offset : offset + len(values)]
            part += values[: len(part)]
            if self.scale != 1:
                part *= self.scale
            start, values, i = start + len(part), values[len(part) :], i + 1


ATOM = 2.0**-53  # the smallest v = 1 - u of a 53-bit uniform u: it stands for all of (0, 2^-53]
_DEEPEST = 2.0**-1000  # redraws stop here: v stays a normal float64 (radius up to 36.4 std)


def _radii(v: Array, std: float, uniform: Callable[[int], Array], out: Array) -> None:
    """out = sqrt(-2 ln v) std (float32), each pair's radius, from v = 1 - u in (0, 1]
    (float64, u a 53-bit uniform; changed in place where `_redraw_tail` redraws it)."""
    tail = _redraw_tail(v, uniform)
    out[:] = v
    xp = torch if isinstance(v, torch.Tensor) else np
    with np.errstate(divide="ignore"):  # a redrawn v below float32's range: set below
        xp.sqrt(xp.multiply(xp.log(out, out=out), -2 * std**2, out=out), out=out)
    if tail is not None:
        deep = xp.sqrt(xp.log(v[tail]) * (-2 * std**2))
        out[tail] = deep.float() if xp is torch else deep


def _redraw_tail(v: Array, uniform: Callable[[int], Array]) -> Array | None:
    """Where v is its smallest value 2^-53, which stands for the whole interval
    (0, 2^-53], v is redrawn within it, and again wherever the redraw is the new smallest
    value (each time with probability 2^-53): the radius has no cut-off at sqrt(-2 ln
    2^-53) = 8.57 std (what a cut-off costs: the module's docstring). The indices
    redrawn, or None (almost always)."""
    if v.min() > ATOM:
        return None
    xp = torch if isinstance(v, torch.Tensor) else np
    tail = xp.where(v == ATOM)[0]
    atom, left = ATOM, tail
    while len(left) and atom > _DEEPEST:
        v[left] = (1 - uniform(len(left))) * atom  # exact: a power of two times 1 - u
        atom *= ATOM
        left = left[v[left] == atom]
    return tail


def _box_muller(radius: Array, turns: Array, out: Array) -> None:
    """Pairs (out[0], out[1]) = radius (cos, sin) of the angle `turns` (in [0, 1)) x 2 pi."""
    xp = torch if isinstance(radius, torch.Tensor) else np
    angle = turns * (2 * math.pi)
    xp.multiply(radius, xp.cos(angle), out=out[0])
    xp.multiply(radius, xp.sin(angle), out=out[1])


_CHUNK_PAIRS = 1 << 16  # pairs drawn at a time on CPU: the 1.5 MiB of buffers stay in L2
_BLOCK_PAIRS = 1 << 17  # pairs of one thread's block, drawn from its own stream


def _add_numpy_pairs(generator: np.random.Generator, block: range, pairs: int, std, values) -> None:
    """values[j] and values[pairs + j] += pair j's noise, for the pairs j of `block`."""
    size = min(len(block), _CHUNK_PAIRS)  # a bias's noise: buffers of its size, not a chunk's
    u = np.empty(size)
    radius, turns = np.empty((2, size), dtype=np.float32)
    out = np.empty((2, size), dtype=np.float32)
    for start in range(block.start, block.stop, _CHUNK_PAIRS):
        k = min(_CHUNK_PAIRS, block.stop - start)
        generator.random(out=u[:k])
        _radii(np.subtract(1, u[:k], out=u[:k]), std, generator.random, radius[:k])
        generator.random(out=turns[:k], dtype=np.float32)
        _box_muller(radius[:k], turns[:k], out[:, :k])
        values.add(start, out[0, :k])
        values.add(pairs + start, out[1, :k])  # one short at an odd count's end


def _torch_pairs(generator: torch.Generator, pairs: int, std: float, device) -> torch.Tensor:
    draw = {"generator": generator, "device": device}
    u = torch.rand(pairs, dtype=torch.float64, **draw)
    radius = torch.empty(pairs, device=device)
    uniform = lambda count: torch.rand(count, dtype=torch.float64, **draw)  # noqa: E731
    _radii(torch.sub(1, u, out=u), std, uniform, radius)
    out = torch.empty(2, pairs, device=device)
    _box_muller(radius, torch.rand(pairs, **draw), out)
    return out
