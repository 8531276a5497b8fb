"""Where independent replays run: local worker processes (`--executor local`) or a Ray
cluster (`--executor ray`). Both take a module-level function and its tasks and yield
`(index, result, error)` as each task finishes, so a caller streams results (a progress bar,
a resumable sweep) and decides what a failure means: frontier stops everything, sweep carries
on and names the failed cells.

A task's exception comes back as itself (a UserError keeps its one line). Closing the
iterator early (a failure the caller stops on, Ctrl-C) stops the work still running.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from tokenfleet.errors import UserError

EXECUTORS = ("local", "ray")
CONNECT_TIMEOUT_S = 5.0  # a Ray address that does not answer: ray.init itself waits minutes

Outcome = tuple[int, Any, BaseException | None]


class WorkerDied(UserError):
    """A local worker process ended before its task did (killed, out of memory)."""


def make_executor(kind: str, jobs: int | None = None, address: str | None = None):
    """The executor `--executor kind` names; `jobs` caps local processes (default: one per
    core) and a local Ray's CPUs; `address` is a Ray cluster's (else RAY_ADDRESS, else a local
    Ray started for the run)."""
    if jobs is not None and jobs < 1:
        raise UserError(f"--jobs {jobs}: expected at least 1 (leave it out for one per core)")
    if kind == "local":
        if address is not None:
            raise UserError("--address is a Ray cluster's; add --executor ray")
        return LocalExecutor(jobs or os.cpu_count() or 1)
    if kind == "ray":
        return RayExecutor(address or os.environ.get("RAY_ADDRESS") or None, jobs)
    raise UserError(f"--executor {kind}: expected one of {', '.join(EXECUTORS)}")


class LocalExecutor:
    """Worker processes on this machine (spawned, not forked: forking a process that has
    started Polars' threads can hang); one task at a time in this process when jobs is 1."""

    name = "local"

    def __init__(self, jobs: int) -> None:
        self.jobs = jobs

    def run(self, fn: Callable, tasks: list) -> Iterator[Outcome]:
        if self.jobs == 1 or len(tasks) <= 1:
            for i, task in enumerate(tasks):
                try:
                    yield i, fn(task), None
                except Exception as err:  # noqa: BLE001 - handed to the caller, who decides
                    yield i, None, err
            return
        spawn = multiprocessing.get_context("spawn")
        workers = min(self.jobs, len(tasks))
        pool = ProcessPoolExecutor(workers, mp_context=spawn, initializer=_ignore_sigint)
        try:
            with _quiet_children():  # the executor starts its processes as tasks arrive
                futures = {pool.submit(fn, task): i for i, task in enumerate(tasks)}
            for future in as_completed(futures):
                try:
                    result = future.result()
                except BrokenProcessPool:
                    raise WorkerDied(
                        "a worker process died before its run finished (killed, or out of "
                        "memory?); use fewer jobs"
                    ) from None
                except Exception as err:  # noqa: BLE001 - handed to the caller
                    yield futures[future], None, err
                    continue
                yield futures[future], result, None
        except BaseException:  # a failure the caller stops on, Ctrl-C, GeneratorExit
            _stop(pool)
            raise
        pool.shutdown(wait=True)


class RayExecutor:
    """One Ray task per item: on the cluster at `address`, or on a local Ray started for the
    run (and shut down after) with `jobs` CPUs. Records are written where the task runs: on a
    cluster of several machines, give an output path they all share."""

    name = "ray"

    def __init__(self, address: str | None, jobs: int | None) -> None:
        try:
            import ray  # noqa: F401 - only to know it is there
        except ImportError:
            raise UserError(
                "--executor ray needs Ray: pip install 'tokenfleet[ray]' (or use --executor local)"
            ) from None
        if address is not None:
            check_reachable(address)
        self.address = address
        self.jobs = jobs

    def run(self, fn: Callable, tasks: list) -> Iterator[Outcome]:
        import ray

        started = not ray.is_initialized()
        if started:
            options: dict[str, Any] = {
                "log_to_driver": False,
                "include_dashboard": False,
                "logging_level": logging.ERROR,
            }
            if self.address is None:
                options["num_cpus"] = self.jobs or os.cpu_count() or 1
            else:
                options["address"] = self.address
            try:
                ray.init(**options)
            except ConnectionError as err:  # it answers, but is no Ray head that takes us
                raise UserError(f"--address {self.address}: Ray did not connect ({err})") from None
        remote = ray.remote(fn)
        refs = {remote.remote(task): i for i, task in enumerate(tasks)}
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                ref = done[0]
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as err:
                    yield refs[ref], None, _cause(err)
                    continue
                except ray.exceptions.RayError as err:  # a worker died, a node went away
                    yield refs[ref], None, RuntimeError(f"{type(err).__name__}: {err}")
                    continue
                yield refs[ref], result, None
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()


def check_reachable(address: str) -> None:
    """Refuse, in one line and within CONNECT_TIMEOUT_S, a Ray address nothing listens at
    ("auto" and "local" are Ray's own words, left to it)."""
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise UserError(
            f"--address {address}: expected HOST:PORT (a Ray head's, e.g. 10.0.0.5:6379)"
        ) from None
    try:
        with socket.create_connection((host or "127.0.0.1", number), CONNECT_TIMEOUT_S):
            pass
    except OSError as err:
        raise UserError(
            f"--address {address}: no Ray cluster answers there ({err.strerror or err}); "
            "start one (ray start --head) or leave --address out for a local Ray"
        ) from None


def _cause(err: BaseException) -> BaseException:
    """The task's own exception inside Ray's wrapper, where Ray could rebuild it."""
    cause = getattr(err, "cause", None)
    return cause if isinstance(cause, BaseException) else err


@contextlib.contextmanager
def _quiet_children() -> Iterator[None]:
    """Processes started in this block write to /dev/null instead of the terminal.

    A terminal sends Ctrl-C to the whole process group. A worker still starting up (Python
    imports the main module before any code of ours runs) would print a KeyboardInterrupt
    traceback; the parent is interrupted too, stops the workers and prints the one line. The
    workers' own output is not needed: their results, errors and notices come back through
    the executor. Ignoring SIGINT here instead would drop a Ctrl-C pressed meanwhile."""
    sys.stderr.flush()
    saved = os.dup(2)
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _ignore_sigint() -> None:
    """Worker start-up: Ctrl-C is the parent's to handle, so no run dies half-way on its own."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Kill the workers and wait for them: shutdown() alone lets running replays finish first,
    and the executor has no public way to reach its processes before Python 3.14."""
    for process in list((pool._processes or {}).values()):
        process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)
