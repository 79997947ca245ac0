"""Sweep specs: a base config and a grid, expanded into runs with stable ids.

A spec is a YAML mapping with `base` (settings shared by every run), `grid` (setting ->
list of values; every combination is one run; or a list of such grids, whose runs are
joined, for techniques that take different settings) and optional `description`. Presets ship
in `dpmed/presets/<name>.yaml`; any other spec is a path to a YAML file.

>>> spec = Sweep.from_mapping({"base": {"epochs": 2}, "grid": {"seed": [0, 1]}}, name="demo")
>>> [run.config.seed for run in spec.runs()]
[0, 1]
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from dpmed.config import RunConfig, load_yaml
from dpmed.data.root import resolve_data_root
from dpmed.errors import ConfigError

SPEC_KEYS = ("description", "base", "grid")


@dataclass(frozen=True)
class PlannedRun:
    """One point of the grid: its id (a hash of the config), a readable name, the config."""

    id: str
    name: str
    config: RunConfig


@dataclass(frozen=True)
class Sweep:
    name: str
    description: str
    base: dict[str, Any]
    grids: list[dict[str, list[Any]]]

    @classmethod
    def from_mapping(cls, spec: Any, *, name: str) -> Sweep:
        """Validate a spec mapping; every problem is a one-line ConfigError."""
        if not isinstance(spec, dict):
            raise ConfigError(f"sweep {name} must be a mapping with keys base and grid")
        unknown = sorted(set(spec) - set(SPEC_KEYS))
        if unknown:
            raise ConfigError(
                f"unknown key {unknown[0]!r} in sweep {name}; allowed: {', '.join(SPEC_KEYS)}"
            )
        base, grids = spec.get("base") or {}, spec.get("grid") or {}
        grids = grids if isinstance(grids, list) else [grids]
        if not isinstance(base, dict) or not all(isinstance(g, dict) for g in grids):
            raise ConfigError(f"sweep {name}: base and grid must be mappings")
        if not all(grids):
            raise ConfigError(f"sweep {name} has an empty grid; give at least one setting")
        for key, values in (item for grid in grids for item in grid.items()):
            if not isinstance(values, list) or not values:
                raise ConfigError(
                    f"sweep {name}: grid.{key} must be a non-empty list of values, got {values!r}"
                )
        sweep = cls(name, str(spec.get("description", "")), base, grids)
        sweep.runs()  # every combination must be a valid config
        return sweep

    def runs(self, overrides: dict[str, Any] | None = None) -> list[PlannedRun]:
        """Every combination of each grid over the base (each run once); `overrides` beat
        the base."""
        planned: dict[str, PlannedRun] = {}
        points = (
            dict(zip(grid, values, strict=True))
            for grid in self.grids
            for values in itertools.product(*grid.values())
        )
        for point in points:
            config = RunConfig.from_mapping(
                self.base | (overrides or {}) | point, source=f"sweep {self.name}"
            )
            name = ",".join(f"{key}={value}" for key, value in point.items())
            planned.setdefault(run_id(config), plan_run(config, name))
        return list(planned.values())


def plan_run(config: RunConfig, name: str) -> PlannedRun:
    """The run of `config` named `name`, its paths made absolute (for remote workers)."""
    return PlannedRun(run_id(config), name, _with_absolute_paths(config))


def run_id(config: RunConfig) -> str:
    """Stable id of an experiment: a hash of the resolved settings that differ from the
    defaults (so a new setting does not rename old runs), data location left out (where
    the data lives does not change the experiment)."""
    settings = config.replace(image_size=config.resolved_image_size, data_root=None).to_dict()
    defaults = _DEFAULTS.to_dict()
    changed = {k: v for k, v in settings.items() if v != defaults[k]}
    return hashlib.sha256(json.dumps(changed, sort_keys=True).encode()).hexdigest()[:12]


_DEFAULTS = RunConfig()


def _with_absolute_paths(config: RunConfig) -> RunConfig:
    """Remote workers need absolute paths: resolve the data root and weights here."""
    weights = str(Path(config.weights).resolve()) if config.weights else None
    return config.replace(data_root=str(resolve_data_root(config.data_root)), weights=weights)


def preset_names() -> list[str]:
    folder = resources.files("dpmed") / "presets"
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def load_sweep(spec: str) -> Sweep:
    """A preset by name, or a sweep YAML file by path."""
    if spec in preset_names():
        text = (resources.files("dpmed") / "presets" / f"{spec}.yaml").read_text()
        return Sweep.from_mapping(yaml.safe_load(text), name=spec)
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return Sweep.from_mapping(load_yaml(path), name=path.stem)
    raise ConfigError(
        f"no preset or sweep file {spec!r}; presets: {', '.join(preset_names())}, "
        "or give the path of a sweep YAML file"
    )
