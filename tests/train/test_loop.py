import copy

import numpy as np
import pytest
import torch
from opacus.grad_sample.utils import prepare_module
from torch import nn

from dpmed.models import build_model
from dpmed.train.loop import (
    EpochRecord,
    TrainSettings,
    _average_copies,
    _losses,
    best_epoch,
    fit,
    predict,
    random_affine,
)
from dpmed.train.metrics import balanced_threshold, binary_metrics
from tests.train.helpers import assert_trained_alike, flat


def _record(epoch, val_acc, val_loss, test_acc):
    metrics = {
        "val": {"accuracy": val_acc, "loss": val_loss},
        "test": {"accuracy": test_acc, "loss": 0.0},
    }
    return EpochRecord(epoch, metrics, 1.0, 1.0)


def test_best_epoch_is_chosen_on_validation_never_test():
    records = [
        _record(1, 0.80, 0.5, 0.99),
        _record(2, 0.85, 0.6, 0.50),
        _record(3, 0.85, 0.4, 0.60),
    ]
    assert best_epoch(records).epoch == 3  # ties on accuracy go to the lower loss
    records.append(_record(4, 0.85, 0.4, 0.95))
    assert best_epoch(records).epoch == 3  # full ties go to the earlier epoch


def _toy_data(n=64, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    images = rng.random((n, 16, 16)) * 0.5
    images[labels == 1, 4:12, 4:12] += 0.5  # a bright square means pneumonia
    return images.astype(np.float16), labels


def _fit(tmp_path, name):
    torch.manual_seed(0)
    model, _ = build_model("small-cnn")
    data = {"train": _toy_data(), "val": _toy_data(seed=1), "test": _toy_data(seed=2)}
    settings = TrainSettings(epochs=3, batch_size=16, lr=3e-3, augment=True, seed=0)
    records = fit(model, data, settings, device=torch.device("cpu"), checkpoint=tmp_path / name)
    return model, data, records


def test_fit_is_deterministic_on_cpu_and_checkpoints_the_best_epoch(tmp_path):
    _, data, records = _fit(tmp_path, "a.pt")
    _, _, again = _fit(tmp_path, "b.pt")
    assert [r.metrics for r in records] == [r.metrics for r in again]

    best = best_epoch(records)
    restored, _ = build_model("small-cnn")
    restored.load_state_dict(torch.load(tmp_path / "a.pt", weights_only=True))
    val = binary_metrics(*predict(restored, *data["val"], device=torch.device("cpu")))
    assert val == best.metrics["val"]


def test_fit_learns_an_easy_task(tmp_path):
    _, _, records = _fit(tmp_path, "c.pt")
    assert records[-1].metrics["test"]["roc_auc"] > 0.9


def test_a_validation_threshold_is_read_from_validation_and_scores_every_split(tmp_path):
    torch.manual_seed(0)
    model, _ = build_model("small-cnn")
    data = {"train": _toy_data(), "val": _toy_data(seed=1), "test": _toy_data(seed=2)}
    settings = TrainSettings(epochs=2, batch_size=16, lr=3e-3, seed=0, threshold="validation")
    records = fit(model, data, settings, device=torch.device("cpu"), checkpoint=tmp_path / "t.pt")
    best = best_epoch(records)
    restored, _ = build_model("small-cnn")
    restored.load_state_dict(torch.load(tmp_path / "t.pt", weights_only=True))
    scores = {s: predict(restored, *data[s], device=torch.device("cpu")) for s in data}
    assert best.threshold == balanced_threshold(*scores["val"][:2])
    for split in data:
        assert best.metrics[split] == binary_metrics(*scores[split], threshold=best.threshold)


def test_random_affine_keeps_shape_and_is_seeded():
    x = torch.rand(4, 1, 16, 16)
    a = random_affine(x, torch.Generator().manual_seed(1))
    b = random_affine(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)


def test_ema_weights_are_what_is_evaluated_and_checkpointed(tmp_path):
    torch.manual_seed(0)
    model, _ = build_model("small-cnn")
    data = {"train": _toy_data(), "val": _toy_data(seed=1), "test": _toy_data(seed=2)}
    settings = TrainSettings(epochs=2, batch_size=16, lr=3e-3, seed=0, ema_decay=0.9)
    records = fit(model, data, settings, device=torch.device("cpu"), checkpoint=tmp_path / "e.pt")
    saved = torch.load(tmp_path / "e.pt", weights_only=True)
    raw = model.state_dict()
    assert any(not torch.equal(saved[k], raw[k]) for k in raw)  # not the raw weights
    restored, _ = build_model("small-cnn")
    restored.load_state_dict(saved)
    val = binary_metrics(*predict(restored, *data["val"], device=torch.device("cpu")))
    assert val == best_epoch(records).metrics["val"]


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.GroupNorm(1, 2), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 2)
    )


def _row_gradients(net, x, y, weights) -> list[torch.Tensor]:
    """Each row's own gradient by plain autograd, one (rows, *shape) tensor per parameter."""
    rows = []
    for j in range(len(y)):
        net.zero_grad()
        _losses(net(x[j : j + 1]), y[j : j + 1], weights).mean().backward()
        rows.append([p.grad.clone() for p in net.parameters()])
    return [torch.stack(per_param) for per_param in zip(*rows, strict=True)]


@pytest.mark.parametrize("mode", ["hooks", "functorch", "ew"])  # per-image gradients
def test_averaging_copies_gives_each_image_the_mean_of_its_copies_gradients(mode):
    images, copies = 3, 4
    net = _tiny_net()
    x = torch.randn(images * copies, 1, 6, 6)  # every copy differs, as augmented ones do
    y = torch.tensor([0, 1, 1]).repeat_interleave(copies)
    weights = torch.tensor([0.7, 1.9])
    expected = [
        g.view(images, copies, *g.shape[1:]).mean(dim=1)
        for g in _row_gradients(copy.deepcopy(net), x, y, weights)
    ]
    private = prepare_module(net, mode, loss_reduction="mean")
    _losses(private(x), y, weights).mean().backward()
    _average_copies(private, copies)
    for p, mean in zip(private.parameters(), expected, strict=True):
        assert p.grad_sample.shape == (images, *p.shape)
        assert torch.allclose(p.grad_sample, mean, atol=1e-6)


def test_identical_copies_train_like_one_copy(tmp_path):
    """K un-augmented copies: the mean loss over B*K rows is the mean over the B images.
    SGD, whose step scales with the gradient: summing the copies instead would move the
    weights K times as far (Adam would hide it)."""
    data = {"train": _toy_data(), "val": _toy_data(seed=1), "test": _toy_data(seed=2)}
    models = []
    for copies in (1, 3):
        torch.manual_seed(0)
        model, _ = build_model("small-cnn")
        start = flat(model)
        settings = TrainSettings(
            epochs=1,
            batch_size=16,
            lr=0.05,
            optimizer="sgd",
            balanced_loss=True,
            augment_multiplicity=copies,
        )
        fit(model, data, settings, device=torch.device("cpu"), checkpoint=tmp_path / "k.pt")
        models.append(model)
    assert_trained_alike(start, *models)
