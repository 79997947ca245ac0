import json
from pathlib import Path

import pytest

from dpmed.config import FASTEST_MODES_MEASURED_BY_DPSGD_SPEED, RunConfig, load_yaml
from dpmed.errors import ConfigError


def test_defaults_and_dataset_image_size():
    assert RunConfig().resolved_image_size == 64
    assert RunConfig(dataset="pneumoniamnist").resolved_image_size == 28
    assert RunConfig(image_size=96).resolved_image_size == 96


def test_ints_are_accepted_as_floats_but_not_the_reverse():
    assert RunConfig(technique="laplace", noise_scale=2).noise_scale == 2.0
    with pytest.raises(ConfigError, match="epochs must be int"):
        RunConfig(epochs=2.5)
    with pytest.raises(ConfigError, match="augment must be bool"):
        RunConfig(augment="yes")


DP_SGD = {"technique": "dp-sgd", "target_epsilon": 1}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"noise_scale": -1, "technique": "laplace"}, "noise_scale must be >= 0"),
        ({"noise_scale": 1}, "technique is 'none'"),
        ({"image_size": 0}, "image_size must be a positive integer"),
        ({"model": "vgg"}, "unknown model 'vgg'"),
        ({"dataset": "mnist"}, "unknown dataset 'mnist'"),
        ({"val_fraction": 1.0}, "val_fraction must lie in"),
        ({"lr": 0}, "lr must be > 0"),
        ({"ema_decay": 1.0}, "ema_decay must lie in"),
        ({"threshold": 0.5}, "threshold must be str"),
        ({"threshold": "youden"}, "unknown threshold 'youden'; choose one of: fixed, validation"),
        ({"weights": "w.pt", "model": "small-cnn"}, "weights are only supported"),
        ({"noise_scle": 1}, "unknown setting 'noise_scle'"),
        ({"target_epsilon": 8}, "technique is 'none'"),
        ({"technique": "laplace", "target_epsilon": 0}, "target_epsilon must be > 0"),
        ({"technique": "laplace", "target_epsilon": 8, "noise_scale": 1}, "not both"),
        ({"technique": "laplace", "noise_scale": 1, "delta": 1e-5}, "delta must be 0"),
        ({"technique": "gaussian", "noise_scale": 1}, r"gaussian needs delta in \(0, 1\)"),
        ({"technique": "gaussian", "noise_scale": 1, "delta": 1.5}, "needs delta in"),
        ({"delta": 1e-5}, "delta is set but technique is 'none'"),
        ({"technique": "dppix", "noise_scale": 1}, "dppix needs cell_size"),
        ({"technique": "dppix", "noise_scale": 1, "cell_size": 3}, "does not divide .* 64"),
        ({"technique": "laplace", "cell_size": 4}, "cell_size is only for technique dppix"),
        ({"technique": "dppix", "cell_size": 4, "snapping": True}, "snapping is only for"),
        ({"unit": "voxel"}, "unknown unit 'voxel'"),
        ({"postprocess": "pool3"}, "pool3 does not divide the image size 64"),
        ({"postprocess": "nlm,sharpen"}, "unknown post-processing step 'sharpen'"),
        ({"augment": True, "augment_multiplicity": 0}, "augment_multiplicity must be >= 1"),
        ({"augment_multiplicity": 1.5}, "augment_multiplicity must be int"),
        ({"augment_multiplicity": 2}, "copies are identical; add --augment"),
        (
            {"model": "scatternet", "augment": True, "augment_multiplicity": 2},
            "augment cannot be used with model scatternet",
        ),
        (
            {"dataset": "breast-cancer", "model": "mlp", "augment_multiplicity": 2},
            "augment_multiplicity is for images, not the table breast-cancer",
        ),
        ({**DP_SGD, "grad_sample_mode": "vmap"}, "unknown grad_sample_mode 'vmap'"),
        ({**DP_SGD, "grad_sample_mode": "ghost", "clipping": "adaptive"}, "ghost has no per-"),
        ({**DP_SGD, "grad_sample_mode": "ghost", "noise_allocation": "equal"}, "ghost has no"),
        (
            {**DP_SGD, "grad_sample_mode": "ghost", "augment": True, "augment_multiplicity": 2},
            "ghost has no per-image gradients",
        ),
    ],
)
def test_bad_values_are_refused(values, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_mapping(values)


def test_augment_multiplicity_defaults_to_one_and_takes_augmented_copies():
    assert RunConfig().augment_multiplicity == 1
    assert RunConfig(augment=True, augment_multiplicity=4).augment_multiplicity == 4


def test_auto_picks_the_fastest_measured_grad_sample_mode_that_fits_the_clipping():
    # resnet18-gn: ghost is fastest by far (no near tie that a new measurement could flip)
    auto = RunConfig(**DP_SGD, model="resnet18-gn")
    fastest, per_image = FASTEST_MODES_MEASURED_BY_DPSGD_SPEED["resnet18-gn"]
    assert auto.resolved_grad_sample_mode == fastest
    assert auto.replace(clipping="adaptive").resolved_grad_sample_mode == per_image
    assert auto.replace(noise_allocation="equal").resolved_grad_sample_mode == per_image
    copies = auto.replace(augment=True, augment_multiplicity=2)
    assert copies.resolved_grad_sample_mode == per_image != fastest
    assert auto.replace(grad_sample_mode="ew").resolved_grad_sample_mode == "ew"
    table = RunConfig(**DP_SGD, dataset="breast-cancer", model="mlp")
    assert table.resolved_grad_sample_mode == "hooks"  # not measured: hooks


def test_the_auto_table_is_what_the_benchmark_measured():
    results = Path(__file__).parents[1] / "benchmarks/results/dpsgd_speed.json"
    models = json.loads(results.read_text())["models"]
    measured = {
        name: (row["fastest_mode"], row["fastest_per_image_mode"]) for name, row in models.items()
    }
    assert measured == FASTEST_MODES_MEASURED_BY_DPSGD_SPEED


def test_new_settings_build_their_mechanism():
    cfg = RunConfig(technique="dppix", cell_size=4, target_epsilon=100, unit="patient")
    assert cfg.input_mechanism().label == "dppix-cell4"
    assert RunConfig(technique="laplace", snapping=True).input_mechanism().label.endswith("snapped")
    assert RunConfig().input_mechanism() is None
    assert RunConfig(postprocess="pool2,blur1", dataset="pneumoniamnist").postprocess


def test_load_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_yaml(listed)
    good = tmp_path / "good.yaml"
    good.write_text("epochs: 3\ntechnique: laplace\nnoise_scale: 2\n")
    assert RunConfig.from_mapping(load_yaml(good)).epochs == 3
