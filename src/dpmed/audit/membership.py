"""Membership inference and the epsilon it proves: what a trained model leaks in practice.

An attack gives every candidate image a score (higher: more likely a member). From the
scores of known members and non-members come the attack's ROC and a *lower bound* on the
epsilon of whatever produced the model (Jagielski et al. 2020, Nasr et al. 2021): an
(epsilon, delta)-DP training makes TPR <= e^epsilon FPR + delta at every threshold, so a
confident TPR and FPR at one threshold bound epsilon from below. The bound must never
exceed the theoretical epsilon; if it does, the implementation or the accounting is wrong.

Attacks: LOSS (Yeom et al. 2018: the target's confidence alone) and LiRA (Carlini et al.
2022, online: a Gaussian fit of reference models' confidence on the image with it in and
with it out). `one_run_epsilon` is the canary bound of Steinke, Nasr & Jagielski 2023
("privacy auditing with one (1) training run").
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats
from sklearn.metrics import roc_auc_score, roc_curve


def clopper_pearson(successes: int, trials: int, confidence: float) -> tuple[float, float]:
    """Exact two-sided binomial interval for a rate at `confidence` (0.95: 95%).

    >>> low, high = clopper_pearson(5, 10, 0.95)
    >>> round(low, 4), round(high, 4)
    (0.1871, 0.8129)
    """
    alpha = 1 - confidence
    low = stats.beta.ppf(alpha / 2, successes, trials - successes + 1) if successes else 0.0
    high = (
        stats.beta.ppf(1 - alpha / 2, successes + 1, trials - successes)
        if successes < trials
        else 1.0
    )
    return float(low), float(high)


def confidence_of_true_label(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The logit of the model's probability of each image's own label, log(p / (1 - p)):
    the statistic LiRA fits Gaussians to (nearly normal across models, unlike p)."""
    p = np.where(labels == 1, probs, 1 - probs).astype(np.float64)
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return np.log(p) - np.log1p(-p)


