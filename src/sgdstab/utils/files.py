"""Safe file writes: the one atomic, durable write that every writer of sgdstab goes through, the names of its
temporary files, and the ownership marker of output directories.

This module imports nothing of sgdstab but :mod:`sgdstab.errors`, so that every module may use it.

**The write** (:func:`write_stream`, :func:`write_path`, :func:`write_text`):

1. the target is checked (:func:`check_target`): it must be absent or a regular file. A symbolic link, a FIFO, a
   character or block device, a socket or a directory at the target is *refused* with a one-line
   :class:`OutputError` naming the path and the fix — never replaced, and never written through (a link or a
   stream is not a file the user can get back). Paths the caller protects (``protect=``: the files the command
   reads, e.g. a sweep's store and its journal) and the ownership marker itself are refused too;
2. in a folder holding an ownership marker (:data:`MARKER`), a file at the target must be listed by it: sgdstab
   replaces only what it wrote (see below);
3. the content goes to a new temporary file in the target's folder, named ``.<name>.sgdstab-<pid>-<random>.tmp``
   (a name no user file has), created with ``O_EXCL``; it is flushed and ``fsync``-ed, and given the mode of the
   file it replaces, or ``0o666 & ~umask`` for a new file (what ``open(path, "w")`` would create);
4. the target's name is added to the folder's marker (before the rename: a kill in between leaves a listed name,
   never an unlisted file of ours), the temporary file is renamed over the target (``os.replace``: atomic on one
   file system) and the folder is ``fsync``-ed, so the new name survives an OS crash or a power loss as an
   SQLite commit does.

A killed writer leaves the old file or the new one, never a half-written one; at worst an orphaned temporary
file, which :func:`remove_temporaries` deletes (only names carrying sgdstab's temporary tag, and only those of
processes no longer alive). Any ``OSError`` on the way (full disk: ``ENOSPC``, ``EDQUOT``, ``EFBIG``;
permission denied; read-only file system) becomes a one-line :class:`OutputError`, and the temporary file is
removed, so nothing half-written remains.

**Ownership.** An output directory of an experiment, a demo or a sweep holds ``.sgdstab-output.json``:
``{"format": "sgdstab-output", "version": 1, "owner": <experiment>, "files": [<names written there>]}``. It is
created by :func:`sgdstab.experiments.io.prepare_output_dir`; every write through this module into that folder
lists its file there first. A file in a marked folder that the marker does not list is never replaced.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from sgdstab.errors import OutputError

MARKER = ".sgdstab-output.json"
MARKER_FORMAT = "sgdstab-output"
MARKER_VERSION = 1
TEMP_TAG = ".sgdstab-"
_TEMP_NAME = re.compile(r"^\..*\.sgdstab-(\d+)-[A-Za-z0-9_]+\.tmp$")
_MARKER_MAX_BYTES = 4 << 20  # a marker lists file names; anything larger is not ours
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_DENIED = frozenset({errno.EACCES, errno.EPERM})
# a folder fsync that the file system does not support is skipped, as SQLite does
_NO_DIR_SYNC = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF, errno.EACCES})
_UMASK_LOCK = threading.Lock()

PathLike = str | os.PathLike[str]


# ---------------------------------------------------------------------------------------------------- the write
def write_stream(path: PathLike, fill: Callable[[IO[bytes]], object], *, protect: Iterable[PathLike] = ()) -> Path:
    """Write ``path`` atomically and durably (see the module docstring): ``fill(handle)`` writes the content to a
    binary file handle of the temporary file. Returns ``path`` as a :class:`~pathlib.Path`."""

    def run(tmp: Path, fd: int) -> None:
        with os.fdopen(fd, "wb") as handle:
            fill(handle)
            handle.flush()
            os.fsync(handle.fileno())

    return _commit(Path(path), run, protect)


def write_path(path: PathLike, fill: Callable[[Path], object], *, protect: Iterable[PathLike] = ()) -> Path:
    """Like :func:`write_stream`, for writers that take a file name: ``fill(tmp)`` writes the content to the
    temporary path ``tmp`` (e.g. ``fig.savefig(tmp)``), which is then ``fsync``-ed and renamed over ``path``."""

    def run(tmp: Path, fd: int) -> None:
        os.close(fd)
        fill(tmp)
        _fsync_file(tmp)

    return _commit(Path(path), run, protect)


def write_text(path: PathLike, text: str, *, protect: Iterable[PathLike] = ()) -> Path:
    """Write ``text`` as UTF-8 to ``path`` (atomically and durably, as :func:`write_stream`)."""
    data = text.encode("utf-8")
    return write_stream(path, lambda handle: handle.write(data), protect=protect)


def _commit(target: Path, run: Callable[[Path, int], None], protect: Iterable[PathLike], marker: bool = False) -> Path:
    """Check ``target``, let ``run(tmp, fd)`` fill a fresh temporary file, then claim, rename and sync."""
    protect = list(protect)
    mode = check_target(target, protect, allow_marker=marker)
    claim = False if marker else _owned(target)
    tmp: Path | None = None
    try:
        fd, name = tempfile.mkstemp(
            dir=target.parent, prefix=f".{target.name[:80]}{TEMP_TAG}{os.getpid()}-", suffix=".tmp"
        )
        tmp = Path(name)
        run(tmp, fd)
        os.chmod(tmp, mode)
        if claim:
            _claim(target)
        check_target(target, protect, allow_marker=marker)  # nothing special appeared meanwhile
        os.replace(tmp, target)
        tmp = None
        fsync_folder(target.parent)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink()
        error = _as_output_error(exc, target)
        if error is None:
            raise
        raise error from None
    return target


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_folder(folder: PathLike) -> None:
    """``fsync`` a directory, so that a rename or a new file in it is durable; skipped where unsupported."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        if exc.errno in _NO_DIR_SYNC:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_DIR_SYNC:
            raise
    finally:
        os.close(fd)


