"""`dpmed report FOLDER [FOLDER ...]`: report.md, a self-contained report.html and
results.csv from one or more sweeps' results databases (or single run folders), with the
figures under `figures/`."""

from __future__ import annotations

import base64
import csv
import html
import json
import math
import shutil
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dpmed.bench.driver import DB_NAME
from dpmed.bench.store import ResultsStore
from dpmed.errors import ConfigError
from dpmed.provenance import read_sweep
from dpmed.report import guarantees, plots, provenance, tables
from dpmed.train.metrics import METRICS

# A report is a list of blocks: ("h1" | "h2" | "p", text), ("table", rows),
# ("list", numbered items), ("figure", path relative to the output folder, caption).
Block = tuple
CURVE_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Loaded:
    """What a report reads from its folders: finished runs, their accuracy per epoch (%,
    by run id), run status counts, and each folder's sweep record (None for none)."""

    runs: list[dict[str, Any]]
    curves: dict[str, dict[str, list[float]]]
    counts: dict[str, int]
    sweeps: dict[str, dict[str, Any] | None]


def build_report(
    folders: Path | list[Path], tune: list[str] = (), *, out: Path | None = None
) -> list[Path]:
    """Write the report of the sweeps (or run folders) in `folders` into `out` (default:
    the one folder given); the paths written. Several folders make one comparison, their
    runs told apart by the setting `sweep`. `tune`: settings whose values are candidates,
    chosen per seed on validation (a table of its own)."""
    folders = [folders] if isinstance(folders, Path) else list(folders)
    if out is None:
        if len(folders) > 1:
            raise ConfigError("several folders make one comparison: give --out DIR for it")
        out = folders[0]
    loaded = load(folders)
    tuned = tables.tune_runs(loaded.runs, list(tune)) if tune else []  # fail before writing
    out.mkdir(parents=True, exist_ok=True)
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    blocks = _blocks(loaded, figures) + _tuned_blocks(tuned, list(tune))
    blocks += _audit_blocks(folders, figures)
    written = [_write_csv(loaded.runs, out / "results.csv")]
    (out / "report.md").write_text(_markdown(blocks))
    (out / "report.html").write_text(_html(blocks, out))
    return written + [out / "report.md", out / "report.html"]


def load(folders: list[Path]) -> Loaded:
    """The finished runs of every folder: a sweep's (its results database) or one run's
    (its summary.json, config.yaml and metrics.csv). With several folders each run's
    config gains `sweep`, its folder's name, so equal settings of two sweeps stay apart."""
    runs, curves, counts, sweeps = [], {}, {}, {}
    names = [f.resolve().name for f in folders]
    if len(set(names)) < len(names):
        raise ConfigError(f"folders to compare must have different names, got {', '.join(names)}")
    for folder, name in zip(folders, names, strict=True):
        loader = _load_database if (folder / DB_NAME).exists() else _load_run_folder
        found, found_curves, found_counts = loader(folder)
        for run in found:
            curve = found_curves[run["id"]]
            if len(folders) > 1:
                run["config"] = {"sweep": name, **run["config"]}
                run["id"] = f"{name}/{run['id']}"
            curves[run["id"]] = curve
        runs += found
        for status, n in found_counts.items():
            counts[status] = counts.get(status, 0) + n
        sweeps[name] = read_sweep(folder)
    return Loaded(runs, curves, counts, sweeps)


def _load_database(folder: Path):
    store = ResultsStore(folder / DB_NAME, read_only=True)  # a report never modifies its input
    try:
        runs = store.finished_runs()
        curves = {r["id"]: _accuracy_by_epoch(store.epochs(r["id"])) for r in runs}
        counts = store.counts()
    finally:
        store.close()
    if not runs:
        raise ConfigError(
            f"no finished runs in {folder / DB_NAME} yet; run or resume the sweep first"
        )
    return runs, curves, counts


def _load_run_folder(folder: Path):
    """One run folder (`dpmed run --out FOLDER`) as a finished run."""
    from dpmed.run import SUMMARY

    summary_path = folder / SUMMARY
    if not summary_path.exists():
        raise ConfigError(
            f"no results database or run summary in {folder}; give a sweep folder "
            f"(`dpmed bench ... --out {folder}`) or a run folder (`dpmed run --out {folder}`)"
        )
    summary = json.loads(summary_path.read_text())
    config = yaml.safe_load((folder / "config.yaml").read_text())
    rows = []
    with open(folder / "metrics.csv", newline="") as handle:
        for record in csv.DictReader(handle):
            for split in CURVE_SPLITS:
                value = record.get(f"{split}_accuracy")
                rows.append(
                    (int(record["epoch"]), split, "accuracy", float(value) if value else None)
                )
    run = {"id": folder.name, "name": folder.name, "config": config, "summary": summary}
    run |= {"started": None, "finished": None}
    return [run], {run["id"]: _accuracy_by_epoch(rows)}, {"finished": 1}


