"""Reconstruction attack on an input-noise release: denoise it as well as one can.

The attacker sees the released images and the public noise setting (its standard
deviation) and tries every denoiser it has: the free post-processing steps, non-local
means tuned to the noise, and a per-pixel Wiener filter (linear minimum-mean-square-error
shrinkage towards the release's own mean, with the known noise variance). Each guess is
clipped to [0, 1] and scored against the clean originals by PSNR (dB) and SSIM; the best
guess by PSNR is reported. Choosing it with the originals makes the attacker stronger
than a real one, so the numbers err towards showing too much, never too little.

As a yardstick, `population_mean` scores the mean clean image as a guess for every image:
an attack no better than that has learnt nothing about the individual image.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from dpmed.privacy.postprocess import parse_postprocess, postprocess

Denoiser = Callable[[np.ndarray, float], np.ndarray]
DENOISERS = ("none", "pool2", "pool4", "blur1", "blur2", "median3", "nlm", "wiener", "wiener,blur1")


def wiener(released: np.ndarray, noise_std: float) -> np.ndarray:
    """Per-pixel linear MMSE estimate from the release's mean and variance over images."""
    if noise_std == 0:
        return released
    mean = released.mean(axis=0)
    signal_var = np.maximum(released.var(axis=0) - noise_std**2, 0.0)
    return mean + signal_var / (signal_var + noise_std**2) * (released - mean)


def denoise(released: np.ndarray, name: str, noise_std: float) -> np.ndarray:
    """The attacker's guess with denoiser `name` (steps as in post-processing, `wiener`
    first where named), clipped to [0, 1]."""
    work = released.astype(np.float32)
    steps = name.split(",")
    if steps[0] == "wiener":
        work, steps = wiener(work, noise_std).astype(np.float32), steps[1:]
    if steps and steps != ["none"]:
        work = postprocess(work, parse_postprocess(",".join(steps)), noise_std=noise_std)
    return np.clip(work.astype(np.float32), 0.0, 1.0)


def image_scores(clean: np.ndarray, guess: np.ndarray) -> dict[str, float]:
    """Mean PSNR (dB) and SSIM over images; clean and guess in [0, 1]."""
    psnr = [
        peak_signal_noise_ratio(c, g, data_range=1.0) for c, g in zip(clean, guess, strict=True)
    ]
    ssim = [structural_similarity(c, g, data_range=1.0) for c, g in zip(clean, guess, strict=True)]
    return {"psnr": float(np.mean(psnr)), "ssim": float(np.mean(ssim))}


def reconstruction_attack(
    clean: np.ndarray, released: np.ndarray, *, noise_std: float
) -> dict[str, object]:
    """Score every denoiser on `released` against `clean` (uint8, (N, H, W)).

    Returns the scores per denoiser, the best denoiser by PSNR with its scores, and the
    population-mean yardstick.
    """
    truth = clean.astype(np.float32) / 255
    size = clean.shape[1]
    usable = [d for d in DENOISERS if not d.startswith("pool") or size % int(d[4:]) == 0]
    scores = {name: image_scores(truth, denoise(released, name, noise_std)) for name in usable}
    best = max(scores, key=lambda name: scores[name]["psnr"])
    mean_guess = np.broadcast_to(truth.mean(axis=0), truth.shape)
    return {
        "denoisers": scores,
        "best": best,
        **scores[best],
        "population_mean": image_scores(truth, mean_guess),
    }
