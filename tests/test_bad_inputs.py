"""Hostile input, kind by kind: every one ends in exit code 2 and one line on stderr that
names the problem, with no traceback, and leaves nothing behind (no run folder, no
staging folder, no results.db, no cache entry: the whole test folder, the cache inside
it, is compared before and after)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from dpmed import cli
from dpmed.bench.store import ResultsStore
from dpmed.data.chest_xray import read_grey
from tests.conftest import make_kermany

RUN = ["run", "--model", "small-cnn", "--epochs", "1", "--batch-size", "8", "--quiet"]
HUGE = "1000000"  # a side whose arrays fit no machine: 10^12 pixels per image


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch) -> Path:
    """A cache of this test's own, inside the folder that is compared."""
    monkeypatch.setenv("DPMED_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _files(root: Path) -> set[tuple]:
    """Every file and folder under `root`, files with their size and modification time."""
    return {
        (str(p.relative_to(root)), p.is_dir(), None if p.is_dir() else p.stat()[6:9:2])
        for p in root.rglob("*")
    }


def _refused(argv: list[str], capsys, word: str, root: Path) -> str:
    """Run the CLI in this process; assert the clean refusal; the stderr line."""
    before = _files(root)
    try:
        code = cli.main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert word.lower() in lines[0].lower(), lines[0]
    assert _files(root) == before, "something was written"
    return lines[0]


def _npz(root: Path, **arrays: np.ndarray) -> Path:
    """A tiny PneumoniaMNIST npz in `root` (16 / 8 / 8 images of 28x28, labels (N, 1) as
    MedMNIST has them), `arrays` replacing some of its arrays."""
    rng = np.random.default_rng(0)
    stored = {}
    for split, n in (("train", 16), ("val", 8), ("test", 8)):
        stored[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        stored[f"{split}_labels"] = (np.arange(n) % 2).astype(np.uint8).reshape(n, 1)
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "pneumoniamnist.npz", **stored | arrays)
    return root


def _pmnist(tmp_path: Path) -> list[str]:
    root = _npz(tmp_path / "npz")
    return [*RUN, "--dataset", "pneumoniamnist", "--data-root", root, "--out", tmp_path / "run"]


def _sweep(tmp_path: Path, grid: dict | None = None, **base) -> Path:
    root = _npz(tmp_path / "npz")
    base = {"dataset": "pneumoniamnist", "data_root": str(root), "model": "small-cnn"} | base
    spec = {"base": {"epochs": 1, **base}, "grid": grid or {"seed": [0, 1]}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


# --- non-finite numbers, through flags, the config file, a sweep's base and its grid ---

NON_FINITE = [
    ["--technique", "laplace", "--noise-scale", "nan"],
    ["--technique", "laplace", "--noise-scale", "inf"],
    ["--technique", "laplace", "--target-epsilon", "inf"],
    ["--technique", "laplace", "--target-epsilon", "1e999"],  # overflows to inf
    ["--technique", "gaussian", "--noise-scale", "1", "--delta", "nan"],
    ["--technique", "weighted-laplace", "--noise-scale", "1", "--weight-floor", "nan"],
    ["--technique", "dp-sgd", "--noise-multiplier", "nan"],
    ["--technique", "dp-sgd", "--target-epsilon", "inf"],
    ["--technique", "dp-sgd", "--noise-multiplier", "1", "--max-grad-norm", "inf"],
    ["--lr", "nan"],
    ["--lr", "inf"],
    ["--weight-decay", "nan"],
    ["--val-fraction", "nan"],
    ["--ema-decay", "nan"],
]


def _number_or_text(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _as_settings(flags: list[str]) -> dict:
    """['--noise-scale', 'nan', ...] as YAML settings {'noise_scale': nan, ...}."""
    pairs = zip(flags[::2], flags[1::2], strict=True)
    return {key[2:].replace("-", "_"): _number_or_text(value) for key, value in pairs}


@pytest.mark.parametrize("flags", NON_FINITE, ids=lambda f: "=".join(f[-2:]))
@pytest.mark.parametrize("path", ["run flags", "config file", "bench flags", "sweep base", "grid"])
def test_non_finite_numbers_are_refused_on_every_path(flags, path, tmp_path, capsys):
    settings = _as_settings(flags)
    name = [*settings][-1]  # the non-finite one
    if path == "run flags":
        argv = [*_pmnist(tmp_path), *flags]
    elif path == "config file":
        config = tmp_path / "config.yaml"
        config.write_text(yaml.safe_dump(settings))
        argv = [*_pmnist(tmp_path), "--config", config]
    elif path == "bench flags":
        argv = ["bench", _sweep(tmp_path), "--out", tmp_path / "sweep", "--quiet", *flags]
    elif path == "sweep base":
        argv = ["bench", _sweep(tmp_path, **settings), "--out", tmp_path / "sweep", "--quiet"]
    else:
        *fixed, (last, value) = settings.items()
        sweep = _sweep(tmp_path, {last: [0.5, value]}, **dict(fixed))  # 0.5: valid for each
        argv = ["bench", sweep, "--out", tmp_path / "sweep", "--quiet"]
    line = _refused(argv, capsys, "finite", tmp_path)
    assert name in line


@pytest.mark.parametrize(
    "flags",
    [
        ["--noise-scale", "nan"],
        ["--noise-scale", "inf"],
        ["--target-epsilon", "inf"],
        ["--target-epsilon", "1", "--unit", "pixel", "--delta", "nan"],
    ],
)
def test_privacy_refuses_non_finite_numbers(flags, tmp_path, capsys):
    argv = ["privacy", "--mechanism", "laplace", "--image-size", "28", *flags]
    _refused(argv, capsys, "finite", tmp_path)


def test_privacy_refuses_more_pixels_than_the_image_has(tmp_path, capsys):
    argv = ["privacy", "--mechanism", "laplace", "--image-size", "28", "--noise-scale", "1"]
    line = _refused([*argv, "--unit", "785-pixels"], capsys, "785", tmp_path)
    assert "784" in line  # the image's pixel count, in the message
    assert cli.main([*argv, "--unit", "784-pixels"]) == 0


def test_a_run_refuses_more_pixels_than_the_image_has(tmp_path, capsys):
    flags = ["--technique", "laplace", "--target-epsilon", "1", "--unit", "1000-pixels"]
    _refused([*_pmnist(tmp_path), *flags], capsys, "784", tmp_path)


# --- image data ---


def test_a_16_bit_png_is_scaled_by_its_bit_depth(tmp_path):
    """Grey levels 0..65535 map to 0..255 (v * 255 / 65535, rounded), not to white."""
    values = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65,472
    Image.fromarray(values).save(tmp_path / "x.png")
    with Image.open(tmp_path / "x.png") as image:
        assert image.mode == "I;16"  # what Pillow gives for a 16-bit grey PNG
    grey = read_grey(tmp_path / "x.png", 32)
    assert grey.dtype == np.uint8 and (grey < 255).mean() > 0.9
    assert np.array_equal(grey, np.round(values / 65535 * 255).astype(np.uint8))
    half = read_grey(tmp_path / "x.png", 16)  # resized like an 8-bit image of those levels
    assert abs(int(half.mean()) - int(grey.mean())) <= 1


@pytest.mark.parametrize(
    ("labels", "word"),
    [
        (np.array([0, 1, 2, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0]), "0 or 1"),
        (np.full(16, -1), "0 or 1"),
        (np.full(16, 0.5), "0 or 1"),
        (np.eye(2, dtype=np.uint8)[np.arange(16) % 2], "one-hot"),
        (np.zeros((16, 3), np.uint8), "shape"),
        (np.arange(15) % 2, "15 labels for 16 images"),
    ],
    ids=["label-2", "negative", "fraction", "one-hot", "wide", "length"],
)
def test_npz_labels_are_checked_before_anything_is_written(labels, word, tmp_path, capsys):
    root = _npz(tmp_path / "bad", train_labels=labels)
    argv = [*_pmnist(tmp_path), "--data-root", root, "--technique", "laplace"]
    _refused([*argv, "--noise-scale", "1"], capsys, word, tmp_path)


# --- patient tables ---


def _table(tmp_path: Path, rows: str | bytes, schema: dict | str | bytes) -> list[str]:
    table, spec = tmp_path / "t.csv", tmp_path / "schema.yaml"
    (table.write_bytes if isinstance(rows, bytes) else table.write_text)(rows)
    if isinstance(schema, dict):
        schema = yaml.safe_dump(schema)
    (spec.write_bytes if isinstance(schema, bytes) else spec.write_text)(schema)
    argv = ["run", "--dataset", "csv", "--model", "logistic-regression", "--quiet"]
    return [*argv, "--table", table, "--schema", spec, "--out", tmp_path / "run"]


SCHEMA = {
    "label": "outcome",
    "positive": "sick",
    "features": [{"name": "age", "lower": 0, "upper": 120}],
}
ROWS = "age,outcome\n" + "".join(f"{20 + i},{'sick' if i % 2 else 'well'}\n" for i in range(40))


@pytest.mark.parametrize(
    ("rows", "schema", "word"),
    [
        (ROWS + "50,unknown\n", SCHEMA, "3 distinct values"),
        ((ROWS + "50,caf\xe9\n").encode("latin-1"), SCHEMA, "UTF-8"),
        (ROWS, SCHEMA | {"features": []}, "no features"),
        (ROWS, yaml.safe_dump(SCHEMA).encode("utf-16"), "UTF-8"),
        (
            ROWS,
            SCHEMA | {"features": [{"name": "age", "lower": 0, "upper": float("inf")}]},
            "finite",
        ),
        (ROWS, SCHEMA | {"features": [{"name": "outcome", "type": "binary"}]}, "label"),
        (ROWS.replace("20,", "nan,"), SCHEMA, "NaN"),
    ],
    ids=[
        "third-label",
        "latin-1",
        "no-features",
        "utf-16-schema",
        "inf-bound",
        "label-feature",
        "nan",
    ],
)
def test_bad_tables_are_refused(rows, schema, word, tmp_path, capsys):
    _refused(_table(tmp_path, rows, schema), capsys, word, tmp_path)


# --- ordinary file problems ---


@pytest.mark.parametrize(
    ("content", "word"),
    [
        ("epochs: 1\n".encode("utf-16"), "UTF-8"),
        (bytes(range(256)) * 4, "UTF-8"),
        (b"epochs: 1\n\x00\x01\x02\n", "YAML"),
    ],
    ids=["utf-16", "binary", "control-characters"],
)
@pytest.mark.parametrize("where", ["config", "sweep"])
def test_unreadable_yaml_files_are_refused(content, word, where, tmp_path, capsys):
    path = tmp_path / "file.yaml"
    path.write_bytes(content)
    if where == "config":
        argv = [*_pmnist(tmp_path), "--config", path]
    else:
        argv = ["bench", path, "--out", tmp_path / "sweep"]
    _refused(argv, capsys, word, tmp_path)


@pytest.mark.parametrize("command", ["run", "bench"])
@pytest.mark.parametrize("out", ["taken", "taken/inside"])
def test_out_naming_a_file_is_refused(command, out, tmp_path, capsys):
    (tmp_path / "taken").write_text("not a folder")
    if command == "run":
        argv = [*_pmnist(tmp_path), "--out", tmp_path / out]
    else:
        argv = ["bench", _sweep(tmp_path), "--out", tmp_path / out, "--quiet"]
    _refused(argv, capsys, "not a folder", tmp_path)


def _foreign_sqlite(path: Path) -> None:
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE patients (id INTEGER, name TEXT)")
    db.execute("INSERT INTO patients VALUES (1, 'A')")
    db.commit()
    db.close()


def _text(path: Path) -> None:
    path.write_text("id,accuracy\n1,0.9\n")


def _empty_dpmed(path: Path) -> None:
    ResultsStore(path).close()


@pytest.mark.parametrize(
    ("command", "make", "word"),
    [
        ("report", _text, "not a SQLite database"),
        ("report", _foreign_sqlite, "not a dpmed results database"),
        ("report", _empty_dpmed, "no finished runs"),  # dpmed's own: opened read-only
        ("bench", _text, "not a SQLite database"),
        ("bench", _foreign_sqlite, "not a dpmed results database"),
    ],
    ids=lambda value: getattr(value, "__name__", None),
)
def test_a_results_db_is_never_modified_by_a_refusal(command, make, word, tmp_path, capsys):
    out = tmp_path / "sweep"
    out.mkdir()
    make(out / "results.db")
    before = (out / "results.db").read_bytes()
    if command == "report":
        argv = ["report", out]
    else:
        argv = ["bench", _sweep(tmp_path), "--out", out, "--quiet"]
    _refused(argv, capsys, word, tmp_path)  # no -wal or -shm file beside it either
    assert (out / "results.db").read_bytes() == before


# --- resource limits ---


@pytest.mark.parametrize("dataset", ["chest-xray", "pneumoniamnist"])
def test_an_image_size_that_cannot_fit_in_memory_is_refused_before_decoding(
    dataset, tmp_path, capsys
):
    root = make_kermany(tmp_path / "kermany") if dataset == "chest-xray" else _npz(tmp_path / "p")
    argv = [*RUN, "--dataset", dataset, "--data-root", root, "--out", tmp_path / "run"]
    line = _refused([*argv, "--image-size", HUGE], capsys, "memory", tmp_path)
    assert "--image-size" in line


@pytest.mark.parametrize("dataset", ["chest-xray", "pneumoniamnist"])
def test_an_unreachable_dp_sgd_target_is_refused_before_decoding(dataset, tmp_path, capsys):
    root = make_kermany(tmp_path / "kermany") if dataset == "chest-xray" else _npz(tmp_path / "p")
    argv = [*RUN, "--dataset", dataset, "--data-root", root, "--out", tmp_path / "run"]
    argv += ["--technique", "dp-sgd", "--target-epsilon", "1e-6", "--delta", "1e-5"]
    argv += ["--image-size", "16"]
    line = _refused(argv, capsys, "out of reach", tmp_path)
    assert "--epochs" in line


# --- bench and report settings ---


@pytest.mark.parametrize("flags", [["--jobs", "0"], ["--jobs", "-2"], ["--threads-per-run", "0"]])
def test_bench_refuses_a_job_count_below_one(flags, tmp_path, capsys):
    argv = ["bench", _sweep(tmp_path), "--out", tmp_path / "sweep", "--quiet", *flags]
    _refused(argv, capsys, flags[0], tmp_path)
