"""`dpmed.run.run_experiment` on real data."""

import os
import signal
import subprocess
import sys

import pytest
import yaml

from dpmed.config import RunConfig
from dpmed.run import run_experiment
from tests.bench.helpers import wait_until


def test_augmentation_multiplicity_spends_the_same_epsilon(real_data, tmp_path):
    """A real DP-SGD run with K = 2 augmented copies per image finishes and reports the
    guarantee of K = 1: same noise, sample rate, steps and epsilon per image. K is recorded
    in the run's config.yaml, not in the guarantee, which it does not change."""
    base = RunConfig(
        dataset="pneumoniamnist",
        model="small-cnn",
        technique="dp-sgd",
        target_epsilon=2,
        epochs=1,
        batch_size=64,
        optimizer="sgd",
        lr=0.5,
        augment=True,
        max_images=300,
        data_root=str(real_data),
    )
    privacy = {}
    for copies in (1, 2):
        config = base.replace(augment_multiplicity=copies)
        summary = run_experiment(config, tmp_path / f"k{copies}", log=lambda _: None).summary
        assert summary["test"]["roc_auc"] is not None
        privacy[copies] = summary["privacy"]
    assert privacy[2]["epsilon"] == privacy[1]["epsilon"] <= 2
    for key in ("noise_multiplier", "sample_rate", "steps", "delta", "description"):
        assert privacy[2][key] == privacy[1][key]
    assert privacy[2]["steps"] == pytest.approx(1 / privacy[2]["sample_rate"], abs=1)
    recorded = yaml.safe_load((tmp_path / "k2" / "config.yaml").read_text())
    assert recorded["augment_multiplicity"] == 2  # the run folder says how it trained


def test_sigterm_mid_training_leaves_no_staging_folder(real_data, tmp_path, private_cache):
    """SIGTERM (what kill, timeout and schedulers send) stops `dpmed run` as Ctrl-C does:
    exit code 143, one line, no run folder and no hidden staging folder."""
    out = tmp_path / "run"
    process = subprocess.Popen(
        [sys.executable, "-m", "dpmed.cli", "run", "--dataset", "pneumoniamnist"]
        + ["--model", "small-cnn", "--max-images", "200", "--epochs", "1000", "--quiet"]
        + ["--data-root", str(real_data), "--out", str(out)],
        env=os.environ | {"DPMED_CACHE": str(private_cache)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: (tmp_path / ".run.partial").exists(), 120, "training to start")
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 143, err
    *_, last = err.strip().splitlines()
    assert last == "dpmed run: stopped by SIGTERM; no run folder was written: run it again"
    assert "Traceback" not in err
    assert list(tmp_path.iterdir()) == []
