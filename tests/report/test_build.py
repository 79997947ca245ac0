import csv

import pytest

from dpmed import cli
from dpmed.errors import ConfigError
from dpmed.report.tables import group_runs, is_paper_grid, paper_table


def _run(noise_scale, seed, test_acc, dataset="chest-xray", postprocess=None):
    return {
        "id": f"{noise_scale}-{seed}",
        "name": f"noise_scale={noise_scale},seed={seed}",
        "config": {
            "dataset": dataset,
            "technique": "laplace",
            "noise_scale": noise_scale,
            "seed": seed,
            "postprocess": postprocess,
            "data_root": "/x",
        },
        "summary": {
            "test": {"accuracy": test_acc},
            "train": {"accuracy": 0.9},
            "privacy": {
                "epsilon_per_pixel": 1 / noise_scale if noise_scale else None,
                "epsilon_per_image": 4096 / noise_scale if noise_scale else None,
                "epsilon": 4096 / noise_scale if noise_scale else None,
                "delta": 0.0,
            },
        },
    }


def test_paper_table_gives_mean_and_interval_over_seeds_beside_the_paper():
    runs = [_run(0, 0, 0.80), _run(0, 1, 0.84), _run(1, 0, 0.70), _run(1, 1, 0.70)]
    assert is_paper_grid(runs)
    rows = paper_table(group_runs(runs))
    assert rows[0] == ["accuracy (%)", "original", "b = 1"]
    # two seeds: a t-interval, 82 +- 12.71 x 2.83 / sqrt(2), clipped at 100
    assert rows[1] == [
        "test",
        "82.0 [56.6, 100.0] (paper 82.69)",
        "70.0 [70.0, 70.0] (paper 74.35)",
    ]
    assert rows[3] == ["seeds", "2", "2"]
    assert rows[-2] == ["epsilon per image", "inf (no noise)", "4,096"]
    assert rows[-1] == ["delta", "n/a (no noise)", "0"]
    assert not is_paper_grid(runs + [_run(1, 2, 0.7, dataset="pneumoniamnist")])
    assert not is_paper_grid(runs + [_run(1, 2, 0.7, postprocess="down2")])  # two recipes at b=1


def test_paper_table_shows_the_recipe_chosen_for_each_scale():
    runs = [_run(0, 0, 0.9, postprocess="down8"), _run(4, 0, 0.8, postprocess="down14")]
    assert is_paper_grid(runs)
    assert ["postprocess", "down8", "down14"] in paper_table(group_runs(runs))


