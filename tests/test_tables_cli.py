"""`dpmed run` on patient tables end to end, and bad table settings as one-line errors."""

import json
import pickle

import pytest
import yaml

from dpmed import cli
from tests.test_cli import _fail

TABLE = ["run", "--dataset", "breast-cancer", "--quiet"]


@pytest.mark.parametrize(
    ("technique", "model"),
    [
        ("none", "logistic-regression"),
        ("diffprivlib", "gaussian-nb"),
        ("adaptive-laplace", "random-forest"),
    ],
)
def test_table_run_writes_its_folder_with_the_guarantee_per_record(tmp_path, technique, model):
    out = tmp_path / "run"
    epsilon = [] if technique == "none" else ["--target-epsilon", "3"]
    args = [*TABLE, "--technique", technique, "--model", model, *epsilon, "--out", str(out)]
    assert cli.main(args) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "config.yaml",
        "learning_curve.png",
        "metrics.csv",
        "model.pkl",
        "summary.json",
    ]
    summary = json.loads((out / "summary.json").read_text())
    privacy = summary["privacy"]
    assert privacy["unit"] == "record" and summary["records"]["test"] == 114
    assert privacy["epsilon_per_record"] == (None if technique == "none" else pytest.approx(3))
    assert len(summary["features"]) == 30
    private_labels = technique == "diffprivlib"  # DP training protects the training labels
    assert ("train" in summary["positives"]) is not private_labels
    model_file = pickle.loads((out / "model.pkl").read_bytes())
    assert model_file.predict_proba([[0.5] * 30]).shape == (1, 2)
    if technique == "none":
        # non-private logistic regression; the bounds from outside the data leave the features
        # in a small part of [0, 1], where its default regularisation costs accuracy, not ranking
        assert summary["test"]["roc_auc"] > 0.9 and summary["test"]["accuracy"] > 0.8


def test_dp_sgd_mlp_on_a_table_spends_at_most_its_target_and_learns(tmp_path):
    out = tmp_path / "mlp"
    args = [*TABLE, "--technique", "dp-sgd", "--model", "mlp", "--target-epsilon", "2"]
    args += ["--epochs", "15", "--batch-size", "64", "--optimizer", "sgd", "--lr", "0.5"]
    assert cli.main([*args, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    privacy = summary["privacy"]
    assert privacy["mechanism"] == "dp-sgd" and privacy["unit"] == "record"
    assert privacy["epsilon_per_record"] <= 2.0 and privacy["guarantee_holds"]
    assert privacy["grad_sample_mode"] == "hooks"  # auto, for a model not measured
    assert summary["test"]["roc_auc"] > 0.8
    assert summary["train"] is None  # DP training: the clean training rows are not scored
    assert set(summary["positives"]) == {"val", "test"}  # nor their labels counted
    config = yaml.safe_load((out / "config.yaml").read_text())  # the values actually used
    assert config["delta"] == privacy["delta"] > 0 and config["grad_sample_mode"] == "hooks"
    assert config["noise_multiplier"] == privacy["noise_multiplier"]
    assert config["target_epsilon"] is None and config["accountant"] == "pld"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--technique", "diffprivlib", "--model", "gaussian-nb"], "needs --target-epsilon"),
        (["--technique", "laplace", "--noise-scale", "1"], "noise_scale is for images"),
        (["--technique", "diffprivlib", "--model", "mlp", "--target-epsilon", "1"], "trains"),
        (["--model", "small-cnn"], "unknown model 'small-cnn'"),
        (["--unit", "pixel"], "--unit must be record"),
        (["--technique", "dp-sgd", "--model", "gaussian-nb", "--target-epsilon", "1"], "mlp"),
        (["--technique", "gaussian"], "unknown technique 'gaussian'"),
        (["--augment"], "augment are for images"),
        (["--augment-multiplicity", "2"], "augment_multiplicity is for images"),
        (["--importance-share", "1"], "importance_share must lie in"),
        (["--weight-floor", "0.5"], "weight_floor is for images"),
        (["--target-epsilon", "1"], "target_epsilon is set but technique is 'none'"),
        (["--table", "x.csv"], "table and schema are for dataset csv"),
    ],
)
def test_bad_table_settings_are_one_line_exit_2(tmp_path, capsys, argv, message):
    out = tmp_path / "run"
    err = _fail([*TABLE, "--model", "logistic-regression", *argv, "--out", str(out)], capsys)
    assert message in err and not out.exists()


def test_a_malformed_csv_is_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "bad.csv").write_text("age,outcome\n30,sick\nold,well\n")
    (tmp_path / "s.yaml").write_text("label: outcome\npositive: sick\nfeatures: [{name: age}]\n")
    argv = ["run", "--dataset", "csv", "--model", "logistic-regression", "--quiet"]
    argv += ["--schema", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "run")]
    err = _fail([*argv, "--table", str(tmp_path / "bad.csv")], capsys)
    assert "bad.csv line 3: age = 'old' is not a number" in err
    (tmp_path / "good.csv").write_text("age,outcome\n30,sick\n40,well\n")
    err = _fail([*argv, "--table", str(tmp_path / "good.csv")], capsys)
    assert "feature 'age' has no bounds" in err
    err = _fail(argv, capsys)
    assert "dataset csv needs --table" in err
    assert not (tmp_path / "run").exists()
