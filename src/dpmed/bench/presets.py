"""Presets shipped with dpmed: `presets/<name>.yaml` = description, base config, grid."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from importlib import resources
from typing import Any

import yaml

from dpmed.config import RunConfig
from dpmed.errors import ConfigError


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]

    def runs(self, overrides: dict[str, Any]) -> dict[str, RunConfig]:
        """Run name -> config for every point of the grid; overrides win over the base."""
        keys = list(self.grid)
        runs = {}
        for values in itertools.product(*self.grid.values()):
            point = dict(zip(keys, values, strict=True))
            name = "-".join(f"{key}={value}" for key, value in point.items())
            runs[name] = RunConfig.from_mapping(
                self.base | overrides | point, source=f"preset {self.name}"
            )
        return runs


def preset_names() -> list[str]:
    folder = resources.files("dpmed") / "presets"
    return sorted(
        p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml")
    )


def load_preset(name: str) -> Preset:
    if name not in preset_names():
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(preset_names())}")
    text = (resources.files("dpmed") / "presets" / f"{name}.yaml").read_text()
    spec = yaml.safe_load(text)
    return Preset(name, spec["description"], spec["base"], spec["grid"])
