"""sgdstab.utils.files: the one atomic, durable write (issue 13 High 1–2, Low "fsync") and every writer that uses it.

Each test states what the writers before issue 13 did wrong: they renamed over links, FIFOs and devices, left
every file 0600, never fsync-ed the file (two of three) or its folder, cleared any hidden ``.*.tmp`` and turned a
full disk into a traceback.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from sgdstab.errors import OutputError, SgdstabError
from sgdstab.experiments.io import (
    atomic_write,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    new_figure,
    save_figure,
)
from sgdstab.training.history import History, write_atomically
from sgdstab.utils import files


@pytest.fixture
def umask_027():
    """A umask that differs from both 0600 (what mkstemp gives) and the usual 022."""
    old = os.umask(0o027)
    yield 0o640
    os.umask(old)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text, text
    return text


def _history() -> History:
    return History(steps=(0, 1), losses=(1.0, 0.5), tracked={})


def _diagram_png(path: Path) -> None:
    from sgdstab.linear_stability.diagram import StabilityDiagram  # noqa: F401  (import check: the module loads)

    fig, ax = new_figure(size=(1.0, 1.0))
    ax.plot([0, 1], [0, 1])
    save_figure(fig, path)


# ------------------------------------------------------------------------------------------------ modes (umask)
WRITERS = {
    "text": lambda p: atomic_write_text(p, "x\n"),
    "json": lambda p: atomic_write_json(p, {"a": 1}),
    "csv": lambda p: atomic_write_csv(p, [{"a": 1.5}]),
    "path": lambda p: atomic_write(p, lambda tmp: tmp.write_bytes(b"abc")),
    "figure": _diagram_png,
    "history": lambda p: _history().save(p),
    "stream": lambda p: write_atomically(Path(p), lambda f: f.write(b"abc")),
}


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_new_files_get_the_users_umask(tmp_path, umask_027, kind):
    path = tmp_path / f"out.{kind}"
    WRITERS[kind](path)
    assert stat.S_IMODE(os.stat(path).st_mode) == umask_027  # before: 0600 whatever the umask


@pytest.mark.parametrize("kind", ["text", "figure", "history"])
def test_a_replaced_file_keeps_its_mode(tmp_path, umask_027, kind):
    path = tmp_path / f"out.{kind}"
    path.write_text("old")
    os.chmod(path, 0o604)
    WRITERS[kind](path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o604  # before: a 0644 file overwritten became 0600
    assert path.read_bytes() != b"old"


def test_the_umask_is_read_without_changing_it(umask_027):
    assert files.current_umask() == 0o027
    assert os.umask(0o027) == 0o027  # unchanged by the read


# ------------------------------------------------------------------------------------------------ durability
@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_every_writer_fsyncs_the_file_then_the_folder_after_the_rename(tmp_path, monkeypatch, kind):
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    def replace(src, dst):
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    WRITERS[kind](tmp_path / f"out.{kind}")
    # the content is on disk before it gets its name, and the name is on disk before the call returns
    assert events == ["file", "replace", "dir"], events  # before: no fsync at all, or never of the folder


def test_the_diagram_plot_writes_through_files(tmp_path, monkeypatch):
    import torch

    from sgdstab.linear_stability.diagram import stability_diagram

    calls = []
    real = files.write_stream
    monkeypatch.setattr(files, "write_stream", lambda path, fill, **kw: calls.append(path) or real(path, fill, **kw))
    K = torch.eye(4, dtype=torch.float64) * 2.0
    diagram = stability_diagram(K, batch_sizes=[1, 2, 4], lrs=np.linspace(0.1, 2.0, 5).tolist())
    diagram.plot(tmp_path / "d.png")
    assert calls == [tmp_path / "d.png"] and (tmp_path / "d.png").read_bytes().startswith(b"\x89PNG")


# ------------------------------------------------------------------------------------------------ refused targets
def _special_targets(tmp_path: Path) -> dict[str, Path]:
    real = tmp_path / "real.txt"
    real.write_text("keep me")
    targets = {"symlink to a file": tmp_path / "link", "symlink to /dev/null": tmp_path / "null-link"}
    targets["symlink to a file"].symlink_to(real)
    targets["symlink to /dev/null"].symlink_to("/dev/null")
    os.mkfifo(tmp_path / "fifo")
    targets["FIFO"] = tmp_path / "fifo"
    (tmp_path / "folder").mkdir()
    targets["directory"] = tmp_path / "folder"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "sock"))
    sock.close()
    targets["socket"] = tmp_path / "sock"
    try:
        os.mknod(tmp_path / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        targets["character device"] = tmp_path / "null"
    except (OSError, AttributeError):
        pass
    if os.geteuid() != 0:  # as root a faulty writer would replace the system's /dev/null: only ever tried unprivileged
        targets["/dev/null"] = Path("/dev/null")
    return targets


def _identity(path: Path) -> tuple:
    st = os.lstat(path)
    return (st.st_ino, stat.S_IFMT(st.st_mode), os.readlink(path) if stat.S_ISLNK(st.st_mode) else None)


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_links_fifos_devices_sockets_and_folders_are_refused_never_replaced(tmp_path, kind):
    targets = _special_targets(tmp_path)
    for name, target in targets.items():
        before = _identity(target)
        with pytest.raises(OutputError) as info:
            WRITERS[kind](target)
        message = _one_line(info.value)
        assert str(target) in message and "regular file" in message, (name, message)
        assert _identity(target) == before, name  # before: the temporary file was renamed over it
    assert (tmp_path / "real.txt").read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if files.is_temporary(p.name)]


def test_protected_paths_are_refused_by_name_and_by_hard_link(tmp_path):
    store = tmp_path / "sweep.db"
    store.write_bytes(b"SQLite format 3\x00")
    twin = tmp_path / "twin"
    os.link(store, twin)
    for target in (store, twin, tmp_path / "." / "sweep.db"):
        with pytest.raises(OutputError, match="reads it"):
            files.write_text(target, "a,b\n", protect=[store])
    with pytest.raises(OutputError, match="reads it"):  # a companion that does not exist yet
        files.write_text(tmp_path / "sweep.db-wal", "x", protect=[tmp_path / "sweep.db-wal"])
    assert store.read_bytes() == b"SQLite format 3\x00" and not (tmp_path / "sweep.db-wal").exists()


def test_the_marker_is_never_a_target(tmp_path):
    with pytest.raises(OutputError, match="ownership marker"):
        atomic_write_text(tmp_path / files.MARKER, "x")


# ------------------------------------------------------------------------------------------------ owned folders
def test_a_marked_folder_lists_each_file_before_it_appears_and_refuses_unlisted_files(tmp_path):
    files.write_marker(tmp_path, "stub", ["report.md"])
    (tmp_path / "report.md").write_text("old report")
    (tmp_path / "mine.png").write_text("the user's")
    atomic_write_text(tmp_path / "report.md", "new report")  # listed: ours to replace
    assert (tmp_path / "report.md").read_text() == "new report"
    with pytest.raises(OutputError, match="sgdstab did not write it") as info:
        atomic_write_text(tmp_path / "mine.png", "figure")
    assert "mine.png" in _one_line(info.value) and (tmp_path / "mine.png").read_text() == "the user's"
    atomic_write_text(tmp_path / "new.csv", "a\n")
    marker = json.loads((tmp_path / files.MARKER).read_text())
    assert marker["owner"] == "stub" and marker["files"] == ["new.csv", "report.md"]
    atomic_write_text(tmp_path / "new.csv", "b\n")  # and from then on it is ours
    assert (tmp_path / "new.csv").read_text() == "b\n"


def test_concurrent_writers_lose_no_name_in_the_marker(tmp_path):
    files.write_marker(tmp_path, "sweep", [])
    names = [f"f{i}.json" for i in range(16)]
    threads = [threading.Thread(target=atomic_write_json, args=(tmp_path / n, {"i": n})) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert files.read_marker(tmp_path)["files"] == sorted(names)


@pytest.mark.parametrize(
    "content",
    [b"{not json", b'{"format": "other", "owner": "x", "files": []}', b'{"format": "sgdstab-output"}', b"[1]"],
)
def test_a_damaged_or_foreign_marker_refuses_every_write(tmp_path, content):
    (tmp_path / files.MARKER).write_bytes(content)
    (tmp_path / "report.md").write_text("user")
    with pytest.raises(OutputError, match="not a valid sgdstab output marker") as info:
        atomic_write_text(tmp_path / "report.md", "x")
    _one_line(info.value)
    assert (tmp_path / "report.md").read_text() == "user"


# ------------------------------------------------------------------------------------------------ faults
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
@pytest.mark.parametrize("where", ["write", "fsync", "wrapped"])
def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(tmp_path, monkeypatch, code, where):
    target = tmp_path / "report.md"
    target.write_text("the old report")

    def fill(handle):
        handle.write(b"half of the new rep")
        if where == "write":
            raise OSError(code, os.strerror(code))
        if where == "wrapped":  # what torch.save does with the OSError of its writer
            try:
                raise OSError(code, os.strerror(code))
            except OSError as exc:
                raise RuntimeError("PytorchStreamWriter failed writing file data/0") from exc

    if where == "fsync":
        real = os.fsync

        def fsync(fd):
            if stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(code, os.strerror(code))
            real(fd)

        monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OutputError) as info:
        files.write_stream(target, fill)
    message = _one_line(info.value)
    assert "disk is full" in message and str(target) in message and "free space" in message
    assert isinstance(info.value, SgdstabError)
    assert target.read_text() == "the old report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]  # the temporary file is gone


@pytest.fixture
def small_tmpfs(tmpfs):
    """A 1 MiB tmpfs (:func:`tests.conftest.tmpfs`: needs root and permission to mount; skipped elsewhere)."""
    return tmpfs("1m")


@pytest.mark.parametrize("kind", ["text", "csv", "figure", "stream"])
def test_a_really_full_disk_is_one_line_and_the_write_works_once_space_is_freed(small_tmpfs, kind):
    target = small_tmpfs / f"out.{kind}"
    target.write_text("the old file")
    filler = small_tmpfs / "filler"
    with open(filler, "wb", buffering=0) as handle, contextlib.suppress(OSError):  # fill it to the last byte
        while True:
            handle.write(b"\0" * 4096)
    writers = {**WRITERS, "text": lambda p: atomic_write_text(p, "x" * 300_000)}
    with pytest.raises(OutputError) as info:
        writers[kind](target)
    assert "disk is full" in _one_line(info.value)  # before: an OSError traceback
    assert target.read_text() == "the old file"
    assert sorted(p.name for p in small_tmpfs.iterdir()) == ["filler", target.name]  # no temporary left
    filler.unlink()
    writers[kind](target)
    assert target.read_bytes() != b"the old file"


def test_other_errors_of_the_writer_propagate_and_leave_no_temporary(tmp_path):
    with pytest.raises(ZeroDivisionError):
        files.write_stream(tmp_path / "x", lambda handle: 1 / 0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any directory")
def test_a_folder_without_write_permission_is_one_line(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o555)
    try:
        with pytest.raises(OutputError, match="permission denied"):
            atomic_write_text(locked / "a.md", "x")
    finally:
        os.chmod(locked, 0o755)


def test_a_missing_folder_is_one_line(tmp_path):
    with pytest.raises(OutputError, match="folder does not exist"):
        atomic_write_text(tmp_path / "nope" / "a.md", "x")


# ------------------------------------------------------------------------------------------------ temporaries
def test_temporary_names_carry_the_tag_and_the_writer(tmp_path):
    seen = []
    atomic_write(tmp_path / "r.md", lambda tmp: seen.append(tmp.name) or tmp.write_text("x"))
    assert files.is_temporary(seen[0]) and seen[0].startswith(".r.md.sgdstab-") and f"-{os.getpid()}-" in seen[0]
    assert not files.is_temporary(".r.md.abc123.tmp") and not files.is_temporary(".notes.tmp")


def test_only_sgdstab_temporaries_of_dead_writers_are_removed(tmp_path):
    dead = _dead_pid()
    stale = tmp_path / f".report.md.sgdstab-{dead}-abcd1234.tmp"
    in_flight = tmp_path / f".report.md.sgdstab-{os.getpid()}-abcd1234.tmp"
    users = [tmp_path / ".notes.tmp", tmp_path / ".report.md.abc123.tmp", tmp_path / "x.sgdstab-1-a.tmp"]
    for path in [stale, in_flight, *users]:
        path.write_text("x")
    (tmp_path / f".d.sgdstab-{dead}-abcd1234.tmp").mkdir()  # not a file: not ours
    (tmp_path / f".l.sgdstab-{dead}-abcd1234.tmp").symlink_to(tmp_path / ".notes.tmp")
    assert files.remove_temporaries(tmp_path) == 1
    assert not stale.exists() and in_flight.exists() and all(p.exists() for p in users)
    assert (tmp_path / f".d.sgdstab-{dead}-abcd1234.tmp").is_dir()
    assert (tmp_path / f".l.sgdstab-{dead}-abcd1234.tmp").is_symlink()


def test_checkpoints_are_written_by_the_history_writer():
    from sgdstab.training import checkpoint

    assert checkpoint.write_atomically is write_atomically


def test_json_files_are_strict_with_one_spelling_of_non_finite_numbers(tmp_path):
    """atomic_write_json and ResultMixin.to_json write strict JSON: "NaN", "Infinity", "-Infinity"
    (sgdstab.utils.results); decode_float reads those and the "nan"/"inf" of files written before."""
    import dataclasses
    import math
    import types

    from sgdstab.utils.results import ResultMixin, decode_float

    def strict(text):
        return json.loads(text, parse_constant=lambda name: pytest.fail(f"bare {name} in {text!r}"))

    value = {"a": math.nan, "b": [math.inf, -math.inf, 1.5], "c": types.MappingProxyType({"d": math.inf})}
    atomic_write_json(tmp_path / "x.json", value)
    assert strict((tmp_path / "x.json").read_text()) == {
        "a": "NaN",
        "b": ["Infinity", "-Infinity", 1.5],
        "c": {"d": "Infinity"},
    }

    @dataclasses.dataclass(frozen=True)
    class Figures(ResultMixin):
        ratio: float
        bound: float

    assert strict(Figures(math.nan, math.inf).to_json()) == {"ratio": "NaN", "bound": "Infinity"}
    assert strict(Figures(0.5, 2.0).to_json(sort_keys=True)) == {"bound": 2.0, "ratio": 0.5}
    for old, new in (("nan", "NaN"), ("inf", "Infinity"), ("-inf", "-Infinity")):
        assert repr(decode_float(old)) == repr(decode_float(new))
