"""The sweep driver: expand the config, register the runs in the store, claim and execute them, record each
result as it arrives, and write the report.

Resume is the same call again: runs already ``done`` (same hash) are skipped, ``failed`` ones and those left
``running`` by a killed driver are run again (once per call), and a run whose config changed has a new hash, so
it is a new run. Two drivers on one directory share the work through the store's claims (a run in flight in the
other driver is waited for, and taken over if that driver dies). A run that raises is recorded as ``failed``
with its error and the sweep goes on.

Ctrl-C (SIGINT) and SIGTERM (``timeout``, ``kill``, a CI cancel) stop the sweep: the signal raises
:class:`KeyboardInterrupt` (SIGTERM: its subclass :class:`sgdstab.signals.Terminated`) in this process, never in
the middle of a store write or of a finished run's files (:func:`sgdstab.signals.deferred`); on the way out the
workers are stopped at once (their runs in flight are abandoned, not waited for), the driver's runs in flight go
back to ``pending`` and it unregisters, so the same command resumes without waiting for anything. Workers die
with the driver even when it is killed with SIGKILL (see :mod:`sgdstab.signals`).

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

from sgdstab import signals
from sgdstab.experiments.config import config_to_dict
from sgdstab.experiments.io import atomic_write_json, prepare_output_dir
from sgdstab.results import ResultMixin
from sgdstab.sweep.artifacts import remove_stale_temporaries, write_artifacts
from sgdstab.sweep.config import SweepConfig, run_hash, run_to_dict
from sgdstab.sweep.executors import make_executor
from sgdstab.sweep.progress import SweepProgress
from sgdstab.sweep.run import RunOutput
from sgdstab.sweep.store import LEASE_SECONDS, Store

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
    :class:`sgdstab.signals.Terminated` (a :class:`KeyboardInterrupt`) once everything is stopped and released."""
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
    varying = sweep.varying()
    store = Store.create(folder, sweep.name, lease=lease)
    progress = SweepProgress(quiet=quiet)
    try:
        with signals.deferred():  # a signal is raised after the write, not inside its transaction
            store.register([(rid, configs[rid]) for rid in ids])
        atomic_write_json(folder / "config.json", sweep_to_dict(sweep))
        pool = make_executor(executor, workers=workers, address=address, threads=threads)
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
            ran, elsewhere = _drive(store, pool, owner, ids, configs, varying, folder, progress, lease)
            finished = True
        finally:
            _stop(pool, store, owner, progress, cancel=not finished)
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


def _stop(pool: Any, store: Store, owner: str | None, progress: SweepProgress, cancel: bool) -> None:
    """Close the executor (``cancel``, after a signal or an error: stop the workers now, do not wait for the runs
    in flight) and unregister the driver (its runs still ``running`` go back to ``pending``: a resume waits for
    nothing). A signal arriving meanwhile is held back until both are done."""
    with signals.deferred():
        pool.close(cancel=cancel)
        if owner is not None:
            store.release(owner)
        progress.stop()


def _drive(
    store: Store,
    pool: Any,
    owner: str,
    ids: list[str],
    configs: dict[str, dict[str, Any]],
    varying: tuple[str, ...],
    folder: Path,
    progress: SweepProgress,
    lease: float,
) -> tuple[int, int]:
    """The claim / submit / record loop; returns (runs completed here, runs completed by another driver).

    A signal interrupts it only while it waits (for results, or for another driver): claims, submissions and
    records are :func:`sgdstab.signals.deferred`, so each is done whole or not begun."""
    done_at_start = {r.run_id for r in store.runs(status="done", run_ids=ids)}
    queue = deque(rid for rid in ids if rid not in done_at_start)
    elsewhere: list[str] = []  # claimed by another live driver: re-checked each poll
    inflight: dict[Any, tuple[str, dict[str, Any]]] = {}
    ran = finished_elsewhere = 0
    last_beat = time.monotonic()
    while True:
        free = pool.capacity - len(inflight)
        if free > 0 and (queue or elsewhere):
            batch = list(elsewhere) + [queue.popleft() for _ in range(min(len(queue), max(4 * free, 32)))]
            elsewhere = []
            with signals.deferred():  # a claimed run is submitted and known as in flight, or not claimed
                outcome = store.claim(owner, batch, limit=free)
                for rid, cfg in outcome.claimed:
                    inflight[pool.submit(cfg)] = (rid, cfg)
            queue.extendleft(reversed(outcome.unclaimed))
            elsewhere = outcome.elsewhere
            finished_elsewhere += len([rid for rid in outcome.done if rid not in done_at_start])
            for rid in outcome.done:
                done_at_start.add(rid)
                progress.done += 1
            progress.update(len(inflight))
        if not inflight:
            if not queue and not elsewhere:
                return ran, finished_elsewhere
            time.sleep(POLL_SECONDS)  # only runs held by another driver remain: wait for them
        else:
            for handle in pool.wait(list(inflight), timeout=POLL_SECONDS if elsewhere else 1.0):
                rid, cfg = inflight.pop(handle)
                with signals.deferred():  # the run's files and its store record, whole
                    kept = _record(store, pool, handle, owner, rid, cfg, varying, folder, progress)
                progress.update(len(inflight))
                if kept:
                    ran += 1
                else:  # another driver took the claim over: its record stands
                    finished_elsewhere += 1
        if time.monotonic() - last_beat > lease / 6:
            with signals.deferred():
                store.heartbeat(owner)
            last_beat = time.monotonic()


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
