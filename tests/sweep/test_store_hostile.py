"""Hostile or damaged values inside a sweep store: every value is checked as it is read, and a bad one gives one
line (exit code 2) naming the run, the column and the recovery in `runs list|show|export` and in a resumed sweep,
never a traceback. Stored text reaches the terminal with its escape sequences shown, not obeyed, and is never
read as rich markup."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess

import pytest
from sweep_helpers import write_config

from sgdstab.cli import main
from sgdstab.errors import StoreError
from sgdstab.sweep import load_sweep, run_sweep
from sgdstab.sweep.store import _SCHEMA, FORMAT, MAX_TEXT, STORE_FILE, VERSION, Store

R1, R2 = "ab" * 32, "cd" * 32  # a done run with a history, a failed run


def _hostile_store(folder, statements=(), params=None):
    """A store as a hand-made file may be: sgdstab's tables without their CHECK and NOT NULL constraints (which
    SQLite's integrity check would enforce), one done and one failed run, then ``statements`` applied."""
    schema = re.sub(r"CHECK \(status IN \([^)]*\)\)", "", _SCHEMA).replace("NOT NULL", "")
    conn = sqlite3.connect(folder / STORE_FILE)
    conn.executescript(schema)
    conn.executemany(
        "INSERT INTO meta VALUES (?, ?)", [("format", FORMAT), ("version", str(VERSION)), ("name", "tiny")]
    )
    conn.execute(
        "INSERT INTO runs (run_id, position, config, status, attempts, created, seconds, timings, worker) "
        "VALUES (?, 0, '{\"lr\": 0.1}', 'done', 1, 1.0, 2.0, '{\"total\": 2.0}', 'host:1')",
        (R1,),
    )
    conn.execute(
        "INSERT INTO runs (run_id, position, config, status, attempts, created, error, traceback) "
        "VALUES (?, 1, '{\"lr\": 0.2}', 'failed', 1, 1.0, 'ValueError: boom', 'Traceback ...')",
        (R2,),
    )
    conn.executemany("INSERT INTO metrics VALUES (?, 'loss', ?, ?)", [(R1, 10 * k, 1.0 / (k + 1)) for k in range(3)])
    conn.executemany("INSERT INTO results VALUES (?, ?, ?)", [(R1, "final_loss", 0.25), (R1, "diverged", 0)])
    for statement in statements:
        conn.execute(statement, params or {})
    conn.commit()
    conn.close()
    return folder


def _commands(folder, tmp_path):
    return {
        "list": ["runs", "list", str(folder)],
        "show": ["runs", "show", str(folder), R1[:8]],
        "export": ["runs", "export", str(folder), "--out", str(tmp_path / "runs.csv")],
        "metrics": ["runs", "export", str(folder), "--table", "metrics", "--out", str(tmp_path / "metrics.csv")],
    }


def _one_line_error(capsys, args):
    code = main(args)
    err = capsys.readouterr().err.strip()
    assert code == 2, (args, err)
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert "\x1b" not in err
    return err


