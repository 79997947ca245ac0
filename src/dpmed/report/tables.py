"""Result tables: runs grouped over seeds, each number with the number of seeds and a 95%
confidence interval, and the paper's Table 1 layout.

>>> setting_label({"technique": "laplace", "noise_scale": 2.0, "lr": 0.001}, ["noise_scale", "lr"])
'b = 2, lr = 0.001'
>>> [round(v, 3) for v in wilson(500, 624)]  # 80% of 624 test images: about +-3 points
[0.768, 0.831]
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any

from scipy import stats

from dpmed.errors import ConfigError

# Singh & Sikka, Table 1: accuracy (%) by Laplace scale b (0 = original images).
PAPER_TABLE1 = {
    "test": {0: 82.69, 1: 74.35, 2: 69.23, 4: 54.16},
    "train": {0: 99.98, 1: 77.11, 2: 65.08, 4: 58.03},
}
NOT_COMPARED = {"seed", "data_root"}  # repeats and locations, not settings
EPSILON_UNITS = ("record", "patient", "image", "pixel")  # the units a report shows epsilon per
DP_TRAINING = ("dp-sgd", "diffprivlib")  # techniques whose guarantee comes from training
PERCENT = ("accuracy", "sensitivity", "specificity")  # shown in %, with a binomial interval
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
CI_NOTE = (
    "Each cell is the value of one seed or the mean over seeds, with its 95% confidence "
    "interval in brackets: over several seeds a t-interval (mean ± t sd / sqrt(n)); for one "
    "seed a Wilson binomial interval on the test set (its images for accuracy, its positives "
    "for sensitivity, its negatives for specificity), which covers the test sample only, not "
    "the training's randomness. Accuracy, sensitivity and specificity in %."
)
NOISE_SCALE_NAMES = {"laplace": "b", "dppix": "b", "weighted-laplace": "b", "gaussian": "sigma"}
SETTING_NAMES = {
    "target_epsilon": "target epsilon",
    "noise_multiplier": "noise multiplier",
    "max_grad_norm": "clip",
    "batch_size": "batch",
}
NO_TRAIN_METRICS = (
    "Training metrics of DP-trained models are not computed from the private training "
    "images: they would be published without a guarantee."
)


@dataclass(frozen=True)
class Group:
    """Runs that differ only by seed."""

    label: str
    settings: dict[str, Any]
    runs: list[dict[str, Any]]  # each {"id", "name", "config", "summary"}

    def values(self, *path: str) -> list[float]:
        """The value at `path` of each run's summary that has one (DP-trained runs have no
        train metrics: their `train` is None or absent)."""
        found = []
        for run in self.runs:
            value: Any = run["summary"]
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            if value is not None:
                found.append(value)
        return found

    @property
    def privacy(self) -> dict[str, Any]:
        """The guarantee of the group's run that spent most: seeds share their settings, but
        a seed's patient-grouped split can leave it a few more or fewer training images."""
        return max((r["summary"]["privacy"] for r in self.runs), key=_spent_order)

    def estimate(self, split: str, metric: str) -> str:
        """The value (one seed) or mean over seeds with its 95% interval (see CI_NOTE), e.g.
        "62.5 [51.6, 72.2]"; accuracy, sensitivity and specificity in %."""
        values = self.values(split, metric)
        if not values:
            return "n/a"
        scale, digits = (100, 1) if metric in PERCENT else (1, 3)
        mean = statistics.fmean(values)
        interval = confidence_interval(values, trials(self.runs[0]["summary"], split, metric))
        text = f"{scale * mean:.{digits}f}"
        if interval is None:
            return text
        low, high = (max(0.0, min(1.0, v)) for v in interval)
        return f"{text} [{scale * low:.{digits}f}, {scale * high:.{digits}f}]"


def trials(summary: dict[str, Any], split: str, metric: str) -> int | None:
    """How many examples a binomial metric of `split` counts: its images (or records) for
    accuracy, positives for sensitivity, negatives for specificity; None when unknown."""
    sizes = summary.get("images") or summary.get("records") or {}
    n, positives = sizes.get(split), (summary.get("positives") or {}).get(split)
    if metric == "accuracy":
        return n
    if positives is None or n is None or metric not in PERCENT:
        return None
    return positives if metric == "sensitivity" else n - positives


def confidence_interval(values: list[float], trials: int | None) -> tuple[float, float] | None:
    """95% interval: over several seeds a t-interval of their mean; for one seed of a
    binomial metric the Wilson interval on its `trials`; else None (nothing to say)."""
    if len(values) > 1:
        half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
        mean = statistics.fmean(values)
        return mean - half, mean + half
    if trials:
        return wilson(round(values[0] * trials), trials)
    return None


