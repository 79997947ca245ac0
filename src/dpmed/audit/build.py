"""`dpmed audit FOLDER`: how much each setting's trained models leak, next to its epsilon.

For every setting of a finished sweep (or one run folder), `models` audit runs train with
the setting's exact config on random halves of its training split (`audit_seed` 0, 1, ...;
dpmed.audit.game), as sweep runs in `FOLDER/audit` (resumable, `--jobs`, Ray). Each scores
the whole pool. Then each model in turn is the target and the others its references:

- LOSS (Yeom et al. 2018): the target's confidence in the image's label;
- LiRA (Carlini et al. 2022, online, shared variance): the target's confidence against
  Gaussians fitted to the references' with the image in and out;
- one run (Steinke et al. 2023): audit model 0's confidence in its canaries (flipped
  labels), a quarter guessed in and a quarter out, no reference models.

The game is add/remove: an image is in the training set or not. DP-SGD's add/remove epsilon
is at most the replace-one epsilon dpmed states, so an empirical bound above the stated
epsilon is a bug somewhere; the audit says so and exits 1 (for input noise, where the game
also reveals the training set's size, see AUDIT_NOTES).

The audit itself is not private: its scores are computed from the clean pool images and
labels. Keep `FOLDER/audit` with the data; publish its tables, not its files.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import roc_curve

from dpmed.audit.game import audit_draw
from dpmed.audit.membership import empirical_epsilon, lira_scores, one_run_epsilon, roc_summary
from dpmed.bench.driver import DB_NAME
from dpmed.bench.store import ResultsStore
from dpmed.bench.sweep import PlannedRun, plan_run
from dpmed.config import RunConfig, load_yaml
from dpmed.errors import ConfigError, DataError
from dpmed.report.tables import group_runs, setting_label, varying_settings
from dpmed.run import AUDIT_SCORES, SUMMARY, plan_images

AUDIT_FOLDER = "audit"
CONFIDENCE = 0.95
ROC_FPR = np.logspace(-4, 0, 41)  # where each ROC is kept, for the log-log figure


@dataclass(frozen=True)
class Setting:
    label: str
    runs: list[PlannedRun]  # its audit runs, audit_seed 0, 1, ...


def plan_audit(
    folder: Path, *, models: int, canaries: int, data_root: str | None = None
) -> list[Setting]:
    """The audit runs of every setting in `folder` (a sweep's, or one run's)."""
    if models < 2:
        raise ConfigError(f"--models must be >= 2 (a target and a reference), got {models}")
    settings = []
    for label, config in _audited_configs(folder):
        if config.is_table:
            raise ConfigError(f"{label}: the audit is for image data sets, not {config.dataset}")
        if data_root:
            config = config.replace(data_root=data_root)
        audit_draw(plan_images(config), audit_seed=0, canaries=canaries)  # refuses too many, now
        runs = [
            plan_run(config.replace(audit_seed=i, canaries=canaries), f"{label}, audit model {i}")
            for i in range(models)
        ]
        settings.append(Setting(label, runs))
    return settings


def _audited_configs(folder: Path) -> list[tuple[str, RunConfig]]:
    """Per setting of a sweep folder its first seed's config; a run folder's config. That
    file holds the calibrated noise (DP-SGD's noise multiplier, not the target): its audit
    models, on half the images, spend more epsilon than the run did, and each audit model
    is compared with the epsilon it spent itself."""
    if (folder / DB_NAME).is_file():
        store = ResultsStore(folder / DB_NAME, read_only=True)
        runs = store.finished_runs()
        store.close()
        if not runs:
            raise DataError(f"{folder / DB_NAME} has no finished runs to audit; run the sweep")
        varying = varying_settings(runs)
        firsts = [min(g.runs, key=lambda r: r["config"]["seed"]) for g in group_runs(runs)]
        return [(_label(r["config"], varying), _config(r["config"])) for r in firsts]
    if (folder / SUMMARY).is_file() and (folder / "config.yaml").is_file():
        summary = json.loads((folder / SUMMARY).read_text())
        label = f"{summary['technique']} ({folder.name})"
        return [(label, _config(load_yaml(folder / "config.yaml")))]
    raise ConfigError(
        f"{folder} is neither a sweep folder (with {DB_NAME}) nor a run folder (with "
        f"{SUMMARY}); give the --out of a finished dpmed bench or dpmed run"
    )


def _label(config: dict[str, Any], varying: list[str]) -> str:
    """The setting's name: the settings that vary, those at their empty value left out."""
    shown = [k for k in varying if k == "technique" or config[k] not in (None, 0, False)]
    return setting_label(config, shown or ["technique"])


def _config(values: dict[str, Any]) -> RunConfig:
    return RunConfig.from_mapping(values | {"audit_seed": None, "canaries": 0}, source="audit")


def analyse(settings: list[Setting], out: Path) -> list[dict[str, Any]]:
    """Each setting's attacks, from the finished audit runs in `out` (FOLDER/audit)."""
    store = ResultsStore(out / DB_NAME, read_only=True)
    finished = {r["id"]: r["summary"] for r in store.finished_runs()}
    store.close()
    return [
        _analyse(s, {r.id: finished[r.id] for r in s.runs if r.id in finished}, out)
        for s in settings
    ]


def _analyse(setting: Setting, summaries: dict[str, dict], out: Path) -> dict[str, Any]:
    runs = [r for r in setting.runs if r.id in summaries]
    if len(runs) < 2:
        raise DataError(
            f"{setting.label}: {len(runs)} audit model(s) finished, at least 2 needed; "
            "run the audit again (--retry-failed reruns failed ones)"
        )
    scores = [np.load(out / "runs" / r.id / AUDIT_SCORES) for r in runs]
    confidence = np.stack([s["confidence"] for s in scores])
    members = np.stack([s["members"] for s in scores])
    canaries = scores[0]["canaries"]
    patients = scores[0]["patients"] if "patients" in scores[0].files else None
    unit = "image" if patients is None else "patient"
    privacy = [summaries[r.id]["privacy"] for r in runs]
    epsilon = max(_stated(p, unit) for p in privacy)
    delta = max((p.get(f"delta_per_{unit}") or p["delta"] or 0.0) for p in privacy)
    lira = [
        lira_scores(confidence[i], np.delete(confidence, i, 0), np.delete(members, i, 0))
        for i in range(len(runs))
    ]
    # per image, or per patient: the mean confidence, the sum of log-likelihood ratios
    keep = ~canaries
    attacks = {
        "loss": _per_unit(confidence, patients, keep, np.mean),
        "lira": _per_unit(np.stack(lira), patients, keep, np.sum),
    }
    truth = _per_unit(members.astype(float), patients, keep, np.mean).ravel() > 0.5
    result = {
        "setting": setting.label,
        "technique": runs[0].config.technique,
        "models": len(runs),
        "epsilon": epsilon,
        "delta": delta,
        "unit": unit,
        "test_accuracy": float(np.mean([summaries[r.id]["test"]["accuracy"] for r in runs])),
        "trials": len(truth),
    }
    for name, attack in attacks.items():
        chosen = attack.ravel()
        bound = empirical_epsilon(chosen, truth, delta=delta, confidence=CONFIDENCE)
        fpr, tpr, _ = roc_curve(truth, chosen)
        result[name] = roc_summary(chosen, truth) | {
            "epsilon_lower_bound": bound["epsilon_lower_bound"],
            "roc_tpr": np.interp(ROC_FPR, fpr, tpr).round(5).tolist(),
        }
    if canaries.any():
        result["one_run"] = _one_run(confidence[0, canaries], members[0, canaries], delta)
    bounds = [result[a]["epsilon_lower_bound"] for a in (*attacks, "one_run") if a in result]
    result["exceeds_theory"] = max(bounds) > epsilon
    if math.isinf(epsilon):
        result["epsilon"] = None  # no guarantee (JSON has no infinity)
    return result


def _stated(privacy: dict[str, Any], unit: str) -> float:
    """The stated epsilon per `unit` (inf without a guarantee or where it is unknown)."""
    value = privacy["epsilon"] if unit == "image" else privacy.get("epsilon_per_patient")
    return math.inf if value is None or privacy["epsilon"] is None else value


def _per_unit(values: np.ndarray, patients: np.ndarray | None, keep: np.ndarray, reduce):
    """(models, images) scores of the kept images, or per patient their `reduce`."""
    if patients is None:
        return values[:, keep]
    codes = patients[keep]
    order = np.argsort(codes, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(codes[order]) != 0])
    return np.stack(
        [[reduce(part) for part in np.split(v[keep][order], starts[1:])] for v in values]
    )


