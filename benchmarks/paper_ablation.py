"""Table of benchmarks/results/paper_ablation.md: what each lever of paper-quick's recipe
buys, test and validation accuracy (mean ± sd over seeds) at each noise scale b.

    python benchmarks/paper_ablation.py runs/paper-ablation runs/paper-quick

reads the results databases of `dpmed bench benchmarks/paper_ablation.yaml` and
`dpmed bench paper-quick` and prints the markdown table. A run (one config, one id) found
in several folders counts once, from the first folder given.
"""

from __future__ import annotations

import statistics
import sys
from collections import defaultdict
from pathlib import Path

from dpmed.bench.driver import DB_NAME
from dpmed.bench.store import ResultsStore

LEVER = ("image_size", "postprocess", "augment", "epochs")  # what differs between rows


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f}"


def table(folders: list[Path]) -> str:
    cells: dict[tuple, dict[float, list[dict]]] = defaultdict(lambda: defaultdict(list))
    seen: set[str] = set()
    for folder in folders:
        store = ResultsStore(folder / DB_NAME, read_only=True)
        try:
            runs = store.finished_runs()
        finally:
            store.close()
        for run in (r for r in runs if r["id"] not in seen):
            seen.add(run["id"])
            config = run["config"]
            lever = tuple(config.get(key) for key in LEVER)
            cells[lever][config["noise_scale"]].append(run["summary"])
    scales = sorted({b for row in cells.values() for b in row})
    lines = [
        "| release px | post-processing (train px) | augment | epochs | "
        + " | ".join(f"b = {b:g}: test acc / AUC / val acc (seeds)" for b in scales)
        + " |",
        "|" + " --- |" * (4 + len(scales)),
    ]
    for (size, post, augment, epochs), row in sorted(cells.items(), key=str):
        train_px = size // int(post.removeprefix("down")) if post else size
        out = [str(size), f"{post} ({train_px})", "yes" if augment else "no", str(epochs)]
        for b in scales:
            summaries = row.get(b, [])
            if not summaries:
                out.append("")
                continue
            test = [100 * s["test"]["accuracy"] for s in summaries]
            auc = [s["test"]["roc_auc"] for s in summaries]
            val = [100 * s["val"]["accuracy"] for s in summaries]
            out.append(
                f"{_mean_sd(test)} / {statistics.mean(auc):.3f} / {_mean_sd(val)} "
                f"({len(summaries)})"
            )
        lines.append("| " + " | ".join(out) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table([Path(arg) for arg in sys.argv[1:]]))
