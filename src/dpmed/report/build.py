"""`dpmed report <out>`: report.md, a self-contained report.html and results.csv from a
sweep's results database, with the figures under `figures/`."""

from __future__ import annotations

import base64
import csv
import html
import statistics
from pathlib import Path
from typing import Any

from dpmed.bench.driver import DB_NAME
from dpmed.bench.store import ResultsStore
from dpmed.errors import ConfigError
from dpmed.report import guarantees, plots, tables
from dpmed.train.metrics import METRICS

# A report is a list of blocks: ("h1" | "h2" | "p", text), ("table", rows),
# ("list", numbered items), ("figure", path relative to the output folder, caption).
Block = tuple


def build_report(out: Path, tune: list[str] = ()) -> list[Path]:
    """Write the report files for the sweep in `out`; the paths written. `tune`: settings
    whose values are candidates, chosen per seed on validation (a table of its own)."""
    db = out / DB_NAME
    if not db.exists():
        raise ConfigError(f"no results database at {db}; run `dpmed bench ... --out {out}` first")
    store = ResultsStore(db, read_only=True)  # a report never modifies its input
    try:
        runs = store.finished_runs()
        curves = {r["id"]: _accuracy_by_epoch(store.epochs(r["id"])) for r in runs}
        counts = store.counts()
    finally:
        store.close()
    if not runs:
        raise ConfigError(f"no finished runs in {db} yet; run or resume the sweep first")
    tuned = tables.tune_runs(runs, list(tune)) if tune else []  # bad names fail before writing
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    blocks = _blocks(runs, curves, counts, figures) + _tuned_blocks(tuned, list(tune))
    written = [_write_csv(runs, out / "results.csv")]
    (out / "report.md").write_text(_markdown(blocks))
    (out / "report.html").write_text(_html(blocks, out))
    return written + [out / "report.md", out / "report.html"]


def _blocks(runs, curves, counts, figures: Path) -> list[Block]:
    groups = tables.group_runs(runs)
    status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    blocks: list[Block] = [
        ("h1", "dpmed report"),
        (
            "p",
            f"Runs: {status}. Every number is the model of the best epoch on the "
            "validation split; test numbers choose nothing. Mean ± sd over seeds.",
        ),
    ]
    if tables.is_paper_grid(runs):
        blocks += [
            ("h2", "Table 1: accuracy against Laplace noise (ours beside the paper's)"),
            ("table", tables.paper_table(groups)),
            (
                "p",
                "The paper fine-tuned an ImageNet ResNet-18 at 256x256 for 120 epochs; "
                "compare the shape (accuracy against b), not the digits, at other scales. "
                "Its b = 1 is epsilon = 1 per pixel but d per image of d pixels.",
            ),
        ]
    no_train = tables.lacks_train_metrics(runs)
    blocks += [("h2", "Results by setting"), ("table", tables.summary_table(groups))]
    blocks += [("p", tables.NO_TRAIN_METRICS)] * no_train
    blocks += _guarantee_blocks(groups)

    mean_curves = {g.label: _mean_curve([curves[r["id"]] for r in g.runs]) for g in groups}
    plots.learning_curves(
        mean_curves, figures / "learning_curves.png", "accuracy per epoch (mean over seeds)"
    )
    caption = "Learning curves: train (solid) and test (dashed) accuracy per epoch."
    blocks.append(
        (
            "figure",
            "figures/learning_curves.png",
            caption + (" DP-trained settings have no train curve." if no_train else ""),
        )
    )
    units = [u for u in tables.reported_units(runs) if u != "patient"]  # patient: k x image
    plots.frontier(_frontier_lines(groups, runs, units), units, figures / "frontier.png")
    blocks.append(
        (
            "figure",
            "figures/frontier.png",
            "Privacy-utility frontier: test accuracy and ROC-AUC against epsilon.",
        )
    )
    blocks += [
        ("h2", "Wall time and throughput"),
        ("p", tables.sweep_time(runs)),
        ("table", tables.timing_table(runs)),
    ]
    return blocks


def _guarantee_blocks(groups: list[tables.Group]) -> list[Block]:
    rows, assumptions = guarantees.guarantee_section(groups)
    blocks: list[Block] = [
        ("h2", "Privacy guarantee"),
        (
            "p",
            "Per setting: the unit one guarantee protects, epsilon per unit with its strength, "
            "and the assumptions (numbered below) it rests on. " + guarantees.STRENGTH_NOTE,
        ),
        ("table", rows),
    ]
    if assumptions:
        blocks += [("p", "Assumptions:"), ("list", assumptions)]
    return blocks