def _one_run(scores: np.ndarray, members: np.ndarray, delta: float) -> dict[str, Any]:
    """Guess the quarter of canaries the model is most confident in as members and the
    quarter it is least confident in as non-members (a rule fixed in advance)."""
    m = len(scores)
    k = m // 4
    order = np.argsort(scores)
    correct = int(members[order[-k:]].sum() + (~members[order[:k]]).sum()) if k else 0
    return {
        "canaries": m,
        "guesses": 2 * k,
        "correct": correct,
        "epsilon_lower_bound": one_run_epsilon(
            m, 2 * k, correct, delta=delta, confidence=CONFIDENCE
        )
        if k
        else 0.0,
    }


def write_audit(results: list[dict[str, Any]], out: Path) -> list[Path]:
    """audit.json, audit.md and the figures in `out`; the paths written."""
    from dpmed.report.plots import audit_figures

    (out / "audit.json").write_text(
        json.dumps({"roc_fpr": ROC_FPR.round(6).tolist(), "settings": results}, indent=2) + "\n"
    )
    (out / "audit.md").write_text(audit_markdown(results))
    return [out / "audit.json", out / "audit.md", *audit_figures(results, ROC_FPR, out)]


def audit_markdown(results: list[dict[str, Any]]) -> str:
    """The audit table and what it means."""
    from dpmed.report.tables import markdown

    notes = AUDIT_NOTES.format(confidence=f"{100 * CONFIDENCE:g}%")
    return "# Membership audit\n\n" + markdown(audit_table(results)) + "\n\n" + notes


