import json

import numpy as np
import pytest
import yaml

from dpmed.audit.build import AUDIT_FOLDER, _analyse, audit_markdown, plan_audit
from dpmed.audit.game import draw_members, play
from dpmed.bench.driver import DB_NAME
from dpmed.bench.store import ResultsStore
from dpmed.cli import main
from dpmed.config import RunConfig
from dpmed.data.images import ImageDataset, ImageSplit
from dpmed.errors import ConfigError
from dpmed.run import AUDIT_SCORES, run_experiment

# a model that memorises: 40 epochs of batch 8 on about 60 member images
OVERFIT = {
    "dataset": "pneumoniamnist",
    "model": "small-cnn",
    "epochs": 40,
    "batch_size": 8,
    "max_images": 120,
    "lr": 0.003,
}


def test_members_are_a_public_half_and_canaries_the_same_for_every_seed():
    draws = [draw_members(4000, audit_seed=s, canaries=100) for s in range(3)]
    assert all(abs(d.members.mean() - 0.5) < 0.03 for d in draws)
    assert not np.array_equal(draws[0].members, draws[1].members)
    assert all(np.array_equal(d.canaries, draws[0].canaries) for d in draws)
    assert np.array_equal(draws[0].members, draw_members(4000, audit_seed=0, canaries=0).members)


def test_the_game_trains_on_members_and_scores_the_pool_with_canary_labels_flipped():
    labels = np.array([0, 1, 0, 1, 1, 0])
    train = ImageSplit(np.arange(6, dtype=np.uint8)[:, None, None], labels, np.arange(6))
    dataset = ImageDataset("demo", {"train": train, "test": train.take(np.arange(2))})
    draw = draw_members(6, audit_seed=3, canaries=2)
    played, pool = play(dataset, draw)
    flipped = np.where(draw.canaries, 1 - labels, labels)
    assert np.array_equal(pool.labels, flipped)
    assert np.array_equal(played.splits["train"].images[:, 0, 0], np.flatnonzero(draw.members))
    assert np.array_equal(played.splits["train"].labels, flipped[draw.members])
    assert played.splits["test"] is dataset.splits["test"]


def test_audit_settings_are_checked():
    with pytest.raises(ConfigError, match="audit_seed too"):
        RunConfig(canaries=5)
    with pytest.raises(ConfigError, match="image data sets"):
        RunConfig(dataset="breast-cancer", model="mlp", audit_seed=0)
    with pytest.raises(ConfigError, match="more than the 6 training images"):
        draw_members(6, audit_seed=0, canaries=7)


def test_dpsgd_in_an_audit_run_is_planned_on_the_members(real_data, tmp_path):
    config = RunConfig(
        dataset="pneumoniamnist",
        model="small-cnn",
        technique="dp-sgd",
        target_epsilon=2,
        epochs=1,
        batch_size=32,
        optimizer="sgd",
        lr=0.5,
        max_images=200,
        data_root=str(real_data),
        audit_seed=1,
        canaries=10,
    )
    summary = run_experiment(config, tmp_path / "run", log=lambda _: None).summary
    scores = np.load(tmp_path / "run" / AUDIT_SCORES)
    members = int(scores["members"].sum())
    assert summary["images"]["train"] == members < 200
    assert summary["privacy"]["sample_rate"] == pytest.approx(32 / members)
    assert summary["privacy"]["epsilon"] <= 2
    # the file holds model scores and the public draw, never the private labels
    assert sorted(scores.files) == ["canaries", "confidence", "members"]
    assert scores["confidence"].shape == (200,) and np.isfinite(scores["confidence"]).all()


