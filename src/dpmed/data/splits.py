"""Seeded splits: a validation split grouped by patient, and stratified subsamples."""

from __future__ import annotations

import re

import numpy as np

_PATIENT = re.compile(r"^(person\d+|(?:NORMAL\d+-)?IM-\d+)")


def patient_id(filename: str) -> str:
    """The patient a Kermany file belongs to.

    >>> patient_id("person1000_bacteria_2931.jpeg"), patient_id("NORMAL2-IM-1427-0001.jpeg")
    ('person1000', 'NORMAL2-IM-1427')
    """
    match = _PATIENT.match(filename)
    return match.group(1) if match else filename.rsplit(".", 1)[0]


def grouped_stratified_split(
    labels: np.ndarray, groups: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (keep, held_out) with about `fraction` of each class held out.

    Whole groups (patients) move together, so no patient is on both sides. Groups are
    taken in a seeded random order, per class of their majority label, until the held-out
    part holds `fraction` of that class's images.
    """
    rng = np.random.default_rng(seed)
    unique, group_of = np.unique(groups, return_inverse=True)
    sizes = np.bincount(group_of)
    positives = np.bincount(group_of, weights=labels == 1)
    majority = (2 * positives >= sizes).astype(int)
    held_groups = []
    for label in np.unique(majority):
        members = rng.permutation(np.flatnonzero(majority == label))
        target = fraction * sizes[members].sum()
        taken = np.cumsum(sizes[members])
        held_groups.append(members[: int(np.searchsorted(taken, target)) + 1])
    held = np.isin(group_of, np.concatenate(held_groups))
    return np.flatnonzero(~held), np.flatnonzero(held)


def stratified_subsample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of at most `n` items keeping the class proportions (seeded)."""
    if n >= len(labels):
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        share = max(1, round(n * len(members) / len(labels)))
        chosen.append(rng.choice(members, size=min(share, len(members)), replace=False))
    return np.sort(np.concatenate(chosen))
