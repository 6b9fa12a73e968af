"""Faults injected into a sweep store: a damaged page (the history silently cut), a damaged index (a status
filter silently empty), and a full disk (SQLite's SQLITE_FULL, by ``max_page_count`` and, where mounting is
allowed, by a real full tmpfs). Each is refused in one line, nothing is half-written, and after the fault is gone
the sweep resumes."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import sqlite3
import struct
import uuid

import pytest
from sweep_helpers import TINY_BASE

from sgdstab.cli import main
from sgdstab.errors import OutputError, StoreError
from sgdstab.sweep import load_sweep, run_sweep
from sgdstab.sweep import report as report_module
from sgdstab.sweep.report import write_report
from sgdstab.sweep.store import STORE_FILE, Store

POINTS = 301  # steps 0, 10, …, 3000: the history of the damaged store
BODY = "[[runs]]\nlr = 0.1\n"


def _config(folder):
    path = folder / "sweep.toml"
    path.write_text('name = "tiny"\n' + TINY_BASE.replace("steps = 60", "steps = 3000") + BODY, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """A real sweep of one run with a 301-point history (serial executor, no report: about 2 s)."""
    folder = tmp_path_factory.mktemp("damage")
    out = folder / "out"
    summary = run_sweep(load_sweep(_config(folder)), out, executor="serial", quiet=True, report=False)
    assert summary.done == 1
    with Store.open(out) as store:
        (run,) = store.runs()
        assert len(store.history(run.run_id)["loss"]) == POINTS
    return folder, out, run.run_id


def _copy(swept, tmp_path):
    _, out, run_id = swept
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    return copy, run_id


def _root_page(db, name):
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT rootpage FROM sqlite_master WHERE name = ?", (name,)).fetchone()[0]
    finally:
        conn.close()


def _page_offset(db, page):
    with open(db, "rb") as fh:
        size = struct.unpack(">H", fh.read(100)[16:18])[0]
    return (page - 1) * (65536 if size == 1 else size)


def _cut_metrics_page(db):
    """Damage one page in the middle of the file: the interior page of the metrics b-tree now claims one child
    pointer instead of several, so a plain read returns part of the history and no error."""
    offset = _page_offset(db, _root_page(db, "metrics"))
    data = bytearray(db.read_bytes())
    assert data[offset] == 0x02, "the metrics root is an interior b-tree page"
    data[offset + 3 : offset + 5] = struct.pack(">H", 1)
    db.write_bytes(bytes(data))


def _raw_points(db, run_id):
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT COUNT(*) FROM metrics WHERE run_id = ? AND name = 'loss'", (run_id,)).fetchone()[0]
    finally:
        conn.close()


def _one_line_error(capsys, *args):
    assert main(list(args)) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    return err


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_damaged_page_is_refused_by_runs_show_list_and_export(swept, tmp_path, capsys):
    out, run_id = _copy(swept, tmp_path)
    db = out / STORE_FILE
    _cut_metrics_page(db)
    cut = _raw_points(db, run_id)
    assert 0 < cut < POINTS  # the fault: plain SQLite reads a cut history without any error
    before = _digest(db)
    for args in (["runs", "show", str(out), run_id[:8]], ["runs", "list", str(out)]):
        err = _one_line_error(capsys, *args)
        assert "is damaged" in err and ".recover" in err and "new --out DIR" in err, err
    target = tmp_path / "metrics.csv"
    err = _one_line_error(capsys, "runs", "export", str(out), "--table", "metrics", "--out", str(target))
    assert "is damaged" in err and not target.exists()
    assert _digest(db) == before  # reading changed nothing


def test_a_resumed_sweep_on_a_damaged_store_is_refused_before_writing(swept, tmp_path, capsys):
    out, _ = _copy(swept, tmp_path)
    db = out / STORE_FILE
    _cut_metrics_page(db)
    before = _digest(db)
    err = _one_line_error(capsys, "sweep", str(_config(tmp_path)), "--out", str(out), "--quiet")
    assert "is damaged" in err, err
    assert _digest(db) == before
    assert not (out / "report.md").exists()  # no report drawn from the cut history


def test_a_report_is_not_drawn_from_a_store_damaged_after_it_was_opened(swept, tmp_path):
    out, run_id = _copy(swept, tmp_path)
    _cut_metrics_page(out / STORE_FILE)
    with Store.open(out, verify=False) as store:  # as if the damage came while the sweep ran
        assert len(store.history(run_id)["loss"]) < POINTS
        with pytest.raises(StoreError, match="is damaged"):
            write_report(out, store, load_sweep(_config(tmp_path)), [run_id])
    assert not (out / "report.md").exists() and not (out / "results.csv").exists()


def test_a_damaged_index_that_quick_check_misses_is_refused(tmp_path, capsys):
    ids = ["ab" * 32, "cd" * 32]
    with Store.create(tmp_path, "s") as store:
        store.register([(rid, {"lr": 0.1 * k}) for k, rid in enumerate(ids)])
        me = store.register_owner()
        store.claim(me, ids[:1], 1)
        store.complete(ids[0], me, {"final_loss": 0.1}, {"step": [0, 10], "loss": [1.0, 0.5]}, {"total": 1.0}, "w")
        store.release(me)
    db = tmp_path / STORE_FILE
    offset = _page_offset(db, _root_page(db, "runs_status"))
    data = bytearray(db.read_bytes())
    at = data.index(b"done", offset, offset + 4096)
    data[at : at + 4] = b"fail"  # the index entry of the done run now says 'fail' (not a status at all)
    db.write_bytes(bytes(data))
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT run_id FROM runs WHERE status = 'done'").fetchall() == []  # silently nothing
    assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]  # why the full check is used
    conn.close()
    err = _one_line_error(capsys, "runs", "list", str(tmp_path), "--status", "done")
    assert "is damaged" in err and "runs_status" in err, err


def _claimed_store(folder, count=2):
    ids = [f"{k:064x}" for k in range(count)]
    store = Store.create(folder, "s")
    store.register([(rid, {"k": k}) for k, rid in enumerate(ids)])
    owner = store.register_owner()
    store.claim(owner, ids, count)
    return store, owner, ids


def _history(points=POINTS):
    return {"step": [10.0 * k for k in range(points)], "loss": [1.0 / (k + 1) for k in range(points)]}


def _assert_nothing_half_written(folder, run_id):
    conn = sqlite3.connect(folder / STORE_FILE)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert conn.execute("SELECT status FROM runs WHERE run_id = ?", (run_id,)).fetchone() == ("running",)
        assert conn.execute("SELECT COUNT(*) FROM metrics WHERE run_id = ?", (run_id,)).fetchone() == (0,)
        assert conn.execute("SELECT COUNT(*) FROM results WHERE run_id = ?", (run_id,)).fetchone() == (0,)
    finally:
        conn.close()


def test_a_full_disk_is_one_line_nothing_half_written_and_the_write_works_once_space_is_freed(tmp_path):
    store, owner, ids = _claimed_store(tmp_path)
    with store:
        pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
        store._conn.execute(f"PRAGMA max_page_count = {pages}")  # SQLite now answers SQLITE_FULL, as a full disk
        with pytest.raises(StoreError) as caught:
            store.complete(ids[0], owner, {"final_loss": 0.5}, _history(), {"total": 1.0}, "w")
        message = str(caught.value)
        # the real error, not "cannot rollback - no transaction is active"
        assert "is full" in message and "database or disk is full" in message and "rollback" not in message
        assert "\n" not in message and "free space" in message
        _assert_nothing_half_written(tmp_path, ids[0])
        store._conn.execute("PRAGMA max_page_count = 1073741823")  # space freed
        assert store.complete(ids[0], owner, {"final_loss": 0.5}, _history(), {"total": 1.0}, "w")
        assert len(store.history(ids[0])["loss"]) == POINTS


def test_a_full_disk_during_a_sweep_stops_it_in_one_line_and_the_sweep_resumes(tmp_path, monkeypatch, capsys):
    # 401 points a run: its history needs new pages, which the capped file cannot have
    base = TINY_BASE.replace("steps = 60", "steps = 400").replace("track_every = 10", "track_every = 1")
    config = tmp_path / "sweep.toml"
    config.write_text('name = "tiny"\n' + base + "[[runs]]\nlr = 0.05\n[[runs]]\nlr = 0.1\n", encoding="utf-8")
    out = tmp_path / "out"
    register_owner = Store.register_owner

    def then_disk_full(self):
        owner = register_owner(self)
        pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
        self._conn.execute(f"PRAGMA max_page_count = {pages}")
        return owner

    monkeypatch.setattr(Store, "register_owner", then_disk_full)
    with pytest.raises(StoreError, match=r"is full \(database or disk is full\)") as caught:
        run_sweep(load_sweep(config), out, executor="serial", quiet=True, report=False)
    assert "\n" not in str(caught.value)
    monkeypatch.setattr(Store, "register_owner", register_owner)
    conn = sqlite3.connect(out / STORE_FILE)
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert conn.execute("SELECT COUNT(*) FROM metrics").fetchone() == (0,)  # no run half-recorded
    conn.close()
    again = run_sweep(load_sweep(config), out, executor="serial", quiet=True, report=False)
    assert (again.done, again.failed) == (2, 0)
    with Store.open(out) as store:
        records = store.runs()
        assert [len(store.history(r.run_id)["loss"]) for r in records] == [401, 401]
    assert [r.status for r in records] == ["done", "done"]


@pytest.fixture
def small_tmpfs(tmpfs):
    """An 8 MiB tmpfs (:func:`tests.conftest.tmpfs`: needs root and permission to mount; skipped elsewhere)."""
    return tmpfs("8m")


def _fill(folder):
    """Fill the file system of ``folder`` to the last byte; returns the filler file."""
    filler = folder / f"filler-{uuid.uuid4().hex}"
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass
    return filler


def test_a_really_full_disk_is_one_line_and_the_write_works_once_space_is_freed(small_tmpfs):
    store, owner, ids = _claimed_store(small_tmpfs)
    with store:
        filler = _fill(small_tmpfs)
        with pytest.raises(StoreError, match="is full") as caught:
            store.complete(ids[0], owner, {"final_loss": 0.5}, _history(), {"total": 1.0}, "w")
        assert "\n" not in str(caught.value) and "rollback" not in str(caught.value)
        filler.unlink()
        assert store.complete(ids[0], owner, {"final_loss": 0.5}, _history(), {"total": 1.0}, "w")
        assert len(store.history(ids[0])["loss"]) == POINTS
    with Store.open(small_tmpfs) as store:
        assert store.integrity_check() == "ok" and store.counts()["done"] == 1


def test_a_full_disk_while_the_report_is_drawn_is_one_line_and_the_runs_stay(swept, tmp_path, monkeypatch):
    out, run_id = _copy(swept, tmp_path)

    def disk_full(fig, path, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(report_module, "save_figure", disk_full)
    with Store.open(out) as store, pytest.raises(OutputError) as caught:
        write_report(out, store, load_sweep(_config(tmp_path)), [run_id])
    message = str(caught.value)
    assert "No space left on device" in message and "rerun the same command" in message and "\n" not in message
    assert not (out / "report.md").exists()
    monkeypatch.undo()
    with Store.open(out) as store:
        assert write_report(out, store, load_sweep(_config(tmp_path)), [run_id]).is_file()
