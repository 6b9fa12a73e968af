"""The SQLite store: claims, completion as one transaction, concurrent drivers, takeover of a dead driver's runs,
and a writer killed with SIGKILL at a random point."""

from __future__ import annotations

import math
import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sweep_helpers import artifact_dirs, assert_artifacts_complete, cli_env

from sgdstab.errors import StoreError
from sgdstab.sweep.artifacts import load_params, run_dir, write_artifacts
from sgdstab.sweep.store import STORE_FILE, Store

IDS = [f"{i:02d}" + "ab" * 31 for i in range(60)]


def _fill(tmp_path, ids=IDS, name="s"):
    with Store.create(tmp_path, name) as store:
        store.register([(rid, {"i": k}) for k, rid in enumerate(ids)])


def _history(k):
    return {"step": [0, 10, 20], "loss": [1.0, 0.5 / (k + 1), 0.25 / (k + 1)]}


def test_claim_complete_and_read_back(tmp_path):
    _fill(tmp_path, IDS[:3])
    with Store.create(tmp_path, "s") as store:
        me = store.register_owner()
        got = store.claim(me, IDS[:3], limit=2)
        assert [rid for rid, _ in got.claimed] == IDS[:2] and got.unclaimed == [IDS[2]]
        assert got.claimed[1][1] == {"i": 1}
        results = {"final_loss": 0.125, "nan": math.nan, "inf": math.inf, "none": None, "name": "dense", "flag": True}
        assert store.complete(IDS[0], me, results, _history(0), {"total": 1.5}, "host:1")
        assert store.fail(IDS[1], me, "ValueError: boom", "Traceback ...", 0.5, "host:2")
        records = {r.run_id: r for r in store.runs()}
        done = records[IDS[0]]
        assert done.status == "done" and done.attempts == 1 and done.seconds == 1.5 and done.worker == "host:1"
        assert (
            done.results["final_loss"] == 0.125 and math.isnan(done.results["nan"]) and done.results["inf"] == math.inf
        )
        assert done.results["none"] is None and done.results["name"] == "dense" and done.results["flag"] == 1
        assert store.history(IDS[0]) == _history(0)
        assert records[IDS[1]].status == "failed" and records[IDS[1]].error == "ValueError: boom"
        assert records[IDS[2]].status == "pending" and records[IDS[2]].attempts == 0
        # a run not held (done, or never claimed) cannot be completed again: no second row, no overwrite
        assert not store.complete(IDS[0], me, {"final_loss": 9.0}, _history(9), {"total": 1.0}, "x")
        assert not store.complete(IDS[2], me, {"final_loss": 9.0}, _history(9), {"total": 1.0}, "x")
        assert store.find(IDS[0][:6]).results["final_loss"] == 0.125
        with pytest.raises(StoreError, match="no run with id"):
            store.find("abab")  # every id contains it, but only a prefix counts
        assert store.counts() == {"pending": 1, "running": 0, "done": 1, "failed": 1}
        store.register([(rid, {}) for rid in IDS[:3]] + [("ffff0" + "0" * 59, {}), ("ffff1" + "0" * 59, {})])
        with pytest.raises(StoreError, match="ambiguous"):
            store.find("ffff")
        assert store.find("ffff1").run_id == "ffff1" + "0" * 59
        assert store.integrity_check() == "ok"


def test_register_is_idempotent_and_keeps_results(tmp_path):
    _fill(tmp_path, IDS[:2])
    with Store.create(tmp_path, "s") as store:
        me = store.register_owner()
        store.claim(me, IDS[:1], 1)
        store.complete(IDS[0], me, {"x": 1.0}, _history(0), {"total": 1.0}, "w")
        assert store.register([(IDS[1], {"i": 1}), (IDS[0], {"i": 0}), (IDS[2], {"i": 2})]) == 1
        records = store.runs()
        assert [r.run_id for r in records] == [IDS[1], IDS[0], IDS[2]]  # positions follow the latest sweep order
        assert records[1].status == "done" and records[1].results == {"x": 1.0}
    rows = sqlite3.connect(tmp_path / STORE_FILE).execute("SELECT COUNT(*), COUNT(DISTINCT run_id) FROM runs")
    assert rows.fetchone() == (3, 3)