RUNS = ("list", "show", "export")
METRICS = ("show", "metrics")
BLOB = "x'1b5d303b70776e6564071b5b326a'"  # bytes of an OSC title and a CSI clear-screen, as a BLOB
LONG = f"'{'x' * (MAX_TEXT + 10)}'"
# (what is wrong, SQL that makes it so, the commands that read it, what the message must name)
CASES = [
    ("config not JSON", "UPDATE runs SET config = 'not json' WHERE run_id = :r1", RUNS, "config = 'not json'"),
    ("config a JSON list", "UPDATE runs SET config = '[1, 2]' WHERE run_id = :r1", RUNS, "not a JSON object"),
    ("config nested deep", "UPDATE runs SET config = :deep WHERE run_id = :r1", RUNS, "config = "),
    ("config NULL", "UPDATE runs SET config = NULL WHERE run_id = :r1", RUNS, "config = None (missing)"),
    ("config a BLOB", f"UPDATE runs SET config = {BLOB} WHERE run_id = :r1", RUNS, "config = a BLOB"),
    ("config too long", f"UPDATE runs SET config = {LONG} WHERE run_id = :r1", RUNS, "longer than"),
    ("status unknown", "UPDATE runs SET status = 'exploded' WHERE run_id = :r1", RUNS, "status = 'exploded'"),
    ("status NULL", "UPDATE runs SET status = NULL WHERE run_id = :r1", RUNS, "status = None"),
    ("attempts negative", "UPDATE runs SET attempts = -1 WHERE run_id = :r1", RUNS, "attempts = -1 (below 0)"),
    ("attempts text", "UPDATE runs SET attempts = 'three' WHERE run_id = :r1", RUNS, "attempts = 'three'"),
    ("attempts a fraction", "UPDATE runs SET attempts = 1.5 WHERE run_id = :r1", RUNS, "attempts = 1.5"),
    ("attempts NULL", "UPDATE runs SET attempts = NULL WHERE run_id = :r1", RUNS, "attempts = None"),
    ("position text", "UPDATE runs SET position = 'first' WHERE run_id = :r1", RUNS, "position = 'first'"),
    ("created text", "UPDATE runs SET created = 'yesterday' WHERE run_id = :r1", RUNS, "created = 'yesterday'"),
    ("created NULL", "UPDATE runs SET created = NULL WHERE run_id = :r1", RUNS, "created = None"),
    ("seconds text", "UPDATE runs SET seconds = 'fast' WHERE run_id = :r1", RUNS, "seconds = 'fast'"),
    ("started a BLOB", f"UPDATE runs SET started = {BLOB} WHERE run_id = :r1", RUNS, "started = a BLOB"),
    ("timings not JSON", "UPDATE runs SET timings = '{total' WHERE run_id = :r1", RUNS, "timings = "),
    ("timings of text", 'UPDATE runs SET timings = \'{"total": "slow"}\' WHERE run_id = :r1', RUNS, "numbers"),
    ("worker a BLOB", f"UPDATE runs SET worker = {BLOB} WHERE run_id = :r1", RUNS, "worker = a BLOB"),
    ("owner a BLOB", f"UPDATE runs SET owner = {BLOB} WHERE run_id = :r1", RUNS, "owner = a BLOB"),
    ("version a BLOB", f"UPDATE runs SET sgdstab_version = {BLOB} WHERE run_id = :r1", RUNS, "sgdstab_version"),
    ("error too long", f"UPDATE runs SET error = {LONG} WHERE run_id = :r1", RUNS, "error = 'xxx"),
    ("traceback a BLOB", f"UPDATE runs SET traceback = {BLOB} WHERE run_id = :r1", RUNS, "traceback = a BLOB"),
    ("run id not hex", "UPDATE runs SET run_id = '../\x1b[2J' WHERE run_id = :r2", ("list", "export"), "rowid = 2"),
    ("run id NULL", "UPDATE runs SET run_id = NULL WHERE run_id = :r2", ("list", "export"), "run_id = None"),
    ("result a BLOB", f"UPDATE results SET value = {BLOB} WHERE name = 'final_loss'", RUNS, "'final_loss' = a BLOB"),
    ("result too long", f"UPDATE results SET value = {LONG} WHERE name = 'final_loss'", RUNS, "longer than"),
    ("result name a BLOB", f"UPDATE results SET name = {BLOB} WHERE name = 'diverged'", RUNS, "result name = a"),
    ("metric text", "UPDATE metrics SET value = 'abc' WHERE step = 10", METRICS, "at step 10 = 'abc'"),
    ("metric a BLOB", f"UPDATE metrics SET value = {BLOB} WHERE step = 10", METRICS, "at step 10 = a BLOB"),
    ("metric step text", "UPDATE metrics SET step = 'ten' WHERE step = 10", METRICS, "step of metric 'loss' = 'ten'"),
    ("metric step fraction", "UPDATE metrics SET step = 1.5 WHERE step = 10", METRICS, "= 1.5 (not an integer)"),
    ("metric named step", "UPDATE metrics SET name = 'step' WHERE step = 10", METRICS, "the column of steps"),
    ("metric name a BLOB", f"UPDATE metrics SET name = {BLOB} WHERE step = 10", METRICS, "metric name = a BLOB"),
    ("not UTF-8", "UPDATE runs SET error = CAST(x'ff1b5b' AS TEXT) WHERE run_id = :r1", RUNS, "not UTF-8"),
]