def test_report_from_a_real_sweep(tmp_path, tiny_sweep, capsys):
    out = tmp_path / "out"
    assert cli.main(["bench", str(tiny_sweep), "--out", str(out), "--quiet"]) == 0
    assert cli.main(["report", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "## Results by setting" in md and "| b = 2 |" in md and "noise_scale=" not in md
    assert "![" in md and (out / "figures" / "frontier.png").stat().st_size > 10_000
    assert "The 4 runs took " in md and " CPU cores (load average over 1 min" in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 2 and "<table>" in html
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert len(rows) == 4 and {r["seed"] for r in rows} == {"0", "1"}
    assert {r["epsilon_per_image"] for r in rows} == {"inf", "392.0"}  # no noise: inf


def test_report_without_a_database_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "no results database" in capsys.readouterr().err


def test_epsilon_text_tells_no_noise_from_a_unit_not_reported():
    from dpmed.report.tables import epsilon_text

    assert epsilon_text({"epsilon": None, "epsilon_per_pixel": None}, "pixel") == "inf (no noise)"
    dp_sgd = {"epsilon": 0.5, "epsilon_per_image": 0.5, "epsilon_per_pixel": None}
    assert epsilon_text(dp_sgd, "pixel") == "n/a"
    assert epsilon_text(dp_sgd, "image") == "0.5"
    per_patient = {"epsilon": 50_176.0, "epsilon_per_patient": 1_555_456.0}
    assert epsilon_text(per_patient, "patient") == "1,555,456"  # not 1.55546e+06


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
    assert sorted(r["epsilon_per_record"] for r in rows) == ["1.0", "4.0", "inf"]
    privacy = {"epsilon": 2.0, "epsilon_per_record": 2.0, "guarantee_holds": False}
    assert epsilon_text(privacy, "record") == "2 (does not hold: bounds read from the data)"
    assert "train accuracy (%) [95% CI]" not in summary_table([])[0]  # no run has train metrics


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
    assert tuned.candidates == 2 and tuned.chosen == "lr = 0.1 (seed 0); lr = 1 (seed 1)"
    row = tuned_table([tuned])[1]
    assert row[4] == "77.5 [0.0, 100.0]" and row[-2:] == ["8", "0"]  # one release per seed: free


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


def test_strength_in_plain_words():
    from dpmed.report.guarantees import strength

    assert [strength(e) for e in (0.1, 1.0, 1.01, 10.0, 10.01, 4096.0)] == [
        "strong",
        "strong",
        "moderate",
        "moderate",
        "no meaningful protection",
        "no meaningful protection",
    ]
    assert strength(None) == "none (no noise)"
    assert strength(0.5, holds=False) == "does not hold"


METRICS = ("accuracy", "roc_auc", "sensitivity", "specificity", "loss")
LAPLACE = [
    "pixel values are scaled to [0, 1] before the noise (each pixel moves by at most 1)",
    "labels and patient ids are released without noise and are not protected",
    "the dataset has no patient ids: every image counts as its own patient (k = 1)",
]
DP_SGD = [
    "batches are Poisson samples of the training set, as the accountant assumes",
    "balanced loss: the training set's class counts, which set the loss weights, are "
    "treated as public (e.g. a published prevalence)",
    "the dataset has no patient ids: every image counts as its own patient (k = 1)",
]


def _fake_run(technique, seed, privacy, train=True):
    """A finished run as the store holds it: config, summary, one row per epoch."""
    metrics = dict.fromkeys(METRICS, 0.75)
    summary = {
        "best_epoch": 1,
        "train": dict(metrics) if train else None,
        "val": dict(metrics),
        "test": dict(metrics),
        "privacy": privacy,
        "timing": {"total_seconds": 1.0, "train_images_per_second": 100.0},
    }
    epochs = [
        {
            "epoch": epoch,
            "metrics": {
                split: dict.fromkeys(METRICS, 0.7 if split != "train" or train else None)
                for split in ("train", "val", "test")
            },
        }
        for epoch in (1, 2)
    ]
    config = {"dataset": "pneumoniamnist", "technique": technique, "seed": seed}
    return config, summary, epochs


def _fake_database(out, runs):
    from types import SimpleNamespace

    from dpmed.bench.store import ResultsStore

    out.mkdir()
    store = ResultsStore(out / "results.db")
    for i, (config, summary, epochs) in enumerate(runs):
        name = f"{config['technique']},seed={config['seed']}"
        planned = SimpleNamespace(
            id=str(i), name=name, config=SimpleNamespace(to_dict=lambda c=config: c)
        )
        store.plan([planned])
        store.finish(str(i), summary, epochs)
    store.close()


def test_report_states_every_guarantee_honestly(tmp_path):
    from dpmed.report.build import build_report
    from dpmed.report.tables import NO_TRAIN_METRICS

    os_entropy = {"noise_source": "operating-system entropy", "key_id": None}
    laplace = {
        "mechanism": "laplace",
        "unit": "image",
        "epsilon": 784.0,
        "delta": 0.0,
        "epsilon_per_pixel": 1.0,
        "epsilon_per_image": 784.0,
        "epsilon_per_patient": None,  # no patient ids: unknown, never the image's 784
        "adjacency": "replace-one",
        "assumptions": LAPLACE,
        "perturbed_splits": ["train", "val"],
        **os_entropy,
    }
    dp_sgd = {
        "mechanism": "dp-sgd",
        "unit": "image",
        "epsilon": 1.9,
        "delta": 2e-4,
        "epsilon_per_pixel": None,
        "epsilon_per_image": 1.9,
        "epsilon_per_patient": None,
        "adjacency": "replace-one",
        "assumptions": DP_SGD,
        "noise_source": "secret noise key",
        "key_id": "abc123",
        "noise_reproducible": "by whoever holds the noise key (never written to any output)",
    }
    none = {"mechanism": "none", "unit": "image", "epsilon": None, "delta": 0.0}
    none |= {"epsilon_per_pixel": None, "epsilon_per_image": None, "epsilon_per_patient": None}
    out = tmp_path / "out"
    _fake_database(
        out,
        [
            _fake_run("laplace", 0, laplace),
            _fake_run("laplace", 1, laplace),
            _fake_run("dp-sgd", 0, dp_sgd, train=False),
            _fake_run("none", 0, none),
        ],
    )
    build_report(out)
    md = (out / "report.md").read_text()
    results, section = md.split("## Privacy guarantee")
    header = next(line for line in results.splitlines() if line.startswith("| setting"))
    assert "epsilon per patient" in header and "delta" in header and "adjacency" in header
    rows = {line.split(" | ")[0]: line for line in results.splitlines() if line.startswith("| ")}
    assert "| unknown | 784 | 1 | 0 | replace-one |" in rows["| laplace"]
    assert "784 | 784" not in md  # the image's epsilon never stands in for the patient's
    assert "not computed (DP training)" in rows["| dp-sgd"]
    assert "| 0.0002 | replace-one |" in rows["| dp-sgd"]
    assert "75.0 [75.0, 75.0]" in rows["| laplace"]  # input noise keeps train metrics
    assert NO_TRAIN_METRICS in results
    assert "784 (no meaningful protection)" in section and "1.9 (moderate)" in section
    assert "1 (strong)" in section and "none (no noise)" in section
    assert "secret noise key (id abc123)" in section
    items = [line.split(". ", 1)[1] for line in section.splitlines() if line[:1].isdigit()]
    assert len(items) == len(set(items))  # each assumption stated once for both seeds
    assert set(LAPLACE + DP_SGD) <= set(items)
    assert "the test images are not protected" in section  # laplace released train and val
    assert "the validation and test images are not protected" in section  # dp-sgd: train only
    assert any(i.startswith("the noise key (id abc123) stays secret") for i in items)
    csv_rows = {r["technique"]: r for r in csv.DictReader((out / "results.csv").open())}
    assert csv_rows["dp-sgd"]["train_accuracy"] == "" and csv_rows["dp-sgd"]["adjacency"]
    assert "<ol><li>" in (out / "report.html").read_text()


def test_a_table_guarantee_that_does_not_hold_says_so_beside_its_epsilon():
    from dpmed.report.guarantees import assumptions, epsilon_strength

    privacy = {"unit": "record", "epsilon": 0.5, "epsilon_per_record": 0.5}
    run = {"config": {"technique": "diffprivlib"}, "summary": {"privacy": privacy}}
    assert epsilon_strength(privacy, "record") == "0.5 (strong)"
    assert not any("bounds" in a for a in assumptions(run))
    privacy["guarantee_holds"] = False
    assert epsilon_strength(privacy, "record") == "0.5 (does not hold)"
    assert "the guarantee does not hold" in assumptions(run)[0]
    assert "validation and test records are not protected" in assumptions(run)[1]


def test_a_run_learning_curve_leaves_out_train_without_metrics(tmp_path):
    from dpmed.report.plots import learning_curve
    from dpmed.train.loop import EpochRecord

    records = [
        EpochRecord(e, {"train": None, "val": {"accuracy": 0.6}, "test": {"accuracy": 0.5}}, 1, 1)
        for e in (1, 2)
    ]
    learning_curve(records, 2, tmp_path / "curve.png", "dp-sgd")
    assert (tmp_path / "curve.png").stat().st_size > 1_000
