"""Where a sweep's runs execute: in this process, in a local process pool, or as Ray tasks on a cluster.

Each executor takes run configs (plain dicts, as stored) and hands back, per run, a
:class:`~sgdstab.sweep.run.RunOutput` or a :class:`~sgdstab.sweep.run.RunFailure` — never an exception: a
worker that dies (killed, out of memory) or a Ray task that is lost becomes a failure of that run. Workers never
touch the store; the driver writes every result.

- ``serial``: one run at a time in the calling process (no isolation; for the API, tests and benchmarks).
  A script that uses ``local`` needs the ``if __name__ == "__main__":`` guard: ``spawn`` re-imports it.
- ``local`` (the CLI's default): :class:`concurrent.futures.ProcessPoolExecutor` with the ``spawn`` start method
  (no fork of a process that holds torch threads or an open SQLite connection), ``workers`` processes of one
  compute thread each. A pool broken by a dead worker is replaced on the next submission. Workers ignore SIGINT
  (the driver handles a terminal's Ctrl-C once) and die with the driver, even one killed with SIGKILL
  (:func:`sgdstab.utils.signals.worker_setup`); ``close(cancel=True)`` ends them at once
  (:func:`sgdstab.utils.signals.stop_pool`).
- ``ray``: each run is a Ray task (``num_cpus=1``) of :func:`~sgdstab.sweep.run.run_safely`; ``address=None``
  starts a private local Ray instance with ``workers`` CPUs and shuts it down afterwards, ``address="auto"``
  joins the cluster this machine belongs to, ``address="ray://HOST:10001"`` connects through Ray Client. Every
  node needs the same sgdstab installed (``pip install "sgdstab[ray]"``); results travel back to the driver.
  ``close(cancel=True)`` cancels the tasks in flight (force: their workers are killed) before shutting down.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import multiprocessing
import os
from collections import deque
from typing import Any

from sgdstab.errors import ExecutorError
from sgdstab.sweep.run import RunFailure, RunOutput, run_safely
from sgdstab.utils import signals

EXECUTORS = ("local", "ray", "serial")
Outcome = RunOutput | RunFailure


def default_workers() -> int:
    """The CPUs this process may use (at least 1)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


class SerialExecutor:
    """Runs in the calling process, one at a time; a run executes inside :meth:`wait`, on ``threads`` torch and
    BLAS threads (the caller's settings are restored afterwards)."""

    name = "serial"

    def __init__(self, threads: int | None = 1) -> None:
        self.capacity = 1
        self.threads = threads
        self._restore: tuple[int, Any] | None = None
        self._queue: deque[tuple[int, dict[str, Any]]] = deque()
        self._done: dict[int, Outcome] = {}
        self._next = 0

    def submit(self, config: dict[str, Any]) -> int:
        self._next += 1
        self._queue.append((self._next, config))
        return self._next

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        ready = [h for h in handles if h in self._done]
        if ready or not self._queue:
            return ready
        handle, config = self._queue.popleft()
        self._done[handle] = self._run(config)
        return [handle]

    def _run(self, config: dict[str, Any]) -> Outcome:
        if self.threads is not None and self._restore is None:
            # set once for the executor's life (threadpoolctl's look-up costs ~10 ms a call)
            import torch
            from threadpoolctl import threadpool_limits

            self._restore = (torch.get_num_threads(), threadpool_limits(limits=self.threads, user_api="blas"))
            torch.set_num_threads(self.threads)
        return run_safely(config)

    def result(self, handle: Any) -> Outcome:
        return self._done.pop(handle)

    def close(self, cancel: bool = False) -> None:
        self._queue.clear()
        if self._restore is not None:
            import torch

            threads, limits = self._restore
            torch.set_num_threads(threads)
            limits.restore_original_limits()
            self._restore = None