@pytest.mark.parametrize(("what", "sql", "commands", "named"), CASES, ids=[c[0] for c in CASES])
def test_a_bad_stored_value_is_one_line_in_every_command(tmp_path, capsys, what, sql, commands, named):
    folder = tmp_path / "out"
    folder.mkdir()
    _hostile_store(folder, [sql], {"r1": R1, "r2": R2, "deep": '{"a": ' * 100_000 + "1" + "}" * 100_000})
    command = _commands(folder, tmp_path)
    for name in commands:
        err = _one_line_error(capsys, command[name])
        assert "is damaged" in err and named in err, (name, err)
        if what != "not UTF-8":
            assert "DELETE FROM runs WHERE" in err and "new --out DIR" in err, err
        assert len(err) < 600, err
    assert not (tmp_path / "runs.csv").exists() and not (tmp_path / "metrics.csv").exists()


def test_the_hostile_store_reads_back_when_undamaged(tmp_path, capsys):
    """The cases above change one value each of this store, which every command reads without complaint."""
    folder = tmp_path / "out"
    folder.mkdir()
    _hostile_store(folder)
    for args in _commands(folder, tmp_path).values():
        assert main(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "history   3 points" in out


@pytest.mark.parametrize(
    ("sql", "named"),
    [
        ("INSERT INTO owners VALUES ('me', 'h', 'abc', 1.0, 1.0)", "pid = 'abc'"),
        ("INSERT INTO owners VALUES ('me', 'h', 0, 1.0, 1.0)", "pid = 0 (below 1)"),
        ("INSERT INTO owners VALUES ('me', 'h', -1, 1.0, 1.0)", "pid = -1"),
        ("INSERT INTO owners VALUES ('me', 'h', 4294967296, 1.0, 1.0)", "above"),
        ("INSERT INTO owners VALUES ('me', 'h', 12, 1.0, 'now')", "heartbeat = 'now'"),
        ("INSERT INTO owners VALUES ('me', NULL, 12, 1.0, 1.0)", "host = None"),
    ],
)
def test_a_bad_driver_row_is_refused_when_a_sweep_resumes(tmp_path, sql, named):
    _hostile_store(tmp_path, [sql])
    with Store.create(tmp_path, "tiny") as store, pytest.raises(StoreError) as caught:
        store.register_owner()
        store.live_owners()
    message = str(caught.value)
    assert "is damaged" in message and named in message and "DELETE FROM owners WHERE rowid = 1" in message
    assert "\n" not in message


def test_a_store_whose_meta_names_no_sweep_is_refused(tmp_path, capsys):
    _hostile_store(tmp_path, ["DELETE FROM meta WHERE key = 'name'"])
    assert "names no sweep" in _one_line_error(capsys, ["runs", "list", str(tmp_path)])


@pytest.fixture
def tiny_sweep(tmp_path):
    """A real tiny sweep of two runs (serial, no report)."""
    config = write_config(tmp_path, "[[runs]]\nlr = 0.05\n[[runs]]\nlr = 0.1\n")
    out = tmp_path / "out"
    assert run_sweep(load_sweep(config), out, executor="serial", quiet=True, report=False).done == 2
    return config, out


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE runs SET config = 'not json' WHERE position = 1",
        "UPDATE runs SET attempts = 'many' WHERE position = 0",
        "INSERT INTO owners VALUES ('x', 'h', 'pid', 1.0, 1.0)",
    ],
)
def test_a_resumed_sweep_refuses_a_bad_value_in_one_line(tiny_sweep, capsys, sql):
    config, out = tiny_sweep
    conn = sqlite3.connect(out / STORE_FILE)
    conn.execute(sql)
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="is damaged") as caught:
        run_sweep(load_sweep(config), out, executor="serial", quiet=True, report=False)
    assert "\n" not in str(caught.value)