def wilson(successes: int, trials: int) -> tuple[float, float]:
    """The Wilson score 95% interval of a binomial proportion."""
    p, z2 = successes / trials, Z95**2
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = Z95 * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials**2)) / (1 + z2 / trials)
    return centre - half, centre + half


def setting_label(config: dict[str, Any], keys: list[str]) -> str:
    """The settings `keys` of a run as a reader would say them, e.g. "b = 2, lr = 0.001"
    (a technique by its name alone)."""
    parts = []
    for key in keys:
        value = config.get(key)
        text = f"{value:g}" if isinstance(value, float) else str(value)
        if key == "technique":
            parts.append(text)
            continue
        name = SETTING_NAMES.get(key, key.replace("_", " "))
        if key == "noise_scale":
            name = NOISE_SCALE_NAMES.get(config.get("technique"), "noise scale")
        parts.append(f"{name} = {text}")
    return ", ".join(parts) or "all runs"


def majority_rate(summary: dict[str, Any], split: str = "test") -> float | None:
    """The share of the majority class in `split`, what always guessing it scores (chance):
    from the summary's positives, else from accuracy, sensitivity and specificity."""
    sizes = summary.get("images") or summary.get("records") or {}
    positives = (summary.get("positives") or {}).get(split)
    if positives is not None and sizes.get(split):
        rate = positives / sizes[split]
    else:
        scores = summary.get(split) or {}
        sens, spec, acc = (scores.get(k) for k in ("sensitivity", "specificity", "accuracy"))
        if None in (sens, spec, acc) or sens == spec:
            return None
        rate = (acc - spec) / (sens - spec)  # accuracy = rate sens + (1 - rate) spec
    return max(rate, 1 - rate)


def varying_settings(runs: list[dict[str, Any]]) -> list[str]:
    """The settings whose value differs between runs (seeds and paths left out)."""
    keys = runs[0]["config"].keys() if runs else []
    return [
        k for k in keys if k not in NOT_COMPARED and len({repr(r["config"][k]) for r in runs}) > 1
    ]


def group_runs(runs: list[dict[str, Any]]) -> list[Group]:
    """Groups of runs equal but for their seed, in first-seen order."""
    varying = varying_settings(runs)
    groups: dict[str, Group] = {}
    for run in runs:
        settings = {k: v for k, v in run["config"].items() if k not in NOT_COMPARED}
        label = setting_label(run["config"], varying)
        groups.setdefault(label, Group(label, settings, [])).runs.append(run)
    return list(groups.values())


@dataclass(frozen=True)
class Tuned:
    """One setting with its hyper-parameters chosen on validation, per seed."""

    group: Group  # the chosen run of each seed; label: the settings not tuned
    candidates: int  # candidates per seed
    chosen: str  # what was chosen, e.g. "lr=0.5 (seeds 0, 1); lr=2 (seed 2)"
    privacy: dict[str, Any]  # the guarantee with the tuning included (the most any seed spent)


def tune_runs(runs: list[dict[str, Any]], tune: list[str]) -> list[Tuned]:
    """For every setting other than `tune`, each seed's run with the best validation
    accuracy (lower validation loss breaks ties) among its candidates, which differ only in
    `tune`. Test metrics choose nothing; the guarantee composes all candidates."""
    from dpmed.privacy.tuning import tuning_privacy  # dpmed.privacy takes ~0.7 s to load

    varying = varying_settings(runs)
    for key in tune:
        if key == "seed":
            raise ConfigError("cannot tune 'seed': seeds are repeats; each is tuned on its own")
        if key not in varying:
            raise ConfigError(
                f"cannot tune {key!r}: it does not vary in this sweep; "
                f"settings that vary: {', '.join(varying) or 'none'}"
            )
    rest = [k for k in varying if k not in tune]
    candidates: dict[str, dict[Any, list[dict[str, Any]]]] = {}
    for run in runs:
        label = setting_label(run["config"], rest)
        candidates.setdefault(label, {}).setdefault(run["config"]["seed"], []).append(run)
    tuned = []
    for label, by_seed in candidates.items():
        best = {
            seed: max(seed_runs, key=lambda r: (_val(r, "accuracy"), -_val(r, "loss")))
            for seed, seed_runs in by_seed.items()
        }
        choices: dict[str, list[str]] = {}
        for seed, run in best.items():
            choice = setting_label(run["config"], tune)
            choices.setdefault(choice, []).append(str(seed))
        spent = [tuning_privacy([r["summary"]["privacy"] for r in rs]) for rs in by_seed.values()]
        tuned.append(
            Tuned(
                Group(label, {}, list(best.values())),
                max(len(rs) for rs in by_seed.values()),
                "; ".join(
                    f"{c} (seed{'s' * (len(s) > 1)} {', '.join(s)})" for c, s in choices.items()
                ),
                max(spent, key=_spent_order),
            )
        )
    return tuned


