"""Patient tables: one row per patient, numeric features with public bounds, a binary label.

Two sources: the Wisconsin Diagnostic Breast Cancer table built into scikit-learn
(`breast-cancer`, 569 patients, 30 features) and any CSV file described by a YAML schema
(`csv`). Every feature needs bounds, the range its values can take, because the privacy
mechanisms calibrate their noise to them. Bounds must come from outside the data
(clinical knowledge, a data dictionary): bounds read from the private rows reveal their
extremes. A schema may still ask for them (`bounds: from-data`); the run then warns with a
`PrivacyLeakWarning` and marks its guarantee as not holding, and `strict` refuses.

A schema::

    label: diagnosis          # the label column
    positive: M               # the label value counted as the positive class
    features:
      - {name: age, lower: 0, upper: 120}
      - {name: smoker, type: binary}          # values 0 / 1, bounds [0, 1]

Features are scaled into [0, 1] by their bounds (values outside are clipped to them), so
each feature of a record moves by at most 1 when the record is replaced.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from sklearn.model_selection import train_test_split

from dpmed.errors import DataError
from dpmed.files import read_text

TABLES = ("breast-cancer", "csv")
TEST_FRACTION = 0.2  # tables have no official test split: a seeded, stratified 20%
FEATURE_TYPES = ("numeric", "binary")


class PrivacyLeakWarning(UserWarning):
    """A choice that makes the privacy guarantee fail (as diffprivlib's warning of that name)."""


@dataclass(frozen=True)
class Feature:
    name: str
    lower: float
    upper: float


@dataclass(frozen=True)
class TableSplit:
    features: np.ndarray  # (N, F) float32, scaled into [0, 1] by the bounds
    labels: np.ndarray  # (N,) int64, 1 = positive

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class TableDataset:
    name: str
    features: list[Feature]
    splits: dict[str, TableSplit]  # train, val, test
    bounds_from_data: bool  # True: the bounds leak the data, no guarantee holds

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]


def load_table(
    name: str,
    *,
    table: str | None = None,
    schema: str | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    strict: bool = False,
) -> TableDataset:
    """The table `name` (`breast-cancer` or `csv` with `table` and `schema` paths), scaled
    into [0, 1] by its bounds and split (seeded, stratified) into train, val and test."""
    if name == "breast-cancer":
        values, labels = _breast_cancer()
        spec = yaml.safe_load(
            resources.files("dpmed.data").joinpath("breast_cancer.yaml").read_text()
        )
        source = "the built-in breast-cancer schema"
    else:
        if not table or not schema:
            raise DataError("dataset csv needs --table FILE.csv and --schema FILE.yaml")
        spec = _read_schema(Path(schema))
        source = f"schema {schema}"
        values, labels = _read_csv(Path(table), spec, source)
    features, from_data = _features(spec, values, source, strict=strict)
    lower = np.array([f.lower for f in features])
    upper = np.array([f.upper for f in features])
    scaled = ((values.clip(lower, upper) - lower) / (upper - lower)).astype(np.float32)
    return TableDataset(name, features, _split(scaled, labels, val_fraction, seed), from_data)


def _breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    return data.data, (data.target == 0).astype(np.int64)  # scikit-learn: 0 = malignant


def _read_schema(path: Path) -> dict[str, Any]:
    try:
        spec = yaml.safe_load(read_text(path, "schema", DataError))
    except yaml.YAMLError:
        raise DataError(f"schema {path} is not valid YAML") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("features"), list):
        raise DataError(
            f"schema {path} must be a mapping with 'label', 'positive' and a 'features' list"
        )
    for key in ("label", "positive"):
        if key not in spec:
            raise DataError(
                f"schema {path} has no {key!r}: name the label column and its positive value"
            )
    if not spec["features"]:
        raise DataError(
            f"schema {path} lists no features; give at least one, "
            "e.g. {name: age, lower: 0, upper: 120}"
        )
    unknown = sorted(set(spec) - {"label", "positive", "features", "bounds"})
    if unknown:
        raise DataError(
            f"schema {path}: unknown key {unknown[0]!r} (known: label, positive, features, bounds)"
        )
    return spec


def _read_csv(path: Path, spec: dict[str, Any], source: str) -> tuple[np.ndarray, np.ndarray]:
    rows = list(csv.DictReader(io.StringIO(read_text(path, "table", DataError))))
    if not rows:
        raise DataError(f"table {path} has no data rows")
    columns = set(rows[0])
    label = str(spec["label"])
    if label not in columns:
        raise DataError(
            f"{source}: label column {label!r} is not in {path} (columns: {', '.join(rows[0])})"
        )
    names = [_feature_name(entry, source) for entry in spec["features"]]
    if label in names:
        raise DataError(
            f"{source}: the label column {label!r} is listed as a feature; remove it from features"
        )
    missing = [n for n in names if n not in columns]
    if missing:
        raise DataError(f"{source}: feature {missing[0]!r} is not a column of {path}")
    values = np.empty((len(rows), len(names)))
    for i, row in enumerate(rows):
        for j, column in enumerate(names):
            try:
                values[i, j] = float(row[column])
            except (TypeError, ValueError):
                raise DataError(
                    f"{path} line {i + 2}: {column} = {row[column]!r} is not a number"
                ) from None
    if not np.isfinite(values).all():
        raise DataError(f"{path} holds NaN or infinite values; fill or drop them first")
    labels = _binary_labels([row[label] or "" for row in rows], str(spec["positive"]), path, label)
    if labels.min() == labels.max():
        raise DataError(
            f"{path}: every {label!r} is {'' if labels[0] else 'not '}{spec['positive']!r}; "
            "check the schema's positive value"
        )
    return values, labels


