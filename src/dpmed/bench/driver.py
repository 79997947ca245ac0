"""The sweep driver: plan runs, hand them to an executor, record results, show progress.

Only the driver writes `<out>/results.db`, holding a lock on `<out>` for the sweep's life
(a second sweep into the same folder is refused). Running the same sweep again skips
finished runs and re-runs interrupted ones (and failed ones with `retry_failed`). A sweep
stopped by an exception (Ctrl-C, or SIGTERM turned into one by the CLI) stops its workers
and records nothing more: the runs in progress are still `running` and run again on resume.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.table import Table

from dpmed.bench.executors import Executor
from dpmed.bench.store import ResultsStore
from dpmed.bench.sweep import PlannedRun
from dpmed.errors import ConfigError
from dpmed.progress import live_display

DB_NAME = "results.db"
LOCK_NAME = ".dpmed-bench.lock"
_held: set[Path] = set()  # sweep folders this process holds the lock of


@dataclass
class SweepProgress:
    """What the live display shows: counts, the epoch of each running run, an ETA."""

    total: int
    skipped: int
    jobs: int
    done: int = 0
    failed: int = 0
    running: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (epoch, of)
    durations: list[float] = field(default_factory=list)

    def eta_seconds(self) -> float | None:
        left = self.total - self.skipped - self.done - self.failed
        if not self.durations or left <= 0:
            return None
        return sum(self.durations) / len(self.durations) * left / self.jobs

    def render(self) -> Table:
        eta = self.eta_seconds()
        table = Table.grid(padding=(0, 2))
        table.add_row(
            f"runs {self.skipped + self.done}/{self.total} done"
            + (f" ({self.skipped} before)" if self.skipped else ""),
            f"{self.failed} failed",
            f"{len(self.running)} running",
            f"ETA {eta / 60:.1f} min" if eta is not None else "ETA -",
        )
        for name, (epoch, epochs) in self.running.items():
            table.add_row(f"  {name}", f"epoch {epoch}/{epochs}", "", "")
        return table


def run_sweep(
    runs: list[PlannedRun],
    out: Path,
    executor: Executor,
    *,
    jobs: int,
    retry_failed: bool = False,
    log=print,
) -> dict[str, int]:
    """Run every run not finished yet; return the database's status counts."""
    with sweep_lock(out):
        store = ResultsStore(out / DB_NAME)
        try:
            store.plan(runs)
            status = store.status(r.id for r in runs)
            redo = {"pending", "running"} | ({"failed"} if retry_failed else set())
            todo = [r for r in runs if status[r.id] in redo]
            progress = SweepProgress(total=len(runs), skipped=len(runs) - len(todo), jobs=jobs)
            if finished_before := sum(1 for r in runs if status[r.id] == "finished"):
                log(f"{finished_before} of {len(runs)} runs finished before; running {len(todo)}")
            if failed_left := progress.skipped - finished_before:
                log(f"{failed_left} failed run(s) left as they are; --retry-failed runs them again")
            _drive(todo, out, executor, store, progress, log)
            return store.counts()
        finally:
            store.close()


@contextlib.contextmanager
def sweep_lock(out: Path) -> Iterator[None]:
    """Hold the sweep folder `out` (created if needed) for this process; reentrant.

    An flock on `<out>/.dpmed-bench.lock`: the kernel releases it when the process dies,
    however it dies, so a resume after a crash or SIGKILL is never refused.
    """
    key = out.resolve()
    if key in _held:
        yield
        return
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK_NAME, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            pid = handle.read().strip() or "unknown"
            raise ConfigError(
                f"another dpmed bench (pid {pid}) is running into {out}; wait for it to end "
                f"or stop it (kill {pid}), then run this command again to resume"
            ) from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        _held.add(key)
        try:
            yield
        finally:
            _held.discard(key)


def _drive(
    todo: list[PlannedRun],
    out: Path,
    executor: Executor,
    store: ResultsStore,
    progress: SweepProgress,
    log,
) -> None:
    names = {r.id: r.name for r in todo}
    started: dict[str, float] = {}
    recorded: set[str] = set()
    stop = True
    with live_display(progress.render()) as live:
        try:
            futures = {executor.submit(r.id, r.config.to_dict(), _folder(out, r)): r for r in todo}
            pending = set(futures)
            while pending:
                finished, pending = concurrent.futures.wait(pending, timeout=0.25)
                for kind, run_id, value in executor.drain():
                    _on_event(kind, run_id, value, names, store, progress, started)
                for future in finished:
                    run = futures[future]
                    _record(run, _outcome(future), store, progress, started, log)
                    recorded.add(run.id)
                live.update(progress.render())
            stop = False
        finally:
            executor.shutdown(stop)
            if stop:  # the stopped runs' workers are gone: remove what they left
                _remove_unrecorded(out, [r for r in todo if r.id not in recorded])


def _folder(out: Path, run: PlannedRun) -> Path:
    return out / "runs" / run.id


def _remove_unrecorded(out: Path, runs: list[PlannedRun]) -> None:
    """The staging folders of runs the stop cut short, and the run folders of runs that
    ended as the sweep stopped but were not recorded (a resume runs them again)."""
    from dpmed.run import staging_folder

    for run in runs:
        shutil.rmtree(staging_folder(_folder(out, run)), ignore_errors=True)
        shutil.rmtree(_folder(out, run), ignore_errors=True)


def _on_event(kind, run_id, value, names, store, progress, started) -> None:
    if kind == "start":
        store.start(run_id)
        started[run_id] = time.perf_counter()
        progress.running[names[run_id]] = (0, value)
    elif kind == "epoch" and names[run_id] in progress.running:
        epochs = progress.running[names[run_id]][1]
        progress.running[names[run_id]] = (value, epochs)


def _outcome(future: concurrent.futures.Future) -> dict[str, Any]:
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - e.g. a worker process that died
        return {"error": f"{type(exc).__name__}: {exc}"}


def _record(run, outcome, store, progress, started, log) -> None:
    progress.running.pop(run.name, None)
    if "error" in outcome:
        if run.id not in started:
            store.start(run.id)
        store.fail(run.id, outcome["error"])
        progress.failed += 1
        log(f"failed   {run.name}: {outcome['error'].strip().splitlines()[-1]}")
        return
    store.finish(run.id, outcome["summary"], outcome["epochs"])
    progress.done += 1
    progress.durations.append(time.perf_counter() - started.get(run.id, time.perf_counter()))
    test = outcome["summary"]["test"]
    log(f"finished {run.name}: test accuracy {100 * test['accuracy']:.2f}%")
