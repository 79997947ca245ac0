import copy
import json
import re
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dpmed import cli
from dpmed.config import RunConfig
from dpmed.errors import ConfigError
from dpmed.models import build_model
from dpmed.privacy.dpsgd import DPSGD, check_trainable
from dpmed.train.loop import TrainSettings, fit, predict
from dpmed.train.metrics import binary_metrics

# model -> its trainable layers (index in the head): the linear layer; the CNN's 2 convs, 2 linears
HEAD_LAYERS = {"scatternet": (2,), "scatternet-cnn": (1, 3, 7, 9)}
MODELS = list(HEAD_LAYERS)


def _head_weights(name):
    return {f"{i}.{kind}" for i in HEAD_LAYERS[name] for kind in ("weight", "bias")}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(("size", "side"), [(28, 7), (64, 16)])
def test_shapes_and_only_the_head_is_trainable(name, size, side):
    model, note = build_model(name, image_size=size)
    assert "J=2, L=8" in note and "random init" in note
    x = torch.rand(3, 1, size, size)
    assert model.frozen(x).shape == (3, 81, side, side)  # 1 + 2*8 + 8^2 * 2*1/2 channels
    assert model(x).shape == (3, 2)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"head.{weight}" for weight in _head_weights(name)}
    assert not list(model.frozen.parameters())  # its filters are fixed buffers


def test_the_cnn_head_stays_small_at_any_image_size():
    sizes = {
        size: sum(p.numel() for p in build_model("scatternet-cnn", image_size=size)[0].parameters())
        for size in (28, 64)
    }
    assert sizes[28] == sizes[64] < 40_000  # the 16x16 features of 64 px are pooled to 4x4


@pytest.mark.parametrize("name", MODELS)
def test_the_frozen_stage_is_fixed_and_normalisation_is_per_image(name):
    torch.manual_seed(0)
    first = build_model(name)[0]
    torch.manual_seed(1)
    second = build_model(name)[0]
    x = torch.rand(4, 1, 28, 28)
    assert torch.equal(first.frozen(x), second.frozen(x))  # no random or learned filters
    features = first.frozen(x)
    alone = first.head[0](features[:1])  # GroupNorm: one image's output ignores the others
    assert torch.allclose(alone, first.head[0](features)[:1])