def _blocks(loaded: Loaded, figures: Path) -> list[Block]:
    runs = loaded.runs
    groups = tables.group_runs(runs)
    status = ", ".join(f"{n} {s}" for s, n in sorted(loaded.counts.items()))
    blocks: list[Block] = [
        ("h1", "dpmed report"),
        (
            "p",
            f"Runs: {status}. Every number is the model of the best epoch on the "
            "validation split; test numbers choose nothing.",
        ),
        ("h2", "Setup and provenance"),
        ("table", provenance.provenance_table(runs, loaded.sweeps)),
    ]
    if tables.is_paper_grid(runs):
        size = provenance.distinct(r["summary"].get("image_size") for r in runs)
        trained = provenance.distinct(r["summary"].get("input_size") for r in runs)
        blocks += [
            ("h2", "Table 1: accuracy against Laplace noise (ours beside the paper's)"),
            ("table", tables.paper_table(groups)),
            (
                "p",
                "The paper fine-tuned an ImageNet ResNet-18 at 224x224 for 120 epochs; these "
                f"runs release {size} pixels a side and train at {trained}: the per-pixel "
                "epsilon is the paper's, the model and its input are not. Its b = 1 is "
                "epsilon = 1 per pixel but d per image of d pixels.",
            ),
        ]
    no_train = tables.lacks_train_metrics(runs)
    blocks += [
        ("h2", "Results by setting"),
        ("table", tables.summary_table(groups)),
        ("p", tables.CI_NOTE),
    ]
    blocks += [("p", tables.NO_TRAIN_METRICS)] * no_train
    blocks += _guarantee_blocks(groups)

    mean_curves = {g.label: _mean_curve([loaded.curves[r["id"]] for r in g.runs]) for g in groups}
    best = {g.label: round(statistics.median(g.values("best_epoch"))) for g in groups}
    plots.learning_curves(
        mean_curves, best, figures / "learning_curves.png", "accuracy per epoch (mean over seeds)"
    )
    caption = (
        "Learning curves: train (solid), validation (dashed) and test (dotted) accuracy per "
        "epoch, mean over seeds; the star marks each setting's best epoch on validation "
        "(the median over seeds), the model every number above is from."
    )
    blocks.append(
        (
            "figure",
            "figures/learning_curves.png",
            caption + (" DP-trained settings have no train curve." if no_train else ""),
        )
    )
    units = [u for u in tables.reported_units(runs) if u != "patient"]  # patient: k x image
    chance = _chance(runs)
    plots.frontier(
        _frontier_lines(groups, runs, units), units, figures / "frontier.png", chance=chance
    )
    blocks.append(
        (
            "figure",
            "figures/frontier.png",
            "Privacy-utility frontier: test accuracy and ROC-AUC against epsilon, ticks at "
            "the settings' epsilons; error bars are 95% t-intervals over seeds (none for one "
            "seed). The grey dashed line is chance: "
            + (
                f"always predicting the test set's majority class ({100 * chance:.1f}%), "
                if chance is not None
                else ""
            )
            + "and ROC-AUC 0.5.",
        )
    )
    blocks += [
        ("h2", "Wall time and throughput"),
        ("p", tables.sweep_time(runs)),
        ("table", tables.timing_table(runs)),
    ]
    return blocks


def _chance(runs: list[dict[str, Any]]) -> float | None:
    """The test set's majority-class rate, if every run that states it agrees."""
    rates = {
        round(rate, 6) for r in runs if (rate := tables.majority_rate(r["summary"])) is not None
    }
    return rates.pop() if len(rates) == 1 else None


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
    if warning := guarantees.strength_warning(groups):
        blocks.append(("p", warning))
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


def _audit_blocks(folders: list[Path], figures: Path) -> list[Block]:
    """Each folder's membership audit (`dpmed audit FOLDER`), where one was run."""
    from dpmed.audit.build import AUDIT_FOLDER, AUDIT_NOTES, CONFIDENCE, audit_table

    blocks: list[Block] = []
    for folder in folders:
        found = folder / AUDIT_FOLDER / "audit.json"
        if not found.is_file():
            continue
        results = json.loads(found.read_text())["settings"]
        name = f" ({folder.name})" if len(folders) > 1 else ""
        blocks += [
            ("h2", f"Membership audit{name}: what the trained models leak"),
            ("table", audit_table(results)),
        ]
        notes = AUDIT_NOTES.format(confidence=f"{100 * CONFIDENCE:g}%")
        blocks += [("p", " ".join(part.split())) for part in notes.split("\n\n")]
        for figure, caption in AUDIT_FIGURES.items():
            target = figures / f"{folder.name}-{figure}" if name else figures / figure
            shutil.copyfile(folder / AUDIT_FOLDER / figure, target)
            blocks.append(("figure", f"figures/{target.name}", caption))
    return blocks


AUDIT_FIGURES = {
    "audit_roc.png": "LiRA's ROC per setting on log-log axes: the low false-positive rates "
    "where an attack is a real threat to a patient; the dashed diagonal is chance.",
    "audit_epsilon.png": "Left: the stated epsilon (black; at the top where there is none) "
    "beside the lower bound each attack proves (0: nothing proved). Right: LiRA's true "
    "positive rate at 1% false positives against test accuracy.",
}


