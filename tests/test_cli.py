"""`dpmed run` and `dpmed bench` end to end, and every bad input as a one-line error."""

import csv
import json
import re
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
import yaml

from dpmed import cli
from dpmed.config import FASTEST_MODES_MEASURED_BY_DPSGD_SPEED
from dpmed.privacy import Laplace
from dpmed.privacy import mechanism as mech

QUICK = [
    "--dataset",
    "pneumoniamnist",
    "--model",
    "small-cnn",
    "--max-images",
    "80",
    "--epochs",
    "2",
    "--batch-size",
    "32",
    "--quiet",
]


def test_run_writes_a_complete_run_folder(real_data, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli.main(
        [
            "run",
            *QUICK,
            "--technique",
            "laplace",
            "--noise-scale",
            "2",
            "--data-root",
            str(real_data),
            "--out",
            str(out),
        ]
    )
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "best.pt",
        "config.yaml",
        "learning_curve.png",
        "metrics.csv",
        "summary.json",
    ]
    summary = json.loads((out / "summary.json").read_text())
    for key in (
        "dataset",
        "technique",
        "model",
        "image_size",
        "seed",
        "epochs",
        "best_epoch",
        "train",
        "val",
        "test",
        "privacy",
        "timing",
    ):
        assert key in summary
    assert set(summary["test"]) == {"accuracy", "roc_auc", "sensitivity", "specificity", "loss"}
    privacy = summary["privacy"]
    assert privacy["epsilon_per_pixel"] == 0.5 and privacy["epsilon_per_image"] == 392.0
    assert privacy["epsilon"] == 392.0 and privacy["unit"] == "image" and privacy["delta"] == 0
    assert set(privacy["release_sha256"]) == {"train", "val", "test"}
    assert summary["timing"]["train_images_per_second"] > 0
    lines = (out / "metrics.csv").read_text().splitlines()
    assert len(lines) == 3 and "val_accuracy" in lines[0]
    assert "epsilon = 392 per image" in capsys.readouterr().out


def test_release_happens_once_and_training_uses_the_saved_copy(real_data, tmp_path, monkeypatch):
    from dpmed import run

    cache = tmp_path / "cache"  # a cache of its own: no release made by another test
    monkeypatch.setenv("DPMED_CACHE", str(cache))

    releases, trained_on = [], []
    real_release, real_fit = Laplace.release, run.fit
    monkeypatch.setattr(Laplace, "release", lambda *a: releases.append(a) or real_release(*a))
    monkeypatch.setattr(
        run, "fit", lambda m, data, *a, **k: trained_on.append(data) or real_fit(m, data, *a, **k)
    )
    args = [
        "run",
        *QUICK,
        "--technique",
        "laplace",
        "--noise-scale",
        "1",
        "--data-root",
        str(real_data),
        "--epochs",
        "3",
    ]
    assert cli.main([*args, "--out", str(tmp_path / "a")]) == 0
    assert len(releases) == 3  # train, val, test: once each, not once per epoch
    assert cli.main([*args, "--out", str(tmp_path / "b")]) == 0
    assert len(releases) == 3  # a second run reuses the saved release

    a, b = (json.loads((tmp_path / r / "summary.json").read_text()) for r in "ab")
    assert a["privacy"]["release_sha256"] == b["privacy"]["release_sha256"]
    assert a["test"] == b["test"]  # same seed, same release: the same model
    [saved] = (cache / "releases").glob("pneumoniamnist-train-laplace-scale1-*.npy")
    assert mech.file_sha256(saved) == a["privacy"]["release_sha256"]["train"]
    for data in trained_on:  # fit gets the saved release itself, for all its epochs
        assert np.array_equal(data["train"][0], np.load(saved))


