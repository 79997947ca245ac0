"""Patient tables: the built-in breast-cancer table, CSV + schema, and every bad input."""

import warnings

import numpy as np
import pytest
import yaml

from dpmed.data.tabular import PrivacyLeakWarning, load_table
from dpmed.errors import DataError


def test_breast_cancer_is_scaled_split_and_labelled_malignant_positive():
    table = load_table("breast-cancer", seed=0)
    sizes = {s: len(d) for s, d in table.splits.items()}
    assert sum(sizes.values()) == 569 and sizes["test"] == 114
    assert len(table.features) == 30 and not table.bounds_from_data
    labels = np.concatenate([d.labels for d in table.splits.values()])
    assert labels.sum() == 212  # malignant
    for split in table.splits.values():
        assert split.features.dtype == np.float32
        assert split.features.min() >= 0 and split.features.max() <= 1


def test_breast_cancer_bounds_come_from_the_definitions_and_clip_nothing():
    from sklearn.datasets import load_breast_cancer

    features = load_table("breast-cancer").features
    bounds = {f.name: (f.lower, f.upper) for f in features}
    assert bounds["mean texture"] == (0, 127.5)  # sd of 8-bit grey values
    assert bounds["worst fractal dimension"] == (0, 1)  # a plane curve: dimension 1 to 2
    assert bounds["mean area"] == (0, 640 * 480)  # the video frame
    values = load_breast_cancer().data
    lower, upper = np.array(list(bounds.values())).T
    assert ((values >= lower) & (values <= upper)).all()
    assert (upper > 1.5 * values.max(axis=0)).all()  # not the data's maxima rounded up


def test_split_depends_on_seed_and_is_stratified():
    a, b = load_table("breast-cancer", seed=0), load_table("breast-cancer", seed=1)
    assert not np.array_equal(a.splits["test"].features, b.splits["test"].features)
    for split in a.splits.values():
        assert split.labels.mean() == pytest.approx(212 / 569, abs=0.03)


def write(tmp_path, rows, schema):
    table = tmp_path / "patients.csv"
    table.write_text("\n".join(",".join(map(str, row)) for row in rows) + "\n")
    spec = tmp_path / "schema.yaml"
    spec.write_text(schema if isinstance(schema, str) else yaml.safe_dump(schema))
    return str(table), str(spec)


ROWS = [["age", "smoker", "outcome"]] + [
    [20 + 3 * i, i % 2, "sick" if i % 3 == 0 else "well"] for i in range(30)
]
SCHEMA = {
    "label": "outcome",
    "positive": "sick",
    "features": [{"name": "age", "lower": 0, "upper": 120}, {"name": "smoker", "type": "binary"}],
}


def test_csv_with_schema_scales_by_the_given_bounds(tmp_path):
    table, schema = write(tmp_path, ROWS, SCHEMA)
    data = load_table("csv", table=table, schema=schema)
    every = np.concatenate([d.features for d in data.splits.values()])
    ages = np.sort(every[:, 0] * 120)
    assert ages == pytest.approx(np.arange(20, 110, 3), abs=1e-4)
    assert set(np.unique(every[:, 1])) == {0.0, 1.0}
    assert sum(d.labels.sum() for d in data.splits.values()) == 10


def test_values_outside_the_bounds_are_clipped(tmp_path):
    schema = dict(SCHEMA, features=[{"name": "age", "lower": 30, "upper": 60}])
    data = load_table(
        "csv", table=write(tmp_path, ROWS, schema)[0], schema=str(tmp_path / "schema.yaml")
    )
    every = np.concatenate([d.features for d in data.splits.values()])
    assert every.min() == 0 and every.max() == 1


def test_bounds_read_from_the_data_warn_and_strict_refuses(tmp_path):
    schema = dict(SCHEMA, bounds="from-data", features=[{"name": "age"}])
    table, spec = write(tmp_path, ROWS, schema)
    with pytest.warns(PrivacyLeakWarning, match="does not hold"):
        data = load_table("csv", table=table, schema=spec)
    assert data.bounds_from_data and data.features[0].lower == 20
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match="--strict refuses"):
            load_table("csv", table=table, schema=spec, strict=True)


@pytest.mark.parametrize(
    ("rows", "schema", "message"),
    [
        (ROWS, "label: [unclosed", "not valid YAML"),
        (ROWS, {"label": "outcome", "features": []}, "has no 'positive'"),
        (ROWS, {"label": "outcome", "positive": "sick"}, "'features' list"),
        (ROWS, dict(SCHEMA, label="diagnosis"), "label column 'diagnosis' is not in"),
        (ROWS, dict(SCHEMA, features=[{"name": "age"}]), "feature 'age' has no bounds"),
        (
            ROWS,
            dict(SCHEMA, features=[{"name": "weight", "lower": 0, "upper": 1}]),
            "'weight' is not a column",
        ),
        (ROWS, dict(SCHEMA, features=[{"name": "age", "lower": 5, "upper": 5}]), "lower < upper"),
        (ROWS, dict(SCHEMA, features=[{"name": "age", "lower": "0", "upper": 9}]), "not a finite"),
        (
            ROWS,
            dict(SCHEMA, features=[{"name": "age", "type": "text"}]),
            "choose numeric or binary",
        ),
        (ROWS, dict(SCHEMA, positive="dead"), "check the schema's positive value"),
        (ROWS[:1] + [["x", 1, "sick"]] + ROWS[1:], SCHEMA, "line 2: age = 'x' is not a number"),
        (ROWS[:4], SCHEMA, "too small to split"),
    ],
)
def test_bad_tables_and_schemas_get_one_clear_line(tmp_path, rows, schema, message):
    table, spec = write(tmp_path, rows, schema)
    with pytest.raises(DataError, match=message) as error:
        load_table("csv", table=table, schema=spec)
    assert "\n" not in str(error.value)


def test_missing_files_are_reported(tmp_path):
    with pytest.raises(DataError, match="cannot read schema"):
        load_table("csv", table=str(tmp_path / "a.csv"), schema=str(tmp_path / "none.yaml"))