def test_store_of_another_sweep_or_not_a_store_is_refused(tmp_path):
    _fill(tmp_path, IDS[:1], name="first")
    with pytest.raises(StoreError, match="holds sweep 'first'"):
        Store.create(tmp_path, "second")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / STORE_FILE).write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not a readable SQLite"):
        Store.open(junk)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="no sweep store"):
        Store.open(tmp_path / "empty")
    with pytest.raises(StoreError, match="does not exist"):
        Store.open(tmp_path / "missing")
    assert not (tmp_path / "empty" / STORE_FILE).exists()  # reading never creates a store
    other = tmp_path / "other"
    other.mkdir()
    conn = sqlite3.connect(other / STORE_FILE)
    conn.execute("CREATE TABLE meta (key TEXT, value TEXT)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="not an sgdstab sweep store"):
        Store.open(other)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_runs_of_a_dead_driver_are_taken_over_and_a_live_ones_are_not(tmp_path):
    _fill(tmp_path, IDS[:3])
    with Store.create(tmp_path, "s") as store:
        dead, live, me = store.register_owner(), store.register_owner(), store.register_owner()
        store.claim(dead, IDS[:1], 1)
        store.claim(live, IDS[1:2], 1)
        store._conn.execute("UPDATE owners SET pid = ? WHERE owner = ?", (_dead_pid(), dead))
        got = store.claim(me, IDS[:3], limit=3)
        assert [rid for rid, _ in got.claimed] == [IDS[0], IDS[2]]
        assert got.elsewhere == [IDS[1]]
        assert store.runs(run_ids=IDS[:1])[0].attempts == 2
        assert dead not in store.live_owners() and live in store.live_owners()
        # the dead driver cannot record the run it lost
        assert not store.complete(IDS[0], dead, {"x": 1.0}, _history(0), {"total": 1.0}, "w")
        assert store.complete(IDS[0], me, {"x": 2.0}, _history(0), {"total": 1.0}, "w")
        assert store.runs(run_ids=IDS[:1])[0].results == {"x": 2.0}


def test_a_driver_on_another_host_is_stale_after_its_lease(tmp_path):
    _fill(tmp_path, IDS[:1])
    with Store.create(tmp_path, "s", lease=5.0) as store:
        remote, me = store.register_owner(), store.register_owner()
        store.claim(remote, IDS[:1], 1)
        store._conn.execute(
            "UPDATE owners SET host = 'elsewhere', heartbeat = ? WHERE owner = ?", (time.time(), remote)
        )
        assert store.claim(me, IDS[:1], 1).elsewhere == IDS[:1]
        store._conn.execute("UPDATE owners SET heartbeat = ? WHERE owner = ?", (time.time() - 6.0, remote))
        assert [rid for rid, _ in store.claim(me, IDS[:1], 1).claimed] == IDS[:1]


def test_release_returns_runs_in_flight_to_pending(tmp_path):
    _fill(tmp_path, IDS[:2])
    with Store.create(tmp_path, "s") as store:
        me = store.register_owner()
        store.claim(me, IDS[:2], 2)
        assert store.release(me) == 2
        assert [r.status for r in store.runs()] == ["pending", "pending"]
        assert store.live_owners() == []


WORKER = textwrap.dedent(
    """
    import sys, time, random
    import numpy as np
    from sgdstab.sweep.store import Store
    from sgdstab.sweep.artifacts import write_artifacts
    folder, ids, seed, pause = sys.argv[1], sys.argv[2].split(","), int(sys.argv[3]), float(sys.argv[4])
    rng = random.Random(seed)
    store = Store.create(folder, "s")
    me = store.register_owner()
    print("ready", flush=True)
    go = folder + "/go"
    while len(sys.argv) > 5 and not __import__("os").path.exists(go):
        time.sleep(0.01)
    while True:
        got = store.claim(me, ids, limit=1)
        if not got.claimed:
            if not got.elsewhere:
                break
            time.sleep(0.01)
            continue
        rid, cfg = got.claimed[0]
        k = cfg["i"]
        time.sleep(rng.random() * pause)
        history = {"step": [0, 10, 20], "loss": [1.0, 0.5 / (k + 1), 0.25 / (k + 1)]}
        write_artifacts(folder, rid, cfg, history, {"k": k}, {"total": 0.1}, np.full(50_000, float(k)))
        assert store.complete(rid, me, {"k": k, "by": me}, history, {"total": 0.1}, me)
    store.release(me)
    """
)


def _spawn_worker(tmp_path, ids, seed, pause, wait_for_go=False):
    return subprocess.Popen(
        [sys.executable, "-c", WORKER, str(tmp_path), ",".join(ids), str(seed), str(pause)] + ["go"] * wait_for_go,
        stdout=subprocess.PIPE,
        text=True,
        env=cli_env(),
        start_new_session=True,
    )


def _check_each_done_once(tmp_path, ids):
    conn = sqlite3.connect(tmp_path / STORE_FILE)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert conn.execute("SELECT COUNT(*), COUNT(DISTINCT run_id) FROM runs").fetchone() == (len(ids), len(ids))
        assert conn.execute("SELECT COUNT(*) FROM runs WHERE status = 'done'").fetchone() == (len(ids),)
        assert conn.execute("SELECT COUNT(*) FROM results WHERE name = 'k'").fetchone() == (len(ids),)
        assert conn.execute("SELECT COUNT(*) FROM metrics").fetchone() == (3 * len(ids),)
        for rid, k in conn.execute("SELECT run_id, value FROM results WHERE name = 'k'"):
            assert ids.index(rid) == k
        return dict(conn.execute("SELECT run_id, attempts FROM runs").fetchall())
    finally:
        conn.close()


def test_three_drivers_at_once_complete_every_run_exactly_once(tmp_path):
    ids = IDS[:36]
    _fill(tmp_path, ids)
    procs = [_spawn_worker(tmp_path, ids, seed, 0.02, wait_for_go=True) for seed in range(3)]
    for proc in procs:
        assert proc.stdout.readline().strip() == "ready"
    (tmp_path / "go").touch()  # all three start claiming together
    for proc in procs:
        assert proc.wait(timeout=180) == 0
    attempts = _check_each_done_once(tmp_path, ids)
    assert sum(attempts.values()) == len(ids)  # no run was claimed twice
    with Store.open(tmp_path) as store:
        drivers = {r.results["by"] for r in store.runs()}
    assert len(drivers) == 3  # the work was really shared
    assert_artifacts_complete(tmp_path)


def test_drivers_creating_one_new_store_together_all_open_it(tmp_path):
    """SQLite answers "database is locked" at once, without its busy handler, to the WAL switch while another
    connection opens the same new file (two `sgdstab sweep` started together failed that way in CI). Four
    threads create one store at once, 150 times over: about one try in thirty failed before the switch was
    retried."""

    def create_all(folder: Path) -> list[str]:
        folder.mkdir()
        barrier, errors = threading.Barrier(4), []

        def create() -> None:
            barrier.wait()
            try:
                Store.create(folder, "together").close()
            except StoreError as exc:
                errors.append(str(exc))

        threads = [threading.Thread(target=create) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return errors

    failures = [err for trial in range(150) for err in create_all(tmp_path / str(trial))]
    assert failures == []


def test_writer_killed_at_a_random_point_leaves_a_sound_store_and_resumes(tmp_path):
    rng = random.Random()
    seed = rng.randrange(10**6)
    _fill(tmp_path)
    proc = _spawn_worker(tmp_path, IDS, seed, 0.05)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(random.Random(seed).uniform(0.2, 1.2))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # what the kill left: an intact database, complete files only, each done run with all its rows
    conn = sqlite3.connect(tmp_path / STORE_FILE)
    assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",), f"seed {seed}"
    before = dict(conn.execute("SELECT run_id, finished FROM runs WHERE status = 'done'").fetchall())
    for rid in before:
        assert conn.execute("SELECT COUNT(*) FROM metrics WHERE run_id = ?", (rid,)).fetchone() == (3,)
    conn.close()
    assert 0 < len(before) < len(IDS), f"seed {seed}: the kill should land mid-sweep"
    assert_artifacts_complete(tmp_path)
    assert {run_dir(tmp_path, rid).name for rid in before} <= artifact_dirs(tmp_path)
    # resume: the killed driver's run is taken over at once, finished runs are not touched
    with Store.create(tmp_path, "s") as store:
        me = store.register_owner()
        while True:
            got = store.claim(me, IDS, limit=8)
            if not got.claimed:
                assert not got.elsewhere
                break
            for rid, cfg in got.claimed:
                k = cfg["i"]
                write_artifacts(tmp_path, rid, cfg, _history(k), {"k": k}, {"total": 0.1}, np.full(50_000, float(k)))
                assert store.complete(rid, me, {"k": k}, _history(k), {"total": 0.1}, me)
        after = {r.run_id: r for r in store.runs()}
    attempts = _check_each_done_once(tmp_path, IDS)
    for rid, finished in before.items():
        assert after[rid].finished == finished and attempts[rid] == 1, f"seed {seed}: a finished run was redone"
    assert sum(a > 1 for a in attempts.values()) <= 1  # at most the one run in flight at the kill ran twice
    assert_artifacts_complete(tmp_path)
    for rid in IDS:
        assert float(load_params(run_dir(tmp_path, rid) / "params.pt")[0]) == IDS.index(rid)


def test_non_finite_timings_round_trip_as_strict_json_and_old_bare_nan_still_reads(tmp_path):
    """Timings are written as strict JSON ("NaN"/"Infinity", sgdstab.utils.results); a store written before, whose
    timings hold a bare NaN (json.dumps' default), still reads."""
    _fill(tmp_path, IDS[:2])
    with Store.create(tmp_path, "s") as store:
        me = store.register_owner()
        store.claim(me, IDS[:2], limit=2)
        timings = {"total": 1.5, "polish": math.nan, "wait": math.inf}
        assert store.complete(IDS[0], me, {"final_loss": math.nan}, _history(0), timings, "host:1")
        assert store.complete(IDS[1], me, {"final_loss": 0.5}, _history(1), {"total": 2.0}, "host:1")
    conn = sqlite3.connect(tmp_path / STORE_FILE)
    (text,) = conn.execute("SELECT timings FROM runs WHERE run_id = ?", (IDS[0],)).fetchone()
    assert text == '{"total": 1.5, "polish": "NaN", "wait": "Infinity"}'
    (stored,) = conn.execute("SELECT value FROM results WHERE run_id = ?", (IDS[0],)).fetchone()
    assert stored == "NaN"  # SQLite would turn a NaN REAL into NULL
    with conn:
        conn.execute("UPDATE runs SET timings = ? WHERE run_id = ?", ('{"total": 2.0, "x": NaN}', IDS[1]))
    conn.close()
    with Store.open(tmp_path) as store:
        records = {r.run_id: r for r in store.runs()}
    got = records[IDS[0]].timings
    assert got["total"] == 1.5 and math.isnan(got["polish"]) and got["wait"] == math.inf
    assert math.isnan(records[IDS[0]].results["final_loss"])
    assert records[IDS[1]].timings["total"] == 2.0 and math.isnan(records[IDS[1]].timings["x"])


def test_run_files_spell_non_finite_figures_as_strict_json(tmp_path):
    """history.json of a run: non-finite figures as "NaN"/"Infinity"/"-Infinity", read back by decode_float."""
    import json

    from sgdstab.utils.results import decode_float

    results = {"mu": math.nan, "frobenius_bound": math.inf, "low": -math.inf, "final_loss": 0.25}
    folder = write_artifacts(
        tmp_path, IDS[0], {"lr": 0.1}, {"step": [0], "loss": [math.nan]}, results, {"total": 1.0}, np.zeros(3)
    )
    text = (folder / "history.json").read_text()
    data = json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in history.json"))
    assert data["results"] == {"mu": "NaN", "frobenius_bound": "Infinity", "low": "-Infinity", "final_loss": 0.25}
    assert data["columns"]["loss"] == ["NaN"]
    decoded = {k: decode_float(v) for k, v in data["results"].items()}
    assert math.isnan(decoded["mu"]) and decoded["frobenius_bound"] == math.inf and decoded["low"] == -math.inf