def _toy(n, seed):
    """Bright centre square = class 1; a linear model on scattering features finds it."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = rng.random((n, 28, 28)) * 0.5
    images[labels == 1, 10:18, 10:18] += 0.5
    return images.astype(np.float16), labels


def _dp_fit(tmp_path, model, *, epochs, sigma=0.5):
    data = {"train": _toy(256, 0), "val": _toy(64, 1), "test": _toy(64, 2)}
    dp = DPSGD(
        noise_multiplier=sigma,
        max_grad_norm=1.0,
        sample_rate=32 / 256,
        delta=1e-5,
        accountant_name="pld",
        physical_batch_size=1000,
    )
    settings = TrainSettings(epochs=epochs, batch_size=32, lr=0.5, optimizer="sgd", seed=0)
    records = fit(
        model, data, settings, device=torch.device("cpu"), checkpoint=tmp_path / "m.pt", dp=dp
    )
    return data, dp, records


@pytest.mark.parametrize("name", MODELS)
def test_features_are_computed_once_and_the_head_learns_under_dp_sgd(name, tmp_path, private_cache):
    torch.manual_seed(0)
    model, _ = build_model(name)
    check_trainable(model)
    seen = []
    model.frozen.register_forward_hook(lambda module, args, out: seen.append(len(args[0])))
    shutil.rmtree(private_cache / "features", ignore_errors=True)
    data, dp, records = _dp_fit(tmp_path, model, epochs=3)
    assert sum(seen) == sum(len(labels) for _, labels in data.values())  # each image once
    assert dp.steps == 3 * 8 and dp.epsilon() > 0
    assert records[-1].metrics["test"]["roc_auc"] > 0.8
    # the trained head sits in the model: pixels through the whole model give the same metrics
    test = binary_metrics(
        *predict(model, *data["test"], device=torch.device("cpu")), threshold=records[-1].threshold
    )
    assert test["accuracy"] == records[-1].metrics["test"]["accuracy"]
    assert test["loss"] == pytest.approx(records[-1].metrics["test"]["loss"], rel=1e-5)
    assert set(torch.load(tmp_path / "m.pt")) == _head_weights(name)  # the head's alone
    passed = sum(seen)
    other = next(m for m in MODELS if m != name)
    again = build_model(other)[0]  # another run on the same images reuses them, any head
    again.frozen.register_forward_hook(lambda module, args, out: seen.append(len(args[0])))
    _dp_fit(tmp_path, again, epochs=1)
    assert sum(seen) == passed
    cached = sorted(p.name for p in (private_cache / "features").iterdir())
    assert len(cached) == len(data)  # one file per split, read back from disk
    assert all(re.fullmatch(r"scattering-[0-9a-f]{16}\.npy", n) for n in cached)  # a keyed hash


@pytest.mark.parametrize("grad_sample_mode", ["hooks", "functorch", "ew"])
def test_opacus_gives_the_cnn_head_per_image_gradients(grad_sample_mode):
    torch.manual_seed(0)
    model, _ = build_model("scatternet-cnn")
    check_trainable(model)
    features, labels = model.frozen(torch.rand(4, 1, 28, 28)), torch.tensor([0, 1, 1, 0])
    alone = copy.deepcopy(model.head)
    loss = [F.cross_entropy(alone(features[i : i + 1]), labels[i : i + 1]) for i in range(4)]
    grads = [torch.autograd.grad(one, [*alone.parameters()]) for one in loss]
    expected = [torch.stack(per_image) for per_image in zip(*grads, strict=True)]  # per layer
    dp = DPSGD(
        noise_multiplier=0.0,
        max_grad_norm=1e6,  # no clipping: the step is the plain mean gradient
        sample_rate=0.5,
        delta=1e-5,
        accountant_name="pld",
        physical_batch_size=4,
        grad_sample_mode=grad_sample_mode,
    )
    optimizer = torch.optim.SGD(model.head.parameters(), lr=1.0)
    head, dp_optimizer = dp.wrap(model.head, optimizer, n_train=8)
    F.cross_entropy(head(features), labels).backward()
    before = [p.detach().clone() for p in model.head.parameters()]
    dp_optimizer.step()
    assert dp.steps == 1
    for p, old, per_image in zip(model.head.parameters(), before, expected, strict=True):
        assert torch.allclose(p.grad_sample, per_image, atol=1e-6)
        mean = per_image.mean(0)  # over 4 images, the expected batch (8 x rate 0.5)
        assert torch.allclose(old - p.detach(), mean, atol=1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_augmentation_is_refused_for_fixed_features(name, tmp_path):
    with pytest.raises(ConfigError, match=f"augment cannot be used with model {name}:"):
        RunConfig(model=name, augment=True)
    with pytest.raises(ConfigError, match="at least 4x4"):
        RunConfig(model=name, image_size=3)
    settings = TrainSettings(epochs=1, batch_size=32, lr=0.1, augment=True)
    data = {"train": _toy(32, 0), "val": _toy(8, 1)}
    with pytest.raises(ConfigError, match="augment"):
        fit(
            build_model(name)[0],
            data,
            settings,
            device=torch.device("cpu"),
            checkpoint=tmp_path / "m.pt",
        )


@pytest.mark.parametrize("name", MODELS)
def test_dp_sgd_on_real_pneumoniamnist_beats_chance(name, real_data, tmp_path):
    """1,000 training images, noise multiplier 1 (epsilon about 4 per image), 3 epochs:
    well above always-pneumonia (62.5%). A fixed noise multiplier skips the calibration."""
    out = tmp_path / "scatter"
    args = ["run", "--dataset", "pneumoniamnist", "--model", name, "--epochs", "3"]
    args += ["--technique", "dp-sgd", "--noise-multiplier", "1", "--accountant", "pld"]
    args += ["--batch-size", "128", "--optimizer", "sgd", "--lr", "0.5", "--balanced-loss"]
    args += ["--max-images", "1000", "--quiet", "--data-root", str(real_data), "--out", str(out)]
    assert cli.main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < summary["privacy"]["epsilon_per_image"] < 5
    assert summary["test"]["accuracy"] > 0.7 and summary["test"]["roc_auc"] > 0.85