def test_a_run_claimed_with_a_bad_config_is_refused_not_run(tmp_path):
    _hostile_store(
        tmp_path, ["UPDATE runs SET config = '[\"rm -rf\"]', status = 'pending' WHERE run_id = :r2"], {"r2": R2}
    )
    with Store.create(tmp_path, "tiny") as store:
        owner = store.register_owner()
        with pytest.raises(StoreError, match=r"config = .*not a JSON object"):
            store.claim(owner, [R2], 1)
        assert store.counts()["pending"] == 1  # the claim was rolled back whole


ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred\u202eevil\r\x08"


def _store_with_escapes(folder):
    ids = ["ab" * 32, "cd" * 32]
    with Store.create(folder, "s\x1b[5m") as store:
        store.register([(ids[0], {"lr": "[bold]0.1[/]"}), (ids[1], {"lr": f"0.2{ESCAPES}"})])
        owner = store.register_owner()
        store.claim(owner, ids, 2)
        store.fail(ids[0], owner, f"Error: [red]boom[/] {ESCAPES}", f"Traceback\n  line {ESCAPES}\n", 1.0, "w[/]")
        store.fail(ids[1], owner, "[/]", "", 1.0, f"host{ESCAPES}")
    return ids


def test_stored_escape_sequences_and_markup_are_shown_not_obeyed(tmp_path, capsys):
    ids = _store_with_escapes(tmp_path)
    assert main(["runs", "list", str(tmp_path)]) == 0
    listed = capsys.readouterr().out
    assert main(["runs", "show", str(tmp_path), ids[0][:8]]) == 0
    shown = capsys.readouterr().out
    assert main(["runs", "show", str(tmp_path), ids[1][:8]]) == 0
    shown += capsys.readouterr().out
    for out in (listed, shown):
        assert not any(ch in out for ch in "\x1b\x07\x08\r\u202e"), repr(out)
    flat = listed.replace("\n", "").replace("│", "").replace(" ", "")
    assert "\\x1b]0;pwned\\x07" in flat and "[red]boom[/]" in flat and "[bold]0.1[/]" in flat
    assert "\\x1b[2J" in shown and "\\u202eevil\\r\\x08" in shown and "worker    host\\x1b" in shown
    assert "error     Error: [red]boom[/]" in shown and "traceback\n  Traceback\n    line \\x1b" in shown


@pytest.mark.skipif(shutil.which("sqlite3") is None, reason="the sqlite3 shell is not installed")
def test_the_recovery_the_message_names_works(tiny_sweep):
    config, out = tiny_sweep
    conn = sqlite3.connect(out / STORE_FILE)
    conn.execute("UPDATE runs SET config = '{oops' WHERE position = 1")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError) as caught:
        run_sweep(load_sweep(config), out, executor="serial", quiet=True, report=False)
    command = re.search(r"`(sqlite3 [^`]*)`", str(caught.value)).group(1)
    subprocess.run(command, shell=True, check=True, timeout=60)  # as the user would paste it
    again = run_sweep(load_sweep(config), out, executor="serial", quiet=True, report=False)
    assert (again.done, again.ran, again.skipped) == (2, 1, 1)  # the deleted run was redone, the other kept
    with Store.open(out) as store:
        assert all(len(store.history(r.run_id)["loss"]) == 7 for r in store.runs())


def test_a_history_without_a_loss_is_shown_not_a_traceback(tmp_path, capsys):
    _hostile_store(tmp_path, ["UPDATE metrics SET name = 'grad_norm'"])
    assert main(["runs", "show", str(tmp_path), R1[:8]]) == 0
    assert "history   3 points, steps 0–20, no loss (metrics: grad_norm)" in capsys.readouterr().out


def test_counts_refuse_an_unknown_status(tmp_path):
    _hostile_store(tmp_path, ["UPDATE runs SET status = 'exploded' WHERE run_id = :r2"], {"r2": R2})
    with Store.open(tmp_path) as store, pytest.raises(StoreError, match=r"run cdcdcdcdcdcd has status = 'exploded'"):
        store.counts()
