"""Privacy on tables: per-feature budgets, the adaptive split, the release, diffprivlib."""

import dataclasses
import math

import numpy as np
import pytest
from scipy import stats

from dpmed.data.tabular import load_table
from dpmed.models.tabular import CLASSIFIERS, build_classifier
from dpmed.privacy.feature_noise import release_features, split_budget
from dpmed.privacy.tables import diffprivlib_guarantee, perturb_table, record_privacy


@pytest.fixture(scope="module")
def table():
    return load_table("breast-cancer", seed=0)


def perturb(table, technique, epsilon, **kwargs):
    options = {"importance_share": 0.25, "perturb_test": True, "clip_after_release": False}
    return perturb_table(table, technique, epsilon=epsilon, seed=3, **options | kwargs)


@pytest.mark.parametrize("technique", ["laplace", "adaptive-laplace"])
@pytest.mark.parametrize("epsilon", [0.5, 4.0, 30.0])
def test_budgets_add_up_to_the_stated_epsilon(table, technique, epsilon):
    _, privacy = perturb(table, technique, epsilon)
    spent = sum(privacy["feature_epsilons"]) + privacy["importance_epsilon"]
    assert spent == pytest.approx(epsilon, rel=1e-5)
    assert privacy["epsilon_per_record"] == epsilon and privacy["guarantee_holds"]
    expected_importance = 0.25 * epsilon if technique == "adaptive-laplace" else 0
    assert privacy["importance_epsilon"] == pytest.approx(expected_importance)


def test_constant_split_is_equal_and_the_adaptive_one_follows_importance(table):
    _, constant = perturb(table, "laplace", 6.0)
    assert len(set(constant["feature_epsilons"])) == 1
    _, adaptive = perturb(table, "adaptive-laplace", 60.0)
    assert np.std(adaptive["feature_epsilons"]) > 0


def test_a_feature_with_zero_importance_gets_the_least_budget():
    budgets = split_budget(2.0, np.array([0.5, 0.0, 3.0, 1.0]))
    assert budgets.argmin() == 1 and budgets[1] == 0
    assert budgets.argmax() == 2 and budgets.sum() == pytest.approx(2.0)
    assert np.all(np.diff(split_budget(1.0, np.array([0.1, 0.2, 0.4, 0.8]))) > 0)


def test_the_split_minimises_importance_weighted_noise_variance():
    """eps_j ~ c_j^(2/3) minimises sum_j c_j^2 * 2 / eps_j^2 for a fixed total epsilon."""
    rng = np.random.default_rng(0)
    importance = rng.exponential(size=6)

    def cost(budgets):
        return float(np.sum(importance**2 * 2 / budgets**2))

    best = cost(split_budget(3.0, importance))
    for _ in range(200):
        other = 3.0 * rng.dirichlet(np.ones(6))
        assert cost(other) >= best
    assert cost(split_budget(3.0, np.ones(6))) > best


def test_release_adds_laplace_noise_of_scale_one_over_epsilon_j():
    budgets = np.array([0.5, 2.0, 0.0])
    clean = np.full((20000, 3), 0.3, dtype=np.float32)
    noisy = release_features(clean, budgets, identity={"split": "train"})
    for j in (0, 1):
        result = stats.kstest(noisy[:, j] - 0.3, "laplace", args=(0, 1 / budgets[j]))
        assert result.pvalue > 1e-3
    assert np.all(noisy[:, 2] == 0.5)  # no budget: the value is not released


def test_with_a_key_each_identity_is_one_release_and_others_are_independent(noise_key):
    clean = np.zeros((50, 4), dtype=np.float32)
    budgets = np.ones(4)
    first = release_features(clean, budgets, identity={"split": "train"})
    assert np.array_equal(first, release_features(clean, budgets, identity={"split": "train"}))
    assert not np.array_equal(first, release_features(clean, budgets, identity={"split": "test"}))


def test_without_a_key_the_same_identity_draws_fresh_noise():
    clean = np.zeros((50, 4), dtype=np.float32)
    first = release_features(clean, np.ones(4), identity={"split": "train"})
    assert not np.array_equal(
        first, release_features(clean, np.ones(4), identity={"split": "train"})
    )


@pytest.mark.parametrize("keyed", [False, True])
def test_two_releases_at_different_epsilons_do_not_cancel(request, keyed):
    """The review's attack: releases at epsilon 1 and 16 of the same records with the same
    public seed; x = (e1 r1 - e2 r2) / (e1 - e2) recovered every value to 1e-6 when both drew
    the same standard Laplace noise. Now the estimate is no better than the noise allows:
    its error is larger than that of the epsilon-16 release read on its own."""
    if keyed:
        request.getfixturevalue("noise_key")
    rng = np.random.default_rng(0)
    clean = rng.random((400, 30)).astype(np.float32)
    e1, e2 = 1.0, 16.0
    r1, r2 = (
        release_features(clean, np.full(30, e / 30), identity={"split": "train", "epsilon": e})
        for e in (e1, e2)
    )
    attack = (e1 * r1 - e2 * r2) / (e1 - e2)
    attack_error = np.sqrt(np.mean((attack - clean) ** 2))
    single_error = np.sqrt(np.mean((r2 - clean) ** 2))  # about sqrt(2) * 30 / 16
    assert attack_error > single_error > 1.0


def test_test_split_stays_clean_unless_perturbed(table):
    inputs, privacy = perturb(table, "laplace", 2.0, perturb_test=False)
    assert np.array_equal(inputs["test"][0], table.splits["test"].features)
    assert not np.array_equal(inputs["train"][0], table.splits["train"].features)
    assert privacy["perturbed_splits"] == ["train", "val"]


@pytest.mark.parametrize("name", CLASSIFIERS)
@pytest.mark.parametrize("epsilon", [0.3, 2.0])
def test_diffprivlib_models_epsilon_lands_in_the_guarantee(table, name, epsilon):
    train = table.splits["train"]
    model = build_classifier(name, n_features=30, seed=0, epsilon=epsilon)
    model.fit(train.features, train.labels)
    privacy = record_privacy(diffprivlib_guarantee(model), table)
    assert privacy["epsilon_per_record"] == pytest.approx(epsilon)
    assert privacy["delta"] == 0 and privacy["unit"] == "record"
    assert privacy["adjacency"] == "replace-one"
    # naive Bayes and the forest state add/remove epsilon: fitted at half the target
    add_remove = name in ("gaussian-nb", "random-forest")
    spent = model[-1].accountant.total()[0]
    assert math.isclose((2 if add_remove else 1) * spent, privacy["epsilon"])
    assert ("add/remove" in privacy["accounting"]) == add_remove


def test_bounds_from_the_data_void_the_guarantee(table):
    leaky = dataclasses.replace(table, bounds_from_data=True)
    _, privacy = perturb(leaky, "laplace", 1.0)
    assert privacy["guarantee_holds"] is False
    assert privacy["description"].startswith("NO GUARANTEE")