def test_run_calibrates_to_a_target_and_post_processes(real_data, tmp_path, capsys):
    out = tmp_path / "dppix"
    args = ["--technique", "dppix", "--cell-size", "4", "--target-epsilon", "100"]
    args += ["--postprocess", "blur1", "--data-root", str(real_data), "--out", str(out)]
    assert cli.main(["run", *QUICK, *args]) == 0
    privacy = json.loads((out / "summary.json").read_text())["privacy"]
    assert privacy["mechanism"] == "dppix-cell4" and privacy["noise_scale"] == 0.49
    assert privacy["epsilon_per_image"] == pytest.approx(100) and privacy["target_epsilon"] == 100
    assert privacy["epsilon_per_pixel"] == pytest.approx(100 / 784)
    # no patient ids: the per-patient guarantee is unknown, never the per-image one
    assert privacy["epsilon_per_patient"] is None and privacy["images_per_patient"] is None
    assert "no patient ids" in privacy["epsilon_per_patient_unknown"]
    assert any("no patient ids" in a for a in privacy["assumptions"])
    assert privacy["postprocess"] == ["blur1"] and privacy["adjacency"] == "replace-one"
    config = yaml.safe_load((out / "config.yaml").read_text())  # what the run used
    assert config["noise_scale"] == 0.49 and config["target_epsilon"] is None
    assert "epsilon = 100 per image (dppix-cell4)" in capsys.readouterr().out


def test_privacy_prints_the_guarantee_as_json_and_table(capsys):
    argv = ["privacy", "--mechanism", "laplace", "--noise-scale", "2", "--image-size", "28"]
    assert cli.main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["epsilon_per_pixel"] == 0.5 and report["epsilon_per_image"] == 392.0
    assert report["delta"] == 0 and report["image_size"] == 28
    assert cli.main([*argv, "--images-per-patient", "3"]) == 0
    table = capsys.readouterr().out
    assert re.search(r"pixel\s+0.5\s+0", table) and re.search(r"image\s+392\s", table)
    assert re.search(r"patient \(3 images\)\s+1,176\s", table) and "assumptions:" in table


