"""The guarantee of a run on a patient table: epsilon per record (one patient's row).

`perturb_table` applies the input techniques (`laplace`, `adaptive-laplace`) and states
their guarantee; `record_privacy` writes any record-level guarantee (input noise,
diffprivlib's models, DP-SGD) as the summary's `privacy` entry. When the feature bounds
were read from the data, the entry says the guarantee does not hold.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dpmed.data.tabular import TableDataset
from dpmed.privacy.feature_noise import private_importance, release_features, split_budget
from dpmed.privacy.guarantee import PrivacyGuarantee

ASSUMPTIONS = (
    "one record is one patient's row; neighbouring tables replace one record",
    "feature bounds are public (set without reading the data); values are clipped to them",
)
LABELS_UNPROTECTED = "labels are released without noise and are not protected"
NO_NOISE = PrivacyGuarantee("none", "record", None, 0.0, "no noise is added")


def record_privacy(
    guarantee: PrivacyGuarantee, dataset: TableDataset, **details: Any
) -> dict[str, Any]:
    """The `privacy` entry of summary.json for a guarantee per record."""
    holds = not dataset.bounds_from_data
    description = guarantee.describe()
    if not holds:
        description = f"NO GUARANTEE: feature bounds were read from the data ({description})"
    return {
        "mechanism": guarantee.mechanism,
        "unit": "record",
        "adjacency": guarantee.adjacency,
        "epsilon": guarantee.epsilon,
        "delta": guarantee.delta,
        "epsilon_per_record": guarantee.epsilon,
        "guarantee_holds": holds,
        **details,
        "accounting": guarantee.accounting,
        "assumptions": list(ASSUMPTIONS + guarantee.assumptions),
        "description": description,
    }


# What diffprivlib 0.6's epsilon means per model (read from its source), as a factor to
# its replace-one epsilon; dpmed fits each model at target / factor:
# - LogisticRegression: objective perturbation (Chaudhuri et al. 2011, the Vector
#   mechanism, noise scale 2 data_norm / eps' for two records' gradients), proved for data
#   sets that differ in one record replaced: replace-one as stated.
# - GaussianNB: geometric noise of sensitivity 1 on each class count, Laplace noise on each
#   class's feature sums and squared deviations: adding or removing a record touches one
#   class (add/remove); replacing it may touch two classes: 2 eps under replace-one.
# - RandomForestClassifier: random splits from public bounds, each leaf's label by
#   permute-and-flip on its class counts (sensitivity 1, monotonic: add/remove); a replaced
#   record moves the counts of two leaves, or two counts of one leaf in opposite
#   directions (not monotonic): 2 eps under replace-one.
REPLACE_ONE_FACTOR = {"LogisticRegression": 1, "GaussianNB": 2, "RandomForestClassifier": 2}


def diffprivlib_guarantee(model: Any) -> PrivacyGuarantee:
    """What a fitted diffprivlib model (last step of a pipeline) spent under replace-one,
    from its BudgetAccountant's epsilon and REPLACE_ONE_FACTOR."""
    model = model[-1]
    epsilon, delta = model.accountant.total()
    factor = REPLACE_ONE_FACTOR[type(model).__name__]
    how = (
        f"; diffprivlib's epsilon {epsilon:.4g} is add/remove, so {factor} x {epsilon:.4g} "
        "under replace-one"
        if factor != 1
        else "; diffprivlib's epsilon is replace-one (objective perturbation)"
    )
    return PrivacyGuarantee(
        mechanism=f"diffprivlib {type(model).__name__}",
        unit="record",
        epsilon=factor * float(epsilon),
        delta=float(delta),
        accounting=f"diffprivlib BudgetAccountant: {len(model.accountant.spent_budget)} "
        f"spend(s), composed{how}",
        assumptions=("the model's own private steps cover every use of the training records",),
    )


def perturb_table(
    dataset: TableDataset,
    technique: str,
    *,
    epsilon: float | None,
    importance_share: float,
    perturb_test: bool,
    clip_after_release: bool,
    seed: int,
) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict[str, Any]]:
    """Per split the features a model sees, and the `privacy` entry. For `laplace` and
    `adaptive-laplace` each record is released once with per-feature Laplace noise; other
    techniques see the clean table (their guarantee comes from training)."""
    clean = {s: (d.features, d.labels) for s, d in dataset.splits.items()}
    identity = {"dataset": dataset.name, "technique": technique, "epsilon": epsilon, "seed": seed}
    if technique not in ("laplace", "adaptive-laplace"):
        return clean, record_privacy(NO_NOISE, dataset)
    n_features = len(dataset.features)
    if technique == "laplace":
        importance_epsilon, importance = 0.0, np.ones(n_features)
        how = f"split equally over the {n_features} features"
    else:
        importance_epsilon = importance_share * epsilon
        train = dataset.splits["train"]
        importance = private_importance(
            train.features, train.labels, epsilon=importance_epsilon, identity=identity
        )
        how = (
            f"split over the features by task importance (|coefficients| of an "
            f"{importance_epsilon:.3g}-DP logistic regression on the training records)"
        )
    budgets = split_budget(epsilon - importance_epsilon, importance)
    released = [s for s in dataset.splits if perturb_test or s != "test"]
    inputs = dict(clean)
    for split in released:
        features = release_features(
            dataset.splits[split].features, budgets, identity=identity | {"split": split}
        )
        inputs[split] = (features.clip(0, 1) if clip_after_release else features, clean[split][1])
    guarantee = PrivacyGuarantee(
        mechanism=technique,
        unit="record",
        epsilon=float(epsilon),
        delta=0.0,
        accounting=f"epsilon {epsilon - importance_epsilon:.4g} of per-feature Laplace noise, "
        f"{how}, composed"
        + (f", plus {importance_epsilon:.4g} for the importance" if importance_epsilon else ""),
        assumptions=(
            LABELS_UNPROTECTED,
            "each record is released once, with noise from secret randomness (operating-system "
            "entropy or a secret noise key), never from the public seed",
        ),
    )
    details = {
        "feature_epsilons": [float(b) for b in budgets],
        "importance_epsilon": importance_epsilon,
        "perturbed_splits": released,
    }
    return inputs, record_privacy(guarantee, dataset, **details)