def _val(run: dict[str, Any], metric: str) -> float:
    return run["summary"]["val"][metric]


def _spent_order(privacy: dict[str, Any]) -> tuple[float, ...]:
    """Orders guarantees by what they spent, unit by unit (no noise counts as infinite)."""
    values = (privacy.get(f"epsilon_per_{u}") for u in EPSILON_UNITS)
    return tuple(math.inf if v is None else v for v in values)


METRIC_HEADERS = [
    "test accuracy (%) [95% CI]",
    "test ROC-AUC [95% CI]",
    "sensitivity (%) [95% CI]",
    "specificity (%) [95% CI]",
]


def metric_cells(group: Group) -> list[str]:
    """The test metrics of METRIC_HEADERS for one group."""
    return [
        group.estimate("test", m) for m in ("accuracy", "roc_auc", "sensitivity", "specificity")
    ]


def tuned_table(tuned: list[Tuned]) -> list[list[str]]:
    units = stated_units([t.privacy for t in tuned])
    privacy = [_with_adjacency(t.privacy, t.group.privacy) for t in tuned]
    extra = privacy_columns(privacy)
    rows = [
        [
            "setting",
            "seeds",
            "candidates per seed",
            "chosen on validation",
            *METRIC_HEADERS,
            *(f"epsilon per {u}, tuning included" for u in units),
            *extra,
        ]
    ]
    for t, p in zip(tuned, privacy, strict=True):
        g = t.group
        rows.append(
            [
                g.label,
                str(len(g.runs)),
                str(t.candidates),
                t.chosen,
                *metric_cells(g),
                *(epsilon_text(t.privacy, u) for u in units),
                *privacy_cells(p, extra),
            ]
        )
    return rows


