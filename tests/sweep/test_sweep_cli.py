"""`sgdstab sweep` and `sgdstab runs list|show|export` end to end on a tiny sweep with the local process pool,
resume and retry through the driver, and bad output directories / options (exit code 2, one line)."""

from __future__ import annotations

import csv
import json
import math
import os
import sqlite3
import sys

import pytest
import torch
from sweep_helpers import TINY_BASE, assert_artifacts_complete, write_config
from threadpoolctl import threadpool_limits

from sgdstab.cli import main
from sgdstab.sweep import load_sweep, run_sweep
from sgdstab.sweep.artifacts import load_params, run_dir
from sgdstab.sweep.config import run_from_dict
from sgdstab.sweep.run import execute_run
from sgdstab.sweep.store import STORE_FILE, Store

GOOD = [(0.05, 4), (0.05, 20), (0.2, 4), (0.2, 20)]
MISSING = "/nonexistent/sgdstab-test-data"
RUNS = "".join(f"[[runs]]\nlr = {lr}\nbatch_size = {b}\n" for lr, b in GOOD) + (
    f'[[runs]]\ndataset = "fashion-mnist"\ndata_dir = "{MISSING}"\n'
)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """The tiny sweep run once in this process (serial executor): 4 good runs and 1 that fails."""
    folder = tmp_path_factory.mktemp("sweep")
    config = write_config(folder, RUNS, name="cli")
    out = folder / "out"
    summary = run_sweep(load_sweep(config), out, executor="serial", quiet=True)
    return config, out, summary


def _records(out):
    with Store.open(out) as store:
        return store.runs()


def test_sweep_records_good_runs_and_the_failure_without_stopping(swept):
    _, out, summary = swept
    assert (summary.total, summary.done, summary.failed, summary.ran, summary.skipped) == (5, 4, 1, 5, 0)
    records = _records(out)
    assert [r.status for r in records] == ["done"] * 4 + ["failed"]
    assert [(r.config["lr"], r.config["batch_size"]) for r in records[:4]] == GOOD
    failed = records[4]
    assert failed.error.startswith("DataError") and MISSING in failed.error and "Traceback" in failed.traceback
    for r in records[:4]:
        assert r.results["diverged"] == 0 and r.results["steps_done"] == 60
        assert r.results["final_loss"] < 0.5 and r.results["hessian_frobenius"] > 0 and r.results["mu"] > 0
        assert r.results["curvature_exact"] == 1  # p = 529: the dense route
        assert set(r.timings) == {"data", "train", "polish", "measure", "total"} and r.seconds == r.timings["total"]
        files = run_dir(out, r.run_id)
        assert sorted(p.name for p in files.iterdir()) == ["config.json", "history.json", "params.pt"]
    assert not run_dir(out, failed.run_id).exists()
    assert_artifacts_complete(out)
    assert json.loads((out / "config.json").read_text())["experiment"] == "sweep"
    report = (out / "report.md").read_text()
    assert "4/5 runs converged" in report
    assert "**FAILED** — every run of the sweep ran to its end without failing or diverging" in report
    assert all(r.short_id in report for r in records) and "## Failed runs" in report
    with open(out / "results.csv", newline="") as fh:
        assert [row["run_id"] for row in csv.DictReader(fh)] == [r.run_id for r in records]


def test_stored_figures_equal_a_direct_run(swept, one_thread):
    _, out, _ = swept
    record = _records(out)[2]
    with threadpool_limits(1, "blas"):
        direct = execute_run(run_from_dict(record.config))
    for name, value in direct.results.items():
        stored = record.results[name]
        assert stored == value or (math.isnan(value) and math.isnan(stored)), name
    with Store.open(out) as store:
        assert store.history(record.run_id) == direct.history
    theta = load_params(run_dir(out, record.run_id) / "params.pt")
    assert torch.equal(theta, torch.from_numpy(direct.theta))


def test_resume_skips_done_runs_and_retries_the_failed_one(swept):
    config, out, _ = swept
    before = {r.run_id: r for r in _records(out)}
    again = run_sweep(load_sweep(config), out, executor="serial", quiet=True, report=False)
    assert (again.ran, again.skipped, again.done, again.failed) == (1, 4, 4, 1)
    after = {r.run_id: r for r in _records(out)}
    assert after.keys() == before.keys()
    for rid, r in after.items():
        if r.status == "done":
            assert (r.attempts, r.finished, r.results) == (1, before[rid].finished, before[rid].results)
        else:
            assert r.attempts == 2 and r.finished > before[rid].finished
    rows = sqlite3.connect(out / STORE_FILE).execute("SELECT COUNT(*), COUNT(DISTINCT run_id || name) FROM results")
    count, distinct = rows.fetchone()
    assert count == distinct == sum(len(r.results) for r in after.values())