class LocalExecutor:
    """A spawn-based process pool of ``workers`` processes, each limited to ``threads`` compute threads."""

    name = "local"

    def __init__(self, workers: int | None = None, threads: int = 1) -> None:
        self.capacity = workers if workers is not None else default_workers()
        if self.capacity < 1:
            raise ExecutorError(f"--workers must be at least 1, got {self.capacity}")
        self.threads = threads
        self._pool: cf.ProcessPoolExecutor | None = None

    def _ensure_pool(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(
                max_workers=self.capacity, mp_context=multiprocessing.get_context("spawn"), **signals.pool_kwargs()
            )
        return self._pool

    def submit(self, config: dict[str, Any]) -> cf.Future:
        with signals.spawning():  # a worker started here is born with SIGINT blocked
            try:
                return self._ensure_pool().submit(run_safely, config, self.threads)
            except cf.process.BrokenProcessPool:
                # A worker died: the old pool is unusable; its other futures fail on their own.
                self._pool.shutdown(wait=False, cancel_futures=True)  # type: ignore[union-attr]
                self._pool = None
                return self._ensure_pool().submit(run_safely, config, self.threads)

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        done, _ = cf.wait(handles, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return [h for h in handles if h in done]

    def result(self, handle: cf.Future) -> Outcome:
        try:
            return handle.result()
        except cf.process.BrokenProcessPool:
            return RunFailure(
                error="WorkerDied: the worker process running this run died (killed, or out of memory)", traceback=""
            )
        except cf.CancelledError:
            return RunFailure(error="Cancelled: the run was cancelled before it finished", traceback="")
        except Exception as exc:  # e.g. a result that could not be sent back
            return RunFailure(error=f"{type(exc).__name__}: {exc}", traceback="")

    def close(self, cancel: bool = False) -> None:
        """Shut the pool down: wait for the runs in flight, or (``cancel``) end the workers now."""
        if self._pool is not None:
            if cancel:
                # shutdown(wait=False) alone leaves each worker finishing its run, and the interpreter's exit
                # hook then waits for them all: stop them (SIGTERM, then SIGKILL)
                signals.stop_pool(self._pool)
            else:
                self._pool.shutdown(wait=True)
            self._pool = None


def _ray_task(config: dict[str, Any], threads: int) -> Outcome:
    return run_safely(config, threads)


class RayExecutor:
    """Runs as Ray tasks: on the cluster at ``address`` or on a local Ray instance started here."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None, threads: int = 1) -> None:
        try:
            import ray
        except ImportError:
            raise ExecutorError(
                'the ray executor needs Ray, which is not installed; run pip install "sgdstab[ray]" '
                "or use --executor local"
            ) from None
        if workers is not None and workers < 1:
            raise ExecutorError(f"--workers must be at least 1, got {workers}")
        self._ray = ray
        self.threads = threads
        self._started_here = False
        kwargs: dict[str, Any] = {"logging_level": "ERROR", "log_to_driver": False, "ignore_reinit_error": True}
        try:
            if not ray.is_initialized():
                if address is None:
                    ray.init(num_cpus=workers or default_workers(), include_dashboard=False, **kwargs)
                else:
                    ray.init(address=address, **kwargs)
                self._started_here = True  # ours to shut down (for a cluster: disconnect, the cluster stays)
        except Exception as exc:
            where = f"the Ray cluster at {address!r}" if address else "a local Ray instance"
            raise ExecutorError(f"cannot start or reach {where}: {' '.join(str(exc).split())[:300]}") from None
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.capacity = workers if workers is not None else max(1, cpus)
        self._remote = ray.remote(num_cpus=1, max_retries=0)(_ray_task)
        self._inflight: set[Any] = set()

    def submit(self, config: dict[str, Any]) -> Any:
        ref = self._remote.remote(config, self.threads)
        self._inflight.add(ref)
        return ref

    def wait(self, handles: list[Any], timeout: float) -> list[Any]:
        ray = self._ray
        ready, rest = ray.wait(handles, num_returns=1, timeout=timeout)
        if ready and rest:
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            ready = ready + more
        return ready

    def result(self, handle: Any) -> Outcome:
        self._inflight.discard(handle)
        try:
            return self._ray.get(handle)
        except Exception as exc:  # RayTaskError, WorkerCrashedError, TaskCancelledError, ...
            line = " ".join(str(exc).split())[:500]
            return RunFailure(error=f"{type(exc).__name__}: {line}", traceback="")

    def close(self, cancel: bool = False) -> None:
        """Cancel the tasks in flight (``cancel``: a cluster would otherwise run them on), then shut down the
        local instance started here or disconnect from the cluster."""
        if cancel:
            for ref in self._inflight:
                with contextlib.suppress(Exception):  # finished meanwhile, or its node is gone: nothing to stop
                    self._ray.cancel(ref, force=True)
        self._inflight.clear()
        if self._started_here:
            self._ray.shutdown()


def make_executor(kind: str, workers: int | None = None, address: str | None = None, threads: int = 1) -> Any:
    """An executor by name (``local``, ``ray`` or ``serial``)."""
    if kind not in EXECUTORS:
        raise ExecutorError(f"unknown executor {kind!r}; use one of {', '.join(EXECUTORS)}")
    if address is not None and kind != "ray":
        raise ExecutorError(f"--address is for --executor ray, not {kind!r}; add --executor ray or drop --address")
    if kind == "serial":
        return SerialExecutor(threads)
    if kind == "local":
        return LocalExecutor(workers, threads)
    return RayExecutor(address, workers, threads)


__all__ = [
    "EXECUTORS",
    "ExecutorError",
    "LocalExecutor",
    "RayExecutor",
    "SerialExecutor",
    "default_workers",
    "make_executor",
]
