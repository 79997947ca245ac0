"""The membership game of an audit run: which training images are in, which are canaries.

The pool is the training split. Each pool image is a member (trained on) with probability
1/2, drawn from the public `audit_seed`; where the data has patient ids (Kermany) each
*patient* is, with all their images: the patient-level game. Non-members are left out of
the run entirely (not released, not trained on). `canaries` pool images, the same ones for
every audit seed, carry the flipped label: images the model can only fit by memorising
them, the strongest cheap test of DP-SGD (Steinke, Nasr & Jagielski 2023).

>>> draw = draw_members(10, audit_seed=0, canaries=2)
>>> int(draw.canaries.sum()), draw.members.dtype.name
(2, 'bool')
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from dpmed.data.images import ImageDataset, ImageSplit, PlannedDataset
from dpmed.errors import ConfigError

_MEMBERS, _CANARIES = 0x6D656D62, 0x63616E61  # streams of the public draws


@dataclass(frozen=True)
class AuditDraw:
    members: np.ndarray  # (N,) bool: the pool image is trained on
    canaries: np.ndarray  # (N,) bool: its label is flipped
    patients: np.ndarray | None  # (N,) int: the patient of each image (0, 1, ...), or None


def draw_members(
    n_pool: int, *, audit_seed: int, canaries: int, patients: np.ndarray | None = None
) -> AuditDraw:
    """Each of `n_pool` images in with probability 1/2 (from `audit_seed`), or with
    `patients` (each image's id) each patient with all their images; `canaries` images
    chosen independently of the seed (with patients, from distinct patients)."""
    rng = np.random.default_rng([_MEMBERS, audit_seed])
    if patients is None:
        codes, members, candidates = None, rng.random(n_pool) < 0.5, np.arange(n_pool)
    else:
        firsts, codes = np.unique(patients, return_index=True, return_inverse=True)[1:]
        members = (rng.random(len(firsts)) < 0.5)[codes]
        candidates = firsts  # one canary per patient at most: their inclusions independent
    if canaries > len(candidates):
        kind = "patients" if patients is not None else "training images"
        raise ConfigError(
            f"canaries {canaries} is more than the {len(candidates)} {kind}; ask for fewer"
        )
    chosen = np.zeros(n_pool, dtype=bool)
    chosen[np.random.default_rng(_CANARIES).choice(candidates, canaries, replace=False)] = True
    return AuditDraw(members, chosen, codes)


def audit_draw(planned: PlannedDataset, *, audit_seed: int, canaries: int) -> AuditDraw:
    """The draw of an audit run over `planned`'s training split, per patient where the
    data has patient ids."""
    patients = planned.patients("train") if planned.patient_ids else None
    return draw_members(
        planned.sizes["train"], audit_seed=audit_seed, canaries=canaries, patients=patients
    )


def play(dataset: ImageDataset, draw: AuditDraw) -> tuple[ImageDataset, ImageSplit]:
    """The data set the audit run trains on (its training split: the members) and the pool
    (the whole training split, canaries' labels flipped) whose images the model scores."""
    train = dataset.splits["train"]
    pool = ImageSplit(
        train.images, np.where(draw.canaries, 1 - train.labels, train.labels), train.patients
    )
    splits = dataset.splits | {"train": pool.take(np.flatnonzero(draw.members))}
    return replace(dataset, splits=splits), pool
