"""Restate published DP-SGD epsilons under replace-one adjacency, without retraining.

Runs before the replace-one accountant were calibrated with Opacus's PRV accountant
(add/remove). Their noise multiplier is recomputed from the stated settings as Opacus
calibrated it then (target epsilon, N training images, batch, epochs, delta = 1/N^1.1,
tolerance 1% of the target); the replace-one epsilon is what that same noise spends
(dpmed.privacy.dpsgd_accounting), for one run or for several runs on the same images
composed (a learning rate chosen on validation among candidates).

    PYTHONPATH=src .venv/bin/python benchmarks/restate_epsilons.py
"""

from __future__ import annotations

import warnings

from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier

from dpmed.privacy.dpsgd import default_delta, steps_for
from dpmed.privacy.dpsgd_accounting import composed_epsilon

warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")

PNEUMONIAMNIST_TRAIN = 4708
# Kermany train less the patient-grouped validation split (10%) of seeds 0, 1, 2
KERMANY_TRAIN = {0: 4693, 1: 4689, 2: 4693}


def old_run(
    *, target_epsilon: float, n_train: int, batch_size: int = 256, epochs: int = 5
) -> tuple[float, float, int]:
    """(noise multiplier, sample rate, steps) as the add/remove PRV calibration chose them."""
    sample_rate = batch_size / n_train
    steps = steps_for(epochs, sample_rate)
    sigma = get_noise_multiplier(
        target_epsilon=target_epsilon,
        target_delta=default_delta(n_train),
        sample_rate=sample_rate,
        steps=steps,
        accountant="prv",
        epsilon_tolerance=0.01 * target_epsilon,
    )
    return sigma, sample_rate, steps


def add_remove_epsilon(runs: list[tuple[float, float, int]], n_train: int) -> float:
    """What Opacus's PRV accountant (add/remove) reported for `runs` composed."""
    accountant = create_accountant(mechanism="prv")
    accountant.history = list(runs)
    return float(accountant.get_epsilon(delta=default_delta(n_train)))


def restate(runs: list[tuple[float, float, int]], n_train: int) -> tuple[float, float]:
    """(add/remove epsilon as published, replace-one epsilon) of `runs` composed."""
    delta = default_delta(n_train)
    return add_remove_epsilon(runs, n_train), composed_epsilon(runs, delta=delta)


def main() -> None:
    n = PNEUMONIAMNIST_TRAIN
    print(f"PneumoniaMNIST, N = {n}, batch 256, 5 epochs (frontier, scatternet, small CNN)")
    one = {t: old_run(target_epsilon=t, n_train=n) for t in (0.5, 1, 2, 4, 8)}
    for target, run in one.items():
        before, after = restate([run], n)
        print(
            f"  target {target}: sigma {run[0]:.4f}, q {run[1]:.5f}, {run[2]} steps: "
            f"add/remove {before:.4f} -> replace-one {after:.4f} ({after / before:.2f}x)"
        )
    print("PneumoniaMNIST, target 2, 2 epochs (augmult)")
    run = old_run(target_epsilon=2, n_train=n, epochs=2)
    before, after = restate([run], n)
    print(f"  sigma {run[0]:.4f}, {run[2]} steps: add/remove {before:.4f} -> {after:.4f}")
    print("Learning rate chosen among 3 candidates on the same images (+ the run itself when")
    print("its seed was not the tuning seed): composed")
    for target in (1, 4):
        for runs in (3, 4):
            before, after = restate([one[target]] * runs, n)
            print(f"  target {target}, {runs} runs: add/remove {before:.4f} -> {after:.4f}")
    print("ScatterNet + CNN head: lr tuned at epsilon 1, used at epsilon 4 (3 + 1 runs)")
    for seed_runs in (0, 1):
        runs = [one[1]] * 3 + [one[4]] * seed_runs
        before, after = restate(runs, n)
        print(f"  3 x eps-1 + {seed_runs} x eps-4: add/remove {before:.4f} -> {after:.4f}")
    print("Breast cancer, N 409, batch 64, 30 epochs (tabular, DP-SGD on the MLP)")
    for target in (1, 4):
        before, after = restate(
            [old_run(target_epsilon=target, n_train=409, batch_size=64, epochs=30)], 409
        )
        print(f"  target {target}: add/remove {before:.4f} -> replace-one {after:.4f}")
    print("Kermany 64x64, batch 256, 5 epochs (frontier-kermany until 2026-12-06), per seed")
    for target in (0.5, 1, 2, 4, 8):
        line = []
        for seed, n_seed in KERMANY_TRAIN.items():
            before, after = restate([old_run(target_epsilon=target, n_train=n_seed)], n_seed)
            line.append(f"seed {seed} (N {n_seed}): {before:.4f} -> {after:.4f}")
        print(f"  target {target}: " + "; ".join(line))


if __name__ == "__main__":
    main()
