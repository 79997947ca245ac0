"""Plots (matplotlib, Agg backend: no screen needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from dpmed.train.loop import EpochRecord  # noqa: E402


def learning_curve(records: list[EpochRecord], best: int, path: Path, title: str) -> None:
    """Train / validation / test accuracy per epoch, the chosen epoch marked."""
    epochs = [r.epoch for r in records]
    fig, ax = plt.subplots(figsize=(6, 4))
    for split, style in (("train", "-"), ("val", "--"), ("test", ":")):
        ax.plot(
            epochs,
            [100 * r.metrics[split]["accuracy"] for r in records],
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
