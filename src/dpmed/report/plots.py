"""Plots (matplotlib, Agg backend: no screen needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullFormatter  # noqa: E402

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


def learning_curves(curves: dict[str, dict[str, list[float]]], path: Path, title: str) -> None:
    """The paper's Figure 1: train (solid) and test (dashed) accuracy per epoch, one colour
    per setting. `curves` maps a setting to {"train": [...], "test": [...]} (% per epoch);
    an empty list (DP training: no train metrics) draws no line."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, splits) in enumerate(curves.items()):
        colour = f"C{i}"
        for split, style in (("train", "-"), ("test", "--")):
            values = splits[split]
            if not values:
                continue
            ax.plot(
                range(1, len(values) + 1),
                values,
                style,
                color=colour,
                marker="o",
                markersize=3,
                label=f"{label} ({split})",
            )
    ax.set(xlabel="epoch", ylabel="accuracy (%)", title=title)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    _legend_below(fig, dict(zip(*reversed(ax.get_legend_handles_labels()), strict=True)), 4.5)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def frontier(lines: dict[str, list[dict]], units: list[str], path: Path) -> None:
    """Privacy-utility frontier: test accuracy and ROC-AUC against epsilon (log x), one row
    per unit (record, image, pixel) where some point has a value. `lines` maps a technique
    to points {"epsilon_per_<unit>", "accuracy", "roc_auc"} (mean over seeds, with "*_sd",
    and "no_privacy"); a point without any guarantee (no noise) is drawn as a dotted level,
    a technique that reports no epsilon at a unit is left out there."""
    units = [u for u in units if any(p[f"epsilon_per_{u}"] for ps in lines.values() for p in ps)]
    units = units or ["image"]
    fig, axes = plt.subplots(len(units), 2, figsize=(10, 3.8 * len(units)), squeeze=False)
    for row, unit in zip(axes, units, strict=True):
        for ax, metric, name in zip(
            row, ("accuracy", "roc_auc"), ("test accuracy (%)", "test ROC-AUC"), strict=True
        ):
            scale = 100 if metric == "accuracy" else 1
            for i, (label, points) in enumerate(lines.items()):
                noisy = sorted(
                    (p for p in points if p[f"epsilon_per_{unit}"]),
                    key=lambda p: p[f"epsilon_per_{unit}"],
                )
                if noisy:
                    ax.errorbar(
                        [p[f"epsilon_per_{unit}"] for p in noisy],
                        [scale * p[metric] for p in noisy],
                        yerr=[scale * p[f"{metric}_sd"] for p in noisy],
                        marker="o",
                        capsize=3,
                        color=f"C{i}",
                        label=label,
                    )
                for p in points:
                    if p["no_privacy"]:
                        ax.axhline(
                            scale * p[metric],
                            color=f"C{i}",
                            linestyle=":",
                            label=f"{label}: no noise",
                        )
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set(xlabel=f"epsilon per {unit} (log)", ylabel=name)
            ax.grid(alpha=0.3, which="both")
    legend = {
        label: handle
        for ax in axes.flat
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True)
    }
    fig.suptitle("privacy-utility frontier (smaller epsilon = stronger privacy)")
    _legend_below(fig, legend, 3.8 * len(units))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _legend_below(fig: plt.Figure, legend: dict, plots_height: float) -> None:
    """Grow the figure by one line per legend entry and put the legend there, below the
    plots, so that a sweep with many settings never covers its own curves."""
    legend_height = 0.3 + 0.19 * len(legend)  # inches
    height = plots_height + legend_height
    fig.set_size_inches(fig.get_size_inches()[0], height)
    fig.tight_layout(rect=(0, legend_height / height, 1, 1))
    fig.legend(legend.values(), legend.keys(), loc="lower center", fontsize=8, frameon=False)
