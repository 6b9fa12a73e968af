"""The Ray executor on a local Ray instance gives the same results table as the local process pool for the same
seeds (slow: starting Ray takes several seconds; `make test-ray` runs it, and CI runs that target)."""

from __future__ import annotations

import importlib.util

import pytest
from sweep_helpers import grid_config

from sgdstab.cli import main
from sgdstab.sweep import load_sweep, run_sweep
from sgdstab.sweep.export import run_table
from sgdstab.sweep.store import Store

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("ray") is None,
        reason='ray is not installed: pip install "sgdstab[ray]" (make test installs it with the test extra)',
    ),
]

TIMING = ("seconds",)  # the only columns that may differ between executors


def _table(out):
    with Store.open(out) as store:
        rows = run_table(store.runs())
        histories = {r.run_id: store.history(r.run_id) for r in store.runs()}
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows], histories


def test_ray_executor_gives_the_local_results_table(tmp_path, capsys):
    config = grid_config(tmp_path, lrs=(0.05, 0.2), batches=(4, 20), seeds=(0, 1))
    local = run_sweep(load_sweep(config), tmp_path / "local", executor="local", workers=2, quiet=True, report=False)
    assert local.done == 8
    assert main(["sweep", str(config), "--out", str(tmp_path / "ray"), "--executor", "ray", "--workers", "2"]) == 0
    assert "(ray, 2 at a time)" in capsys.readouterr().err
    local_rows, local_hist = _table(tmp_path / "local")
    ray_rows, ray_hist = _table(tmp_path / "ray")
    assert len(ray_rows) == 8 and all(row["status"] == "done" for row in ray_rows)
    assert repr(ray_rows) == repr(local_rows)  # repr: NaN == NaN, every float bit for bit
    assert ray_hist == local_hist
    with Store.open(tmp_path / "ray") as store:
        workers = {r.worker for r in store.runs()}
    assert len(workers) >= 1 and all(":" in w for w in workers)
