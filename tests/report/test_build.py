import csv

import pytest

from dpmed import cli
from dpmed.errors import ConfigError
from dpmed.report.tables import group_runs, is_paper_grid, paper_table


def _run(noise_scale, seed, test_acc, dataset="chest-xray"):
    return {
        "id": f"{noise_scale}-{seed}",
        "name": f"noise_scale={noise_scale},seed={seed}",
        "config": {
            "dataset": dataset,
            "technique": "laplace",
            "noise_scale": noise_scale,
            "seed": seed,
            "data_root": "/x",
        },
        "summary": {
            "test": {"accuracy": test_acc},
            "train": {"accuracy": 0.9},
            "privacy": {
                "epsilon_per_pixel": 1 / noise_scale if noise_scale else None,
                "epsilon_per_image": 4096 / noise_scale if noise_scale else None,
            },
        },
    }


def test_paper_table_gives_mean_and_sd_over_seeds_beside_the_paper():
    runs = [_run(0, 0, 0.80), _run(0, 1, 0.84), _run(1, 0, 0.70), _run(1, 1, 0.70)]
    assert is_paper_grid(runs)
    rows = paper_table(group_runs(runs))
    assert rows[0] == ["accuracy (%)", "original", "b=1"]
    assert rows[1] == ["test", "82.00 ± 2.83 (paper 82.69)", "70.00 ± 0.00 (paper 74.35)"]
    assert rows[-1] == ["epsilon per image", "inf (no noise)", "4,096"]
    assert not is_paper_grid(runs + [_run(1, 2, 0.7, dataset="pneumoniamnist")])


def test_report_from_a_real_sweep(tmp_path, tiny_sweep, capsys):
    out = tmp_path / "out"
    assert cli.main(["bench", str(tiny_sweep), "--out", str(out), "--quiet"]) == 0
    assert cli.main(["report", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "## Results by setting" in md and "noise_scale=2.0" in md
    assert "![" in md and (out / "figures" / "frontier.png").stat().st_size > 10_000
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "<table>" in html
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 4 and {r["seed"] for r in rows} == {"0", "1"}
    assert {r["epsilon_per_image"] for r in rows} == {"", "392.0"}


def test_report_without_a_database_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "no results database" in capsys.readouterr().err


def test_epsilon_text_tells_no_noise_from_a_unit_not_reported():
    from dpmed.report.tables import epsilon_text

    assert epsilon_text({"epsilon": None, "epsilon_per_pixel": None}, "pixel") == "inf (no noise)"
    dp_sgd = {"epsilon": 0.5, "epsilon_per_image": 0.5, "epsilon_per_pixel": None}
    assert epsilon_text(dp_sgd, "pixel") == "n/a"
    assert epsilon_text(dp_sgd, "image") == "0.5"


def test_table_runs_are_reported_per_record_and_a_void_guarantee_says_so(tmp_path, capsys):
    from dpmed.report.tables import epsilon_text, summary_table

    sweep = tmp_path / "tables.yaml"
    sweep.write_text(
        "base: {dataset: breast-cancer, model: gaussian-nb}\n"
        "grid: [{technique: [none]}, {technique: [diffprivlib], target_epsilon: [1, 4]}]\n"
    )
    out = tmp_path / "out"
    assert cli.main(["bench", str(sweep), "--out", str(out), "--quiet"]) == 0
    assert cli.main(["report", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "epsilon per record" in md and "epsilon per image" not in md
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert sorted(r["epsilon_per_record"] for r in rows) == ["", "1.0", "4.0"]
    privacy = {"epsilon": 2.0, "epsilon_per_record": 2.0, "guarantee_holds": False}
    assert epsilon_text(privacy, "record") == "2 (does not hold: bounds read from the data)"
    assert summary_table([])[0][-1] == "train accuracy (%)"


def _candidate(lr, seed, val, test, val_loss=0.5):
    return {
        "id": f"{lr}-{seed}",
        "name": f"lr={lr},seed={seed}",
        "config": {"technique": "laplace", "lr": lr, "target_epsilon": 8, "seed": seed},
        "summary": {
            "val": {"accuracy": val, "loss": val_loss},
            "test": {"accuracy": test, "roc_auc": 0.5, "sensitivity": 1.0, "specificity": 0.0},
            "privacy": {
                "mechanism": "laplace",
                "unit": "image",
                "epsilon": 8.0,
                "delta": 0.0,
                "epsilon_per_image": 8.0,
                "release_sha256": {"train": f"seed{seed}"},
            },
        },
    }


def test_tuning_chooses_each_seed_on_validation_never_on_test():
    from dpmed.report.tables import tune_runs, tuned_table

    runs = [
        _candidate(0.1, 0, val=0.9, test=0.60),
        _candidate(1.0, 0, val=0.8, test=0.99),  # best on test: must not be chosen
        _candidate(0.1, 1, val=0.7, test=0.70, val_loss=0.4),
        _candidate(1.0, 1, val=0.7, test=0.95, val_loss=0.3),  # a tie broken by val loss
    ]
    [tuned] = tune_runs(runs, ["lr"])
    assert [r["id"] for r in tuned.group.runs] == ["0.1-0", "1.0-1"]
    assert tuned.candidates == 2 and tuned.chosen == "lr=0.1 (seed 0); lr=1.0 (seed 1)"
    row = tuned_table([tuned])[1]
    assert row[4] == "77.50 ± 24.75" and row[-1] == "8"  # one release per seed: free


@pytest.mark.parametrize(
    ("tune", "message"), [("seed", "seeds are repeats"), ("epochs", "does not vary")]
)
def test_tuning_a_setting_that_is_not_a_candidate_is_a_clear_error(tune, message):
    from dpmed.report.tables import tune_runs

    with pytest.raises(ConfigError, match=message):
        tune_runs([_candidate(0.1, 0, 0.9, 0.6), _candidate(1.0, 0, 0.8, 0.9)], [tune])


def test_report_tune_on_a_real_sweep(tmp_path, tiny_sweep, capsys):
    out = tmp_path / "out"
    assert cli.main(["bench", str(tiny_sweep), "--out", str(out), "--quiet"]) == 0
    assert cli.main(["report", str(out), "--tune", "lr"]) == 2
    assert "cannot tune 'lr'" in capsys.readouterr().err
    assert not (out / "report.md").exists()
    assert cli.main(["report", str(out), "--tune", "noise_scale"]) == 0
    md = (out / "report.md").read_text()
    assert "## Tuned on validation: noise_scale" in md and "| all runs | 2 | 2 |" in md
