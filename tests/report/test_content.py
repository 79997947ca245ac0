"""What a reader of the report sees: provenance, the guarantee's delta, patient column,
assumptions and strength wording, and a frontier figure that can be read."""

import shutil

import pytest

from dpmed import cli
from dpmed.report.plots import frontier_figure
from dpmed.report.tables import (
    Group,
    confidence_interval,
    majority_rate,
    setting_label,
    wilson,
)


def _point(image, pixel, accuracy, ci=None):
    return {
        "epsilon_per_image": image,
        "epsilon_per_pixel": pixel,
        "accuracy": accuracy,
        "roc_auc": 0.7,
        "accuracy_ci": ci,
        "roc_auc_ci": ci,
        "no_privacy": image is None,
    }


def test_frontier_ticks_sit_at_the_data_points_with_a_chance_line_and_no_bar_for_one_seed():
    lines = {"laplace": [_point(None, None, 0.85), _point(1024, 1, 0.7), _point(4096, 4, 0.625)]}
    fig = frontier_figure(lines, ["image", "pixel"], chance=0.625)
    accuracy, auc = fig.axes[:2]  # then the top axes
    assert len([a for a in fig.axes if a.get_xlabel().startswith("epsilon per image")]) == 2
    assert list(accuracy.get_xticks()) == [1024, 4096]
    assert [t.get_text() for t in accuracy.get_xticklabels()] == ["1,024", "4,096"]
    tops = [c for a in fig.axes for c in a.child_axes if c.get_xlabel() == "epsilon per pixel"]
    assert len(tops) == 2  # per pixel: the top axis, not a row repeating the image row
    assert [t.get_text() for t in tops[0].get_xticklabels()] == ["1", "4"]
    levels = {(line.get_ydata()[0], line.get_linestyle()) for line in accuracy.get_lines()}
    assert (62.5, "--") in levels and (85.0, ":") in levels  # chance and no noise
    assert (0.5, "--") in {(line.get_ydata()[0], line.get_linestyle()) for line in auc.get_lines()}
    assert not accuracy.collections  # one seed: no error bars
    seeds = {"laplace": [_point(1024, 1, 0.7, ci=(0.6, 0.8)), _point(4096, 4, 0.6, ci=(0.5, 0.7))]}
    assert frontier_figure(seeds, ["image"], chance=None).axes[0].collections  # bars


def test_frontier_keeps_a_pixel_row_where_it_says_something_new():
    lines = {
        "laplace": [_point(1024, 1, 0.7), _point(4096, 4, 0.6)],
        "dppix": [_point(1024, 1 / 16, 0.8), _point(4096, 1 / 4, 0.7)],
    }
    fig = frontier_figure(lines, ["image", "pixel"], chance=0.625)
    assert [a.get_xlabel() for a in fig.axes].count("epsilon per pixel (log scale)") == 2


def test_intervals_labels_and_chance():
    assert [round(v, 3) for v in wilson(312, 624)] == [0.461, 0.539]  # +-3.9 points at 50%
    low, high = confidence_interval([0.8, 0.84, 0.82], None)
    assert low == pytest.approx(0.82 - 4.303 * 0.02 / 3**0.5, abs=1e-4) and high > 0.84
    assert confidence_interval([0.8], None) is None  # one seed, no count: nothing to say
    assert setting_label({"technique": "gaussian", "noise_scale": 0.5}, ["noise_scale"]) == (
        "sigma = 0.5"
    )
    summary = {"images": {"test": 624}, "positives": {"test": 390}}
    assert majority_rate(summary) == 0.625
    legacy = {"test": {"accuracy": 0.7, "sensitivity": 0.9, "specificity": 0.3}}
    assert majority_rate(legacy) == pytest.approx(2 / 3)  # 0.7 = r 0.9 + (1 - r) 0.3


