"""Where a sweep's runs execute: a thread (one job), local processes, or a Ray cluster.

Every executor runs `execute_run` and hands back `concurrent.futures.Future`s plus a
queue of progress events; only the driver writes the results database.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import dataclasses
import functools
import multiprocessing
import os
import queue
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.managers import SyncManager
from pathlib import Path
from typing import Any

from dpmed.errors import ConfigError, DpmedError

EXECUTORS = ("local", "ray")
PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


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
    # shutdown(stop): with stop, pending runs are cancelled and running ones stopped now
    shutdown: Callable[[bool], None]

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


def check_executor(kind: str, *, jobs: int, threads: int | None) -> None:
    """A ConfigError for an unknown executor or a job or thread count below one."""
    if kind not in EXECUTORS:
        raise ConfigError(f"unknown executor {kind!r}; choose one of: {', '.join(EXECUTORS)}")
    if jobs < 1 or (threads is not None and threads < 1):
        raise ConfigError("--jobs and --threads-per-run must be positive integers")


def make_executor(
    kind: str, *, jobs: int, threads: int | None, address: str | None = None
) -> Executor:
    """`jobs` runs at a time, each with `threads` torch threads (default: cores / jobs)."""
    check_executor(kind, jobs=jobs, threads=threads)
    threads = threads or max(1, (os.cpu_count() or 1) // jobs)
    if kind == "ray":
        return _ray_executor(jobs, threads, address)
    if jobs == 1:  # one run at a time: a thread, so the driver keeps drawing progress
        return _thread_executor(threads)
    return _process_executor(jobs, threads)


class RunStopped(KeyboardInterrupt):
    """Raised inside a run's thread when the sweep stops (like Ctrl-C: the run cleans up
    its staging folder and is not recorded)."""


def _thread_executor(threads: int) -> Executor:
    pool = concurrent.futures.ThreadPoolExecutor(1)
    running: set[int] = set()  # the threads inside a run
    lock = threading.Lock()

    def in_thread(*args: Any) -> dict[str, Any]:
        with lock:
            running.add(threading.get_ident())
        try:
            return execute_run(*args)
        finally:
            with lock:
                running.discard(threading.get_ident())

    def shutdown(stop: bool) -> None:
        pool.shutdown(wait=False, cancel_futures=stop)
        with lock:
            for ident in running if stop else ():  # a thread cannot be killed: raise in it
                ctypes.pythonapi.PyThreadState_SetAsyncExc(
                    ctypes.c_ulong(ident), ctypes.py_object(RunStopped)
                )
        pool.shutdown(wait=True)

    return Executor(functools.partial(pool.submit, in_thread), queue.Queue(), threads, shutdown)


def _process_executor(jobs: int, threads: int) -> Executor:
    """Worker processes (and the manager process of the events queue) that ignore SIGINT
    and SIGTERM, so that a signal to the process group reaches the driver alone, and that
    die with the driver: it kills them when the sweep stops, the kernel when it is killed."""
    context = multiprocessing.get_context("spawn")
    manager = SyncManager(ctx=context)
    manager.start(_die_with_parent, (os.getpid(),))
    pool = concurrent.futures.ProcessPoolExecutor(
        jobs, mp_context=context, initializer=_die_with_parent, initargs=(os.getpid(),)
    )

    def shutdown(stop: bool) -> None:
        # pool._processes: Python < 3.14 has no ProcessPoolExecutor.kill_workers
        workers = list((pool._processes or {}).values()) if stop else []
        pool.shutdown(wait=not stop, cancel_futures=stop)
        for worker in workers:
            worker.kill()
        for worker in workers:
            worker.join()
        manager.shutdown()

    return Executor(functools.partial(pool.submit, execute_run), manager.Queue(), threads, shutdown)


def _die_with_parent(parent: int) -> None:
    """In a worker: leave SIGINT and SIGTERM to the driver and, on Linux, get SIGKILL when
    the driver dies (PR_SET_PDEATHSIG), so no worker outlives a killed sweep."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the driver died before the line above
        os._exit(1)


def _ray_executor(jobs: int, threads: int, address: str | None) -> Executor:
    try:
        import ray
        from ray.util.queue import Queue
    except ImportError:
        raise ConfigError(
            "the ray executor needs Ray: pip install 'dpmed[ray]' (or use --executor local)"
        ) from None
    started_here = not ray.is_initialized()
    on_sigterm = signal.getsignal(signal.SIGTERM)
    if started_here and address:
        ray.init(address=address, log_to_driver=False)
    elif started_here:
        ray.init(num_cpus=jobs * threads, include_dashboard=False, log_to_driver=False)
    if on_sigterm is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)  # ray.init replaces it by sys.exit
    from dpmed.privacy.secret import KEY_ENV

    # The noise key travels as the path of its file (which Ray's workers must see), never
    # as its bytes; local workers inherit it from the environment.
    key_file = {KEY_ENV: os.environ[KEY_ENV]} if os.environ.get(KEY_ENV) else {}
    remote = ray.remote(num_cpus=threads, runtime_env={"env_vars": key_file})(execute_run)
    tasks = []

    def start(*args: Any) -> concurrent.futures.Future:
        tasks.append(remote.remote(*args))
        return tasks[-1].future()

    def shutdown(stop: bool) -> None:
        for task in tasks if stop else ():
            ray.cancel(task, force=True)  # kills a running task's worker; done ones: no-op
        if started_here:
            ray.shutdown()

    events = Queue(actor_options={"num_cpus": 0})  # must not wait for a CPU the runs hold
    return Executor(start, events, threads, shutdown)
