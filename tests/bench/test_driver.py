"""The sweep driver end to end on real data: resume after SIGKILL and SIGTERM, the sweep
folder's lock, jobs, failures, Ray."""

import contextlib
import fcntl
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dpmed import cli
from dpmed.bench.executors import RunStopped, make_executor
from dpmed.config import RunConfig
from dpmed.run import staging_folder
from tests.bench.helpers import live_processes, wait_until, write_sweep


def _bench(*args):
    return [sys.executable, "-m", "dpmed.cli", "bench", *map(str, args), "--quiet"]


def _db(out):
    db = sqlite3.connect(out / "results.db")
    runs = db.execute("SELECT id, status, summary FROM runs").fetchall()
    epochs = db.execute("SELECT run_id, COUNT(*) FROM epochs GROUP BY run_id").fetchall()
    db.close()
    return runs, dict(epochs)


def test_sigkill_at_random_moments_then_resume_leaves_every_run_once(
    tmp_path, real_data, private_cache
):
    """Kill the sweep (driver and workers) at seeded random moments, resume each time.

    Whatever the moment, the invariants hold: a run's rows are committed in one
    transaction, so each run is finished once with all its epoch rows, or not at all.
    The moments are seeded; runs take seconds each and the interpreter a few to start, so
    every attempt dies mid-sweep, and the final resume runs to the end.
    """
    sweep = write_sweep(
        tmp_path / "tiny.yaml",
        data_root=str(real_data),
        max_images=200,  # a few seconds a run: each attempt is killed before the sweep ends
        grid={"noise_scale": [0, 1, 2], "seed": [0, 1]},
    )
    out = tmp_path / "out"
    env = os.environ | {"DPMED_CACHE": str(private_cache)}
    moments = random.Random(0)
    kills = 0
    for _ in range(4):
        process = subprocess.Popen(
            _bench(sweep, "--out", out, "--jobs", 1),
            env=env,
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(moments.uniform(2.0, 6.0))
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            kills += 1
        process.wait()
        runs, epochs = _db(out) if (out / "results.db").exists() else ([], {})
        finished = {run_id for run_id, status, _ in runs if status == "finished"}
        assert set(epochs) <= finished  # no orphan epoch rows, ever
        assert all(epochs[run_id] == 2 * 3 * 5 for run_id in finished)
    assert kills >= 3
    final = subprocess.run(_bench(sweep, "--out", out, "--jobs", 1), env=env, capture_output=True)
    assert final.returncode == 0, final.stderr
    runs, epochs = _db(out)
    assert len(runs) == 6 and {status for _, status, _ in runs} == {"finished"}
    assert set(epochs) == {run_id for run_id, _, _ in runs}
    assert all(count == 2 * 3 * 5 for count in epochs.values())  # epochs x splits x metrics


def _results(out):
    runs, _ = _db(out)
    return {run_id: json.loads(summary)["test"] for run_id, _, summary in runs}


def test_two_jobs_give_the_same_results_as_one(tmp_path, tiny_sweep):
    one, two = tmp_path / "one", tmp_path / "two"
    assert (
        cli.main(
            [
                "bench",
                str(tiny_sweep),
                "--out",
                str(one),
                "--jobs",
                "1",
                "--threads-per-run",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    assert (
        cli.main(
            [
                "bench",
                str(tiny_sweep),
                "--out",
                str(two),
                "--jobs",
                "2",
                "--threads-per-run",
                "1",
                "--quiet",
            ]
        )
        == 0
    )
    assert _results(one) == _results(two) and len(_results(one)) == 4


def test_a_failing_run_is_recorded_and_the_sweep_goes_on(tmp_path, real_data, capsys):
    sweep = write_sweep(
        tmp_path / "s.yaml",
        data_root=str(real_data),
        model="resnet18",
        epochs=1,
        grid={"weights": [None, str(tmp_path / "absent.pt")]},
    )
    out = tmp_path / "out"
    assert cli.main(["bench", str(sweep), "--out", str(out), "--jobs", "1", "--quiet"]) == 1
    db = sqlite3.connect(out / "results.db")
    rows = dict(db.execute("SELECT status, error FROM runs").fetchall())
    assert set(rows) == {"finished", "failed"}
    assert "weights file" in rows["failed"] and "does not exist" in rows["failed"]
    assert "--retry-failed" in capsys.readouterr().err
    assert cli.main(["bench", str(sweep), "--out", str(out), "--quiet"]) == 1  # left as is
    assert "1 failed run(s) left" in capsys.readouterr().out


def test_ray_executor_runs_the_grid_on_a_local_ray(tmp_path, real_data):
    pytest.importorskip("ray", reason="Ray is not installed: pip install 'dpmed[ray]'")
    sweep = write_sweep(
        tmp_path / "s.yaml", data_root=str(real_data), grid={"seed": [0, 1]}, epochs=1
    )
    local, remote = tmp_path / "local", tmp_path / "ray"
    args = ["--jobs", "2", "--threads-per-run", "1", "--quiet"]
    assert cli.main(["bench", str(sweep), "--out", str(local), *args]) == 0
    assert cli.main(["bench", str(sweep), "--out", str(remote), "--executor", "ray", *args]) == 0
    assert _results(local) == _results(remote) and len(_results(remote)) == 2


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("base: {}\ngrid: {seed: [0]}\ncolour: red\n", "unknown key 'colour'"),
        ("base: {epochs: 1}\ngrid: {}\n", "empty grid"),
        ("base: {epochs: three}\ngrid: {seed: [0]}\n", "epochs must be int"),
        ("base: {}\ngrid: {seed: [0]\n", "not valid YAML"),
    ],
)
def test_bad_sweep_files_fail_in_one_line_and_create_no_database(
    tmp_path, content, message, capsys
):
    spec = tmp_path / "bad.yaml"
    spec.write_text(content)
    out = tmp_path / "out"
    assert cli.main(["bench", str(spec), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_missing_preset_creates_nothing(tmp_path, capsys):
    assert cli.main(["bench", "no-such-preset", "--out", str(tmp_path / "o")]) == 2
    assert "no preset or sweep file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _finished(out):
    try:
        runs, _ = _db(out)
    except sqlite3.OperationalError:  # no database (or no table) yet
        return set()
    return {run_id for run_id, status, _ in runs if status == "finished"}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="watches processes in /proc")
def test_sigterm_stops_a_two_job_sweep_whole_and_a_resume_runs_each_run_once(
    tmp_path, real_data, private_cache, capsys
):
    """SIGTERM to the driver of a `--jobs 2` sweep once a run has finished: it stops with
    143 at once (the 8-epoch run beside the first is not let finish), no process of it is
    left (workers, their queue's manager), no run is recorded as failed, no staging folder
    stays; a second bench into the folder meanwhile is refused. The resume runs the rest
    and leaves the runs finished before untouched."""
    sweep = write_sweep(
        tmp_path / "s.yaml",
        data_root=str(real_data),
        max_images=100,
        grid={"noise_scale": [0, 2], "epochs": [1, 8]},  # 1 and 8 epochs start together
    )
    out = tmp_path / "out"
    args = [str(sweep), "--out", str(out), "--threads-per-run", "1"]
    process = subprocess.Popen(
        _bench(*args, "--jobs", 2),
        env=os.environ | {"DPMED_CACHE": str(private_cache)},
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: (out / "results.db").exists(), 120, "the sweep to start")
        assert cli.main(["bench", *args, "--quiet"]) == 2  # the lock is the sweep's
        refused = capsys.readouterr().err
        wait_until(lambda: _finished(out) or process.poll() is not None, 240, "a finished run")
        members = live_processes(process.pid)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert f"another dpmed bench (pid {process.pid})" in refused and refused.count("\n") == 1
    assert process.returncode == 143, err  # stopped mid-sweep, not at its end
    assert len(members) >= 4  # the driver, 2 workers, the manager (and a resource tracker)
    wait_until(lambda: not live_processes(process.pid), 10, "the sweep's processes to end")
    assert err.strip().splitlines()[-1].endswith("run the same command again to resume the sweep")
    runs, _ = _db(out)
    assert {status for _, status, _ in runs} <= {"finished", "running", "pending"}
    before = _times(out)
    assert 1 <= len(before) < 4
    assert {p.name for p in (out / "runs").iterdir()} == set(before)  # no staging either

    assert cli.main(["bench", *args, "--jobs", "1", "--quiet"]) == 0  # the resume
    assert f"{len(before)} of 4 runs finished before; running {4 - len(before)}" in (
        capsys.readouterr().out
    )
    runs, epochs = _db(out)
    assert len(runs) == 4 and {status for _, status, _ in runs} == {"finished"}
    assert epochs == {run_id: 3 * 5 * n for run_id, n in _epochs(out).items()}  # splits, metrics
    assert {run_id: times for run_id, times in _times(out).items() if run_id in before} == before


def _epochs(out):
    """The planned epochs of each run."""
    db = sqlite3.connect(out / "results.db")
    rows = db.execute("SELECT id, json_extract(config, '$.epochs') FROM runs").fetchall()
    db.close()
    return dict(rows)


def _times(out):
    """Start and end of each finished run."""
    db = sqlite3.connect(out / "results.db")
    rows = db.execute("SELECT id, started, finished FROM runs WHERE status='finished'")
    times = {run_id: (start, end) for run_id, start, end in rows}
    db.close()
    return times


def test_a_second_bench_into_a_locked_sweep_folder_stops_in_one_line(tmp_path, tiny_sweep, capsys):
    out = tmp_path / "out"
    out.mkdir()
    with open(out / ".dpmed-bench.lock", "w") as holder:  # as a running bench holds it
        holder.write("4242\n")
        holder.flush()
        fcntl.flock(holder, fcntl.LOCK_EX)
        assert cli.main(["bench", str(tiny_sweep), "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "another dpmed bench (pid 4242) is running into" in err
    assert "kill 4242" in err and "run this command again" in err
    assert sorted(p.name for p in out.iterdir()) == [".dpmed-bench.lock"]  # nothing started


def test_stopping_a_one_job_sweep_stops_its_run_thread_at_once(tmp_path, real_data):
    """One job runs in a thread of the driver: stopping raises in it, the run cleans its
    staging folder and the thread ends (shutdown joins it) long before its 1000 epochs."""
    config = RunConfig(
        dataset="pneumoniamnist",
        model="small-cnn",
        data_root=str(real_data),
        max_images=200,
        epochs=1000,
    )
    executor = make_executor("local", jobs=1, threads=1)
    folder = tmp_path / "runs" / "r"
    future = executor.submit("r", config.to_dict(), folder)
    events = []
    wait_until(
        lambda: events.extend(executor.drain()) or ("epoch", "r", 1) in events, 120, "epoch 1"
    )
    executor.shutdown(True)
    assert isinstance(future.exception(timeout=0), RunStopped)
    assert ("epoch", "r", 1000) not in events + executor.drain()
    assert not folder.exists() and not staging_folder(folder).exists()


PARENT = """
from pathlib import Path
from dpmed.bench.executors import make_executor
executor = make_executor("local", jobs=2, threads=1)
futures = [executor.submit(str(i), {}, Path("none")) for i in range(2)]
print("ready", flush=True)
input()
"""


def _ignores_sigterm(pid):
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    ignored = int(re.search(r"SigIgn:\s*([0-9a-f]+)", status).group(1), 16)
    return bool(ignored >> (signal.SIGTERM - 1) & 1)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_workers_die_with_a_driver_killed_alone():
    """SIGKILL to the driver only (not its process group), once its workers are set up
    (they ignore SIGTERM): they and their queue's manager die with it, so none can go on
    with a queued run behind a resume's back."""
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT],
        start_new_session=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert parent.stdout.readline() == "ready\n"

        def set_up():  # the workers, the manager and the resource tracker
            others = [pid for pid in live_processes(parent.pid) if pid != parent.pid]
            return len(others) >= 4 and all(map(_ignores_sigterm, others))

        wait_until(set_up, 60, "the workers to start")
        parent.kill()
        parent.wait()
        wait_until(lambda: not live_processes(parent.pid), 10, "the workers to die")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(parent.pid, signal.SIGKILL)
