"""Laplace vs Gaussian vs DP-Pix at equal epsilon per image, with and without free
post-processing, and what a reconstruction attacker recovers from each release.

PneumoniaMNIST (28 x 28, official split), small CNN from random init, the noise calibrated
to each target epsilon per image (Gaussian with delta = 1e-5), released once per split
and setting; the best epoch is chosen on the (noisy) validation split. Every run is a
normal dpmed run folder under --out, reused when its config is unchanged (resumable).
The attack (`dpmed.audit.reconstruction_attack`) denoises the first --attack-images
released training images as well as it can and scores PSNR / SSIM against the originals.

    python benchmarks/input_mechanisms_sweep.py [--seeds 0 1] [--epochs 3]
        [--out runs/input-mechanisms] [--results benchmarks/results]

All these epsilons are weak guarantees: epsilon = 100 per image bounds the likelihood
ratio of any inference about one image by e^100.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from dpmed.audit import reconstruction_attack
from dpmed.bench.driver import DB_NAME, run_sweep
from dpmed.bench.executors import make_executor
from dpmed.bench.store import ResultsStore
from dpmed.bench.sweep import Sweep
from dpmed.config import RunConfig
from dpmed.data import load_dataset
from dpmed.privacy import released_split
from dpmed.progress import quiet

EPSILONS = [100, 300, 1000, 3000]
POSTPROCESS = "blur2"  # fixed before the sweep: one Gaussian blur, sigma = 2 pixels
MECHANISMS = {  # label -> settings of the technique
    "laplace": {"technique": "laplace"},
    "gaussian": {"technique": "gaussian", "delta": 1e-5},
    "dppix-cell4": {"technique": "dppix", "cell_size": 4},
}
BASE = {
    "dataset": "pneumoniamnist",
    "model": "small-cnn",
    "lr": 0.003,
    "batch_size": 64,
    "balanced_loss": True,
}


def sweep(name: str, base: dict, grid: dict, out: Path) -> dict[str, dict]:
    """Run one grid through the bench engine (resumable) and return its summaries by name."""
    runs = Sweep.from_mapping({"base": base, "grid": grid}, name=name).runs()
    run_sweep(runs, out, make_executor("local", jobs=1, threads=None), jobs=1)
    store = ResultsStore(out / DB_NAME)
    summaries = {f"{name}-{r['name']}": r["summary"] for r in store.finished_runs()}
    store.close()
    return summaries


def run_grid(args: argparse.Namespace) -> dict[str, dict]:
    """Every run's summary, by run name: no noise, then each mechanism's grid."""
    base = BASE | {"epochs": args.epochs}
    summaries = sweep("none", base, {"seed": args.seeds}, args.out / "none")
    for label, settings in MECHANISMS.items():
        grid = {"target_epsilon": EPSILONS, "postprocess": [None, POSTPROCESS], "seed": args.seeds}
        summaries |= sweep(label, base | settings, grid, args.out / label)
    return summaries


def attack(summaries: dict[str, dict], n_images: int, seed: int) -> dict[str, dict]:
    """The reconstruction attack on the train release of every (mechanism, epsilon)."""
    clean = load_dataset("pneumoniamnist", image_size=28).splits["train"].images
    results = {}
    for label, settings in MECHANISMS.items():
        for epsilon in EPSILONS:
            summary = next(
                s
                for s in summaries.values()
                if s["privacy"]["mechanism"] == label
                and s["privacy"]["target_epsilon"] == epsilon
                and s["seed"] == seed
            )
            config = RunConfig.from_mapping(BASE | settings | {"target_epsilon": epsilon})
            mechanism = config.input_mechanism()
            scale = summary["privacy"]["noise_scale"]
            released, sha = released_split(
                clean,
                mechanism,
                noise_scale=scale,
                seed=summary["seed"],
                dataset="pneumoniamnist",
                split="train",
            )
            assert sha == summary["privacy"]["release_sha256"]["train"]  # the trained-on copy
            results[f"{label}@{epsilon}"] = reconstruction_attack(
                clean[:n_images], released[:n_images], noise_std=mechanism.noise_std(scale)
            )
    return results


def _cell(values: list[float], scale: float = 100, digits: int = 1) -> str:
    mean = scale * float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {scale * float(np.std(values)):.{digits}f}"


def table(summaries: dict[str, dict], attacks: dict[str, dict]) -> str:
    def runs(label: str, epsilon: float | None, post: list[str]) -> list[dict]:
        return [
            s
            for s in summaries.values()
            if s["privacy"]["mechanism"] == label
            and s["privacy"]["target_epsilon"] == epsilon
            and s["privacy"]["postprocess"] == post
        ]

    head = (
        "| mechanism | epsilon / image | noise scale | noise std / pixel | test acc % "
        f"| test acc % + {POSTPROCESS} | test AUC | test AUC + {POSTPROCESS} "
        "| attack PSNR dB | attack SSIM | best denoiser |"
    )
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    base = runs("none", None, [])
    mean_guess = next(iter(attacks.values()))["population_mean"]
    rows.append(
        f"| none | inf | 0 | 0 | {_cell([s['test']['accuracy'] for s in base])} | | "
        f"{_cell([s['test']['roc_auc'] for s in base], 1, 3)} | | "
        f"mean image: {mean_guess['psnr']:.1f} | {mean_guess['ssim']:.3f} | (no release) |"
    )
    for label in MECHANISMS:
        for epsilon in EPSILONS:
            plain, post = runs(label, epsilon, []), runs(label, epsilon, [POSTPROCESS])
            hit = attacks[f"{label}@{epsilon}"]
            privacy = plain[0]["privacy"]
            rows.append(
                f"| {label} | {epsilon:,} | {privacy['noise_scale']:.3g} | "
                f"{privacy['noise_std']:.3g} | "
                f"{_cell([s['test']['accuracy'] for s in plain])} | "
                f"{_cell([s['test']['accuracy'] for s in post])} | "
                f"{_cell([s['test']['roc_auc'] for s in plain], 1, 3)} | "
                f"{_cell([s['test']['roc_auc'] for s in post], 1, 3)} | "
                f"{hit['psnr']:.1f} | {hit['ssim']:.3f} | {hit['best']} |"
            )
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--attack-images", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=Path("runs/input-mechanisms"))
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args()
    quiet()
    summaries = run_grid(args)
    attacks = attack(summaries, args.attack_images, args.seeds[0])
    text = table(summaries, attacks)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / "input_mechanisms_sweep.md").write_text(text)
    record = {
        "settings": BASE | {"epochs": args.epochs, "seeds": args.seeds},
        "epsilons_per_image": EPSILONS,
        "postprocess": POSTPROCESS,
        "runs": {
            name: {k: s[k] for k in ("seed", "best_epoch", "val", "test", "privacy")}
            for name, s in summaries.items()
        },
        "attack": attacks,
    }
    (args.results / "input_mechanisms_sweep.json").write_text(json.dumps(record, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
