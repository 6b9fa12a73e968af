"""The real command under faults (slow: each starts several Python processes): `sgdstab sweep` killed with
SIGKILL at a random point and resumed, two sweeps on one directory at once, a worker process that dies, and the
local pool against the serial executor through the CLI."""

from __future__ import annotations

import math
import os
import random
import signal
import subprocess
import time

import pytest
from sweep_helpers import (
    assert_artifacts_complete,
    cli_command,
    cli_env,
    db_rows,
    grid_config,
    run_cli,
    write_config,
)

from sgdstab.cli import main
from sgdstab.sweep import load_sweep, run_sweep
from sgdstab.sweep.artifacts import run_dir
from sgdstab.sweep.config import RunConfig, run_to_dict
from sgdstab.sweep.executors import LocalExecutor
from sgdstab.sweep.run import RunFailure, RunOutput
from sgdstab.sweep.store import Store

pytestmark = pytest.mark.slow

LRS, BATCHES, SEEDS = (0.05, 0.2), (4, 20), (0, 1)
TOTAL = len(LRS) * len(BATCHES) * len(SEEDS)
STEPS = 400  # long enough (≈ 0.3 s a run on a quiet machine) that the kill lands before the last run ends
ROWS = STEPS // 10 + 1  # the history's rows: steps 0, 10, …, STEPS


def _config(tmp_path, steps=STEPS):
    path = grid_config(tmp_path, LRS, BATCHES, SEEDS)
    path.write_text(path.read_text().replace("steps = 60", f"steps = {steps}"))
    return path


def _counts(out):
    if not (out / "sweep.db").exists():
        return {}
    try:
        return dict(db_rows(out, "SELECT status, COUNT(*) FROM runs GROUP BY status"))
    except Exception:  # the store is being created
        return {}


def _assert_each_done_once(out):
    assert db_rows(out, "PRAGMA integrity_check") == [("ok",)]
    assert db_rows(out, "SELECT status, COUNT(*) FROM runs GROUP BY status") == [("done", TOTAL)]
    (per_run,) = {n for (n,) in db_rows(out, "SELECT COUNT(*) FROM results GROUP BY run_id")}
    assert db_rows(out, "SELECT COUNT(*), COUNT(DISTINCT run_id) FROM results WHERE name = 'final_loss'") == [
        (TOTAL, TOTAL)
    ]
    assert db_rows(out, "SELECT COUNT(*) FROM results") == [(TOTAL * per_run,)]
    assert db_rows(out, "SELECT COUNT(*) FROM metrics") == [(TOTAL * ROWS,)]


def test_cli_sweep_killed_with_sigkill_at_a_random_point_and_resumed(tmp_path):
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    config, out = _config(tmp_path), tmp_path / "out"
    # at most TOTAL − 4 done before the kill, then ≤ 0.1 s: two workers cannot finish the other four meanwhile
    wait_for = rng.randint(1, TOTAL - 4)
    proc = subprocess.Popen(
        cli_command("sweep", str(config), "--out", str(out), "--workers", "2"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=cli_env(),
        start_new_session=True,  # the driver and its workers: one process group, killed together
    )
    try:
        deadline = time.monotonic() + 300
        while _counts(out).get("done", 0) < wait_for and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.1))
        assert proc.poll() is None, f"seed {seed}: the sweep ended before the kill"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert db_rows(out, "PRAGMA integrity_check") == [("ok",)], f"seed {seed}"
    before = dict(db_rows(out, "SELECT run_id, finished FROM runs WHERE status = 'done'"))
    assert wait_for <= len(before) < TOTAL, f"seed {seed}"
    for rid in before:  # a run marked done has all its rows and files
        assert db_rows(out, "SELECT COUNT(*) FROM metrics WHERE run_id = ?", (rid,)) == [(ROWS,)]
        assert (run_dir(out, rid) / "params.pt").is_file()
    assert_artifacts_complete(out)  # whatever is visible is complete

    resumed = run_cli("sweep", str(config), "--out", str(out), "--workers", "2")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{len(before)} already done, {TOTAL - len(before)} to run" in resumed.stderr
    _assert_each_done_once(out)
    after = dict(db_rows(out, "SELECT run_id, finished FROM runs"))
    attempts = dict(db_rows(out, "SELECT run_id, attempts FROM runs"))
    for rid, finished in before.items():
        assert after[rid] == finished and attempts[rid] == 1, f"seed {seed}: a finished run was redone"
    assert sum(a > 1 for a in attempts.values()) <= 2  # only the runs in flight at the kill ran again
    assert_artifacts_complete(out)
    assert not [p for p in out.rglob(".*.tmp")]  # the killed writer's temporaries were cleaned up
    report = (out / "report.md").read_text()
    assert f"{TOTAL}/{TOTAL} runs converged" in report


def test_two_cli_sweeps_on_one_directory_at_once(tmp_path):
    config, out = _config(tmp_path), tmp_path / "out"
    procs = [
        subprocess.Popen(
            cli_command("sweep", str(config), "--out", str(out), "--workers", "1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )
        for _ in range(2)
    ]
    results = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
    _assert_each_done_once(out)
    assert db_rows(out, "SELECT SUM(attempts) FROM runs") == [(TOTAL,)]  # no run was executed twice
    assert db_rows(out, "SELECT COUNT(*) FROM owners") == [(0,)]  # both unregistered cleanly
    assert_artifacts_complete(out)


def test_dead_worker_becomes_a_failed_run_and_the_pool_recovers():
    tiny = {"dataset": "digits", "classes": (0, 1), "n": 40, "widths": (8,)}
    long_run = run_to_dict(RunConfig(**tiny, steps=10**7, track_every=10**6))
    pool = LocalExecutor(workers=1)
    try:
        handle = pool.submit(long_run)
        time.sleep(0.5)
        (pid,) = list(pool._pool._processes)  # the one worker
        time.sleep(3.0)  # let it start the run
        os.kill(pid, signal.SIGKILL)
        (done,) = pool.wait([handle], timeout=60)
        failure = pool.result(done)
        assert isinstance(failure, RunFailure) and failure.error.startswith("WorkerDied")
        again = pool.submit(run_to_dict(RunConfig(**tiny, steps=20)))
        (done,) = pool.wait([again], timeout=120)
        assert isinstance(pool.result(done), RunOutput)
    finally:
        pool.close(cancel=True)


def test_cli_local_pool_equals_the_serial_executor(tmp_path, capsys):
    body = "[[runs]]\nlr = 0.2\n[[runs]]\nlr = 0.05\nbatch_size = 20\nstability = true\n"
    config = write_config(tmp_path, body)
    serial = run_sweep(load_sweep(config), tmp_path / "serial", executor="serial", quiet=True, report=False)
    assert serial.done == 2
    assert main(["sweep", str(config), "--out", str(tmp_path / "pool"), "--workers", "2"]) == 0
    err = capsys.readouterr().err
    assert "[2/2]" in err and "ETA" in err
    with Store.open(tmp_path / "serial") as a, Store.open(tmp_path / "pool") as b:
        mine, theirs = {r.run_id: r for r in a.runs()}, {r.run_id: r for r in b.runs()}
        assert mine.keys() == theirs.keys()
        for rid, r in mine.items():
            for name, value in r.results.items():
                other = theirs[rid].results[name]
                assert value == other or (math.isnan(value) and math.isnan(other)), name
            assert a.history(rid) == b.history(rid)
