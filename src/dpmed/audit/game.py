"""The membership game of an audit run: which training images are in, which are canaries.

The pool is the training split. Each pool image is a member (trained on) with probability
1/2, drawn from the public `audit_seed`; the non-members are left out of the run entirely
(not released, not trained on). `canaries` pool images, the same ones for every audit seed,
carry the flipped label: images the model can only fit by memorising them, the strongest
cheap test of DP-SGD (Steinke, Nasr & Jagielski 2023).

>>> draw = draw_members(10, audit_seed=0, canaries=2)
>>> int(draw.canaries.sum()), draw.members.dtype.name
(2, 'bool')
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from dpmed.data.images import ImageDataset, ImageSplit
from dpmed.errors import ConfigError

_MEMBERS, _CANARIES = 0x6D656D62, 0x63616E61  # streams of the public draws


@dataclass(frozen=True)
class AuditDraw:
    members: np.ndarray  # (N,) bool: the pool image is trained on
    canaries: np.ndarray  # (N,) bool: its label is flipped


def draw_members(n_pool: int, *, audit_seed: int, canaries: int) -> AuditDraw:
    """Each of `n_pool` images in with probability 1/2 (from `audit_seed`); `canaries` of
    them chosen independently of the seed."""
    if canaries > n_pool:
        raise ConfigError(f"canaries {canaries} is more than the {n_pool} training images")
    members = np.random.default_rng([_MEMBERS, audit_seed]).random(n_pool) < 0.5
    chosen = np.zeros(n_pool, dtype=bool)
    chosen[np.random.default_rng(_CANARIES).choice(n_pool, canaries, replace=False)] = True
    return AuditDraw(members, chosen)


def play(dataset: ImageDataset, draw: AuditDraw) -> tuple[ImageDataset, ImageSplit]:
    """The data set the audit run trains on (its training split: the members) and the pool
    (the whole training split, canaries' labels flipped) whose images the model scores."""
    train = dataset.splits["train"]
    pool = ImageSplit(
        train.images, np.where(draw.canaries, 1 - train.labels, train.labels), train.patients
    )
    splits = dataset.splits | {"train": pool.take(np.flatnonzero(draw.members))}
    return replace(dataset, splits=splits), pool