def test_privacy_calibrates_to_a_target_epsilon(capsys):
    argv = ["privacy", "--mechanism", "gaussian", "--target-epsilon", "8", "--unit", "image"]
    assert cli.main([*argv, "--delta", "1e-5", "--image-size", "28", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["epsilon_per_image"] == pytest.approx(8) and report["delta"] == 1e-5
    assert report["noise_scale"] == pytest.approx(16.8064, rel=1e-5)
    argv = ["privacy", "--mechanism", "laplace", "--target-epsilon", "8", "--unit", "16-pixels"]
    assert cli.main([*argv, "--image-size", "28", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["noise_scale"] == 2.0 and report["unit"] == "16-pixels"


DP_SGD = ["--technique", "dp-sgd", "--target-epsilon", "1"]
PMNIST_50 = ["--dataset", "pneumoniamnist", "--data-root", "{real}", "--max-images", "50"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--mechanism", "laplace", "--noise-scale", "1"], "give --image-size"),
        (["--mechanism", "gaussian", "--noise-scale", "1"], r"needs delta in \(0, 1\)"),
        (["--mechanism", "gaussian", "--noise-scale", "1", "--delta", "1"], "delta in"),
        (["--mechanism", "laplace", "--noise-scale", "1", "--delta", "1e-5"], "delta must be 0"),
        (["--mechanism", "laplace", "--target-epsilon", "0"], "target_epsilon must be > 0"),
        (["--mechanism", "laplace", "--target-epsilon", "-1"], "target_epsilon must be > 0"),
        (["--mechanism", "dppix", "--cell-size", "3", "--noise-scale", "1"], "does not divide"),
        (["--mechanism", "dppix", "--noise-scale", "1"], "dppix needs cell_size"),
        (["--mechanism", "laplace", "--noise-scale", "1", "--unit", "voxel"], "unknown unit"),
        (["--mechanism", "laplace", "--noise-scale", "1", "--target-epsilon", "1"], "not both"),
        (["--mechanism", "rappor", "--noise-scale", "1"], "unknown technique 'rappor'"),
    ],
)
def test_privacy_bad_settings_are_one_line_exit_2(argv, message, capsys):
    size = [] if "laplace" in argv and "give" in message else ["--image-size", "28"]
    assert re.search(message, _fail(["privacy", *argv, *size], capsys))


def test_trains_on_real_data_better_than_chance(real_data, tmp_path):
    """The full PneumoniaMNIST train split, 4 epochs: well above always-pneumonia (62.5%)."""
    out = tmp_path / "learn"
    args = [
        "run",
        "--dataset",
        "pneumoniamnist",
        "--model",
        "small-cnn",
        "--epochs",
        "4",
        "--lr",
        "0.003",
        "--balanced-loss",
        "--quiet",
        "--data-root",
        str(real_data),
    ]
    assert cli.main([*args, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test"]["accuracy"] > 0.75 and summary["test"]["roc_auc"] > 0.9


def test_bench_paper_quick_prints_table1_and_resumes(real_data, tmp_path, capsys):
    out = tmp_path / "bench"
    args = [
        "bench",
        "paper-quick",
        "--max-images",
        "30",
        "--quiet",
        "--data-root",
        str(real_data),
        "--out",
        str(out),
    ]
    assert cli.main(args) == 0
    printed = capsys.readouterr().out
    assert "paper 82.69" in printed and "b = 4" in printed
    assert "| epsilon per image | inf (no noise) | 50,176 | 25,088 | 12,544 |" in printed
    assert "| postprocess | down8 | down14 | down14 | down14 |" in printed
    db = sqlite3.connect(out / "results.db")
    before = db.execute("SELECT id, finished FROM runs ORDER BY id").fetchall()
    assert len(before) == 12  # 4 noise scales, 3 seeds
    assert cli.main(args) == 0
    assert "12 of 12 runs finished before" in capsys.readouterr().out
    assert db.execute("SELECT id, finished FROM runs ORDER BY id").fetchall() == before


def _fail(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        code = cli.main(argv)
        raise SystemExit(code)
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


@pytest.fixture
def bad_npz_root(tmp_path):
    root = tmp_path / "npz"
    root.mkdir()
    np.savez(root / "pneumoniamnist.npz", train_images=np.zeros((2, 28, 28), np.uint8))
    return root


@pytest.fixture
def corrupt_root(kermany_root):
    (kermany_root / "chest_xray/test/NORMAL/IM-0099-0001.jpeg").write_bytes(b"\xff\xd8 broken")
    return kermany_root


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data-root", "{tmp}/absent"], "does not exist"),
        (["--data-root", "{tmp}"], "no chest_xray/ folder"),
        (["--data-root", "{corrupt}"], "cannot read image .*IM-0099-0001.jpeg"),
        (["--dataset", "pneumoniamnist", "--data-root", "{npz}"], "lacks the keys"),
        (["--technique", "laplace", "--noise-scale", "-1"], "noise_scale must be >= 0"),
        (["--technique", "laplace", "--noise-scale", "abc"], "invalid|expected a number"),
        (["--image-size", "0"], "image_size must be a positive integer"),
        (["--model", "vgg16"], "unknown model 'vgg16'"),
        (["--dataset", "mnist"], "unknown dataset 'mnist'"),
        (["--config", "{tmp}/absent.yaml"], "cannot read config file"),
        (["--config", "{badyaml}"], "not valid YAML"),
        (["--config", "{badkey}"], "unknown setting 'noise'"),
        (["--perturb-test", "maybe"], "unrecognized arguments: maybe"),  # a switch
        (["--technique", "gaussian", "--target-epsilon", "8"], r"needs delta in \(0, 1\)"),
        (["--technique", "dppix", "--cell-size", "5"], "cell_size 5 does not divide .* 64"),
        (["--technique", "laplace", "--postprocess", "pool2,sharpen"], "unknown post-processing"),
        (["--technique", "gaussian", "--snapping"], "snapping is only for technique"),
        (["--technique", "dp-sgd", "--target-epsilon", "0"], "target_epsilon must be > 0"),
        (["--technique", "dp-sgd", "--target-epsilon", "1", "--delta", "1"], "delta must lie"),
        (
            ["--technique", "dp-sgd", "--target-epsilon", "1", "--max-grad-norm", "0"],
            "max_grad_norm must be > 0",
        ),
        (["--technique", "dp-sgd"], "needs --target-epsilon or --noise-multiplier"),
        (
            [*DP_SGD, "--grad-sample-mode", "ghost", "--clipping", "adaptive"],
            "ghost has no per-image gradients",
        ),
        (
            ["--technique", "dp-sgd", "--target-epsilon", "1", "--noise-multiplier", "1"],
            "needs --target-epsilon or --noise-multiplier, one",
        ),
        (
            [*DP_SGD, *PMNIST_50, "--batch-size", "64", "--model", "small-cnn"],
            "batch_size 64 is larger than the 50 training images",
        ),
        (
            [*DP_SGD, *PMNIST_50, "--batch-size", "16"],
            "DP-SGD cannot train this model: .*BatchNorm",
        ),
        (["--augment-multiplicity", "2"], "add --augment"),
        (["--augment", "--augment-multiplicity", "0"], "augment_multiplicity must be >="),
        (["--augment-multiplicity", "2.5"], "expected an integer"),
        (["--technique", "laplace", "--noise-scale", "nan"], "noise_scale must be a finite"),
        (["--technique", "laplace", "--noise-scale", "inf"], "noise_scale must be a finite"),
        (["--technique", "laplace", "--noise-scale", "-1"], "noise_scale must be >= 0"),
        (["--technique", "laplace", "--target-epsilon", "inf"], "target_epsilon must be a fin"),
        (["--technique", "laplace", "--target-epsilon", "-2"], "target_epsilon must be > 0"),
        (["--technique", "dp-sgd", "--noise-multiplier", "nan"], "noise_multiplier must be a"),
        (["--technique", "dp-sgd", "--target-epsilon", "1", "--delta", "nan"], "delta must be a"),
        (["--lr", "nan"], "lr must be a finite number"),
        (
            ["--technique", "laplace", "--noise-scale", "1", "--noise-key", "/nonexistent/key"],
            "cannot read the noise key file",
        ),
        (
            ["--model", "scatternet", "--augment", "--augment-multiplicity", "4"],
            "augment cannot be used with model scatternet",
        ),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(
    argv, message, tmp_path, corrupt_root, bad_npz_root, real_data, capsys
):
    (tmp_path / "bad.yaml").write_text("epochs: [1,\n")
    (tmp_path / "key.yaml").write_text("noise: 1\n")
    places = {
        "tmp": tmp_path,
        "corrupt": corrupt_root,
        "npz": bad_npz_root,
        "badyaml": tmp_path / "bad.yaml",
        "badkey": tmp_path / "key.yaml",
        "real": real_data,
    }
    argv = [a.format(**places) for a in argv]
    out = tmp_path / "run"
    err = _fail(["run", "--epochs", "1", "--out", str(out), *argv], capsys)
    assert re.search(message, err), err
    assert not out.exists()
    assert not list(tmp_path.glob(".run*"))


def test_existing_run_folder_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    err = _fail(["run", "--out", str(out)], capsys)
    assert "already exists" in err and (out / "keep.txt").read_text() == "mine"


def test_console_script_reports_errors_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dpmed.cli", "run", "--data-root", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().startswith("dpmed run: error: data root")
    assert "Traceback" not in result.stderr


def test_every_command_has_help(capsys):
    for argv in (["--help"], ["run", "--help"], ["bench", "--help"], ["privacy", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            cli.main(argv)
        assert exit_info.value.code == 0
    assert "--noise-scale" in capsys.readouterr().out


def test_dp_sgd_run_spends_at_most_its_target_and_learns(real_data, tmp_path):
    """A tiny DP-SGD run on real PneumoniaMNIST: epsilon per image at most the target,
    equal to Google's dp-accounting (PLD, replace-one) on the recorded steps, better than
    chance, and nothing in its outputs from the clean training images or the input path."""
    import dp_accounting

    out = tmp_path / "dp"
    args = [
        "run",
        "--dataset",
        "pneumoniamnist",
        "--model",
        "small-cnn",
        "--technique",
        "dp-sgd",
        "--target-epsilon",
        "4",
        "--epochs",
        "3",
        "--batch-size",
        "256",
        "--optimizer",
        "sgd",
        "--lr",
        "0.5",
        "--max-images",
        "2000",
        "--quiet",
        "--data-root",
        str(real_data),
        "--out",
        str(out),
    ]
    assert cli.main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    privacy = summary["privacy"]
    assert privacy["mechanism"] == "dp-sgd" and privacy["unit"] == "image"
    assert privacy["epsilon"] <= 4.0 and privacy["epsilon"] == privacy["epsilon_per_image"]
    assert privacy["steps"] == 3 * 8 and privacy["delta"] == pytest.approx(1 / 2000**1.1)
    fastest, _ = FASTEST_MODES_MEASURED_BY_DPSGD_SPEED["small-cnn"]
    assert privacy["grad_sample_mode"] == fastest  # auto: the mode actually used
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(
            privacy["sample_rate"], dp_accounting.GaussianDpEvent(privacy["noise_multiplier"])
        ),
        privacy["steps"],
    )
    replace_one = dp_accounting.NeighboringRelation.REPLACE_ONE
    pld = dp_accounting.pld.PLDAccountant(neighboring_relation=replace_one)
    pld.compose(event)
    assert privacy["epsilon"] == pytest.approx(pld.get_epsilon(privacy["delta"]), rel=0.05)
    assert privacy["adjacency"] == "replace-one" and privacy["epsilon_per_patient"] is None
    assert privacy["noise_source"] == "operating-system entropy" and privacy["key_id"] is None
    assert "noise_scale" not in privacy and "release_sha256" not in privacy  # no input noise
    assert summary["train"] is None and "train_accuracy" not in (out / "metrics.csv").read_text()
    assert set(summary["positives"]) == {"val", "test"}  # no count of the private labels
    assert summary["test"]["roc_auc"] > 0.75


def test_privacy_plans_dp_sgd_both_ways_as_a_training_run_accounts(real_data, tmp_path, capsys):
    """`dpmed privacy --mechanism dp-sgd` gives the noise multiplier a training calibrates
    and the epsilon its accountant spends, from N, batch, epochs and delta alone; the
    training's metrics.csv states the accountant's epsilon after every epoch."""
    out = tmp_path / "dp"
    train = ["--technique", "dp-sgd", "--model", "small-cnn", "--batch-size", "20"]
    train += ["--epochs", "2", "--optimizer", "sgd", "--target-epsilon", "2"]
    data = ["--dataset", "pneumoniamnist", "--data-root", str(real_data), "--max-images", "40"]
    assert cli.main(["run", *train, *data, "--quiet", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    spent = summary["privacy"]
    capsys.readouterr()
    plan = ["privacy", "--mechanism", "dp-sgd", "--n-train", str(summary["images"]["train"])]
    plan += ["--batch-size", "20", "--epochs", "2", "--json"]
    assert cli.main([*plan, "--target-epsilon", "2"]) == 0
    calibrated = json.loads(capsys.readouterr().out)
    assert calibrated["noise_multiplier"] == spent["noise_multiplier"]
    assert calibrated["steps"] == spent["steps"] and calibrated["delta"] == spent["delta"]
    assert calibrated["epsilon_per_image"] == pytest.approx(spent["epsilon"], rel=1e-9)
    assert cli.main([*plan, "--noise-multiplier", str(spent["noise_multiplier"])]) == 0
    forward = json.loads(capsys.readouterr().out)
    assert forward["epsilon_per_image"] == pytest.approx(spent["epsilon"], rel=1e-9)
    assert cli.main([*plan, "--noise-multiplier", "4"]) == 0  # more noise: less epsilon
    assert json.loads(capsys.readouterr().out)["epsilon_per_image"] < spent["epsilon"]
    with open(out / "metrics.csv") as handle:
        per_epoch = [float(row["epsilon_per_image"]) for row in csv.DictReader(handle)]
    assert per_epoch[0] < per_epoch[1] == pytest.approx(spent["epsilon"], rel=1e-9)


def test_privacy_dp_sgd_needs_the_training_set_size(capsys):
    argv = ["privacy", "--mechanism", "dp-sgd", "--target-epsilon", "2"]
    assert "give --n-train" in _fail(argv, capsys)


def test_run_help_groups_its_flags_and_booleans_are_switches(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    text = capsys.readouterr().out
    groups = ["data settings:", "technique and privacy settings:", "model settings:"]
    groups += ["training settings:", "output:", "examples:"]
    assert all(g in text for g in groups) and "BOOL" not in text and "STR" not in text
    assert "--augment, --no-augment" in text
    parser = cli.build_parser()
    assert parser.parse_args(["run", "--augment"]).augment is True
    assert parser.parse_args(["run", "--no-augment"]).augment is False
    assert parser.parse_args(["run"]).augment is None  # unset: the YAML file's value stays
    config = tmp_path / "c.yaml"
    config.write_text("augment: true\nbalanced_loss: false\n")
    from dpmed.config import RunConfig, load_yaml

    args = parser.parse_args(["run", "--config", str(config), "--balanced-loss"])
    merged = RunConfig.from_mapping(load_yaml(config) | cli._overrides(args), source="test")
    assert merged.augment is True and merged.balanced_loss is True
