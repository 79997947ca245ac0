"""The report's setup and provenance block: what was run, on what data, with which model
and training, when, by which dpmed, on which machine, from which command. Read from the
runs' configs and summaries and the sweeps' `sweep.json`; a value that differs between
runs lists every value.

>>> distinct([2, 2, 3, None])
'2 / 3'
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import Any


def distinct(values: Iterable[Any]) -> str:
    """The different values, in first-seen order, joined by " / " ("" for none)."""
    seen: list[str] = []
    for value in values:
        text = f"{value:g}" if isinstance(value, float) else str(value)
        if value is not None and value != "" and text not in seen:
            seen.append(text)
    return " / ".join(seen)


def provenance_table(
    runs: list[dict[str, Any]], sweeps: dict[str, dict[str, Any] | None]
) -> list[list[str]]:
    """Rows (item, value) of the provenance block; items with nothing known are left out."""
    configs = [r["config"] for r in runs]
    summaries = [r["summary"] for r in runs]
    rows = [
        ["sweep", _sweeps_text(sweeps)],
        ["command", distinct(i["command"] for s in _known(sweeps) for i in s["invocations"])],
        ["dataset", distinct(c.get("dataset") for c in configs)],
        ["split sizes", distinct(_split_sizes(s) for s in summaries)],
        ["image size (released)", distinct(_square(s.get("image_size")) for s in summaries)],
        ["input size (trained at)", distinct(_square(s.get("input_size")) for s in summaries)],
        ["features", distinct(len(s["features"]) for s in summaries if s.get("features"))],
        ["model and initialisation", distinct(s.get("model_init") for s in summaries)],
        ["technique", distinct(c.get("technique") for c in configs)],
        ["optimizer", distinct(c.get("optimizer") for c in configs)],
        ["learning rate", distinct(c.get("lr") for c in configs)],
        ["weight decay", distinct(c.get("weight_decay") for c in configs)],
        ["epochs", distinct(c.get("epochs") for c in configs)],
        ["batch size", distinct(c.get("batch_size") for c in configs)],
        ["augmentation", distinct(c.get("augment") for c in configs)],
        ["decision threshold", _thresholds(configs, summaries)],
        ["seeds", ", ".join(map(str, sorted({c["seed"] for c in configs if "seed" in c})))],
        ["date (UTC)", _dates(runs)],
        ["dpmed version", distinct(_versions(runs, sweeps, "dpmed_version"))],
        ["git commit", distinct(_versions(runs, sweeps, "git_commit")) or "unknown"],
        ["device", distinct(s.get("device") for s in summaries)],
        ["hardware", distinct(_hardware(s) for s in summaries)],
    ]
    return [["item", "value"]] + [row for row in rows if row[1]]


def _thresholds(configs: list[dict[str, Any]], summaries: list[dict[str, Any]]) -> str:
    """0.5 and/or the validation rule with the range of cuts it chose (runs from before
    the setting state nothing)."""
    rules = [c.get("threshold") for c in configs]
    chosen = [s["threshold"] for r, s in zip(rules, summaries, strict=True) if r == "validation"]
    fixed = "0.5" if "fixed" in rules else None
    if not chosen:
        return distinct([fixed])
    rule = f"best balanced accuracy on validation ({min(chosen):.2f} to {max(chosen):.2f})"
    return distinct([fixed, rule])


def _known(sweeps: dict[str, dict[str, Any] | None]) -> list[dict[str, Any]]:
    return [s for s in sweeps.values() if s]


def _sweeps_text(sweeps: dict[str, dict[str, Any] | None]) -> str:
    parts = []
    for folder, record in sweeps.items():
        if record:
            name = record["sweep"] + (f" (folder {folder})" if folder != record["sweep"] else "")
            parts.append(name + (f": {record['description']}" if record["description"] else ""))
        else:
            parts.append(f"folder {folder} (no sweep.json: sweep name and command not recorded)")
    return "; ".join(parts)


def _split_sizes(summary: dict[str, Any]) -> str | None:
    """E.g. "train 4,708, val 524, test 624 images (test: 390 positive)"."""
    sizes, noun = summary.get("images"), "images"
    if sizes is None:
        sizes, noun = summary.get("records"), "records"
    if not sizes:
        return None
    text = ", ".join(f"{split} {n:,}" for split, n in sizes.items()) + f" {noun}"
    positives = (summary.get("positives") or {}).get("test")
    if positives is not None and sizes.get("test"):
        text += f" (test: {positives:,} positive, {100 * positives / sizes['test']:.1f}%)"
    return text


def _square(size: int | None) -> str | None:
    return None if size is None else f"{size}x{size}"


def _dates(runs: list[dict[str, Any]]) -> str:
    """First start to last end of the runs, from the database or the summaries."""
    stamps = [t for r in runs for t in (r.get("started"), r.get("finished")) if t]
    if stamps:
        first, last = (
            datetime.datetime.fromtimestamp(t, datetime.UTC).strftime("%Y-%m-%d %H:%M")
            for t in (min(stamps), max(stamps))
        )
    else:
        ends = sorted(r["summary"]["finished_at"] for r in runs if r["summary"].get("finished_at"))
        if not ends:
            return ""
        first, last = (e[:16].replace("T", " ") for e in (ends[0], ends[-1]))
    return first if first == last else f"{first} to {last}"


def _versions(runs, sweeps, key: str) -> list[Any]:
    return [r["summary"].get(key) for r in runs] + [
        i.get(key) for s in _known(sweeps) for i in s["invocations"]
    ]


def _hardware(summary: dict[str, Any]) -> str | None:
    machine = summary.get("machine") or {}
    cores = machine.get("cpu_cores") or summary.get("timing", {}).get("cpu_cores")
    parts = [machine.get("cpu"), f"{cores} CPU cores" if cores else None, machine.get("platform")]
    return ", ".join(p for p in parts if p) or None