def lira_scores(target: np.ndarray, reference: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Online LiRA: per image, log N(target | in-fit) - log N(target | out-fit), the fits the
    mean and a shared sd of the reference models' confidences with the image in (`members`
    True) and out. target (N,), reference and members (R, N). An image without an in or
    an out reference falls back to the out (in) mean and the global sd."""
    in_mean = _masked_mean(reference, members)
    out_mean = _masked_mean(reference, ~members)
    sd = _shared_sd(reference, members, in_mean, out_mean)
    global_mean = np.nanmean(reference)
    in_mean = np.where(np.isnan(in_mean), global_mean, in_mean)
    out_mean = np.where(np.isnan(out_mean), global_mean, out_mean)
    return stats.norm.logpdf(target, in_mean, sd) - stats.norm.logpdf(target, out_mean, sd)


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    counts = mask.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, (values * mask).sum(axis=0) / counts, np.nan)


def _shared_sd(reference, members, in_mean, out_mean) -> float:
    """One sd for all images (Carlini et al.'s "fixed variance", stable with few models)."""
    residual = np.where(members, reference - in_mean, reference - out_mean)
    residual = residual[~np.isnan(residual)]
    return max(float(residual.std()), 1e-6) if residual.size > 1 else 1.0


def roc_summary(scores: np.ndarray, members: np.ndarray) -> dict[str, float]:
    """Attack ROC-AUC and TPR at 1% and 0.1% FPR (the low-FPR regime that matters)."""
    fpr, tpr, _ = roc_curve(members, scores)
    return {
        "auc": float(roc_auc_score(members, scores)),
        "tpr_at_1pct_fpr": float(np.interp(0.01, fpr, tpr)),
        "tpr_at_0.1pct_fpr": float(np.interp(0.001, fpr, tpr)),
    }


def empirical_epsilon(
    scores: np.ndarray,
    members: np.ndarray,
    *,
    delta: float = 0.0,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """A lower bound on epsilon that holds with probability `confidence`.

    The scores are split in two at random (`seed`): the threshold that gives the largest
    point estimate is chosen on the first half and judged on the second, so the choice
    does not inflate the bound. There, Clopper-Pearson intervals (each at confidence
    1 - (1 - confidence) / 2, so both hold together) give a low TPR and a high FPR, and
    epsilon >= max(log((TPR_low - delta) / FPR_high), log((TNR_low - delta) / FNR_high)).
    Returns the bound (0 when nothing is proved), the threshold and the held-out counts.
    """
    members = np.asarray(members, dtype=bool)
    order = np.random.default_rng(seed).permutation(len(scores))
    choose, judge = order[: len(order) // 2], order[len(order) // 2 :]
    each = 1 - (1 - confidence) / 2
    cuts = np.unique(scores[choose])
    if len(cuts) > _MAX_CUTS:
        cuts = np.quantile(scores[choose], np.linspace(0, 1, _MAX_CUTS))
    threshold = max(
        cuts, key=lambda c: _bound(scores[choose] >= c, members[choose], delta, each)[0]
    )
    bound, counts = _bound(scores[judge] >= threshold, members[judge], delta, each)
    return {
        "epsilon_lower_bound": bound,
        "confidence": confidence,
        "delta": delta,
        "threshold": float(threshold),
        **counts,
    }


_MAX_CUTS = 200  # thresholds tried on the choosing half


def _bound(guess: np.ndarray, truth: np.ndarray, delta: float, each: float):
    """The Clopper-Pearson bound of one threshold's guesses, and its counts."""
    n_in, n_out = int(truth.sum()), int((~truth).sum())
    tp, fp = int((guess & truth).sum()), int((guess & ~truth).sum())
    tpr_low, _ = clopper_pearson(tp, n_in, each)
    _, fpr_high = clopper_pearson(fp, n_out, each)
    tnr_low, _ = clopper_pearson(n_out - fp, n_out, each)
    _, fnr_high = clopper_pearson(n_in - tp, n_in, each)
    bound = max(_log_ratio(tpr_low - delta, fpr_high), _log_ratio(tnr_low - delta, fnr_high))
    counts = {
        "true_positives": tp,
        "members_judged": n_in,
        "false_positives": fp,
        "non_members_judged": n_out,
    }
    return bound, counts


def _log_ratio(numerator: float, denominator: float) -> float:
    """log(numerator / denominator), 0 when it proves nothing (the upper Clopper-Pearson
    end of a rate is never 0)."""
    return math.log(numerator / denominator) if numerator > denominator else 0.0


def one_run_p_value(m: int, guesses: int, correct: int, epsilon: float, delta: float) -> float:
    """Steinke et al. 2023 (their Theorem 5.2 and appendix code): the probability, under
    (epsilon, delta)-DP, of at least `correct` right guesses among `guesses` about m
    canaries each included with probability 1/2."""
    q = 1 / (1 + math.exp(-epsilon))  # the accuracy of epsilon-DP randomised response
    tail = stats.binom.sf(correct - 1, guesses, q)
    worst, below = 0.0, 0.0
    for i in range(1, correct + 1):
        below += stats.binom.pmf(correct - i, guesses, q)
        worst = max(worst, below / i)
    return min(1.0, float(tail + 2 * m * delta * worst))


def one_run_epsilon(
    m: int, guesses: int, correct: int, *, delta: float = 0.0, confidence: float = 0.95
) -> float:
    """The largest epsilon that `correct` of `guesses` right rejects at `confidence`: the
    one-run lower bound (0 when no epsilon is rejected).

    >>> one_run_epsilon(1000, 100, 50)  # coin flips prove nothing
    0.0
    >>> round(one_run_epsilon(1000, 100, 90), 2)
    1.63
    """
    alpha = 1 - confidence
    if one_run_p_value(m, guesses, correct, 0.0, delta) >= alpha:
        return 0.0
    low, high = 0.0, 1.0
    while one_run_p_value(m, guesses, correct, high, delta) < alpha:
        low, high = high, 2 * high
    for _ in range(40):
        mid = (low + high) / 2
        low, high = (
            (mid, high) if one_run_p_value(m, guesses, correct, mid, delta) < alpha else (low, mid)
        )
    return low