def _accuracy_by_epoch(rows) -> dict[str, list[float]]:
    """Train, validation and test accuracy (%) per epoch; a split without values (DP
    training computes no train metrics) has an empty curve."""
    curve: dict[str, list[float]] = {split: [] for split in CURVE_SPLITS}
    for _, split, metric, value in rows:
        if metric == "accuracy" and split in curve and value is not None:
            curve[split].append(100 * value)
    return curve


def _mean_curve(curves: list[dict[str, list[float]]]) -> dict[str, list[float]]:
    """The mean over seeds, epoch by epoch (empty if some seed has no curve)."""
    return {
        split: [statistics.fmean(v) for v in zip(*(c[split] for c in curves), strict=False)]
        for split in CURVE_SPLITS
    }


def _frontier_lines(groups: list[tables.Group], runs, units: list[str]) -> dict[str, list[dict]]:
    """One line per setting other than the noise level; each point the mean over seeds
    with its 95% t-interval (None for one seed), clipped to [0, 1]."""
    noise_levels = {"noise_scale", "target_epsilon", "noise_multiplier"}
    varying = [k for k in tables.varying_settings(runs) if k not in noise_levels]
    lines: dict[str, list[dict]] = {}
    for g in groups:
        label = tables.setting_label(g.runs[0]["config"], varying or ["technique"])
        privacy = g.runs[0]["summary"]["privacy"]
        point = {f"epsilon_per_{u}": privacy.get(f"epsilon_per_{u}") for u in units}
        point["no_privacy"] = privacy.get("epsilon") is None
        for metric in ("accuracy", "roc_auc"):
            values = g.values("test", metric) or [math.nan]
            point[metric] = statistics.fmean(values)
            interval = tables.confidence_interval(values, None)
            point[f"{metric}_ci"] = interval and tuple(max(0.0, min(1.0, v)) for v in interval)
        lines.setdefault(label, []).append(point)
    return lines


def result_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per run: its settings (no data location), best epoch, metrics per
    split, guarantee and timing. Epsilon per unit is a number, "inf" without noise and
    "unknown" per patient without patient ids; `guarantee_holds` is false where there is
    no guarantee (no noise) or it does not hold (bounds read from the data)."""
    units = tables.reported_units(runs)
    privacy_keys = ["mechanism", "unit", "epsilon", "delta"]
    privacy_keys += [f"epsilon_per_{u}" for u in units]
    privacy_keys += ["delta_per_patient"] * ("patient" in units)
    privacy_keys += ["adjacency", "guarantee_holds", "noise_source", "key_id"]
    config_keys = [k for k in runs[0]["config"] if k not in privacy_keys and k != "data_root"]
    rows = []
    for r in runs:
        s, privacy = r["summary"], r["summary"]["privacy"]
        row = {"id": r["id"], "name": r["name"]} | {k: r["config"].get(k) for k in config_keys}
        if row.get("weights"):
            row["weights"] = Path(row["weights"]).name  # no local path in a shared file
        row["best_epoch"] = s["best_epoch"]
        for split in ("train", "val", "test"):
            for m in METRICS:
                row[f"{split}_{m}"] = (s.get(split) or {}).get(m)  # DP training: no train
        row |= {k: _privacy_value(privacy, k) for k in privacy_keys}
        row["total_seconds"] = s["timing"]["total_seconds"]
        row["train_images_per_second"] = s["timing"]["train_images_per_second"]
        rows.append(row)
    return rows


def _privacy_value(privacy: dict[str, Any], key: str) -> Any:
    noise = privacy.get("epsilon") is not None
    if key == "guarantee_holds":
        return noise and privacy.get("guarantee_holds", True)
    if key == "epsilon" or key.startswith("epsilon_per_"):
        value = privacy.get(key)
        if value is not None:
            return value
        if not noise:
            return math.inf
        return "unknown" if key == "epsilon_per_patient" else None
    return privacy.get(key)


def _write_csv(runs: list[dict[str, Any]], path: Path) -> Path:
    rows = result_rows(runs)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
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


def _cell(text: str) -> str:
    """A table cell; numbers (and intervals, "inf") right-aligned, text left."""
    numeric = text[:1].isdigit() or text.startswith(("inf", "-", "n/a"))
    return f"<td class='n'>{html.escape(text)}</td>" if numeric else f"<td>{html.escape(text)}</td>"


def _html(blocks: list[Block], out: Path) -> str:
    body = []
    for kind, *content in blocks:
        if kind in ("h1", "h2", "p"):
            body.append(f"<{kind}>{html.escape(content[0])}</{kind}>")
        elif kind == "table":
            head, *rows = content[0]
            cells = "".join(f"<th>{html.escape(c)}</th>" for c in head)
            body.append(
                f"<div class='wide'><table><tr>{cells}</tr>"
                + "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
                + "</table></div>"
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
        "body{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}"
        ".wide{overflow-x:auto}"
        "table{border-collapse:collapse;margin:1em 0;font-size:14px}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}"
        "td.n{text-align:right;white-space:nowrap}img{max-width:100%}"
        "figcaption{color:#555;font-size:13px}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )
