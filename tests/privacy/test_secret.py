"""Secret noise: nothing an output holds regenerates it; a noise key makes it reproducible."""

import base64
import itertools
import json
import pickle

import numpy as np
import pytest
import scipy.stats
import torch

from dpmed.errors import ConfigError
from dpmed.privacy import secret
from dpmed.run import RunConfig, run_experiment


def test_without_a_key_every_draw_is_fresh():
    identity = {"draw": "test", "seed": 0}
    assert secret.numpy_generator(identity).random() != secret.numpy_generator(identity).random()
    a, b = (secret.torch_generator(identity) for _ in range(2))
    assert not torch.equal(torch.rand(8, generator=a), torch.rand(8, generator=b))
    assert secret.random_state(identity) is None  # diffprivlib then uses secrets.SystemRandom


def test_torch_noise_depends_on_all_the_secret_bits(monkeypatch):
    """torch's manual_seed keeps a seed's low 32 bits: secrets 2^32 apart would draw the
    same DP-SGD noise, which anyone holding the model could search for. The generator's
    whole state comes from the secret, its draws are standard normal, and it does not
    hand the secret back as its initial seed."""
    draws = []
    for seed in (5, 5 + 2**32, 5 + 2**64, 5 + 2**255):
        monkeypatch.setattr(secret, "noise_seed", lambda identity, seed=seed: seed)
        generator = secret.torch_generator({"draw": "test"})
        assert generator.initial_seed() == 0
        draws.append(torch.randn(100_000, generator=generator))
    assert all(not torch.equal(a[:8], b[:8]) for a, b in itertools.combinations(draws, 2))
    assert scipy.stats.kstest(draws[0].numpy(), "norm").pvalue > 1e-3


def test_with_a_key_equal_identities_draw_equal_noise_and_others_independent(noise_key):
    identity = {"draw": "test", "images": np.arange(6, dtype=np.uint8)}
    same = secret.numpy_generator(dict(identity)).random(4)
    assert np.array_equal(secret.numpy_generator(identity).random(4), same)
    one_pixel_more = identity | {"images": np.arange(1, 7, dtype=np.uint8)}
    assert not np.array_equal(secret.numpy_generator(one_pixel_more).random(4), same)
    state = secret.random_state(identity)
    assert state.random_sample() == secret.random_state(identity).random_sample()


def test_another_key_draws_other_noise(noise_key, monkeypatch):
    identity = {"draw": "test"}
    first = secret.numpy_generator(identity).random(4)
    other = noise_key.parent / "other.key"
    other.write_bytes(bytes(range(1, 33)))
    monkeypatch.setenv(secret.KEY_ENV, str(other))
    assert not np.array_equal(secret.numpy_generator(identity).random(4), first)


def test_a_short_or_missing_key_file_is_refused(tmp_path, monkeypatch):
    short = tmp_path / "short.key"
    short.write_bytes(b"password")
    with pytest.raises(ConfigError, match="at least 16 random bytes"):
        secret.use_key_file(short)
    monkeypatch.setenv(secret.KEY_ENV, str(tmp_path / "absent.key"))
    with pytest.raises(ConfigError, match="cannot read the noise key file"):
        secret.load_key()


IMAGE_RUN = {
    "dataset": "pneumoniamnist",
    "model": "small-cnn",
    "epochs": 1,
    "max_images": 48,
    "batch_size": 16,
    "seed": 0,
}
TABLE_RUN = {"dataset": "breast-cancer", "seed": 0}
TECHNIQUES = {
    "laplace": IMAGE_RUN | {"technique": "laplace", "noise_scale": 1.0},
    "gaussian": IMAGE_RUN | {"technique": "gaussian", "noise_scale": 1.0, "delta": 1e-5},
    "dppix": IMAGE_RUN | {"technique": "dppix", "noise_scale": 0.1, "cell_size": 4},
    "weighted-laplace": IMAGE_RUN | {"technique": "weighted-laplace", "noise_scale": 1.0},
    "dp-sgd": IMAGE_RUN | {"technique": "dp-sgd", "noise_multiplier": 1.0},
    "table-laplace": TABLE_RUN
    | {"technique": "laplace", "target_epsilon": 4.0, "model": "logistic-regression"},
    "table-adaptive-laplace": TABLE_RUN
    | {"technique": "adaptive-laplace", "target_epsilon": 4.0, "model": "logistic-regression"},
    "diffprivlib": TABLE_RUN
    | {"technique": "diffprivlib", "target_epsilon": 1.0, "model": "logistic-regression"},
    "table-dp-sgd": TABLE_RUN
    | {"technique": "dp-sgd", "noise_multiplier": 1.0, "model": "mlp", "epochs": 2},
}


def _run(settings, out, data_root):
    config = RunConfig.from_mapping(settings | {"data_root": str(data_root)})
    summary = run_experiment(config, out, log=lambda _: None).summary
    return summary["privacy"].get("release_sha256"), summary["val"]["loss"], summary["test"]


@pytest.mark.parametrize("technique", TECHNIQUES)
def test_an_attacker_with_every_output_cannot_regenerate_the_noise(
    technique, tmp_path, monkeypatch, real_data
):
    """The attacker reads the run's outputs (the public seed and every setting), reruns
    the same settings on their own machine (a fresh cache) and gets other noise: other
    releases, another model. With the same noise key both runs are identical."""
    settings = TECHNIQUES[technique]
    monkeypatch.setenv("DPMED_CACHE", str(tmp_path / "owner-cache"))
    published = _run(settings, tmp_path / "owner", real_data)
    monkeypatch.setenv("DPMED_CACHE", str(tmp_path / "attacker-cache"))
    replayed = _run(settings, tmp_path / "attacker", real_data)
    # the validation loss of another model (continuous in the weights: a model whose noise
    # saturated every probability would give equal losses, so none of these does)
    assert replayed[1] != published[1]
    if published[0]:
        assert all(replayed[0][s] != published[0][s] for s in published[0])

    key = tmp_path / "noise.key"
    key.write_bytes(b"k" * 32)
    monkeypatch.setenv(secret.KEY_ENV, str(key))
    keyed = [
        (
            monkeypatch.setenv("DPMED_CACHE", str(tmp_path / f"cache{i}")),
            _run(settings, tmp_path / f"key{i}", real_data),
        )[1]
        for i in range(2)
    ]
    assert keyed[0] == keyed[1]
    _assert_key_never_written(key.read_bytes(), tmp_path, exclude=key)


def _assert_key_never_written(key, folder, exclude):
    """Neither the key nor its hex or base64 form is in any file or file name written."""
    forms = [key, key.hex().encode(), base64.b64encode(key)]
    for path in folder.rglob("*"):
        if path == exclude:
            continue
        assert not any(form.decode("latin-1") in path.name for form in forms)
        if path.is_file():
            data = path.read_bytes()
            assert not any(form in data for form in forms), path


def test_a_run_says_who_can_regenerate_its_noise(tmp_path, real_data, noise_key):
    config = RunConfig.from_mapping(TECHNIQUES["laplace"] | {"data_root": str(real_data)})
    run_experiment(config, tmp_path / "run", log=lambda _: None)
    privacy = json.loads((tmp_path / "run" / "summary.json").read_text())["privacy"]
    assert privacy["noise_source"] == "secret noise key"
    assert privacy["key_id"] == secret.key_id(noise_key.read_bytes())
    assert "whoever holds the noise key" in privacy["noise_reproducible"]


@pytest.mark.parametrize("name", ["logistic-regression", "gaussian-nb", "random-forest"])
def test_a_saved_diffprivlib_model_keeps_no_trace_of_its_keyed_generator(name, tmp_path, noise_key):
    """diffprivlib keeps its RandomState; pickled after fitting, its MT19937 state could be
    run backwards to the noise. The saved model holds a reseeded one instead."""
    from dpmed.data.tabular import load_table
    from dpmed.models.tabular import build_classifier
    from dpmed.train.classifier import fit_classifier

    table = load_table("breast-cancer", table=None, schema=None, val_fraction=0.1, seed=0)
    data = {s: (d.features, d.labels) for s, d in table.splits.items()}
    saved, twin = (
        build_classifier(name, n_features=30, epsilon=1.0, identity={"run": 0}) for _ in range(2)
    )
    fit_classifier(saved, data, checkpoint=tmp_path / "model.pkl")
    twin.fit(*data["train"])  # the attacker's aim: the state the noise left behind
    left_behind = twin[-1].random_state.get_state()[1].tobytes()
    assert left_behind in pickle.dumps(twin)  # what a plain pickle would publish
    assert left_behind not in (tmp_path / "model.pkl").read_bytes()
    test = data["test"][0]
    assert np.array_equal(saved.predict_proba(test), twin.predict_proba(test))  # same noise
