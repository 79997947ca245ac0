"""Plots (matplotlib, Agg backend: no screen needed)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import (  # noqa: E402
    FixedFormatter,
    FixedLocator,
    MaxNLocator,
    NullLocator,
)

from dpmed.train.loop import EpochRecord  # noqa: E402


def learning_curve(records: list[EpochRecord], best: int, path: Path, title: str) -> None:
    """Train / validation / test accuracy per epoch, the chosen epoch marked; a split
    without accuracies (DP training computes no train metrics) is left out."""
    epochs = [r.epoch for r in records]
    fig, ax = plt.subplots(figsize=(6, 4))
    for split, style in (("train", "-"), ("val", "--"), ("test", ":")):
        values = [(r.metrics.get(split) or {}).get("accuracy") for r in records]
        if None in values:
            continue
        ax.plot(
            epochs,
            [100 * v for v in values],
            style,
            marker="o",
            markersize=3,
            label=split,
        )
    ax.axvline(best, color="grey", linewidth=0.8, label=f"best on val (epoch {best})")
    ax.set(xlabel="epoch", ylabel="accuracy (%)", title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


SPLIT_STYLES = {"train": "-", "val": "--", "test": ":"}


def learning_curves(
    curves: dict[str, dict[str, list[float]]],
    best: dict[str, int],
    path: Path,
    title: str,
) -> None:
    """The paper's Figure 1: accuracy per epoch, one colour per setting and one line style
    per split (train solid, validation dashed, test dotted), each setting's best epoch on
    validation starred. `curves` maps a setting to {"train", "val", "test": [% per epoch]};
    an empty list (DP training: no train metrics) draws no line. The legend names each
    setting once and each split once, beside the plot."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    handles = {}
    for i, (label, splits) in enumerate(curves.items()):
        colour = f"C{i % 10}"
        for split, style in SPLIT_STYLES.items():
            values = splits.get(split) or []
            if values:
                ax.plot(range(1, len(values) + 1), values, style, color=colour, linewidth=1.2)
        val = splits.get("val") or []
        if label in best and 0 < best[label] <= len(val):
            ax.plot(best[label], val[best[label] - 1], "*", color=colour, markersize=11)
        handles[label] = Line2D([], [], color=colour, linewidth=2)
    shown = [s for s in SPLIT_STYLES if any(c.get(s) for c in curves.values())]
    for split in shown:
        name = {"val": "validation"}.get(split, split)
        handles[name] = Line2D([], [], color="black", linestyle=SPLIT_STYLES[split])
    handles["best epoch on validation"] = Line2D(
        [], [], color="black", marker="*", linestyle="", markersize=10
    )
    ax.set(xlabel="epoch", ylabel="accuracy (%)", title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(
        handles.values(),
        handles.keys(),
        loc="upper left",
        bbox_to_anchor=(1.01, 1),
        fontsize=8,
        frameon=False,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def frontier(
    lines: dict[str, list[dict]], units: list[str], path: Path, *, chance: float | None
) -> None:
    """Save `frontier_figure` at `path`."""
    fig = frontier_figure(lines, units, chance=chance)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def frontier_figure(
    lines: dict[str, list[dict]], units: list[str], *, chance: float | None
) -> plt.Figure:
    """Privacy-utility frontier: test accuracy and ROC-AUC against epsilon (log x, ticks at
    the data points), one row per unit where some point has a value; a unit whose epsilon
    is a fixed multiple of the first row's at every point (pixel beside image under input
    noise) is not a row of its own but the top axis of the first. `lines` maps a technique
    to points {"epsilon_per_<unit>", "accuracy", "roc_auc", "*_ci" (the 95% interval over
    seeds, (low, high); None for one seed), "no_privacy"}; a point without any guarantee
    (no noise) is a dotted level; `chance` (the test set's majority-class rate) and an
    ROC-AUC of 0.5 are grey dashed levels."""
    units = [u for u in units if any(p[f"epsilon_per_{u}"] for ps in lines.values() for p in ps)]
    units = units or ["image"]
    points = [p for ps in lines.values() for p in ps]
    twins = {u: units[0] for u in units[1:] if _proportional(points, units[0], u)}
    rows = [u for u in units if u not in twins]
    fig, axes = plt.subplots(len(rows), 2, figsize=(10, 3.9 * len(rows)), squeeze=False)
    for row, unit in zip(axes, rows, strict=True):
        for ax, metric in zip(row, ("accuracy", "roc_auc"), strict=True):
            _frontier_panel(ax, lines, unit, metric, chance)
            for twin in (u for u, base in twins.items() if base == unit):
                _twin_axis(ax, points, unit, twin)
    legend = {
        label: handle
        for ax in axes.flat
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True)
    }
    fig.suptitle("privacy-utility frontier (smaller epsilon = stronger privacy)")
    _legend_below(fig, legend, 3.9 * len(rows))
    return fig


def _frontier_panel(ax, lines: dict[str, list[dict]], unit: str, metric: str, chance) -> None:
    scale = 100 if metric == "accuracy" else 1
    key = f"epsilon_per_{unit}"
    for i, (label, points) in enumerate(lines.items()):
        noisy = sorted((p for p in points if p[key]), key=lambda p: p[key])
        if noisy:
            bars = [p[f"{metric}_ci"] or (p[metric], p[metric]) for p in noisy]
            ax.errorbar(
                [p[key] for p in noisy],
                [scale * p[metric] for p in noisy],
                yerr=[
                    [scale * (p[metric] - low) for p, (low, _) in zip(noisy, bars, strict=True)],
                    [scale * (high - p[metric]) for p, (_, high) in zip(noisy, bars, strict=True)],
                ]
                if any(p[f"{metric}_ci"] for p in noisy)
                else None,
                marker="o",
                capsize=3,
                color=f"C{i % 10}",
                label=label,
            )
        for p in points:
            if p["no_privacy"]:
                ax.axhline(
                    scale * p[metric], color=f"C{i % 10}", linestyle=":", label=f"{label}: no noise"
                )
    level = chance if metric == "accuracy" else 0.5
    if level is not None:
        name = f"chance: majority class ({100 * chance:.1f}%)" if metric == "accuracy" else None
        ax.axhline(scale * level, color="grey", linestyle="--", linewidth=1, label=name)
    ax.set_xscale("log")
    _ticks_at(ax.xaxis, sorted({p[key] for ps in lines.values() for p in ps if p[key]}))
    name = "test accuracy (%)" if metric == "accuracy" else "test ROC-AUC"
    ax.set(xlabel=f"epsilon per {unit} (log scale)", ylabel=name)
    ax.grid(alpha=0.3)


def _twin_axis(ax, points: list[dict], unit: str, twin: str) -> None:
    """The top axis: the same points' epsilon per `twin`, at the ticks of `unit`."""
    top = ax.secondary_xaxis("top")
    pairs = sorted(
        {
            (p[f"epsilon_per_{unit}"], p[f"epsilon_per_{twin}"])
            for p in points
            if p[f"epsilon_per_{unit}"]
        }
    )
    _ticks_at(top.xaxis, [a for a, _ in pairs], [b for _, b in pairs])
    top.set_xlabel(f"epsilon per {twin}", fontsize=9)


def _ticks_at(axis, at: list[float], values: list[float] | None = None) -> None:
    """Ticks at the data points only, labelled with their value (`values`, default the
    positions), skipping a tick too close to the last one kept on the log axis."""
    values = values or at
    kept: list[int] = []
    span = math.log10(at[-1] / at[0]) if len(at) > 1 else 1.0
    for i, x in enumerate(at):
        if not kept or math.log10(x / at[kept[-1]]) >= span / 14:
            kept.append(i)
    axis.set_major_locator(FixedLocator([at[i] for i in kept]))
    axis.set_major_formatter(FixedFormatter([epsilon_label(values[i]) for i in kept]))
    axis.set_minor_locator(NullLocator())
    for label in axis.get_ticklabels():
        label.set_fontsize(8)
    if len(kept) > 5:
        axis.set_tick_params(rotation=45)


def epsilon_label(value: float) -> str:
    """A tick's epsilon: whole numbers from 100 up, else 3 significant digits.

    >>> epsilon_label(4096), epsilon_label(1.9813), epsilon_label(0.015625)
    ('4,096', '1.98', '0.0156')
    """
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def _proportional(points: list[dict], base: str, unit: str) -> bool:
    """Epsilon per `unit` is the same multiple of epsilon per `base` at every point that
    states both (and no point states one without the other)."""
    pairs = [(p[f"epsilon_per_{base}"], p[f"epsilon_per_{unit}"]) for p in points]
    if any(bool(a) != bool(b) for a, b in pairs):
        return False
    ratios = [b / a for a, b in pairs if a]
    return bool(ratios) and max(ratios) - min(ratios) <= 1e-9 * max(ratios)


def _legend_below(fig: plt.Figure, legend: dict, plots_height: float) -> None:
    """Grow the figure by one line per legend entry and put the legend there, below the
    plots, so that a sweep with many settings never covers its own curves."""
    legend_height = 0.3 + 0.19 * len(legend)  # inches
    height = plots_height + legend_height
    fig.set_size_inches(fig.get_size_inches()[0], height)
    fig.tight_layout(rect=(0, legend_height / height, 1, 1))
    fig.legend(legend.values(), legend.keys(), loc="lower center", fontsize=8, frameon=False)


ATTACKS = {"loss": "LOSS", "lira": "LiRA", "one_run": "one run (canaries)"}


def audit_figures(results: list[dict], roc_fpr, out: Path) -> list[Path]:
    """The membership audit's figures in `out`: each setting's LiRA ROC on log-log axes
    (audit_roc.png), and per setting the stated epsilon beside each attack's empirical
    lower bound, with LiRA's TPR at 1% FPR against test accuracy (audit_epsilon.png)."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for r in results:
        ax.plot(roc_fpr, np.maximum(r["lira"]["roc_tpr"], 1e-4), label=r["setting"])
    ax.plot([1e-4, 1], [1e-4, 1], color="grey", linestyle="--", linewidth=0.8, label="chance")
    ax.set(xscale="log", yscale="log", xlabel="false positive rate", ylabel="true positive rate")
    ax.set(title="LiRA membership inference (log-log ROC)", xlim=(1e-4, 1), ylim=(1e-4, 1))
    ax.grid(alpha=0.3, which="both")
    _legend_below(fig, dict(zip(*reversed(ax.get_legend_handles_labels()), strict=True)), 5)
    roc = out / "audit_roc.png"
    fig.savefig(roc, dpi=120)
    plt.close(fig)

    names = [f"{i}. {r['setting']}" for i, r in enumerate(results, 1)]
    height = 1.5 + 0.45 * len(results)
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(13, height), gridspec_kw={"width_ratios": [3, 2]}
    )
    y = np.arange(len(results))[::-1]
    for i, (attack, name) in enumerate(ATTACKS.items()):
        values = [r[attack]["epsilon_lower_bound"] if attack in r else np.nan for r in results]
        left.barh(y + (1 - i) * 0.25, values, height=0.25, label=f"empirical: {name}")
    stated = [r["epsilon"] for r in results]
    top = max([v for v in stated if v is not None] + [1.0]) * 4
    left.scatter(
        [top if v is None else v for v in stated],
        y,
        marker="|",
        s=300,
        color="black",
        label="stated epsilon (at the right end: none)",
    )
    left.set_xscale("symlog", linthresh=0.1)
    left.set_yticks(y, names, fontsize=8)
    left.set(xlabel="epsilon", title="stated epsilon and proved lower bounds")
    left.legend(fontsize=8, loc="upper right")
    for i, r in enumerate(results, 1):
        point = (100 * r["test_accuracy"], 100 * r["lira"]["tpr_at_1pct_fpr"])
        right.scatter(*point, color="C0")
        right.annotate(str(i), point, xytext=(4, 4), textcoords="offset points", fontsize=9)
    right.axhline(1, color="grey", linestyle="--", linewidth=0.8, label="chance (1%)")
    right.set(xlabel="test accuracy (%)", ylabel="LiRA TPR at 1% FPR (%)")
    right.set(title="leakage against utility")
    right.legend(fontsize=8)
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    epsilon = out / "audit_epsilon.png"
    fig.savefig(epsilon, dpi=120)
    plt.close(fig)
    return [roc, epsilon]
