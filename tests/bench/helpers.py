"""Sweep files and process watching for tests."""

import time
from pathlib import Path

import yaml


def write_sweep(path, grid=None, **base):
    spec = {
        "description": "tiny grid for tests",
        "base": {
            "dataset": "pneumoniamnist",
            "technique": "laplace",
            "model": "small-cnn",
            "epochs": 2,
            "max_images": 40,
            "batch_size": 20,
            **base,
        },
        "grid": grid or {"noise_scale": [0, 2], "seed": [0, 1]},
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def live_processes(session):
    """Pids of the processes of a session (a subprocess started with start_new_session
    and everything it started) that are alive, zombies left out; Linux's /proc."""
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            state, _, _, sid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:4]
        except (OSError, ValueError):  # not a process, or it just ended
            continue
        if int(sid) == session and state != "Z":
            found.append(int(entry.name))
    return found


def wait_until(condition, timeout, what):
    """Poll `condition` every 0.1 s until it holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