def test_report_of_a_real_sweep_states_its_setup_guarantee_and_strength(tmp_path, tiny_sweep):
    out = tmp_path / "out"
    assert cli.main(["bench", str(tiny_sweep), "--out", str(out), "--quiet"]) == 0
    assert cli.main(["report", str(out)]) == 0
    md = (out / "report.md").read_text()
    setup = md.split("## Setup and provenance", 1)[1].split("##", 1)[0]
    for item in (
        "| sweep | tiny (folder out): tiny grid for tests |",
        "| command | dpmed bench ",
        "| split sizes | train 40, val 40, test 40 images (test: 25 positive, 62.5%) |",
        "| image size (released) | 28x28 |",
        "| model and initialisation | small-cnn from random init |",
        "| optimizer | adam |",
        "| learning rate | 0.001 |",
        "| epochs | 2 |",
        "| batch size | 20 |",
        "| decision threshold | 0.5 |",
        "| seeds | 0, 1 |",
        "| date (UTC) | 20",
        "| dpmed version | 0.1.0 |",
        "| git commit | ",
        " CPU cores",
    ):
        assert item in setup, item
    results, section = md.split("## Privacy guarantee")
    header = next(line for line in section.splitlines() if line.startswith("| setting"))
    assert "| delta |" in header and "epsilon per patient (strength)" in header
    assert "| b = 2 | image | unknown | 392 (no meaningful protection) | 0.5 (strong) | 0 |" in md
    assert "Warning: 1 of 2 settings have epsilon 392 per image. That is no meaningful" in md
    assert "labels and patient ids are released without noise and are not protected" in md
    assert "secret randomness" in md
    rows = [line for line in results.splitlines() if line.startswith("| b = ")]
    assert len(rows) == 2 and not any("±" in row for row in rows)  # never mean ± sd
    assert "| b = 2 | 2 | 62.5 [62.5, 62.5] |" in rows[1]  # 2 seeds, equal: t-interval of 0
    assert "sensitivity (%) [95% CI]" in results
    assert "chance: always predicting the test set's majority class (62.5%)" in md
    html = (out / "report.html").read_text()
    tables = sum(line.startswith("| ---") for line in md.splitlines())
    assert html.count("<div class='wide'><table>") == tables and "overflow-x:auto" in html
    with open(out / "results.csv") as handle:
        header = handle.readline().strip().split(",")
    assert len(header) == len(set(header)) and "data_root" not in header
    metrics = (out / "runs").glob("*/metrics.csv")
    ends = ",threshold,epsilon_per_image"
    assert all(m.read_text().splitlines()[0].endswith(ends) for m in metrics)

    # a run folder alone, and two folders in one comparison
    run_folder = next((out / "runs").iterdir())
    assert cli.main(["report", str(run_folder)]) == 0
    single = (run_folder / "report.md").read_text()
    assert "| seeds | " in single and "## Results by setting" in single
    other = tmp_path / "other"
    shutil.copytree(out, other)  # the same sweep in another folder: kept apart as a setting
    both = tmp_path / "both"
    assert cli.main(["report", str(out), str(other), "--out", str(both)]) == 0
    compared = (both / "report.md").read_text()
    assert "| sweep = out, b = 2 | 2 |" in compared and "| sweep = other, b = 2 | 2 |" in compared


def test_report_of_several_folders_needs_out(tmp_path, capsys):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert cli.main(["report", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "give --out" in capsys.readouterr().err


def test_a_run_folder_without_a_summary_is_a_clear_error(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no results database or run summary" in err and len(err.splitlines()) == 1


def test_provenance_states_the_validation_threshold_rule_and_the_cuts_it_chose():
    from dpmed.report.provenance import provenance_table

    runs = [
        {"config": {"threshold": "validation", "seed": 0}, "summary": {"threshold": 0.8125}},
        {"config": {"threshold": "validation", "seed": 1}, "summary": {"threshold": 0.9}},
        {"config": {"threshold": "fixed", "seed": 0}, "summary": {"threshold": 0.5}},
    ]
    rows = dict(provenance_table(runs, {}))
    assert rows["decision threshold"] == (
        "0.5 / best balanced accuracy on validation (0.81 to 0.90)"
    )


def test_a_settings_guarantee_is_its_seed_that_spent_most():
    """Seeds' patient-grouped splits differ in size, so their DP-SGD epsilons do too."""
    spent = [0.990888, 0.991759, 0.99]
    runs = [
        {"summary": {"privacy": {"epsilon_per_image": e, "seed": i}}} for i, e in enumerate(spent)
    ]
    assert Group("dp-sgd", {}, runs).privacy["epsilon_per_image"] == 0.991759
