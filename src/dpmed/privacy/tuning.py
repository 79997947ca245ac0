"""What choosing hyper-parameters on validation costs in privacy.

Every candidate of a tuning is trained on the same private training data, and the model
released is the one whose validation accuracy is best: a choice that reads all candidates.
So the released model carries the composition of the candidates' guarantees, not one run's
(Papernot & Steinke 2022 give tighter, randomised schemes; composition is the plain bound):

- DP-SGD candidates: their noisy steps composed by the replace-one PLD accountant
  (whatever accountant a candidate's summary names: the steps are what count);
- input noise released once: when every candidate trained on the *same* release (equal
  release hashes), tuning is post-processing of it and costs nothing;
- anything else: basic composition, the sum of the epsilons and of the deltas.
"""

from __future__ import annotations

from typing import Any


def tuning_privacy(candidates: list[dict[str, Any]]) -> dict[str, Any]:
    """The guarantee of the one model chosen among `candidates` (their summaries' `privacy`
    entries, all trained on the same data): `epsilon` in their unit and `epsilon_per_<unit>`
    for the units they state, `delta`, `adjacency`, `guarantee_holds` and `accounting` (how
    they were composed). Epsilon None means no noise: no guarantee."""
    units = [  # DP-SGD's patient epsilon is group privacy of its image's, not composed
        key.removeprefix("epsilon_per_")
        for key in candidates[0]
        if key.startswith("epsilon_per_") and key != "epsilon_per_patient"
    ]
    keys = ["epsilon", *(k for k in candidates[0] if k.startswith("epsilon_per_"))]
    holds = all(c.get("guarantee_holds", True) for c in candidates)
    # None: a summary written before dpmed stated the adjacency (DP-SGD's then was add/remove)
    adjacency = candidates[0].get("adjacency")
    common = {"unit": candidates[0]["unit"], "adjacency": adjacency, "guarantee_holds": holds}
    if any(c.get("epsilon") is None for c in candidates):
        how = "a candidate had no noise"
        return common | dict.fromkeys(keys) | {"delta": None, "accounting": how}
    if len(candidates) == 1 or _one_release(candidates):
        how = "one release shared by every candidate: tuning is post-processing"
        stated = [*keys, "delta", "delta_per_patient"]
        return (
            common
            | {k: candidates[0][k] for k in stated if k in candidates[0]}
            | {"accounting": how}
        )
    if _all_dp_sgd(candidates):
        return common | _dp_sgd_composition(candidates, units)
    return (
        common
        | {k: _sum(c[k] for c in candidates) for k in keys}
        | {
            "delta": min(1.0, sum(c["delta"] for c in candidates)),
            "accounting": f"basic composition of {len(candidates)} candidates",
        }
    )


def _sum(values) -> float | None:
    """The sum, or None when some candidate states nothing for this unit."""
    values = list(values)
    return None if None in values else sum(values)


def _one_release(candidates: list[dict[str, Any]]) -> bool:
    """Every candidate trained on the same noisy release (and spent nothing else)."""
    hashes = [c.get("release_sha256") for c in candidates]
    return bool(hashes[0]) and all(h == hashes[0] for h in hashes) and not _all_dp_sgd(candidates)


def _all_dp_sgd(candidates: list[dict[str, Any]]) -> bool:
    return all(c.get("mechanism") == "dp-sgd" for c in candidates)


def _dp_sgd_composition(candidates: list[dict[str, Any]], units: list[str]) -> dict[str, Any]:
    from dpmed.privacy.dpsgd import composed_epsilon, group_privacy  # loads Opacus
    from dpmed.privacy.dpsgd_accounting import ADJACENCY

    delta = max(c["delta"] for c in candidates)
    epsilon = composed_epsilon(
        [(c["noise_multiplier"], c["sample_rate"], c["steps"]) for c in candidates],
        delta=delta,
    )
    result = {
        "adjacency": ADJACENCY,
        "epsilon": epsilon,
        "delta": delta,
        "accounting": f"{len(candidates)} candidates' DP-SGD steps composed by the "
        f"{ADJACENCY} PLD accountant (dp-accounting)",
    }
    for unit in units:  # DP-SGD states a record or an image, never a pixel
        result[f"epsilon_per_{unit}"] = None if unit == "pixel" else epsilon
    if k := candidates[0].get("images_per_patient"):  # group privacy, as for one run
        result["epsilon_per_patient"], result["delta_per_patient"] = group_privacy(
            epsilon, delta, k
        )
    return result
