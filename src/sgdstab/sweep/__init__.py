"""Sweeps: resumable grids of runs (train + measure) with a durable SQLite result store, run on a local process
pool or on a Ray cluster.

``sgdstab sweep CONFIG --out DIR [--executor local|ray] [--address ADDR] [--workers N]`` or::

    from sgdstab.sweep import load_sweep, run_sweep
    summary = run_sweep(load_sweep("examples/sweep-quick.toml"), "runs/quick", executor="local", workers=2)

Modules, one job each:

- :mod:`~sgdstab.sweep.config` — :class:`RunConfig` (one run's fields: data and model, SGD, measurements) and the
  sweep file (``[base]``, ``[grid]``, ``[[runs]]``), validated with the experiments' rules; :func:`run_hash`;
- :mod:`~sgdstab.sweep.run` — one run: build the problem, :func:`sgdstab.train`, :func:`sgdstab.alignment` where
  SGD stopped, :func:`sgdstab.polish_to_minimum`, then :func:`sgdstab.curvature` (and :func:`sgdstab.stability`)
  at the global minimum; its figures; :mod:`~sgdstab.sweep.outcome` — converged / diverged, and whether the
  Frobenius bound applies to a run;
- :mod:`~sgdstab.sweep.store` — the SQLite store (runs, metrics, results; claims and leases for several drivers);
- :mod:`~sgdstab.sweep.executors` — serial, local process pool (spawn), Ray;
- :mod:`~sgdstab.sweep.driver` — claim, execute, record, resume; :mod:`~sgdstab.sweep.progress` — progress;
- :mod:`~sgdstab.sweep.artifacts` — per-run files (atomic); :mod:`~sgdstab.sweep.export` — CSV/Parquet tables;
  :mod:`~sgdstab.sweep.report` — ``report.md`` and figures.

A sweep directory holds ``sweep.db`` (the store), ``config.json`` (the sweep), ``runs/<id>/`` (per-run
``config.json``, ``history.json``, ``params.pt``), and after each call ``results.csv``, ``report.md`` and PNG
figures.
"""

from sgdstab.errors import ExecutorError, ExportError, StoreError
from sgdstab.sweep.config import RunConfig, SweepConfig, load_sweep, run_hash, sweep_from_dict
from sgdstab.sweep.driver import SweepSummary, run_sweep
from sgdstab.sweep.executors import EXECUTORS
from sgdstab.sweep.export import export
from sgdstab.sweep.run import RunFailure, RunOutput, execute_run
from sgdstab.sweep.store import Store

__all__ = [
    "EXECUTORS",
    "ExecutorError",
    "ExportError",
    "RunConfig",
    "RunFailure",
    "RunOutput",
    "Store",
    "StoreError",
    "SweepConfig",
    "SweepSummary",
    "execute_run",
    "export",
    "load_sweep",
    "run_hash",
    "run_sweep",
    "sweep_from_dict",
]