def _tuned_blocks(tuned: list[tables.Tuned], tune: list[str]) -> list[Block]:
    if not tuned:
        return []
    return [
        ("h2", f"Tuned on validation: {', '.join(tune)}"),
        (
            "p",
            f"For every other setting and each seed, the candidate values of {', '.join(tune)} "
            "were compared on validation accuracy alone (lower validation loss breaks ties); "
            "the test numbers are the chosen runs' and chose nothing. The choice reads every "
            "candidate, and all were trained on the same training data, so the epsilon shown "
            "includes the tuning: the candidates' guarantees composed (DP-SGD steps by the "
            "accountant; input noise shared by all candidates is one release, free to reuse).",
        ),
        ("table", tables.tuned_table(tuned)),
    ]


def _accuracy_by_epoch(rows) -> dict[str, list[float]]:
    """Train and test accuracy (%) per epoch; a split without values (DP training computes
    no train metrics) has an empty curve."""
    curve: dict[str, list[float]] = {"train": [], "test": []}
    for _, split, metric, value in rows:
        if metric == "accuracy" and split in curve and value is not None:
            curve[split].append(100 * value)
    return curve


def _mean_curve(curves: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    """The mean over seeds, epoch by epoch (empty if some seed has no curve)."""
    return {
        split: [statistics.fmean(v) for v in zip(*(c[split] for c in curves), strict=False)]
        for split in ("train", "test")
    }


def _frontier_lines(groups: list[tables.Group], runs, units: list[str]) -> dict[str, list[dict]]:
    """One line per setting other than the noise level."""
    noise_levels = {"noise_scale", "target_epsilon", "noise_multiplier"}
    varying = [k for k in tables.varying_settings(runs) if k not in noise_levels]
    lines: dict[str, list[dict]] = {}
    for g in groups:
        label = ", ".join(f"{k}={g.settings[k]}" for k in varying) or g.settings["technique"]
        privacy = g.runs[0]["summary"]["privacy"]
        point = {f"epsilon_per_{u}": privacy.get(f"epsilon_per_{u}") for u in units}
        point["no_privacy"] = privacy.get("epsilon") is None
        for metric in ("accuracy", "roc_auc"):
            values = g.values("test", metric) or [float("nan")]
            point[metric] = statistics.fmean(values)
            point[f"{metric}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        lines.setdefault(label, []).append(point)
    return lines


def _write_csv(runs: list[dict[str, Any]], path: Path) -> Path:
    config_keys = list(runs[0]["config"])
    privacy_keys = [
        "mechanism",
        "unit",
        "epsilon",
        "delta",
        *(f"epsilon_per_{u}" for u in tables.EPSILON_UNITS),
        "delta_per_patient",
        "adjacency",
        "guarantee_holds",
        "noise_source",
        "key_id",
    ]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "id",
                "name",
                *config_keys,
                "best_epoch",
                *[f"{s}_{m}" for s in ("train", "val", "test") for m in METRICS],
                *privacy_keys,
                "total_seconds",
                "train_images_per_second",
            ]
        )
        for r in runs:
            s = r["summary"]
            writer.writerow(
                [
                    r["id"],
                    r["name"],
                    *[r["config"][k] for k in config_keys],
                    s["best_epoch"],
                    *[
                        (s.get(split) or {}).get(m)  # DP training: no train metrics
                        for split in ("train", "val", "test")
                        for m in METRICS
                    ],
                    *[s["privacy"].get(k) for k in privacy_keys],
                    s["timing"]["total_seconds"],
                    s["timing"]["train_images_per_second"],
                ]
            )
    return path


def _markdown(blocks: list[Block]) -> str:
    parts = []
    for kind, *content in blocks:
        if kind == "h1":
            parts.append(f"# {content[0]}\n")
        elif kind == "h2":
            parts.append(f"## {content[0]}\n")
        elif kind == "p":
            parts.append(f"{content[0]}\n")
        elif kind == "table":
            parts.append(tables.markdown(content[0]))
        elif kind == "list":
            parts.append("".join(f"{i}. {item}\n" for i, item in enumerate(content[0], 1)))
        else:
            parts.append(f"![{content[1]}]({content[0]})\n\n*{content[1]}*\n")
    return "\n".join(parts)


def _html(blocks: list[Block], out: Path) -> str:
    body = []
    for kind, *content in blocks:
        if kind in ("h1", "h2", "p"):
            body.append(f"<{kind}>{html.escape(content[0])}</{kind}>")
        elif kind == "table":
            head, *rows = content[0]
            cells = "".join(f"<th>{html.escape(c)}</th>" for c in head)
            body.append(
                f"<table><tr>{cells}</tr>"
                + "".join(
                    "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                    for row in rows
                )
                + "</table>"
            )
        elif kind == "list":
            body.append(
                "<ol>" + "".join(f"<li>{html.escape(item)}</li>" for item in content[0]) + "</ol>"
            )
        else:
            data = base64.b64encode((out / content[0]).read_bytes()).decode()
            body.append(
                f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(content[1])}">'
                f"<figcaption>{html.escape(content[1])}</figcaption></figure>"
            )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>dpmed report</title><style>"
        "body{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:14px}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}"
        "td:first-child,th:first-child{text-align:left}img{max-width:100%}"
        "figcaption{color:#555;font-size:13px}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )
