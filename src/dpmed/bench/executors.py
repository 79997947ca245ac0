"""Where a sweep's runs execute: a thread (one job), local processes, or a Ray cluster.

Every executor runs `execute_run` and hands back `concurrent.futures.Future`s plus a
queue of progress events; only the driver writes the results database.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import multiprocessing
import os
import queue
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dpmed.errors import ConfigError, DpmedError

EXECUTORS = ("local", "ray")


def execute_run(
    run_id: str, config: dict[str, Any], folder: str, threads: int, events: Any
) -> dict[str, Any]:
    """Run one experiment in this worker; never raises: an error comes back as text.

    `events` gets ("start", run_id, epochs) once and ("epoch", run_id, k) after each epoch.
    """
    import torch

    from dpmed.config import RunConfig
    from dpmed.progress import quiet
    from dpmed.run import run_experiment

    torch.set_num_threads(threads)
    quiet()
    try:
        run_config = RunConfig.from_mapping(config)
        events.put(("start", run_id, run_config.planned_epochs))
        result = run_experiment(
            run_config,
            Path(folder),
            overwrite=True,
            log=lambda _: None,
            on_epoch=lambda record: events.put(("epoch", run_id, record.epoch)),
        )
    except DpmedError as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    except Exception:  # noqa: BLE001 - a failed run is recorded, the sweep goes on
        return {"error": traceback.format_exc()}
    return {"summary": result.summary, "epochs": [dataclasses.asdict(e) for e in result.epochs]}


@dataclass
class Executor:
    """Starts `execute_run` somewhere; its workers report progress on `events`."""

    start: Callable[..., concurrent.futures.Future]  # start(*execute_run's arguments)
    events: Any
    threads: int
    shutdown: Callable[[bool], None]  # shutdown(cancel_pending)

    def submit(
        self, run_id: str, config: dict[str, Any], folder: Path
    ) -> concurrent.futures.Future:
        return self.start(run_id, config, str(folder), self.threads, self.events)

    def drain(self) -> list[tuple]:
        """Progress events that arrived since the last call."""
        found = []
        while True:
            try:
                found.append(self.events.get_nowait())
            except queue.Empty:  # Ray's queue raises this one too
                return found


def make_executor(
    kind: str, *, jobs: int, threads: int | None, address: str | None = None
) -> Executor:
    """`jobs` runs at a time, each with `threads` torch threads (default: cores / jobs)."""
    if kind not in EXECUTORS:
        raise ConfigError(f"unknown executor {kind!r}; choose one of: {', '.join(EXECUTORS)}")
    if jobs < 1 or (threads is not None and threads < 1):
        raise ConfigError("--jobs and --threads-per-run must be positive integers")
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    if kind == "ray":
        return _ray_executor(jobs, threads, address)
    if jobs == 1:  # one run at a time: a thread, so the driver keeps drawing progress
        pool = concurrent.futures.ThreadPoolExecutor(1)
        events, close_events = queue.Queue(), lambda: None
    else:
        context = multiprocessing.get_context("spawn")
        manager = context.Manager()
        pool = concurrent.futures.ProcessPoolExecutor(jobs, mp_context=context)
        events, close_events = manager.Queue(), manager.shutdown

    def shutdown(cancel: bool) -> None:
        pool.shutdown(wait=not cancel, cancel_futures=cancel)
        close_events()

    return Executor(functools.partial(pool.submit, execute_run), events, threads, shutdown)


def _ray_executor(jobs: int, threads: int, address: str | None) -> Executor:
    try:
        import ray
        from ray.util.queue import Queue
    except ImportError:
        raise ConfigError(
            "the ray executor needs Ray: pip install 'dpmed[ray]' (or use --executor local)"
        ) from None
    started_here = not ray.is_initialized()
    if started_here and address:
        ray.init(address=address, log_to_driver=False)
    elif started_here:
        ray.init(num_cpus=jobs * threads, include_dashboard=False, log_to_driver=False)
    from dpmed.privacy.secret import KEY_ENV

    # The noise key travels as the path of its file (which Ray's workers must see), never
    # as its bytes; local workers inherit it from the environment.
    key_file = {KEY_ENV: os.environ[KEY_ENV]} if os.environ.get(KEY_ENV) else {}
    remote = ray.remote(num_cpus=threads, runtime_env={"env_vars": key_file})(execute_run)

    def shutdown(cancel: bool) -> None:
        if started_here:
            ray.shutdown()

    events = Queue(actor_options={"num_cpus": 0})  # must not wait for a CPU the runs hold
    return Executor(lambda *args: remote.remote(*args).future(), events, threads, shutdown)