def audit_table(results: list[dict[str, Any]]) -> list[list[str]]:
    """One row per audited setting: stated epsilon, accuracy, attacks, empirical bounds."""
    from dpmed.report.plots import ATTACKS

    rows = [
        [
            "setting",
            "models",
            "stated epsilon",
            "test accuracy",
            "LOSS AUC",
            "LiRA AUC",
            "LiRA TPR at 1% / 0.1% FPR",
            "empirical epsilon: LOSS / LiRA / one run",
        ]
    ]
    for r in results:
        bug = " **(exceeds the stated epsilon: a bug)**" if r["exceeds_theory"] else ""
        stated = "none" if r["epsilon"] is None else f"{r['epsilon']:.3g} per {r['unit']}"
        stated += f", delta {r['delta']:.2g}" if r["epsilon"] is not None and r["delta"] else ""
        lira = r["lira"]
        bounds = [r[a]["epsilon_lower_bound"] if a in r else None for a in ATTACKS]
        rows.append(
            [
                r["setting"] + bug,
                str(r["models"]),
                stated,
                f"{100 * r['test_accuracy']:.1f}%",
                f"{r['loss']['auc']:.3f}",
                f"{lira['auc']:.3f}",
                f"{100 * lira['tpr_at_1pct_fpr']:.2f}% / {100 * lira['tpr_at_0.1pct_fpr']:.2f}%",
                " / ".join("-" if b is None else f"{b:.2f}" for b in bounds),
            ]
        )
    return rows


AUDIT_NOTES = """\
The game: each training image is a member with probability 1/2 (a public draw per audit
model); a model is trained on the members with the setting's exact settings, and the
attacker, who holds every candidate image and its label and the model, guesses membership.
Each audit model in turn is the target and the others are its references. LOSS ranks by the
target's confidence (the logit of its probability of the true label); LiRA (online, shared
variance) compares that confidence with the references' with the image in and out. AUC 0.5
and TPR = FPR are chance.

Empirical epsilon: a lower bound at {confidence} confidence from the attack's TPR and FPR at
one threshold (Clopper-Pearson, the threshold chosen on a random half of the guesses and
judged on the other). The LOSS and LiRA counts pool every model and image, treated as
independent trials as in multi-model audits; the one-run bound (Steinke et al. 2023) uses
audit model 0 alone: its canaries (images with flipped labels), the quarter it is most
confident in guessed in, the least confident quarter out. These bounds are for add/remove
adjacency; DP-SGD's add/remove epsilon is at most its stated replace-one epsilon, so no
bound may exceed it. An input-noise release states epsilon per image under replace-one;
adding or removing an image also changes the training set's size by one, which a release
does not hide, so there the comparison is a guide rather than a test.

The audit is not private: its scores are computed from the clean training images. Keep
its folder with the data.
"""
