import math

import numpy as np
import pytest
from scipy import stats

from dpmed.audit.membership import (
    clopper_pearson,
    confidence_of_true_label,
    empirical_epsilon,
    lira_scores,
    one_run_epsilon,
    one_run_p_value,
    roc_summary,
)


def test_clopper_pearson_matches_the_closed_forms_at_the_ends():
    # 0 of n: the upper end solves (1 - p)^n = alpha / 2; n of n: p^n = alpha / 2
    n, alpha = 10, 0.05
    assert clopper_pearson(0, n, 0.95) == (0.0, pytest.approx(1 - (alpha / 2) ** (1 / n)))
    assert clopper_pearson(n, n, 0.95) == (pytest.approx((alpha / 2) ** (1 / n)), 1.0)


def test_clopper_pearson_inverts_the_binomial_tails():
    # the low end p makes P(X >= k | p) = alpha / 2, the high end P(X <= k | p) = alpha / 2
    k, n = 7, 20
    low, high = clopper_pearson(k, n, 0.9)
    assert stats.binom.sf(k - 1, n, low) == pytest.approx(0.05)
    assert stats.binom.cdf(k, n, high) == pytest.approx(0.05)


def _laplace_on_one_value(epsilon: float, n: int, seed: int):
    """The neighbouring inputs 0 (out) and 1 (in) released with Laplace(1 / epsilon):
    exactly epsilon-DP, and at any threshold >= 1 TPR / FPR is exactly e^epsilon."""
    rng = np.random.default_rng(seed)
    members = rng.random(n) < 0.5
    return members + rng.laplace(0, 1 / epsilon, n), members


@pytest.mark.parametrize("epsilon", [0.5, 1.0, 2.0, 4.0])
def test_the_empirical_bound_never_exceeds_the_true_epsilon_and_comes_close(epsilon):
    bounds = [
        empirical_epsilon(*_laplace_on_one_value(epsilon, 200_000, seed), seed=seed)[
            "epsilon_lower_bound"
        ]
        for seed in range(3)
    ]
    assert max(bounds) <= epsilon
    assert min(bounds) > 0.8 * epsilon


def test_the_bound_is_weaker_with_fewer_trials():
    few, many = (
        empirical_epsilon(*_laplace_on_one_value(2.0, n, 0))["epsilon_lower_bound"]
        for n in (2_000, 200_000)
    )
    assert few < many <= 2.0


def test_scores_that_ignore_membership_prove_nothing():
    rng = np.random.default_rng(0)
    bounds = [
        empirical_epsilon(rng.normal(size=4000), rng.random(4000) < 0.5, seed=s)[
            "epsilon_lower_bound"
        ]
        for s in range(40)
    ]
    assert sum(b > 0 for b in bounds) <= 4  # a 95% bound: about 1 in 20 may be above 0
    assert max(bounds) < 0.3


def test_delta_lowers_the_bound():
    scores, members = _laplace_on_one_value(1.0, 50_000, 0)
    bound = empirical_epsilon(scores, members)["epsilon_lower_bound"]
    assert empirical_epsilon(scores, members, delta=0.05)["epsilon_lower_bound"] < bound


def test_confidence_is_the_logit_of_the_true_labels_probability():
    probs = np.array([0.9, 0.9, 0.5])
    out = confidence_of_true_label(probs, np.array([1, 0, 1]))
    assert out == pytest.approx([math.log(9), -math.log(9), 0.0])


def test_roc_summary_of_separable_and_of_identical_scores():
    members = np.arange(1000) < 500
    separable = roc_summary(members.astype(float), members)
    assert separable["auc"] == 1.0 and separable["tpr_at_0.1pct_fpr"] == 1.0
    assert roc_summary(np.zeros(1000), members)["auc"] == 0.5


def test_lira_sees_membership_where_per_image_difficulty_hides_it_from_loss():
    """Each image has its own typical confidence (sd 3); training on it adds 1 (sd 0.5).
    The LOSS attack sees mostly difficulty; LiRA compares each image with itself."""
    rng = np.random.default_rng(0)
    n, models = 2000, 17
    difficulty = rng.normal(0, 3, n)
    members = rng.random((models, n)) < 0.5
    confidence = difficulty + members + rng.normal(0, 0.5, (models, n))
    lira = lira_scores(confidence[0], confidence[1:], members[1:])
    lira_auc = roc_summary(lira, members[0])["auc"]
    loss_auc = roc_summary(confidence[0], members[0])["auc"]
    assert loss_auc < 0.65 < 0.85 < lira_auc


def test_the_one_run_bound_of_coin_flips_is_zero_and_grows_with_right_guesses():
    assert one_run_epsilon(1000, 100, 50) == 0.0
    bounds = [one_run_epsilon(1000, 100, c) for c in (70, 80, 90, 100)]
    assert 0 < bounds[0] < bounds[1] < bounds[2] < bounds[3]


def test_the_one_run_bound_is_where_the_p_value_crosses_the_confidence():
    epsilon = one_run_epsilon(1000, 200, 150, delta=1e-5)
    assert one_run_p_value(1000, 200, 150, epsilon, 1e-5) == pytest.approx(0.05, abs=1e-4)
    # without delta the p-value is the binomial tail of epsilon-DP's randomised response
    q = 1 / (1 + math.exp(-1.0))
    assert one_run_p_value(1000, 200, 150, 1.0, 0.0) == pytest.approx(stats.binom.sf(149, 200, q))


def test_delta_weakens_the_one_run_bound():
    assert one_run_epsilon(1000, 200, 170, delta=1e-3) < one_run_epsilon(1000, 200, 170)
