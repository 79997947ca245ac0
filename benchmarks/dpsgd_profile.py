"""Where a DP-SGD step's time goes: torch.profiler over training steps of one model, DP-SGD
against non-private, in the same process (the first step of each is left out as warm-up).

    python benchmarks/dpsgd_profile.py [--model small-cnn] [--mode ew] [--steps 20]

Writes benchmarks/results/dpsgd_profile_<model>_<mode>.json: per run the wall time per
step, and the operators with the most self CPU time, with their share of it. For a model
with a fixed stage (ScatterNet) the head's steps, on features computed once, as in
training. DP-SGD's noise is drawn by numpy, not by torch ops: it is the self time of
`dpmed::gaussian_noise`. `outside_ops_ms_per_step` is the wall time per step that no
operator's self time covers (Python: hooks, Opacus's and dpmed's bookkeeping, the loop).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from dpmed.data import load_dataset
from dpmed.models import build_model
from dpmed.privacy.dpsgd import DPSGD
from dpmed.train.loop import _features, _losses, _to_input

TOP = 15


def steps(model_name: str, images: np.ndarray, labels: np.ndarray, *, batch: int, mode, n: int):
    """Profile `n` training steps (after one warm-up): wall s per step, top operators."""
    torch.manual_seed(0)
    model, _ = build_model(model_name, image_size=images.shape[-1])
    if hasattr(model, "frozen"):  # a fixed stage runs once per image, as in training
        images, model = _features(model.frozen, images, torch.device("cpu")), model.head
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trained = model
    dp = None
    if mode:
        dp = DPSGD(
            noise_multiplier=1.0,
            max_grad_norm=1.0,
            sample_rate=batch / len(labels),
            delta=1e-5,
            accountant_name="pld",
            physical_batch_size=batch,
            grad_sample_mode=mode,
        )
        trained, optimizer = dp.wrap(model, optimizer, len(labels))
    rng = np.random.default_rng(0)

    def step() -> None:
        chunk = rng.choice(len(labels), batch, replace=False)
        optimizer.zero_grad(set_to_none=True)
        losses = _losses(
            trained(_to_input(images[chunk], torch.device("cpu"))),
            torch.from_numpy(labels[chunk]),
            None,
        )
        if dp:
            dp.backward(losses)
        else:
            losses.mean().backward()
        optimizer.step()

    step()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(n):
            step()
        seconds = (time.perf_counter() - start) / n
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:TOP]
    return {
        "seconds_per_step": seconds,
        "outside_ops_ms_per_step": 1000 * seconds - total / n / 1000,
        "top_self_cpu": [
            {
                "op": e.key,
                "calls_per_step": e.count / n,
                "ms_per_step": e.self_cpu_time_total / n / 1000,
                "share": e.self_cpu_time_total / total,
            }
            for e in top
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small-cnn")
    parser.add_argument("--mode", default="ew")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--data-root")
    args = parser.parse_args()
    data = load_dataset("pneumoniamnist", image_size=28, data_root=args.data_root)
    train = data.splits["train"]
    images, labels = train.images.astype(np.float32) / 255, train.labels
    common = {"batch": args.batch, "n": args.steps}
    result = {
        "model": args.model,
        "mode": args.mode,
        "batch_size": args.batch,
        "torch_threads": torch.get_num_threads(),
        "load_average_before": round(os.getloadavg()[0], 2),
        "non_private": steps(args.model, images, labels, mode=None, **common),
        "dp_sgd": steps(args.model, images, labels, mode=args.mode, **common),
    }
    result["load_average_after"] = round(os.getloadavg()[0], 2)
    result["slowdown"] = (
        result["dp_sgd"]["seconds_per_step"] / result["non_private"]["seconds_per_step"]
    )
    out = Path(__file__).parent / "results" / f"dpsgd_profile_{args.model}_{args.mode}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"slowdown {result['slowdown']:.2f}x; wrote {out}")
    for run in ("non_private", "dp_sgd"):
        wall = 1000 * result[run]["seconds_per_step"]
        outside = result[run]["outside_ops_ms_per_step"]
        print(run, f"{wall:.1f} ms/step, {outside:.1f} ms of it outside torch's operators")
        for row in result[run]["top_self_cpu"][:10]:
            print(f"  {row['share']:6.1%} {row['ms_per_step']:7.2f} ms {row['op']}")


if __name__ == "__main__":
    main()