def _with_adjacency(tuned: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """A tuned guarantee keeps its candidates' adjacency (tuning does not change it)."""
    return tuned | ({"adjacency": run["adjacency"]} if run.get("adjacency") else {})


def privacy_columns(privacies: list[dict[str, Any]]) -> list[str]:
    """The headers of the delta and adjacency columns: delta always (0 for pure DP),
    adjacency where some guarantee states one."""
    return ["delta", *(["adjacency"] * any(p.get("adjacency") for p in privacies))]


def privacy_cells(privacy: dict[str, Any], columns: list[str]) -> list[str]:
    """The cells of `privacy_columns` for one guarantee ("" where it states nothing)."""
    delta = "n/a (no noise)" if privacy.get("epsilon") is None else delta_text(privacy.get("delta"))
    cells = {"delta": delta, "adjacency": privacy.get("adjacency")}
    return [cells[c] or "" for c in columns]


def delta_text(delta: float | None) -> str:
    """Delta as a table shows it ("" when not stated)."""
    return "" if delta is None else f"{delta:.3g}"


def reported_units(runs: list[dict[str, Any]]) -> list[str]:
    """The units some run states epsilon for: record for tables, image and pixel for images."""
    return stated_units([r["summary"]["privacy"] for r in runs])


def stated_units(privacies: list[dict[str, Any]]) -> list[str]:
    """The units some of these guarantees state epsilon for."""
    return [u for u in EPSILON_UNITS if any(f"epsilon_per_{u}" in p for p in privacies)]


def summary_table(groups: list[Group]) -> list[list[str]]:
    """Per setting its seeds, test metrics with 95% intervals, epsilon per unit, delta and
    adjacency; train accuracy where some setting has it (DP training computes none)."""
    units = reported_units([r for g in groups for r in g.runs])
    extra = privacy_columns([g.privacy for g in groups])
    train = any(g.values("train", "accuracy") for g in groups)
    rows = [
        [
            "setting",
            "seeds",
            *METRIC_HEADERS,
            *(["train accuracy (%) [95% CI]"] * train),
            *(f"epsilon per {u}" for u in units),
            *extra,
        ]
    ]
    for g in groups:
        rows.append(
            [
                g.label,
                str(len(g.runs)),
                *metric_cells(g),
                *([train_text(g)] * train),
                *(epsilon_text(g.privacy, u) for u in units),
                *privacy_cells(g.privacy, extra),
            ]
        )
    return rows


def train_text(group: Group) -> str:
    """Train accuracy, or why a DP-trained setting has none."""
    if not group.values("train", "accuracy") and is_dp_trained(group.runs[0]):
        return "not computed (DP training)"
    return group.estimate("train", "accuracy")


def is_dp_trained(run: dict[str, Any]) -> bool:
    return run["config"].get("technique") in DP_TRAINING


def lacks_train_metrics(runs: list[dict[str, Any]]) -> bool:
    """Some DP-trained run has no train metrics (the report then says why)."""
    return any(is_dp_trained(r) and not (r["summary"].get("train") or {}) for r in runs)


def is_paper_grid(runs: list[dict[str, Any]]) -> bool:
    """The reference paper's design: Laplace on Kermany at its noise scales b, one setting
    per b (a recipe may differ between scales) repeated over seeds."""
    if not runs or any(
        r["config"]["dataset"] != "chest-xray" or r["config"]["technique"] != "laplace"
        for r in runs
    ):
        return False
    scales = {r["config"]["noise_scale"] for r in runs}
    return scales <= set(PAPER_TABLE1["test"]) and len(group_runs(runs)) == len(scales)


def paper_table(groups: list[Group]) -> list[list[str]]:
    """Table 1's layout: our accuracy (mean over seeds, 95% interval) beside the paper's,
    and the settings that differ between the scales (the recipe chosen for each b)."""
    by_scale = sorted(groups, key=lambda g: g.settings["noise_scale"])
    scales = [g.settings["noise_scale"] for g in by_scale]
    rows = [["accuracy (%)"] + ["original" if b == 0 else f"b = {b:g}" for b in scales]]
    for split in ("test", "train"):
        rows.append(
            [split]
            + [
                f"{g.estimate(split, 'accuracy')} (paper {PAPER_TABLE1[split][b]:.2f})"
                for g, b in zip(by_scale, scales, strict=True)
            ]
        )
    rows.append(["seeds"] + [str(len(g.runs)) for g in by_scale])
    recipe = varying_settings([g.runs[0] for g in by_scale])
    for key in (k for k in recipe if k != "noise_scale"):
        rows.append([key] + [str(g.settings[key]) for g in by_scale])
    privacies = [g.privacy for g in by_scale]
    stated = stated_units(privacies)
    for unit in ("pixel", "image", *(["patient"] * ("patient" in stated))):
        rows.append([f"epsilon per {unit}"] + [epsilon_text(p, unit) for p in privacies])
    for column in privacy_columns(privacies):
        rows.append([column] + [privacy_cells(p, [column])[0] for p in privacies])
    return rows


def sweep_time(runs: list[dict[str, Any]]) -> str:
    """The sweep's wall time, from its first run's start to its last run's end (a sweep
    resumed later counts the pause too), with the machine's cores and load."""
    timed = [r for r in runs if r.get("started") and r.get("finished")]
    if not timed:
        return f"The {len(runs)} runs have no start and end times."
    timings = [r["summary"]["timing"] for r in timed]
    loads = [t["load_average"] for t in timings if "load_average" in t]
    cores = {t["cpu_cores"] for t in timings if "cpu_cores" in t}
    minutes = (max(r["finished"] for r in timed) - min(r["started"] for r in timed)) / 60
    text = f"The {len(timed)} runs took {minutes:.1f} min of wall time, first start to last end"
    if cores:
        text += f", on {'/'.join(map(str, sorted(cores)))} CPU cores"
    if loads:
        text += (
            f" (load average over 1 min at the runs' ends: {min(loads):.1f} to {max(loads):.1f})"
        )
    return text + "."


def timing_table(runs: list[dict[str, Any]]) -> list[list[str]]:
    keys = [*varying_settings(runs), "seed"]
    rows = [["run", "best epoch", "wall time (s)", "train examples/s"]]
    for r in runs:
        timing = r["summary"]["timing"]
        rows.append(
            [
                setting_label(r["config"], keys),
                str(r["summary"]["best_epoch"]),
                f"{timing['total_seconds']:.1f}",
                f"{timing['train_images_per_second']:.0f}",
            ]
        )
    return rows


def epsilon_text(privacy: dict[str, Any], unit: str) -> str:
    """Epsilon per `unit`: "inf" when no noise at all, "unknown" per patient when patients
    cannot be told apart (never the image's epsilon), "n/a" when the technique does not
    report that unit (DP-SGD protects images; it states nothing per pixel)."""
    value = privacy.get(f"epsilon_per_{unit}")
    if value is None:
        if privacy.get("epsilon") is None:
            return "inf (no noise)"
        return "unknown" if unit == "patient" else "n/a"
    void = " (does not hold: bounds read from the data)"
    text = f"{value:,.0f}" if value >= 1e6 else f"{value:,.6g}"  # 1,555,456, not 1.55546e+06
    return text + (void if privacy.get("guarantee_holds") is False else "")


def markdown(rows: list[list[str]]) -> str:
    lines = [rows[0], ["---"] * len(rows[0]), *rows[1:]]
    return "\n".join("| " + " | ".join(row) + " |" for row in lines) + "\n"