def test_runs_list_show_and_export(swept, capsys, tmp_path):
    _, out, _ = swept
    records = _records(out)
    capsys.readouterr()
    assert main(["runs", "list", str(out)]) == 0
    listing = capsys.readouterr().out
    assert all(r.short_id in listing for r in records) and "4 converged, 1 failed" in listing
    assert main(["runs", "list", str(out), "--status", "failed"]) == 0
    listing = capsys.readouterr().out
    assert records[4].short_id in listing and records[0].short_id not in listing

    assert main(["runs", "show", str(out), records[1].run_id[:6]]) == 0
    shown = capsys.readouterr().out
    assert records[1].run_id in shown and "final_loss" in shown and "params.pt" in shown
    assert f"{records[1].results['final_loss']:.4g}" in shown
    assert main(["runs", "show", str(out), records[4].run_id[:8]]) == 0
    assert "DataError" in capsys.readouterr().out

    target = tmp_path / "runs.csv"
    assert main(["runs", "export", str(out), "--out", str(target)]) == 0
    assert capsys.readouterr().out.strip() == str(target)
    with open(target, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [row["run_id"] for row in rows] == [r.run_id for r in records]
    for row, r in zip(rows, records, strict=True):
        assert row["status"] == r.status and float(row["lr"]) == r.config["lr"]
        if r.status == "done":
            assert float(row["final_loss"]) == r.results["final_loss"]  # full precision
            assert float(row["hessian_frobenius"]) == r.results["hessian_frobenius"]
    assert main(["runs", "export", str(out), "--table", "metrics", "--out", str(tmp_path / "m.csv")]) == 0
    with open(tmp_path / "m.csv", newline="") as fh:
        metrics = list(csv.DictReader(fh))
    assert len(metrics) == 4 * 7  # 4 done runs × steps 0, 10, …, 60 of the loss
    first = [m for m in metrics if m["run_id"] == records[0].run_id]
    assert [float(m["value"]) for m in first] == records_history(out, records[0].run_id)


def records_history(out, run_id):
    with Store.open(out) as store:
        return store.history(run_id)["loss"]


def test_parquet_export(swept, capsys, tmp_path):
    _, out, _ = swept
    code = main(["runs", "export", str(out), "--format", "parquet", "--out", str(tmp_path / "r.parquet")])
    try:
        import pyarrow.parquet as pq
    except ImportError:
        assert code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "pyarrow" in err and "--format csv" in err
        assert not (tmp_path / "r.parquet").exists()
        return
    assert code == 0
    table = pq.read_table(tmp_path / "r.parquet").to_pylist()
    assert [row["run_id"] for row in table] == [r.run_id for r in _records(out)]


def _one_line_error(capsys, *args):
    code = main(list(args))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error:") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_bad_output_directories_are_refused(tmp_path, capsys):
    config = write_config(tmp_path, "[grid]\nlr = [0.1]\n", name="mine")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    assert "is a file" in _one_line_error(capsys, "sweep", str(config), "--out", str(a_file))
    experiment = tmp_path / "exp"
    experiment.mkdir()
    (experiment / "config.json").write_text(json.dumps({"experiment": "diagram"}))
    err = _one_line_error(capsys, "sweep", str(config), "--out", str(experiment))
    assert "experiment 'diagram'" in err
    other = tmp_path / "other"
    other.mkdir()
    Store.create(other, "theirs").close()
    err = _one_line_error(capsys, "sweep", str(config), "--out", str(other))
    assert "holds sweep 'theirs'" in err and "'mine'" in err
    with Store.open(other) as store:
        assert store.runs() == []  # nothing of the refused sweep was written
    # an experiment refuses a sweep's directory too
    sweep_dir = tmp_path / "sw"
    run_sweep(load_sweep(config), sweep_dir, executor="serial", quiet=True, report=False)
    err = _one_line_error(capsys, "experiment", "diagram", "--quick", "--out", str(sweep_dir))
    assert "experiment 'sweep'" in err


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any directory")
def test_unwritable_output_directory(tmp_path, capsys):
    config = write_config(tmp_path, "[grid]\nlr = [0.1]\n")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert "not writable" in _one_line_error(capsys, "sweep", str(config), "--out", str(locked))


def test_bad_options_and_missing_arguments(tmp_path, capsys, monkeypatch):
    config = write_config(tmp_path, "[grid]\nlr = [0.1]\n")
    out = str(tmp_path / "o")
    assert "missing CONFIG" in _one_line_error(capsys, "sweep")
    assert "missing --out" in _one_line_error(capsys, "sweep", str(config))
    assert "--address is for --executor ray" in _one_line_error(
        capsys, "sweep", str(config), "--out", out, "--address", "auto"
    )
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    err = _one_line_error(capsys, "sweep", str(config), "--out", out, "--executor", "ray")
    assert 'pip install "sgdstab[ray]"' in err
    assert "not found" in _one_line_error(capsys, "sweep", str(tmp_path / "nope.toml"), "--out", out)
    assert "missing subcommand" in _one_line_error(capsys, "runs")
    assert "no sweep store" in _one_line_error(capsys, "runs", "list", str(tmp_path))
    assert main(["sweep", str(config), "--out", out, "--workers", "0"]) == 2  # click's range check
    assert "Invalid value" in capsys.readouterr().err


def test_serial_driver_failure_retry_and_config_change(tmp_path):
    body = f'[[runs]]\nlr = 0.1\n[[runs]]\ndataset = "fashion-mnist"\ndata_dir = "{MISSING}"\n'
    out = tmp_path / "out"
    first = run_sweep(load_sweep(write_config(tmp_path, body)), out, executor="serial", quiet=True, report=False)
    assert (first.total, first.done, first.failed, first.ran, first.skipped) == (2, 1, 1, 2, 0)
    again = run_sweep(load_sweep(write_config(tmp_path, body)), out, executor="serial", quiet=True, report=False)
    assert (again.done, again.failed, again.ran, again.skipped) == (1, 1, 1, 1)
    # a changed field is a new run; the old runs stay in the store
    changed = TINY_BASE.replace("steps = 60", "steps = 70")
    path = tmp_path / "changed.toml"
    path.write_text('name = "tiny"\n' + changed + "[[runs]]\nlr = 0.1\n")
    third = run_sweep(load_sweep(path), out, executor="serial", quiet=True, report=False)
    assert (third.total, third.ran, third.skipped) == (1, 1, 0)
    records = _records(out)
    assert len(records) == 3 and sorted(r.config["steps"] for r in records) == [60, 60, 70]
    assert [r.attempts for r in records if r.status == "failed"] == [2]
