"""Tables in Markdown."""

from __future__ import annotations

# Singh & Sikka, Table 1: accuracy (%) by Laplace scale b (0 = original images).
PAPER_TABLE1 = {
    "test": {0: 82.69, 1: 74.35, 2: 69.23, 4: 54.16},
    "train": {0: 99.98, 1: 77.11, 2: 65.08, 4: 58.03},
}


def paper_table(summaries: dict[str, dict]) -> str:
    """Markdown: Table 1's layout, our accuracy beside the paper's, plus epsilon per image."""
    by_scale = {s["privacy"]["noise_scale"]: s for s in summaries.values()}
    scales = sorted(by_scale)
    head = ["accuracy (%)"] + ["original" if b == 0 else f"b={b:g}" for b in scales]
    rows = [head, ["---"] * len(head)]
    for split in ("test", "train"):
        cells = []
        for b in scales:
            ours = f"{100 * by_scale[b][split]['accuracy']:.2f}"
            paper = PAPER_TABLE1[split].get(b)
            cells.append(f"{ours} (paper {paper:.2f})" if paper is not None else ours)
        rows.append([split] + cells)
    auc = [by_scale[b]["test"]["roc_auc"] for b in scales]
    rows.append(["test ROC-AUC"] + ["n/a" if v is None else f"{v:.3f}" for v in auc])
    for unit in ("pixel", "image"):
        epsilons = [by_scale[b]["privacy"][f"epsilon_per_{unit}"] for b in scales]
        rows.append([f"epsilon per {unit}"] + [_epsilon(e) for e in epsilons])
    return "\n".join("| " + " | ".join(row) + " |" for row in rows) + "\n"


def _epsilon(value: float | None) -> str:
    return "inf (no noise)" if value is None else f"{value:,.6g}"
