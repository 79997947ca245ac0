import pytest

from dpmed.bench.sweep import Sweep, load_sweep, preset_names, run_id
from dpmed.config import RunConfig
from dpmed.errors import ConfigError


def test_presets_ship_with_the_package():
    assert {"paper", "paper-quick"} <= set(preset_names())
    quick = load_sweep("paper-quick")
    runs = [(r.config.noise_scale, r.config.seed) for r in quick.runs()]
    assert sorted(runs) == [(b, seed) for b in (0, 1, 2, 4) for seed in (0, 1, 2)]


def test_grid_expands_every_combination_with_stable_ids():
    spec = {"base": {"epochs": 1}, "grid": {"noise_scale": [1, 2], "seed": [0, 1, 2]}}
    runs = Sweep.from_mapping(spec | {"base": {"epochs": 1, "technique": "laplace"}}, name="s")
    planned = runs.runs()
    assert len(planned) == 6 and len({r.id for r in planned}) == 6
    assert planned[0].name == "noise_scale=1,seed=0"
    again = Sweep.from_mapping(spec | {"base": {"epochs": 1, "technique": "laplace"}}, name="t")
    assert [r.id for r in again.runs()] == [r.id for r in planned]


def test_run_id_ignores_where_the_data_lives_but_not_the_experiment(tmp_path):
    config = RunConfig(technique="laplace", noise_scale=1)
    assert run_id(config) == run_id(config.replace(data_root=str(tmp_path)))
    assert run_id(config) == run_id(config.replace(image_size=64))  # the resolved default
    assert run_id(config) != run_id(config.replace(seed=1))


def test_paths_are_made_absolute_for_remote_workers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    spec = {"base": {"data_root": "data", "weights": "w.pt"}, "grid": {"seed": [0]}}
    [run] = Sweep.from_mapping(spec, name="s").runs()
    assert run.config.data_root == str(tmp_path / "data")
    assert run.config.weights == str(tmp_path / "w.pt")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"base": {}, "grid": {"seed": [0]}, "extra": 1}, "unknown key 'extra'"),
        ({"base": {"epochs": 1}}, "empty grid"),
        ({"base": {}, "grid": {"seed": []}}, "grid.seed must be a non-empty list"),
        ({"base": {}, "grid": {"seed": 3}}, "grid.seed must be a non-empty list"),
        ({"base": {"epochs": "many"}, "grid": {"seed": [0]}}, "epochs must be int"),
        ({"base": {}, "grid": {"lr": [0.1, "fast"]}}, "lr must be float"),
        ({"base": {"epoch": 2}, "grid": {"seed": [0]}}, "unknown setting 'epoch'"),
        (["not", "a", "mapping"], "must be a mapping"),
    ],
)
def test_bad_sweeps_are_refused(spec, message):
    with pytest.raises(ConfigError, match=message):
        Sweep.from_mapping(spec, name="bad")


def test_missing_preset_names_the_presets():
    with pytest.raises(ConfigError, match="no preset or sweep file 'papr'.*paper-quick"):
        load_sweep("papr")


def test_a_list_of_grids_joins_their_runs_once_each():
    spec = {
        "base": {"epochs": 1},
        "grid": [
            {"technique": ["none"], "seed": [0, 1]},
            {"technique": ["laplace"], "noise_scale": [1, 2], "seed": [0]},
            {"technique": ["none"], "seed": [1]},  # already planned: not twice
        ],
    }
    runs = Sweep.from_mapping(spec, name="s").runs()
    assert [r.name for r in runs] == [
        "technique=none,seed=0",
        "technique=none,seed=1",
        "technique=laplace,noise_scale=1,seed=0",
        "technique=laplace,noise_scale=2,seed=0",
    ]
    with pytest.raises(ConfigError, match="empty grid"):
        Sweep.from_mapping({"base": {}, "grid": [{"seed": [0]}, {}]}, name="s")
