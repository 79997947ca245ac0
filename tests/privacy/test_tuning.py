import dp_accounting
import pytest

from dpmed.privacy.dpsgd import epsilon_after
from dpmed.privacy.tuning import tuning_privacy

SIGMA, Q, STEPS, DELTA = 1.1, 0.05, 200, 1e-5


def _dp_sgd(steps=STEPS, k=None):
    epsilon = epsilon_after(noise_multiplier=SIGMA, sample_rate=Q, steps=steps, delta=DELTA)
    return {
        "mechanism": "dp-sgd",
        "unit": "image",
        "adjacency": "replace-one",
        "epsilon": epsilon,
        "delta": DELTA,
        "epsilon_per_image": epsilon,
        "epsilon_per_pixel": None,
        "noise_multiplier": SIGMA,
        "sample_rate": Q,
        "steps": steps,
        "accountant": "pld",
        "images_per_patient": k,
    }


def _laplace(release="abc", epsilon=784.0):
    return {
        "mechanism": "laplace",
        "unit": "pixel",
        "epsilon": epsilon / 784,
        "delta": 0.0,
        "epsilon_per_pixel": epsilon / 784,
        "epsilon_per_image": epsilon,
        "epsilon_per_patient": 2 * epsilon,
        "release_sha256": {"train": release, "val": release + "v"},
    }


def test_dp_sgd_candidates_are_composed_under_replace_one_as_google_dp_accounting_does():
    one = _dp_sgd()
    tuned = tuning_privacy([_dp_sgd(), _dp_sgd(), _dp_sgd()])
    event = dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(Q, dp_accounting.GaussianDpEvent(SIGMA)), 3 * STEPS
    )
    replace_one = dp_accounting.pld.PLDAccountant(dp_accounting.NeighboringRelation.REPLACE_ONE)
    add_remove = dp_accounting.pld.PLDAccountant()
    replace_one.compose(event)
    add_remove.compose(event)
    assert tuned["epsilon_per_image"] == pytest.approx(replace_one.get_epsilon(DELTA), rel=0.01)
    assert tuned["epsilon"] > 1.1 * add_remove.get_epsilon(DELTA)
    assert one["epsilon"] < tuned["epsilon"] < 3 * one["epsilon"]  # tighter than summing
    assert tuned["epsilon_per_pixel"] is None and "3 candidates" in tuned["accounting"]
    assert tuned["adjacency"] == "replace-one" and "replace-one" in tuned["accounting"]


def test_a_patients_images_are_covered_by_group_privacy_of_the_composed_epsilon():
    tuned = tuning_privacy([_dp_sgd(k=3), _dp_sgd(k=3)])
    assert tuned["epsilon_per_patient"] == pytest.approx(3 * tuned["epsilon"])
    assert tuned["delta_per_patient"] > 3 * DELTA


def test_one_shared_input_noise_release_is_free_to_tune_on_and_distinct_ones_add_up():
    shared = tuning_privacy([_laplace(), _laplace(), _laplace()])
    assert shared["epsilon_per_image"] == 784.0 and "post-processing" in shared["accounting"]
    distinct = tuning_privacy([_laplace("abc"), _laplace("xyz")])
    assert distinct["epsilon_per_image"] == 2 * 784.0
    assert distinct["epsilon_per_pixel"] == pytest.approx(2.0)
    assert distinct["epsilon_per_patient"] == 4 * 784.0


def test_one_candidate_keeps_its_whole_guarantee_patients_included():
    for alone in (
        _dp_sgd(k=3) | {"epsilon_per_patient": 9.0, "delta_per_patient": 0.1},
        _laplace(),
    ):
        tuned = tuning_privacy([alone])
        for key in ("epsilon_per_image", "epsilon_per_patient", "delta", "delta_per_patient"):
            assert tuned.get(key) == alone.get(key)


def test_no_noise_in_any_candidate_means_no_guarantee():
    none = {"mechanism": "none", "unit": "image", "epsilon": None, "delta": 0.0}
    tuned = tuning_privacy([_dp_sgd(), none | {"epsilon_per_image": None}])
    assert tuned["epsilon"] is None and tuned["epsilon_per_image"] is None


def test_a_void_candidate_voids_the_tuned_guarantee():
    void = _laplace("xyz") | {"guarantee_holds": False}
    assert tuning_privacy([_laplace(), void])["guarantee_holds"] is False
