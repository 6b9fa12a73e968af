"""`sgdstab runs export DIR --out PATH` replaces only a regular file or writes a new one (issue 13, High 1).

Before: the temporary file was renamed over whatever PATH was — a FIFO, a character device, a symlink to a stream,
and DIR/sweep.db itself (the whole store replaced by a CSV, exit code 0). Each case is tried through the API
(``export(store, target)``) and the command line (``sgdstab.cli.main`` returns 2 with one line), and the original
is checked untouched (same inode, same kind, same content).
"""

from __future__ import annotations

import hashlib
import os
import signal
import stat
from pathlib import Path

import pytest

from sgdstab.cli import main
from sgdstab.sweep.export import export
from sgdstab.sweep.store import STORE_FILE, Store
from sgdstab.utils import files

RUN_IDS = [f"{k:x}" * 64 for k in range(1, 4)]


@pytest.fixture
def sweep_dir(tmp_path):
    folder = tmp_path / "sw"
    folder.mkdir()
    store = Store.create(folder, "tiny")
    store.register([(rid, {"lr": 0.1 * (k + 1), "batch_size": 4}) for k, rid in enumerate(RUN_IDS)])
    store.close()
    return folder


@pytest.fixture
def no_hang():
    """Opening a FIFO for writing blocks until a reader comes: a faulty export would hang, not fail."""

    def expired(*_):
        raise TimeoutError("the export blocked (opened a FIFO or a stream for writing?)")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(30)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _identity(path: Path) -> tuple:
    st = os.lstat(path)
    link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
    return st.st_ino, stat.S_IFMT(st.st_mode), link, st.st_size if stat.S_ISREG(st.st_mode) else None


def _hostile_targets(sweep_dir: Path, tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "alias").symlink_to(sweep_dir)
    targets = {"the store": sweep_dir / STORE_FILE, "the store by another name": tmp_path / "alias" / STORE_FILE}
    os.link(sweep_dir / STORE_FILE, tmp_path / "hard-link-to-store")
    targets["a hard link to the store"] = tmp_path / "hard-link-to-store"
    os.mkfifo(tmp_path / "fifo")
    targets["a FIFO"] = tmp_path / "fifo"
    (tmp_path / "to-null").symlink_to("/dev/null")
    targets["a symlink to /dev/null"] = tmp_path / "to-null"
    (tmp_path / "to-stdout").symlink_to("/dev/stdout")
    targets["a symlink to a stream"] = tmp_path / "to-stdout"
    (tmp_path / "mine.csv").write_text("my,own\n")
    (tmp_path / "to-mine").symlink_to(tmp_path / "mine.csv")
    targets["a symlink to a file"] = tmp_path / "to-mine"
    targets["a directory"] = sweep_dir
    try:
        os.mknod(tmp_path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        targets["a character device"] = tmp_path / "null"
    except (OSError, AttributeError):
        pass
    if os.geteuid() != 0:  # only unprivileged: as root a faulty export would replace the system's /dev/null
        targets["/dev/null"] = Path("/dev/null")
    return targets


def test_the_api_refuses_the_store_and_every_special_file(sweep_dir, tmp_path, no_hang):
    store_digest = _digest(sweep_dir / STORE_FILE)
    targets = _hostile_targets(sweep_dir, tmp_path)
    with Store.open(sweep_dir) as store:
        for name, target in targets.items():
            before = _identity(target)
            with pytest.raises(files.OutputError) as info:
                export(store, target)
            message = str(info.value)
            assert "\n" not in message and str(target) in message, (name, message)
            assert _identity(target) == before, name
    assert _digest(sweep_dir / STORE_FILE) == store_digest
    assert (tmp_path / "mine.csv").read_text() == "my,own\n"
    with Store.open(sweep_dir) as store:
        assert [r.run_id for r in store.runs()] == RUN_IDS  # the store is whole


@pytest.mark.parametrize("suffix", ["-wal", "-shm", "-journal"])
def test_the_stores_companions_are_refused_present_or_not(sweep_dir, suffix):
    target = sweep_dir / f"{STORE_FILE}{suffix}"
    existed = target.exists()
    with Store.open(sweep_dir) as store, pytest.raises(files.OutputError, match="sweep store"):
        export(store, target)
    assert target.exists() == existed  # a made-up WAL file would be read by SQLite at the next open


def test_the_command_line_refuses_each_in_one_line_with_exit_code_2(sweep_dir, tmp_path, capsys, no_hang):
    store_digest = _digest(sweep_dir / STORE_FILE)
    targets = _hostile_targets(sweep_dir, tmp_path)
    for name, target in targets.items():
        before = _identity(target)
        code = main(["runs", "export", str(sweep_dir), "--out", str(target)])
        err = capsys.readouterr().err
        assert code == 2, (name, err)
        assert err.startswith("error:") and err.count("\n") == 1 and "Traceback" not in err, (name, err)
        assert _identity(target) == before, name
    assert _digest(sweep_dir / STORE_FILE) == store_digest


def test_a_regular_file_or_a_new_path_is_written(sweep_dir, tmp_path, capsys):
    old = tmp_path / "old.csv"
    old.write_text("stale export\n")
    os.chmod(old, 0o640)
    assert main(["runs", "export", str(sweep_dir), "--out", str(old)]) == 0
    assert old.read_text().startswith("run_id,") and old.read_text().count("\n") == 1 + len(RUN_IDS)
    assert stat.S_IMODE(os.stat(old).st_mode) == 0o640  # the replaced file keeps its mode
    new = tmp_path / "new.csv"
    assert main(["runs", "export", str(sweep_dir), "--out", str(new), "--table", "metrics"]) == 0
    assert new.read_text() == "run_id,name,step,value\n"
    assert main(["runs", "export", str(sweep_dir)]) == 0  # the default, DIR/runs.csv, beside the store
    assert (sweep_dir / "runs.csv").is_file()
    assert not [p for p in tmp_path.rglob("*") if files.is_temporary(p.name)]


def test_a_missing_folder_is_refused_before_reading(sweep_dir, tmp_path, capsys):
    assert main(["runs", "export", str(sweep_dir), "--out", str(tmp_path / "no" / "x.csv")]) == 2
    assert "folder does not exist" in capsys.readouterr().err
