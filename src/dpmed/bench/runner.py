"""Run a preset's grid into one folder per run, resumably."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from dpmed.bench.presets import Preset
from dpmed.config import RunConfig
from dpmed.run import SUMMARY, run_experiment


def run_preset(
    preset: Preset, out: Path, overrides: dict[str, Any], *, log=print
) -> dict[str, dict]:
    """Run every grid point into `out/<run name>`; a run whose folder already holds a
    summary for the same config is reused, so an interrupted bench resumes."""
    summaries = {}
    runs = preset.runs(overrides)
    for i, (name, config) in enumerate(runs.items(), 1):
        folder = out / name
        if _finished(folder, config):
            log(f"[{i}/{len(runs)}] {name}: done before, reusing {folder}")
        else:
            log(f"[{i}/{len(runs)}] {name}")
            run_experiment(config, folder, overwrite=True, log=log)
        summaries[name] = json.loads((folder / SUMMARY).read_text())
    return summaries


def _finished(folder: Path, config: RunConfig) -> bool:
    if not (folder / SUMMARY).exists():
        return False
    stored = yaml.safe_load((folder / "config.yaml").read_text())
    return stored == config.replace(image_size=config.resolved_image_size).to_dict()