def _binary_labels(values: list[str], positive: str, path: Path, column: str) -> np.ndarray:
    """1 where the label is `positive`, else 0; a missing label or a third distinct value
    is refused (counting it as negative would silently mislabel those patients)."""
    if "" in values:
        raise DataError(f"{path} line {values.index('') + 2}: no {column!r}; fill or drop the row")
    found = sorted(set(values))
    if len(found) > 2:
        shown = ", ".join(repr(v) for v in found[:5]) + (", ..." if len(found) > 5 else "")
        raise DataError(
            f"{path}: {column!r} holds {len(found)} distinct values ({shown}); a binary label "
            f"takes two, one of them {positive!r}: map or drop the others"
        )
    return np.array([value == positive for value in values], dtype=np.int64)


def _feature_name(entry: Any, source: str) -> str:
    if not isinstance(entry, dict) or "name" not in entry:
        raise DataError(
            f"{source}: each feature needs a name, e.g. {{name: age, lower: 0, upper: 120}}"
        )
    unknown = sorted(set(entry) - {"name", "type", "lower", "upper"})
    if unknown:
        raise DataError(f"{source}: feature {entry['name']!r} has unknown key {unknown[0]!r}")
    kind = entry.get("type", "numeric")
    if kind not in FEATURE_TYPES:
        raise DataError(
            f"{source}: feature {entry['name']!r} has type {kind!r}; choose numeric or binary"
        )
    return str(entry["name"])


def _features(
    spec: dict[str, Any], values: np.ndarray, source: str, *, strict: bool
) -> tuple[list[Feature], bool]:
    """Each feature with its bounds; and whether any bounds had to be read from the data."""
    from_data = spec.get("bounds") == "from-data"
    if spec.get("bounds") not in (None, "from-data"):
        raise DataError(f"{source}: bounds must be 'from-data' or left out, got {spec['bounds']!r}")
    features, read = [], []
    for j, entry in enumerate(spec["features"]):
        name = _feature_name(entry, source)
        if entry.get("type") == "binary":
            lower, upper = 0.0, 1.0
        elif "lower" in entry and "upper" in entry:
            lower, upper = _number(entry, "lower", source), _number(entry, "upper", source)
        elif from_data:
            lower, upper = float(values[:, j].min()), float(values[:, j].max())
            read.append(name)
        else:
            raise DataError(
                f"{source}: feature {name!r} has no bounds; give lower and upper from outside "
                "the data, or set 'bounds: from-data' (this leaks privacy)"
            )
        if not lower < upper:
            raise DataError(
                f"{source}: feature {name!r} needs lower < upper, got {lower:g}, {upper:g}"
            )
        features.append(Feature(name, lower, upper))
    if read and strict:
        raise DataError(
            f"{source} reads the bounds of {len(read)} feature(s) from the data ({read[0]}, ...), "
            "which leaks privacy; --strict refuses: give lower and upper in the schema"
        )
    if read:
        warnings.warn(
            f"bounds of {len(read)} feature(s) ({read[0]}, ...) are read from the data: "
            "the privacy guarantee does not hold; give them in the schema",
            PrivacyLeakWarning,
            stacklevel=3,
        )
    return features, bool(read)


def _number(entry: dict[str, Any], key: str, source: str) -> float:
    value = entry[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise DataError(
            f"{source}: feature {entry['name']!r} has {key} {value!r}, not a finite number"
        )
    return float(value)


def _split(
    features: np.ndarray, labels: np.ndarray, val_fraction: float, seed: int
) -> dict[str, TableSplit]:
    """Seeded stratified train / val / test: 20% test, then `val_fraction` of the rest."""
    rows = np.arange(len(labels))
    try:
        rest, test = train_test_split(
            rows, test_size=TEST_FRACTION, stratify=labels, random_state=seed
        )
        train, val = train_test_split(
            rest, test_size=val_fraction, stratify=labels[rest], random_state=seed
        )
    except ValueError as exc:
        raise DataError(
            f"the table is too small to split into train, val and test: {exc}"
        ) from None
    return {
        split: TableSplit(features[np.sort(idx)], labels[np.sort(idx)])
        for split, idx in (("train", train), ("val", val), ("test", test))
    }