def test_the_audit_finds_an_overfit_model_resumes_and_is_reported(real_data, tmp_path, capsys):
    spec = tmp_path / "overfit.yaml"
    spec.write_text(
        yaml.safe_dump(
            {"base": OVERFIT | {"data_root": str(real_data)}, "grid": {"technique": ["none"]}}
        )
    )
    folder = tmp_path / "sweep"
    assert main(["bench", str(spec), "--out", str(folder), "--quiet", "--jobs", "2"]) == 0
    audit = ["audit", str(folder), "--models", "4", "--canaries", "30", "--quiet", "--jobs", "2"]
    assert main(audit) == 0
    out = folder / AUDIT_FOLDER
    result = json.loads((out / "audit.json").read_text())["settings"][0]
    assert result["models"] == 4 and result["epsilon"] is None
    assert (
        result["loss"]["auc"] > 0.55
    )  # measured here: 0.61 (4 models, no canaries), 0.59 (8, 30 canaries)
    assert result["one_run"]["epsilon_lower_bound"] > 0  # the canaries are memorised
    assert {p.name for p in out.iterdir()} >= {"audit.md", "audit_roc.png", "audit_epsilon.png"}
    capsys.readouterr()

    assert main(audit) == 0  # a second call reuses the finished models
    assert "4 of 4 runs finished before; running 0" in capsys.readouterr().out

    assert main(["report", str(folder)]) == 0  # the report gains the audit's section
    report = (folder / "report.md").read_text()
    assert "## Membership audit" in report and "figures/audit_roc.png" in report
    assert (folder / "figures" / "audit_epsilon.png").stat().st_size > 10_000

    # a stated epsilon below what the canaries prove is flagged as a bug
    settings = plan_audit(folder, models=4, canaries=30)
    store = ResultsStore(out / DB_NAME, read_only=True)
    lying = {
        r["id"]: r["summary"] | {"privacy": r["summary"]["privacy"] | {"epsilon": 0.01, "delta": 0}}
        for r in store.finished_runs()
    }
    store.close()
    flagged = _analyse(settings[0], lying, out)
    assert flagged["exceeds_theory"] and "a bug" in audit_markdown([flagged])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--models", "1"], "--models must be >= 2"),
        (["--canaries", "-1"], "--canaries must be >= 0"),
    ],
)
def test_bad_audit_flags_exit_2_with_one_line(tmp_path, capsys, args, message):
    assert main(["audit", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_auditing_a_folder_without_results_says_what_to_give(tmp_path, capsys):
    assert main(["audit", str(tmp_path)]) == 2
    assert "neither a sweep folder" in capsys.readouterr().err
    assert not (tmp_path / AUDIT_FOLDER).exists()  # nothing half-written


def test_with_patient_ids_whole_patients_are_in_or_out_and_canaries_are_one_per_patient():
    patients = np.repeat(np.arange(50), 3)[np.random.default_rng(0).permutation(150)]
    draw = draw_members(150, audit_seed=2, canaries=20, patients=patients)
    for patient in range(50):
        assert len(set(draw.members[patients == patient])) == 1
    assert len(set(patients[draw.canaries])) == 20
    assert np.array_equal(np.unique(draw.patients, return_inverse=True)[1], draw.patients)
    with pytest.raises(ConfigError, match="more than the 50 patients"):
        draw_members(150, audit_seed=2, canaries=51, patients=patients)


def test_kermany_is_audited_per_patient_against_the_patient_epsilon(tmp_path, capsys):
    from tests.conftest import make_kermany

    root = make_kermany(tmp_path / "data", per_class=30, size=32)
    run = tmp_path / "run"
    flags = ["--dataset", "chest-xray", "--data-root", str(root), "--image-size", "16"]
    flags += ["--model", "small-cnn", "--epochs", "1", "--technique", "laplace"]
    assert main(["run", *flags, "--noise-scale", "4", "--out", str(run), "--quiet"]) == 0
    audit = ["audit", str(run), "--models", "3", "--canaries", "4", "--quiet", "--jobs", "1"]
    assert main(audit) == 0
    result = json.loads((run / AUDIT_FOLDER / "audit.json").read_text())["settings"][0]
    scores = np.load(next((run / AUDIT_FOLDER / "runs").glob(f"*/{AUDIT_SCORES}")))
    summary = json.loads(next((run / AUDIT_FOLDER / "runs").glob("*/summary.json")).read_text())
    assert result["unit"] == "patient"
    assert result["epsilon"] == summary["privacy"]["epsilon_per_patient"] > 256 / 4
    patients_without_canaries = len(set(scores["patients"][~scores["canaries"]]))
    assert result["trials"] == 3 * patients_without_canaries


def test_the_canary_bound_of_a_model_drowned_in_noise_is_near_zero(real_data, tmp_path, noise_key):
    """DP-SGD with noise multiplier 1,000: the model cannot depend on its canaries."""
    run = tmp_path / "run"
    flags = ["--dataset", "pneumoniamnist", "--data-root", str(real_data), "--max-images", "200"]
    flags += ["--model", "small-cnn", "--epochs", "1", "--technique", "dp-sgd"]
    flags += ["--noise-multiplier", "1000", "--optimizer", "sgd", "--lr", "0.5"]
    assert main(["run", *flags, "--out", str(run), "--quiet"]) == 0
    audit = ["audit", str(run), "--models", "2", "--canaries", "80", "--quiet", "--jobs", "1"]
    assert main(audit) == 0
    result = json.loads((run / AUDIT_FOLDER / "audit.json").read_text())["settings"][0]
    assert result["one_run"]["guesses"] == 40
    # coin flips reach 1.0 about once in a million (35 or more of 40 right)
    assert result["one_run"]["epsilon_lower_bound"] < 1.0
    assert result["epsilon"] < 0.01


def test_more_canaries_than_images_is_refused_before_any_training(real_data, tmp_path, capsys):
    run = tmp_path / "run"
    flags = ["--dataset", "pneumoniamnist", "--data-root", str(real_data), "--max-images", "50"]
    assert main(["run", *flags, "--model", "small-cnn", "--epochs", "1", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["audit", str(run), "--canaries", "51"]) == 2
    err = capsys.readouterr().err
    assert "canaries 51 is more than the 50 training images" in err
    assert len(err.strip().splitlines()) == 1 and not (run / AUDIT_FOLDER).exists()
