"""The sweep driver: expand the config, register the runs in the store, claim and execute them, record each
result as it arrives, and write the report.

Resume is the same call again: runs already ``done`` (same hash) are skipped, ``failed`` ones and those left
``running`` by a killed driver are run again (once per call), and a run whose config changed has a new hash, so
it is a new run. Two drivers on one directory share the work through the store's claims (a run in flight in the
other driver is waited for, and taken over if that driver dies). A run that raises is recorded as ``failed``
with its error and the sweep goes on.

Ctrl-C (SIGINT) and SIGTERM (``timeout``, ``kill``, a CI cancel) stop the sweep: the signal raises
:class:`KeyboardInterrupt` (SIGTERM: its subclass :class:`sgdstab.utils.signals.Terminated`) in this process, never in
the middle of a store write or of a finished run's files (:func:`sgdstab.utils.signals.deferred`); on the way out the
workers are stopped at once (their runs in flight are abandoned, not waited for), the driver's runs in flight go
back to ``pending`` and it unregisters, so the same command resumes without waiting for anything. Workers die
with the driver even when it is killed with SIGKILL (see :mod:`sgdstab.utils.signals`).

The output directory also receives ``config.json`` (``{"experiment": "sweep", "name", "base", "grid",
"runs"}``), so that an experiment is never written into a sweep's directory nor a sweep into an experiment's.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sgdstab.experiments.config import config_to_dict
from sgdstab.experiments.io import atomic_write_json, prepare_output_dir
from sgdstab.sweep.artifacts import remove_stale_temporaries, write_artifacts
from sgdstab.sweep.config import SweepConfig, run_hash, run_to_dict
from sgdstab.sweep.executors import make_executor
from sgdstab.sweep.progress import SweepProgress
from sgdstab.sweep.run import RunOutput
from sgdstab.sweep.store import LEASE_SECONDS, Store
from sgdstab.utils import signals
from sgdstab.utils.results import ResultMixin

OWNER_TAG = "sweep"  # the "experiment" name in config.json (see prepare_output_dir)
POLL_SECONDS = 0.5


@dataclass(frozen=True)
class SweepSummary(ResultMixin):
    """How a sweep call ended. ``total``: runs in the sweep; ``done``/``failed``: their status at the end;
    ``skipped``: done before this call; ``ran``: completed (done or failed) by this call; ``elsewhere``: completed
    meanwhile by another driver; ``seconds``: wall time of the call."""

    name: str
    directory: str
    store: str
    total: int
    done: int
    failed: int
    skipped: int
    ran: int
    elsewhere: int
    executor: str
    workers: int
    seconds: float
    report: str | None


def sweep_to_dict(sweep: SweepConfig) -> dict[str, Any]:
    return {
        "experiment": OWNER_TAG,
        "name": sweep.name,
        "base": config_to_dict(sweep.base),
        "grid": {name: [list(v) if isinstance(v, tuple) else v for v in values] for name, values in sweep.grid},
        "runs": [dict(e) for e in sweep.entries if e],
    }


def run_label(config: dict[str, Any], varying: tuple[str, ...], run_id: str) -> str:
    shown = " ".join(f"{k}={config[k]}" for k in varying if k in config)
    return f"{shown} ({run_id[:12]})" if shown else run_id[:12]


def run_sweep(
    sweep: SweepConfig,
    out: str | os.PathLike[str],
    executor: str = "local",
    workers: int | None = None,
    address: str | None = None,
    threads: int = 1,
    quiet: bool = False,
    report: bool = True,
    lease: float = LEASE_SECONDS,
) -> SweepSummary:
    """Run (or resume) ``sweep`` into directory ``out`` (see the module docstring); returns the summary.

    ``executor``: ``local`` (process pool, ``workers`` processes, default one per CPU), ``ray`` (``address``:
    None starts a local instance, ``auto`` or ``ray://host:10001`` joins a cluster) or ``serial`` (this
    process). ``threads``: compute threads per worker process. SIGTERM while it runs raises
    :class:`sgdstab.utils.signals.Terminated` (a :class:`KeyboardInterrupt`) once everything is stopped and released."""
    with signals.stop_on_signals():
        return _run_sweep(sweep, out, executor, workers, address, threads, quiet, report, lease)


def _run_sweep(
    sweep: SweepConfig,
    out: str | os.PathLike[str],
    executor: str,
    workers: int | None,
    address: str | None,
    threads: int,
    quiet: bool,
    report: bool,
    lease: float,
) -> SweepSummary:
    start = time.perf_counter()
    runs = sweep.expand()  # a bad config is refused before anything is created
    folder = prepare_output_dir(out, owner=OWNER_TAG)
    ids = [run_hash(r) for r in runs]
    configs = {rid: run_to_dict(r) for rid, r in zip(ids, runs, strict=True)}
    store = Store.create(folder, sweep.name, lease=lease)
    try:
        with signals.deferred():  # a signal is raised after the write, not inside its transaction
            store.register([(rid, configs[rid]) for rid in ids])
        atomic_write_json(folder / "config.json", sweep_to_dict(sweep))
        pool = make_executor(executor, workers=workers, address=address, threads=threads)
        skipped, ran, elsewhere = _execute(store, pool, sweep, ids, folder, SweepProgress(quiet=quiet), lease)
        counts = store.counts(ids)
        report_path = None
        if report:
            from sgdstab.sweep.report import write_report

            report_path = str(write_report(folder, store, sweep, ids, seconds=time.perf_counter() - start))
        return SweepSummary(
            name=sweep.name,
            directory=str(folder),
            store=str(store.path),
            total=len(ids),
            done=counts["done"],
            failed=counts["failed"],
            skipped=skipped,
            ran=ran,
            elsewhere=elsewhere,
            executor=pool.name,
            workers=pool.capacity,
            seconds=time.perf_counter() - start,
            report=report_path,
        )
    finally:
        store.close()


def _execute(
    store: Store,
    pool: Any,
    sweep: SweepConfig,
    ids: list[str],
    folder: Path,
    progress: SweepProgress,
    lease: float,
) -> tuple[int, int, int]:
    """Register this driver, run the sweep's runs on ``pool`` and stop it; returns (runs done before this call,
    runs completed here, runs completed by another driver)."""
    owner: str | None = None
    finished = False
    try:
        signals.install()  # ray.init replaces the SIGTERM handler with its own
        with signals.deferred():
            owner = store.register_owner()
        if store.live_owners() == [owner]:
            remove_stale_temporaries(folder)
        statuses = {r.run_id: r.status for r in store.runs(run_ids=ids)}
        skipped = sum(statuses[rid] == "done" for rid in ids)
        progress.start(sweep.name, len(ids), skipped, pool.name, pool.capacity)
        ran, elsewhere = _Loop(store, pool, owner, sweep.varying(), folder, progress, lease).run(ids)
        finished = True
    finally:
        _stop(pool, store, owner, progress, cancel=not finished)
    return skipped, ran, elsewhere


def _stop(pool: Any, store: Store, owner: str | None, progress: SweepProgress, cancel: bool) -> None:
    """Close the executor (``cancel``, after a signal or an error: stop the workers now, do not wait for the runs
    in flight) and unregister the driver (its runs still ``running`` go back to ``pending``: a resume waits for
    nothing). A signal arriving meanwhile is held back until both are done."""
    with signals.deferred():
        pool.close(cancel=cancel)
        if owner is not None:
            store.release(owner)
        progress.stop()


class _Loop:
    """The claim / submit / record loop of one driver (:meth:`run`).

    A signal interrupts it only while it waits (for results, or for another driver): claims, submissions and
    records are :func:`sgdstab.utils.signals.deferred`, so each is done whole or not begun."""

    def __init__(
        self,
        store: Store,
        pool: Any,
        owner: str,
        varying: tuple[str, ...],
        folder: Path,
        progress: SweepProgress,
        lease: float,
    ) -> None:
        self.store, self.pool, self.owner = store, pool, owner
        self.varying, self.folder, self.progress, self.lease = varying, folder, progress, lease
        self.done_at_start: set[str] = set()
        self.queue: deque[str] = deque()
        self.elsewhere: list[str] = []  # claimed by another live driver: re-checked each poll
        self.inflight: dict[Any, tuple[str, dict[str, Any]]] = {}
        self.ran = self.finished_elsewhere = 0

    def run(self, ids: list[str]) -> tuple[int, int]:
        """Run ``ids`` to the end; returns (runs completed here, runs completed by another driver)."""
        self.done_at_start = {r.run_id for r in self.store.runs(status="done", run_ids=ids)}
        self.queue = deque(rid for rid in ids if rid not in self.done_at_start)
        last_beat = time.monotonic()
        while True:
            free = self.pool.capacity - len(self.inflight)
            if free > 0 and (self.queue or self.elsewhere):
                self._claim(free)
            if not self.inflight:
                if not self.queue and not self.elsewhere:
                    return self.ran, self.finished_elsewhere
                time.sleep(POLL_SECONDS)  # only runs held by another driver remain: wait for them
            else:
                self._collect()
            if time.monotonic() - last_beat > self.lease / 6:
                with signals.deferred():
                    self.store.heartbeat(self.owner)
                last_beat = time.monotonic()

    def _claim(self, free: int) -> None:
        """Claim a batch (the runs held elsewhere, then the queue's next) and submit up to ``free`` of them."""
        batch = list(self.elsewhere) + [self.queue.popleft() for _ in range(min(len(self.queue), max(4 * free, 32)))]
        self.elsewhere = []
        with signals.deferred():  # a claimed run is submitted and known as in flight, or not claimed
            outcome = self.store.claim(self.owner, batch, limit=free)
            for rid, cfg in outcome.claimed:
                self.inflight[self.pool.submit(cfg)] = (rid, cfg)
        self.queue.extendleft(reversed(outcome.unclaimed))
        self.elsewhere = outcome.elsewhere
        self.finished_elsewhere += len([rid for rid in outcome.done if rid not in self.done_at_start])
        for rid in outcome.done:
            self.done_at_start.add(rid)
            self.progress.done += 1
        self.progress.update(len(self.inflight))

    def _collect(self) -> None:
        """Record the runs that finish within the poll interval."""
        timeout = POLL_SECONDS if self.elsewhere else 1.0
        for handle in self.pool.wait(list(self.inflight), timeout=timeout):
            rid, cfg = self.inflight.pop(handle)
            with signals.deferred():  # the run's files and its store record, whole
                kept = _record(
                    self.store, self.pool, handle, self.owner, rid, cfg, self.varying, self.folder, self.progress
                )
            self.progress.update(len(self.inflight))
            if kept:
                self.ran += 1
            else:  # another driver took the claim over: its record stands
                self.finished_elsewhere += 1


def _record(
    store: Store,
    pool: Any,
    handle: Any,
    owner: str,
    rid: str,
    cfg: dict[str, Any],
    varying: tuple[str, ...],
    folder: Path,
    progress: SweepProgress,
) -> bool:
    """Write a finished run's files and record it (done, or failed with its error) in the store; returns False
    when another driver had taken the claim over (its record stands)."""
    result = pool.result(handle)
    if isinstance(result, RunOutput):
        try:
            write_artifacts(
                folder,
                rid,
                cfg,
                result.history,
                result.results,
                result.timings,
                result.theta,
                result.endpoint_theta,
            )
        except OSError as exc:
            kept = store.fail(rid, owner, f"ArtifactError: cannot write the run's files: {exc}")
            ok = False
            error: str | None = str(exc)
        else:
            kept = store.complete(rid, owner, result.results, result.history, result.timings, result.worker)
            ok, error = True, None
        seconds = result.timings.get("total")
    else:
        kept = store.fail(rid, owner, result.error, result.traceback, result.timings.get("total"), result.worker)
        ok, error, seconds = False, result.error, result.timings.get("total")
    if kept:
        progress.finished(run_label(cfg, varying, rid), ok, seconds, error)
    return kept


__all__ = ["SweepSummary", "run_label", "run_sweep", "sweep_to_dict"]