def _as_output_error(exc: BaseException, target: Path) -> OutputError | None:
    """The one-line error for a failed write, or None when ``exc`` is not about the file system (it propagates)."""
    if isinstance(exc, OutputError):
        return exc
    if isinstance(exc, OSError) and exc.errno is not None:
        return OutputError(describe_os_error(exc, target))
    # writers such as torch.save wrap the OSError of a full disk in their own exception
    seen = exc.__cause__ or exc.__context__
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _FULL:
            return OutputError(describe_os_error(seen, target))
        seen = seen.__cause__ or seen.__context__
    return None


def describe_os_error(exc: OSError, target: PathLike) -> str:
    """One line for an ``OSError`` met while writing ``target``: the problem and the fix."""
    shown = repr(str(target))
    reason = exc.strerror or type(exc).__name__
    if exc.errno in _FULL:
        return f"cannot write {shown}: the disk is full ({reason}); nothing was written — free space and run again"
    if exc.errno in _DENIED:
        return f"cannot write {shown}: permission denied; choose a folder you can write to"
    if exc.errno == errno.EROFS:
        return f"cannot write {shown}: the file system is read-only; choose a writable folder"
    if exc.errno == errno.ENOENT:
        return f"cannot write {shown}: its folder does not exist; create it or choose another path"
    return f"cannot write {shown}: {reason}; choose another path"


# ---------------------------------------------------------------------------------------------------- the target
_KINDS = (
    (stat.S_ISLNK, "a symbolic link", "name the file it points to, or a new path"),
    (stat.S_ISDIR, "a directory", "name a file in it"),
    (stat.S_ISFIFO, "a FIFO (named pipe)", "name a regular file or a new path"),
    (stat.S_ISCHR, "a character device", "name a regular file or a new path"),
    (stat.S_ISBLK, "a block device", "name a regular file or a new path"),
    (stat.S_ISSOCK, "a socket", "name a regular file or a new path"),
)


def check_target(path: PathLike, protect: Iterable[PathLike] = (), allow_marker: bool = False) -> int:
    """Check that ``path`` may be written by :func:`write_stream`: absent, or a regular file (not a link, FIFO,
    device, socket or directory), none of ``protect`` (compared by resolved name and by inode) and not the
    ownership marker. Raises :class:`OutputError` (one line); returns the mode the new file gets: that of the file
    it replaces, or ``0o666 & ~umask``."""
    target = Path(path)
    shown = repr(str(target))
    if target.name in ("", ".", ".."):
        raise OutputError(f"cannot write {shown}: it names no file; give a file name")
    if target.name == MARKER and not allow_marker:
        raise OutputError(f"refusing to write {shown}: it is sgdstab's ownership marker; choose another file name")
    try:
        st: os.stat_result | None = os.lstat(target)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise OutputError(describe_os_error(exc, target)) from None
    for other in protect:
        if same_file(target, other, st):
            raise OutputError(
                f"refusing to replace {shown}: this command reads it ({str(other)!r}); write to another path"
            )
    if st is None:
        return 0o666 & ~current_umask()
    for test, kind, fix in _KINDS:
        if test(st.st_mode):
            raise OutputError(
                f"refusing to write {shown}: it is {kind}, not a regular file, and sgdstab replaces only regular "
                f"files; {fix}"
            )
    return stat.S_IMODE(st.st_mode) & 0o777


def same_file(target: PathLike, other: PathLike, target_stat: os.stat_result | None = None) -> bool:
    """Whether ``target`` (not resolved itself: its folder is) and ``other`` (resolved) are one file: the same
    resolved name, or the same inode (a hard link)."""
    target, other = Path(target), Path(other)
    if Path(os.path.realpath(target.parent)) / target.name == Path(os.path.realpath(other)):
        return True
    if target_stat is None:
        return False
    try:
        st = os.stat(other)
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == (target_stat.st_dev, target_stat.st_ino)


def current_umask() -> int:
    """The process's umask, read without changing it where the system tells (Linux ``/proc``), else by setting a
    restrictive one for an instant (a file another thread creates meanwhile is private, never too open)."""
    with (
        contextlib.suppress(OSError, ValueError, IndexError),
        open("/proc/self/status", encoding="ascii", errors="replace") as status,
    ):
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _UMASK_LOCK:
        old = os.umask(0o077)
        os.umask(old)
    return old


