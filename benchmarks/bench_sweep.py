"""Sweep executors: per-run overhead of each executor against calling the run function in a loop, and the
throughput of the local process pool on 2 cores against a serial loop.

Runs: a grid of tiny sgdstab sweep runs (scikit-learn digits, classes 0/1, n = 40, MLP 64-8-1 tanh, p = 529,
60 SGD steps, every figure on the exact dense route: about 0.1–0.2 s of compute each), the same for every
contender. Contenders:

- ``direct``: ``sgdstab.sweep.run.execute_run`` in a loop in this process (the baseline: no store, no files);
- ``serial``: ``run_sweep(executor="serial")`` — the same process, plus the SQLite store (claim + one completion
  transaction per run), the per-run files (config.json, history.json, params.pt, atomically) and the driver loop;
- ``local×1``, ``local×2``: ``run_sweep(executor="local", workers=1|2)`` — a spawn-based process pool (each worker
  imports torch and sgdstab, then warms up on its first run), results pickled back to the driver;
- ``ray×2``: ``run_sweep(executor="ray", workers=2)`` on a local Ray instance it starts (when ray is installed).

Each contender runs one grid of N runs (N = 32; 12 with ``--quick``) in a fresh directory; the completion time of
every run is read back (the store's ``finished`` stamps; for ``direct``, the loop's clock). From them:
``startup`` = time to the first result minus one direct run (pool or Ray start-up, worker imports and warm-up,
store creation); ``steady`` = wall time per run once every worker has delivered one, (t_N − t_w)/(N − w) for w
workers; ``overhead/run`` = w · steady − t_direct, the extra time a run costs its worker (IPC, the store's two
transactions, the run's files, the driver loop); the throughput ratio T_direct/T (> 1: faster than the serial loop,
start-up included) and the steady speed-up t_direct/steady. Wall time is the measure (parallel workers); every
process runs one torch thread and one BLAS thread. The CPU seconds of this process and its reaped children (the
pool workers; Ray's workers are not our children) are reported beside it. The report step (figures) is not timed
(``report=False``). On a machine shared with other work the wall times are inflated and noisy (the load average is
recorded).

    .venv/bin/python benchmarks/bench_sweep.py [--quick] [--no-ray]

Results: printed tables and ``benchmarks/results/sweep.json`` (``sweep_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from sgdstab.sweep import run_sweep, sweep_from_dict
from sgdstab.sweep.run import execute_run
from sgdstab.sweep.store import Store

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, busy_warning, limit_blas_threads, machine_state, progress, table, write_json

BASE = {"dataset": "digits", "classes": [0, 1], "n": 40, "widths": [8], "steps": 60, "track_every": 10}


def grid(count: int, offset: int) -> Any:
    """``count`` runs: lr × B × seeds, seeds from ``offset`` (so two grids share no run)."""
    lrs, batches = [0.05, 0.2], [4, 20]
    seeds = list(range(offset, offset + max(1, count // 4)))
    return sweep_from_dict(
        {"name": f"bench-{count}-{offset}", "base": BASE, "grid": {"lr": lrs, "batch_size": batches, "seed": seeds}},
        source="benchmark grid",
    )


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def timed_run(kind: str, workers: int | None, count: int, folder: Path) -> dict[str, Any]:
    """Run the grid; return wall and CPU seconds and the completion time of each run (from the start)."""
    sweep = grid(count, 0)
    out = folder / f"{kind}-{workers}"
    cpu0, wall0, epoch0 = cpu_seconds(), time.perf_counter(), time.time()
    if kind == "direct":
        stamps = []
        for run in sweep.expand():
            execute_run(run)
            stamps.append(time.time() - epoch0)
    else:
        summary = run_sweep(sweep, out, executor=kind, workers=workers, threads=1, quiet=True, report=False)
        assert summary.done == summary.total == count, summary
        with Store.open(out) as store:
            stamps = sorted(r.finished - epoch0 for r in store.runs())
    wall, cpu = time.perf_counter() - wall0, cpu_seconds() - cpu0
    shutil.rmtree(out, ignore_errors=True)
    return {"runs": count, "wall": wall, "cpu": cpu, "finished": stamps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a grid of 12 runs (default 32)")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray executor")
    parser.add_argument("--out", default=None, help="JSON path (default results/sweep.json or sweep_quick.json)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    _blas = limit_blas_threads(1)
    count = 12 if args.quick else 32
    contenders: list[tuple[str, str, int]] = [
        ("direct", "direct", 1),
        ("serial", "serial", 1),
        ("local×1", "local", 1),
        ("local×2", "local", 2),
    ]
    if not args.no_ray and importlib.util.find_spec("ray") is not None:
        contenders.append(("ray×2", "ray", 2))
    state = machine_state()
    progress(f"machine: {state}")
    warning = busy_warning()
    if warning:
        progress(f"warning: {warning}")
    folder = Path(tempfile.mkdtemp(prefix="sgdstab-bench-sweep-"))
    rows: dict[str, dict[str, Any]] = {}
    try:
        progress("warm-up: one direct run (imports, first-call costs of this process)")
        execute_run(grid(4, 10_000).expand()[0])
        for label, kind, workers in contenders:
            rows[label] = timed_run(kind, None if kind in ("direct", "serial") else workers, count, folder)
            rows[label]["workers"] = workers
            progress(f"{label}: {count} runs in {rows[label]['wall']:.2f} s")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    t_direct = rows["direct"]["wall"] / count
    for row in rows.values():
        w, stamps = row["workers"], row["finished"]
        row["startup"] = stamps[0] - t_direct
        row["steady_per_run"] = (stamps[-1] - stamps[w - 1]) / (count - w)
        row["overhead_per_run"] = w * row["steady_per_run"] - t_direct
        row["throughput_vs_direct"] = rows["direct"]["wall"] / row["wall"]
        row["steady_speedup_vs_direct"] = t_direct / row["steady_per_run"]
    headers = [
        "executor",
        f"T({count}) s",
        f"CPU({count}) s",
        "startup s",
        "steady ms/run",
        "overhead/run ms",
        "throughput vs loop",
        "steady speed-up",
    ]
    lines = [
        [
            label,
            f"{row['wall']:.2f}",
            f"{row['cpu']:.2f}" + ("*" if label.startswith("ray") else ""),
            f"{row['startup']:.2f}",
            f"{1000 * row['steady_per_run']:.0f}",
            f"{1000 * row['overhead_per_run']:+.0f}",
            f"{row['throughput_vs_direct']:.2f}×",
            f"{row['steady_speedup_vs_direct']:.2f}×",
        ]
        for label, row in rows.items()
    ]
    print(f"\nSweep executors on a grid of {count} tiny runs (wall time; direct run: {1000 * t_direct:.0f} ms)\n")
    print(table(headers, lines, right=range(1, len(headers))))
    print("\n* Ray's workers are not children of this process: their CPU time is not counted.")
    out = Path(args.out) if args.out else RESULTS_DIR / ("sweep_quick.json" if args.quick else "sweep.json")
    write_json(
        out,
        {
            "machine": state,
            "busy_warning": warning,
            "runs": count,
            "direct_seconds_per_run": t_direct,
            "run_config": BASE,
            "contenders": rows,
        },
    )
    progress(f"wrote {out}")


if __name__ == "__main__":
    main()
