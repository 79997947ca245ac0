"""The report's privacy guarantee section: for every setting its unit, epsilon per unit in
plain words, delta, adjacency and noise source, and the assumptions its guarantee rests on
(numbered once for the whole report).

>>> strength(0.5), strength(8), strength(4096), strength(None)
('strong', 'moderate', 'no meaningful protection', 'none (no noise)')
"""

from __future__ import annotations

from typing import Any

from dpmed.report.tables import (
    DP_TRAINING,
    Group,
    delta_text,
    epsilon_text,
    privacy_cells,
    privacy_columns,
    stated_units,
)

STRONG = 1.0  # e^1 = 2.7: an attacker's odds move by at most 2.7x
MODERATE = 10.0  # e^10 = 22,026
SPLITS = ("train", "val", "test")
SPLIT_NAMES = {"train": "training", "val": "validation", "test": "test"}
STRENGTH_NOTE = (
    "Strength reads epsilon the usual way: e^epsilon bounds the likelihood ratio, how much "
    "more likely any result is with one unit's data than with another's. Epsilon <= 1 "
    "(a factor of at most 2.7) is strong, <= 10 moderate (e^10 allows a factor of 22,000), "
    "above 10 no meaningful protection (e.g. Laplace b = 1 at 64x64 is 4,096 per image)."
)


def strength(epsilon: float | None, *, holds: bool = True) -> str:
    """Epsilon in plain words: <= 1 "strong", <= 10 "moderate", above 10 "no meaningful
    protection" (e^epsilon bounds the likelihood ratio; e^10 is a factor of 22,000);
    None, no noise, is "none (no noise)"; a guarantee that does not hold (feature bounds
    read from the data) is "does not hold" whatever its epsilon.

    >>> strength(1.0), strength(10.0), strength(10.5), strength(2.0, holds=False)
    ('strong', 'moderate', 'no meaningful protection', 'does not hold')
    """
    if not holds:
        return "does not hold"
    if epsilon is None:
        return "none (no noise)"
    if epsilon <= STRONG:
        return "strong"
    return "moderate" if epsilon <= MODERATE else "no meaningful protection"


def strength_warning(groups: list[Group]) -> str | None:
    """A plain-words warning for the settings whose epsilon, at the unit they protect, is
    above MODERATE; None when there are none."""
    weak = [
        g
        for g in groups
        if (e := g.privacy.get("epsilon")) is not None
        and e > MODERATE
        and g.privacy.get("guarantee_holds", True)
    ]
    if not weak:
        return None
    units = sorted({g.privacy.get("unit", "") for g in weak})
    low = min(g.privacy["epsilon"] for g in weak)
    high = max(g.privacy["epsilon"] for g in weak)
    span = f"{low:,.4g}" if low == high else f"{low:,.4g} to {high:,.4g}"
    return (
        f"Warning: {len(weak)} of {len(groups)} settings have epsilon {span} per "
        f"{' or '.join(units)}. That is no meaningful protection: it allows an output to be "
        f"e^{low:,.4g} times more likely with one {units[0]}'s data than with another's, so "
        "an attacker may tell them apart. Do not describe these results as private; only "
        "epsilon near or below 1 per image or patient protects in the usual sense."
    )


def epsilon_strength(privacy: dict[str, Any], unit: str) -> str:
    """Epsilon per `unit` with its strength, e.g. "4,096 (no meaningful protection)"."""
    text = epsilon_text(privacy, unit)
    value = privacy.get(f"epsilon_per_{unit}")
    if value is None:
        return "none (no noise)" if privacy.get("epsilon") is None else text
    text = f"{value:,.6g} ({strength(value, holds=privacy.get('guarantee_holds', True))})"
    patient_delta = privacy.get("delta_per_patient") if unit == "patient" else None
    return text + (f", delta {delta_text(patient_delta)}" if patient_delta else "")


def assumptions(run: dict[str, Any]) -> list[str]:
    """What one run's guarantee rests on: its stated assumptions, then what the report reads
    from the result (splits used without noise, the noise key, bounds read from the data)."""
    privacy = run["summary"]["privacy"]
    if privacy.get("epsilon") is None:
        return []
    found = list(privacy.get("assumptions", []))
    if privacy.get("guarantee_holds") is False:
        found.append("feature bounds were read from the data: the guarantee does not hold")
    if unprotected := _unprotected_splits(run):
        nouns = "records" if privacy.get("unit") == "record" else "images"
        names = " and ".join(SPLIT_NAMES[s] for s in unprotected)
        found.append(
            f"the {names} {nouns} are not protected: they are used without noise "
            "(validation chooses the model, test measures it)"
        )
    if privacy.get("noise_source") == "secret noise key":
        found.append(
            f"the noise key (id {privacy.get('key_id')}) stays secret: the noise is "
            f"reproducible {privacy.get('noise_reproducible')}"
        )
    return found


def _unprotected_splits(run: dict[str, Any]) -> list[str]:
    """The splits the guarantee does not cover: all but train under DP training, those not
    released with noise under input noise (unknown, so none, if the result does not say)."""
    if run["config"].get("technique") in DP_TRAINING:
        protected = ["train"]
    else:
        protected = run["summary"]["privacy"].get("perturbed_splits")
        if protected is None:
            return []
    return [s for s in SPLITS if s not in protected]


def noise_text(privacies: list[dict[str, Any]]) -> str:
    """Where the noise of these runs came from, e.g. "operating-system entropy"."""
    sources = []
    for p in privacies:
        source = p.get("noise_source")
        if source and p.get("key_id"):
            source = f"{source} (id {p['key_id']})"
        if source and source not in sources:
            sources.append(source)
    return "; ".join(sources)


def guarantee_section(groups: list[Group]) -> tuple[list[list[str]], list[str]]:
    """The section's table, one row per setting, and the assumptions it numbers (each
    stated once however many runs rest on it)."""
    privacies = [g.privacy for g in groups]
    units = stated_units(privacies)
    extra = privacy_columns(privacies)
    numbered: dict[str, int] = {}
    rows = [
        [
            "setting",
            "unit",
            *(f"epsilon per {u} (strength)" for u in units),
            *extra,
            "noise source",
            "assumptions",
        ]
    ]
    for g in groups:
        numbers = []
        for run in g.runs:
            for text in assumptions(run):
                number = numbered.setdefault(text, len(numbered) + 1)
                if number not in numbers:
                    numbers.append(number)
        rows.append(
            [
                g.label,
                _unit_text(g.privacy),
                *(epsilon_strength(g.privacy, u) for u in units),
                *privacy_cells(g.privacy, extra),
                noise_text([r["summary"]["privacy"] for r in g.runs]) or "no noise",
                ", ".join(map(str, sorted(numbers))) or "none (no guarantee)",
            ]
        )
    return rows, list(numbered)


def _unit_text(privacy: dict[str, Any]) -> str:
    """The unit the guarantee was asked at, with the patient's size where one is stated."""
    unit = privacy.get("unit", "")
    k = privacy.get("images_per_patient")
    return f"{unit}; patient = up to {k} images" if unit == "image" and k and k > 1 else unit