# ---------------------------------------------------------------------------------------------------- temporaries
def is_temporary(name: str) -> bool:
    """Whether ``name`` is a temporary file name of :func:`write_stream` (``.<name>.sgdstab-<pid>-<random>.tmp``)."""
    return _TEMP_NAME.match(name) is not None


def remove_temporaries(folder: PathLike) -> int:
    """Delete the temporary files that killed sgdstab writers left in ``folder`` (not its subfolders); returns
    how many. Only regular files with sgdstab's temporary name are touched, and only those whose writing process
    is gone: a user's ``.notes.tmp`` and a temporary file being written right now are kept."""
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if match is None or not entry.is_file(follow_symlinks=False) or _alive(int(match.group(1))):
            continue
        with contextlib.suppress(FileNotFoundError):
            os.unlink(entry.path)
            removed += 1
    return removed


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine (unknown counts as alive: its file is kept)."""
    if pid == os.getpid():
        return True
    if pid <= 0 or os.name != "posix":
        return pid > 0
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True
    return True


# ---------------------------------------------------------------------------------------------------- ownership
def make_directory(folder: PathLike, label: str, fix: str) -> Path:
    """Create ``folder`` and its parents if missing; a file in its place, or a folder that cannot be made, is a
    one-line :class:`OutputError` naming it as ``label`` ("output directory", "tracker output") and the ``fix``."""
    out = Path(folder)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{label} {str(out)!r} is a file, not a directory; {fix}")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {label} {str(out)!r}: {exc.strerror}; {fix}") from None
    return out


def read_marker(folder: PathLike) -> dict[str, Any] | None:
    """The ownership marker of ``folder`` as ``{"owner": str, "files": [str]}``, or None when there is none.
    A marker that is not sgdstab's (not a regular file, too large, not its JSON) raises :class:`OutputError`."""
    path = Path(folder) / MARKER
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise OutputError(describe_os_error(exc, path).replace("cannot write", "cannot read", 1)) from None
    data: Any = None
    if stat.S_ISREG(st.st_mode) and st.st_size <= _MARKER_MAX_BYTES:
        with contextlib.suppress(OSError, ValueError, RecursionError):
            data = json.loads(path.read_bytes())
    if not _valid_marker(data):
        raise OutputError(
            f"{str(path)!r} is not a valid sgdstab output marker (damaged, or not written by sgdstab); choose an "
            f"empty or new directory (or delete the marker if nothing in {str(folder)!r} is yours)"
        )
    return {"owner": data["owner"], "files": list(data["files"])}


def _valid_marker(data: Any) -> bool:
    return (
        isinstance(data, dict)
        and data.get("format") == MARKER_FORMAT
        and isinstance(data.get("owner"), str)
        and isinstance(data.get("files"), list)
        and all(isinstance(name, str) for name in data["files"])
    )


def write_marker(folder: PathLike, owner: str, files: Iterable[str]) -> Path:
    """Write ``folder``'s ownership marker: ``owner`` and the file names sgdstab wrote there (atomically)."""
    content = {
        "format": MARKER_FORMAT,
        "version": MARKER_VERSION,
        "owner": owner,
        "files": sorted(set(files)),
        "note": "written by sgdstab: the files listed are its output, which a later run of the owner may replace",
    }
    data = (json.dumps(content, indent=1, ensure_ascii=False) + "\n").encode("utf-8")

    def run(tmp: Path, fd: int) -> None:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())

    return _commit(Path(folder) / MARKER, run, (), marker=True)


@contextlib.contextmanager
def folder_lock(folder: PathLike) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` (two sweep drivers sharing a directory update its marker one at
    a time); without ``fcntl`` or where the file system refuses, nothing is locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        fcntl = None  # type: ignore[assignment]
    fd = None
    if fcntl is not None:
        with contextlib.suppress(OSError):
            fd = os.open(folder, os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        if fd is not None:
            os.close(fd)  # releases the lock


def _owned(target: Path) -> bool:
    """Whether ``target``'s folder is marked and does not list it yet (it must be claimed before the rename). A
    file at ``target`` that a marked folder does not list was not written by sgdstab: refused."""
    marker = read_marker(target.parent)
    if marker is None or target.name in marker["files"]:
        return False
    if os.path.lexists(target):
        raise OutputError(
            f"refusing to replace {str(target)!r}: sgdstab did not write it ({MARKER} in its folder does not list "
            f"it); move it away, or choose an empty or new directory"
        )
    return True


def _claim(target: Path) -> None:
    """List ``target``'s name in its folder's marker (under the folder lock: concurrent writers lose no name)."""
    with folder_lock(target.parent):
        marker = read_marker(target.parent)
        if marker is not None and target.name not in marker["files"]:
            write_marker(target.parent, marker["owner"], [*marker["files"], target.name])


__all__ = [
    "MARKER",
    "TEMP_TAG",
    "OutputError",
    "check_target",
    "current_umask",
    "describe_os_error",
    "folder_lock",
    "fsync_folder",
    "is_temporary",
    "read_marker",
    "remove_temporaries",
    "same_file",
    "write_marker",
    "write_path",
    "write_stream",
    "write_text",
]
