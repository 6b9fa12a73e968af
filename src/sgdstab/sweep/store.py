"""The result store of a sweep: one SQLite file, ``DIR/sweep.db`` (stdlib :mod:`sqlite3`, WAL journal).

Tables::

    meta    (key, value)                       format, version, the sweep's name, created
    owners  (owner, host, pid, started, heartbeat)        the sweep processes ("drivers") at work
    runs    (run_id = config hash, position, config JSON, status, attempts, owner, created, started, finished,
             seconds, timings JSON, worker, error, traceback, sgdstab_version)
    metrics (run_id, name, step, value)         per-step history (name = "loss", ...)
    results (run_id, name, value)               final figures (REAL, INTEGER or TEXT)

``status`` is ``pending`` → ``running`` (claimed) → ``done`` or ``failed``. NaN is stored as the text ``'NaN'``
(SQLite turns a NaN REAL into NULL, which here means "no value") and read back as ``nan``; ±inf stay REAL. The
``timings`` JSON is strict, non-finite times spelled as :mod:`sgdstab.utils.results` does (``"NaN"``,
``"Infinity"``); a bare ``NaN`` written by earlier versions still reads.

**Durability.** Every change is one ``BEGIN IMMEDIATE`` transaction (``synchronous = FULL``): a run's completion
writes its metrics, its results and its ``done`` status together, so a process killed at any instant leaves the
run either complete or not done at all. Primary keys make a duplicated row impossible.

**Concurrency.** Only drivers write; workers (local processes, Ray tasks) hand their results back to their
driver. Several drivers may share a store: each registers in ``owners`` and heartbeats; a run is *claimed* in a
write transaction (status ``running``, ``owner`` set, ``attempts`` + 1) and completed only by the owner that
still holds the claim. A claim is taken over when its owner is *stale*: on this host, when its process is gone
(so a resumed sweep picks up a killed one's runs at once) or its heartbeat is older than ten leases (a reused
pid); on another host, when its heartbeat is older than the lease (60 s). Writers wait up to ``busy_timeout``
(30 s) for the lock, then fail with :class:`StoreError`. SQLite's locking needs a local file system: keep the
sweep directory off NFS.

**Damage.** Opening a store (:meth:`Store.open` for ``runs list|show|export``, :meth:`Store.create` for a new or
resumed sweep) runs SQLite's ``PRAGMA integrity_check`` first and refuses a damaged file in one line that names
the recovery (:meth:`Store.verify`): a damaged page otherwise reads back as silently cut data. The full check, not
``quick_check``, because only it finds an index that no longer matches its table (``runs --status done`` would
list nothing); it costs about 5 ms on a store of 100 runs × 300 history points (3 MB), 60 ms on 1000 runs and
0.9 s on 10 000 runs (300 MB). Every value read is checked as it is read (type, range, JSON, length at most
:data:`MAX_TEXT` characters): a hostile or damaged value raises :class:`StoreError` naming the run, the column and
how to recover, never a traceback. A full disk or an I/O error ends the write transaction rolled back whole, with
SQLite's own error in one line.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sgdstab._version import __version__
from sgdstab.errors import StoreError
from sgdstab.utils.results import decode_float, encode_float, strict_json
from sgdstab.utils.text import printable

STORE_FILE = "sweep.db"
FORMAT = "sgdstab-sweep-store"
VERSION = 1
LEASE_SECONDS = 60.0
BUSY_TIMEOUT = 30.0
STATUSES = ("pending", "running", "done", "failed")
# the longest text one stored field may hold (a config, an error, a traceback): longer is refused as damage,
# and what sgdstab writes is kept within it, so that reading a store never takes unbounded memory or time
MAX_TEXT = 1_000_000
_RUN_ID = re.compile(r"[0-9a-f]{1,64}")  # run ids are SHA-256 hex digests: safe to print and to quote in SQL

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS owners (
    owner TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, started REAL NOT NULL, heartbeat REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0,
    owner TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    seconds REAL,
    timings TEXT,
    worker TEXT,
    error TEXT,
    traceback TEXT,
    sgdstab_version TEXT
);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    step INTEGER NOT NULL,
    value REAL,
    PRIMARY KEY (run_id, name, step)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS results (
    run_id TEXT NOT NULL REFERENCES runs (run_id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value,
    PRIMARY KEY (run_id, name)
) WITHOUT ROWID;
"""


# SQLite turns a NaN REAL into NULL ("no value" here): NaN is stored as text in the one spelling of
# sgdstab.utils.results; ±inf stay REAL, which SQLite keeps
_NAN_TEXT = encode_float(math.nan)


def _encode(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and math.isnan(value):
        return _NAN_TEXT
    return value


def _decode(value: Any) -> Any:
    return math.nan if value == _NAN_TEXT else value


def _capped(column: str) -> str:
    """SQL reading ``column`` with a text or BLOB value cut to ``MAX_TEXT + 1`` characters: an absurdly long value
    is never read whole, yet is still known to be too long. Other values are read as they are."""
    return f"CASE WHEN typeof({column}) IN ('text', 'blob') THEN substr({column}, 1, {MAX_TEXT + 1}) ELSE {column} END"


def _literal(value: Any) -> str:
    """An SQL literal of a stored text, BLOB or NULL, safe in a shell command (hex digits only)."""
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        return f"x'{value.hex()}'"
    return f"CAST(x'{str(value).encode('utf-8', 'surrogatepass').hex()}' AS TEXT)"


def _shown(value: Any) -> str:
    """A stored value for a one-line message: short, its control characters escaped (``repr`` escapes them)."""
    if isinstance(value, bytes):
        return f"a BLOB of {len(value)} bytes"
    if isinstance(value, str) and len(value) > 40:
        return repr(value[:40]) + "…"
    return repr(value)


_RUN_COLUMNS = (
    "run_id",
    "position",
    "config",
    "status",
    "attempts",
    "owner",
    "created",
    "started",
    "finished",
    "seconds",
    "timings",
    "worker",
    "error",
    "traceback",
    "sgdstab_version",
)
_RUN_TEXT = frozenset(
    {"run_id", "config", "status", "owner", "timings", "worker", "error", "traceback", "sgdstab_version"}
)
_RUN_SELECT = ", ".join(_capped(c) if c in _RUN_TEXT else c for c in _RUN_COLUMNS)


class _Row:
    """Checks the values of one stored row as they are read. A bad value raises :class:`StoreError` in one line
    naming the row, the column, the value (escaped, cut short) and the recovery: the sqlite3 command that deletes
    the row (with its run's metrics and results), after which a resumed sweep redoes the run."""

    def __init__(
        self, path: Path, label: str, delete: str, thing: str = "the run", after: str = "rerun the sweep to redo it"
    ) -> None:
        self.path = path
        self.label = label
        self.delete = delete
        self.thing = thing
        self.after = after

    def error(self, column: str, value: Any, why: str) -> StoreError:
        command = f'sqlite3 {shlex.quote(str(self.path))} "PRAGMA foreign_keys = ON; {self.delete}"'
        return StoreError(
            f"the sweep store {str(self.path)!r} is damaged: {self.label} has {column} = {_shown(value)} ({why}); "
            f"delete {self.thing} (`{command}`) and {self.after}, or start a new --out DIR"
        )

    def text(self, column: str, value: Any, optional: bool = False) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str):
            raise self.error(column, value, "missing" if value is None else "not text")
        if len(value) > MAX_TEXT:
            raise self.error(column, value, f"longer than {MAX_TEXT} characters")
        return value

    def integer(self, column: str, value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
        if not isinstance(value, int):
            raise self.error(column, value, "missing" if value is None else "not an integer")
        if minimum is not None and value < minimum:
            raise self.error(column, value, f"below {minimum}")
        if maximum is not None and value > maximum:
            raise self.error(column, value, f"above {maximum}")
        return value

    def number(self, column: str, value: Any, optional: bool = False) -> float | None:
        if value is None and optional:
            return None
        if not isinstance(value, int | float):
            raise self.error(column, value, "missing" if value is None else "not a number")
        return float(value)

    def json_object(self, column: str, value: Any, optional: bool = False) -> dict[str, Any]:
        text = self.text(column, value, optional)
        if not text and optional:
            return {}
        try:
            parsed = json.loads(str(text))
        except (ValueError, RecursionError):
            raise self.error(column, value, "not JSON") from None
        if not isinstance(parsed, dict):
            raise self.error(column, value, "not a JSON object")
        return parsed

    def timings(self, value: Any) -> dict[str, float]:
        raw = self.json_object("timings", value, optional=True)
        # a non-finite time is written as "NaN"/"Infinity" (strict JSON); stores of older versions hold bare NaN
        timings = {
            k: v if isinstance(v, int | float) and not isinstance(v, bool) else decode_float(v) for k, v in raw.items()
        }
        if any(v is None for v in timings.values()):
            raise self.error("timings", value, "not a JSON object of numbers")
        return timings

    def status(self, value: Any) -> str:
        status = self.text("status", value)
        if status not in STATUSES:
            raise self.error("status", value, f"not one of {', '.join(STATUSES)}")
        return str(status)

    def stored(self, column: str, value: Any) -> Any:
        """A value of ``results`` or ``metrics``: a number, NULL or text ('NaN' is NaN), never a BLOB."""
        if isinstance(value, bytes):
            raise self.error(column, value, "not a number or text")
        if isinstance(value, str) and len(value) > MAX_TEXT:
            raise self.error(column, value, f"longer than {MAX_TEXT} characters")
        return _decode(value)

    def metric(self, column: str, value: Any) -> float:
        """A history value as a float: a number, NULL or 'NaN' (both NaN); other text is damage."""
        value = self.stored(column, value)
        if value is None:
            return math.nan
        if not isinstance(value, int | float):
            raise self.error(column, value, "not a number")
        return float(value)


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host (a zombie counts as alive until reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class RunRecord:
    """One row of ``runs`` with its results (``results`` is empty unless the run is done)."""

    run_id: str
    position: int
    config: dict[str, Any]
    status: str
    attempts: int
    owner: str | None
    created: float
    started: float | None
    finished: float | None
    seconds: float | None
    timings: dict[str, float]
    worker: str | None
    error: str | None
    traceback: str | None
    sgdstab_version: str | None
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def short_id(self) -> str:
        return self.run_id[:12]


@dataclass(frozen=True)
class ClaimOutcome:
    """What :meth:`Store.claim` found: the runs it claimed (id, config), and the others of the batch by state:
    ``done`` (finished meanwhile), ``elsewhere`` (claimed by a live driver), ``unclaimed`` (claimable, past the
    limit)."""

    claimed: list[tuple[str, dict[str, Any]]]
    done: list[str]
    elsewhere: list[str]
    unclaimed: list[str]


class Store:
    """A sweep's SQLite store. Open with :meth:`create` (a sweep writes) or :meth:`open` (read an existing one)."""

    def __init__(self, path: Path, conn: sqlite3.Connection, lease: float = LEASE_SECONDS) -> None:
        self.path = path
        self._conn = conn
        self.lease = lease
        self.host = socket.gethostname()

    # ----------------------------------------------------------------------------------------- opening
    @staticmethod
    def _connect(path: Path, create: bool, busy_timeout: float) -> sqlite3.Connection:
        mode = "rwc" if create else "rw"
        try:
            conn = sqlite3.connect(
                f"{path.resolve().as_uri()}?mode={mode}", uri=True, timeout=busy_timeout, isolation_level=None
            )
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA synchronous = FULL")
            if create:
                _switch_to_wal(conn, busy_timeout)
        except sqlite3.DatabaseError as exc:
            raise StoreError(_describe_db_error(path, exc)) from None
        return conn

    @classmethod
    def create(
        cls,
        directory: str | os.PathLike[str],
        name: str,
        busy_timeout: float = BUSY_TIMEOUT,
        lease: float = LEASE_SECONDS,
        verify: bool = True,
    ) -> Store:
        """Open ``DIR/sweep.db`` for sweep ``name``, creating it if missing; a store of another sweep is refused,
        and so is a damaged one (``verify``: :meth:`verify` before anything is written, so a resumed sweep never
        builds on cut data)."""
        path = Path(directory) / STORE_FILE
        conn = cls._connect(path, create=True, busy_timeout=busy_timeout)
        store = cls(path, conn, lease)
        try:
            if verify:
                store.verify()
            with store._write():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
                if not meta:
                    now = time.time()
                    conn.executemany(
                        "INSERT INTO meta (key, value) VALUES (?, ?)",
                        [("format", FORMAT), ("version", str(VERSION)), ("name", name), ("created", repr(now))],
                    )
                    meta = {"format": FORMAT, "version": str(VERSION), "name": name}
            store._check_meta(meta)
            if meta["name"] != name:
                raise StoreError(
                    f"{str(path.parent)!r} holds sweep {meta['name']!r}; choose another --out for sweep {name!r} "
                    f"(or set name = {meta['name']!r} in the config to extend that sweep)"
                )
        except BaseException:
            conn.close()
            raise
        return store

    @classmethod
    def open(cls, directory: str | os.PathLike[str], busy_timeout: float = BUSY_TIMEOUT, verify: bool = True) -> Store:
        """Open the existing store of a sweep directory (for reading). Raises StoreError if there is none, or if
        it is damaged (``verify``: :meth:`verify`, so that nothing reads cut data; False skips it)."""
        folder = Path(directory)
        path = folder / STORE_FILE
        if not folder.is_dir():
            raise StoreError(f"sweep directory {str(folder)!r} does not exist; pass the --out DIR of a sweep")
        if not path.is_file():
            raise StoreError(
                f"{str(folder)!r} holds no sweep store ({STORE_FILE} is missing); run `sgdstab sweep CONFIG --out DIR`"
            )
        conn = cls._connect(path, create=False, busy_timeout=busy_timeout)
        store = cls(path, conn)
        try:
            store._check_meta(store.meta())
            if verify:
                store.verify()
        except BaseException:
            conn.close()
            raise
        return store

    def _check_meta(self, meta: Mapping[str, str]) -> None:
        if meta.get("format") != FORMAT:
            raise StoreError(f"{str(self.path)!r} is not an sgdstab sweep store; choose another directory")
        if meta.get("version") != str(VERSION):
            raise StoreError(
                f"{str(self.path)!r} is a sweep store of format version {meta.get('version')}, this sgdstab reads "
                f"version {VERSION}; use the sgdstab that wrote it"
            )
        if not isinstance(meta.get("name"), str):
            raise StoreError(
                f"{str(self.path)!r} is a damaged sweep store (its meta table names no sweep); start a new --out DIR"
            )

    def meta(self) -> dict[str, str]:
        try:
            return dict(self._conn.execute("SELECT key, value FROM meta").fetchall())
        except sqlite3.DatabaseError as exc:
            raise StoreError(_describe_db_error(self.path, exc)) from None

    @property
    def name(self) -> str:
        return self.meta()["name"]

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken at once (``BEGIN IMMEDIATE``): committed whole or rolled back whole."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.DatabaseError as exc:
            raise StoreError(_describe_db_error(self.path, exc)) from None
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            self._rollback()
            if isinstance(exc, sqlite3.DatabaseError):  # disk full, I/O error, damage: SQLite's own words
                raise StoreError(_describe_db_error(self.path, exc)) from None
            raise

    def _rollback(self) -> None:
        """Roll back the open transaction, if SQLite has not already done so. SQLite rolls a transaction back by
        itself on some errors (a full disk, an I/O error); a ROLLBACK then fails with "no transaction is active",
        and that must not hide the error that ended the transaction. A failed ROLLBACK leaves nothing behind either:
        uncommitted pages are never part of the file, and SQLite discards them when the store is next opened."""
        if not self._conn.in_transaction:
            return
        with suppress(sqlite3.Error):
            self._conn.execute("ROLLBACK")

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """All rows of a read; an SQLite error (damage, lock, I/O) becomes a one-line StoreError."""
        try:
            return self._conn.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as exc:
            raise StoreError(_describe_db_error(self.path, exc)) from None

    def _run_row(self, run_id: Any, rowid: int | None = None) -> _Row:
        """The checker for the values of run ``run_id`` (and its metrics and results); a run id that is not 1 to
        64 hex digits is itself damage, reported by its ``rowid`` in ``runs``."""
        if isinstance(run_id, str) and _RUN_ID.fullmatch(run_id):
            return _Row(self.path, f"run {run_id[:12]}", f"DELETE FROM runs WHERE run_id = '{run_id}'")
        # the rowid names the row whatever its run_id holds; without it, the id as an SQL literal (hex bytes)
        where = f"rowid = {rowid}" if rowid is not None else f"run_id = {_literal(run_id)}"
        row = _Row(
            self.path, f"row {rowid} of table runs" if rowid is not None else "a row", f"DELETE FROM runs WHERE {where}"
        )
        raise row.error("run_id", run_id, "not a run id of 1 to 64 hex digits")

    # ------------------------------------------------------------------------------------------ drivers
    def register_owner(self) -> str:
        """Register this process as a driver; returns its owner id (host:pid:random)."""
        owner = f"{self.host}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        now = time.time()
        with self._write() as conn:
            conn.execute(
                "INSERT INTO owners (owner, host, pid, started, heartbeat) VALUES (?, ?, ?, ?, ?)",
                (owner, self.host, os.getpid(), now, now),
            )
        return owner

    def heartbeat(self, owner: str) -> None:
        with self._write() as conn:
            conn.execute("UPDATE owners SET heartbeat = ? WHERE owner = ?", (time.time(), owner))

    def release(self, owner: str) -> int:
        """Unregister ``owner``; its runs still ``running`` go back to ``pending`` (returns how many)."""
        with self._write() as conn:
            cur = conn.execute(
                "UPDATE runs SET status = 'pending', owner = NULL WHERE status = 'running' AND owner = ?", (owner,)
            )
            conn.execute("DELETE FROM owners WHERE owner = ?", (owner,))
            return cur.rowcount

    def live_owners(self) -> list[str]:
        stale = self._stale_owners()
        return [owner for owner, _, _, _ in self._owners() if owner not in stale]

    def _owners(self) -> list[tuple[str, str, int, float]]:
        """The rows of ``owners`` (owner, host, pid, heartbeat), checked: a bad one is refused with its rowid."""
        rows = []
        for rowid, owner, host, pid, heartbeat in self._query(
            f"SELECT rowid, {_capped('owner')}, {_capped('host')}, pid, heartbeat FROM owners"
        ):
            check = _Row(
                self.path,
                f"row {rowid} of table owners",
                f"DELETE FROM owners WHERE rowid = {rowid}",
                thing="the row",
                after="rerun the sweep (it registers itself again)",
            )
            rows.append(
                (
                    str(check.text("owner", owner)),
                    str(check.text("host", host)),
                    check.integer("pid", pid, minimum=1, maximum=2**31 - 1),  # 0 or -1 would signal a group
                    float(check.number("heartbeat", heartbeat) or 0.0),
                )
            )
        return rows

    def _stale_owners(self) -> set[str]:
        now = time.time()
        stale = set()
        for owner, host, pid, heartbeat in self._owners():
            if host == self.host:
                # the process table is the truth here; the long heartbeat limit only covers a reused pid
                if not pid_alive(pid) or heartbeat < now - 10 * self.lease:
                    stale.add(owner)
            elif heartbeat < now - self.lease:
                stale.add(owner)
        return stale

    # --------------------------------------------------------------------------------------------- runs
    def register(self, runs: Sequence[tuple[str, dict[str, Any]]]) -> int:
        """Add runs (id, config) not yet in the store as ``pending``, positions in the given order (runs already
        there keep their rows, results and status; their position is updated). Returns how many were new."""
        now = time.time()
        for rid, cfg in runs:
            if len(json.dumps(cfg, sort_keys=True)) > MAX_TEXT:
                raise StoreError(
                    f"the config of run {rid[:12]} is longer than {MAX_TEXT} characters as JSON; shorten it"
                )
        with self._write() as conn:
            known = {rid for (rid,) in conn.execute("SELECT run_id FROM runs")}
            new = [
                (rid, pos, json.dumps(cfg, sort_keys=True), now)
                for pos, (rid, cfg) in enumerate(runs)
                if rid not in known
            ]
            conn.executemany(
                "INSERT INTO runs (run_id, position, config, status, created) VALUES (?, ?, ?, 'pending', ?)", new
            )
            conn.executemany(
                "UPDATE runs SET position = ? WHERE run_id = ?",
                [(pos, rid) for pos, (rid, _) in enumerate(runs) if rid in known],
            )
        return len(new)

    def claim(self, owner: str, run_ids: Sequence[str], limit: int) -> ClaimOutcome:
        """Claim up to ``limit`` of ``run_ids`` (in order) that are pending, failed, or running under a stale
        owner, in one transaction; report what the others are."""
        outcome = ClaimOutcome([], [], [], [])
        if not run_ids:
            return outcome
        with self._write() as conn:
            stale = self._stale_owners()
            rows = self._claim_rows(conn, run_ids)
            now = time.time()
            for rid in run_ids:
                if rid not in rows:
                    raise StoreError(f"run {rid[:12]} is not registered in {str(self.path)!r}")
                status, who, cfg = rows[rid]
                if status == "done":
                    outcome.done.append(rid)
                elif status == "running" and who not in stale and who != owner:
                    outcome.elsewhere.append(rid)
                elif len(outcome.claimed) >= limit:
                    outcome.unclaimed.append(rid)
                else:
                    self._take(conn, rid, owner, now)
                    outcome.claimed.append((rid, cfg))
            if stale:
                self._forget_finished_owners(conn, stale)
        return outcome

    def _claim_rows(self, conn: sqlite3.Connection, run_ids: Sequence[str]) -> dict[str, tuple[str, Any, dict]]:
        """The checked (status, owner, config) of each of ``run_ids`` found in ``runs``, read 500 ids at a time
        (SQLite caps the number of parameters of one statement)."""
        rows = {}
        for start in range(0, len(run_ids), 500):
            chunk = list(run_ids[start : start + 500])
            marks = ",".join("?" * len(chunk))
            for rid, status, who, cfg in conn.execute(
                f"SELECT run_id, {_capped('status')}, owner, {_capped('config')} FROM runs WHERE run_id IN ({marks})",
                chunk,
            ):
                check = self._run_row(rid)
                rows[rid] = (check.status(status), who, check.json_object("config", cfg))
        return rows

    @staticmethod
    def _take(conn: sqlite3.Connection, run_id: str, owner: str, now: float) -> None:
        conn.execute(
            "UPDATE runs SET status = 'running', owner = ?, started = ?, attempts = attempts + 1, "
            "sgdstab_version = ? WHERE run_id = ?",
            (owner, now, __version__, run_id),
        )

    @staticmethod
    def _forget_finished_owners(conn: sqlite3.Connection, stale: set[str]) -> None:
        """Drop the stale owners from ``owners`` once none of them holds a running run any more."""
        marks = ",".join("?" * len(stale))
        still = conn.execute(
            f"SELECT COUNT(*) FROM runs WHERE status = 'running' AND owner IN ({marks})", sorted(stale)
        ).fetchone()[0]
        if not still:
            conn.execute(f"DELETE FROM owners WHERE owner IN ({marks})", sorted(stale))

    def _holds(self, conn: sqlite3.Connection, run_id: str, owner: str) -> bool:
        row = conn.execute("SELECT status, owner FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return row is not None and row[0] == "running" and row[1] == owner

    def complete(
        self,
        run_id: str,
        owner: str,
        results: Mapping[str, Any],
        history: Mapping[str, Sequence[float]],
        timings: Mapping[str, float],
        worker: str,
    ) -> bool:
        """Record a finished run in one transaction: its metrics, results and ``done`` status. Returns False
        (and writes nothing) when ``owner`` no longer holds the claim (another driver took it over)."""
        steps = [int(s) for s in history.get("step", [])]
        metric_rows = [
            (run_id, name, step, _encode(float(value)))
            for name, column in history.items()
            if name != "step"
            for step, value in zip(steps, column, strict=True)
        ]
        result_rows = [(run_id, name, _encode(value)) for name, value in results.items()]
        with self._write() as conn:
            if not self._holds(conn, run_id, owner):
                return False
            conn.execute("DELETE FROM metrics WHERE run_id = ?", (run_id,))
            conn.execute("DELETE FROM results WHERE run_id = ?", (run_id,))
            conn.executemany("INSERT INTO metrics (run_id, name, step, value) VALUES (?, ?, ?, ?)", metric_rows)
            conn.executemany("INSERT INTO results (run_id, name, value) VALUES (?, ?, ?)", result_rows)
            conn.execute(
                "UPDATE runs SET status = 'done', finished = ?, seconds = ?, timings = ?, worker = ?, error = NULL, "
                "traceback = NULL WHERE run_id = ?",
                (time.time(), timings.get("total"), strict_json(dict(timings)), worker, run_id),
            )
        return True

    def fail(
        self, run_id: str, owner: str, error: str, traceback: str = "", seconds: float | None = None, worker: str = ""
    ) -> bool:
        """Record a failed run (one-line ``error``, full ``traceback``). False when the claim was lost."""
        with self._write() as conn:
            if not self._holds(conn, run_id, owner):
                return False
            conn.execute(
                "UPDATE runs SET status = 'failed', finished = ?, seconds = ?, worker = ?, error = ?, traceback = ? "
                "WHERE run_id = ?",
                # kept within what a reader accepts: the start of the error, the end of the traceback
                (time.time(), seconds, worker[:MAX_TEXT] or None, error[:MAX_TEXT], traceback[-MAX_TEXT:], run_id),
            )
        return True

    # ------------------------------------------------------------------------------------------ reading
    def _records(self, where: str = "", args: Sequence[Any] = ()) -> list[RunRecord]:
        """The rows of ``runs`` matching ``where`` with their results, every value checked as it is read."""
        rows = self._query(f"SELECT rowid, {_RUN_SELECT} FROM runs {where} ORDER BY position, run_id", args)
        results: dict[Any, list[tuple[Any, Any]]] = {}
        for rid, name, value in self._query(
            f"SELECT run_id, {_capped('name')}, {_capped('value')} FROM results "
            f"WHERE run_id IN (SELECT run_id FROM runs {where})",
            args,
        ):
            results.setdefault(rid, []).append((name, value))
        return [self._record(row, results) for row in rows]

    def _record(self, row: Sequence[Any], results: Mapping[Any, list[tuple[Any, Any]]]) -> RunRecord:
        raw = dict(zip(_RUN_COLUMNS, row[1:], strict=True))
        check = self._run_row(raw["run_id"], rowid=row[0])
        return RunRecord(
            run_id=raw["run_id"],
            position=check.integer("position", raw["position"]),
            config=check.json_object("config", raw["config"]),
            status=check.status(raw["status"]),
            attempts=check.integer("attempts", raw["attempts"], minimum=0),
            owner=check.text("owner", raw["owner"], optional=True),
            created=float(check.number("created", raw["created"]) or 0.0),
            started=check.number("started", raw["started"], optional=True),
            finished=check.number("finished", raw["finished"], optional=True),
            seconds=check.number("seconds", raw["seconds"], optional=True),
            timings=check.timings(raw["timings"]),
            worker=check.text("worker", raw["worker"], optional=True),
            error=check.text("error", raw["error"], optional=True),
            traceback=check.text("traceback", raw["traceback"], optional=True),
            sgdstab_version=check.text("sgdstab_version", raw["sgdstab_version"], optional=True),
            results={
                str(check.text("a result name", name)): check.stored(f"result {_shown(name)}", value)
                for name, value in results.get(raw["run_id"], [])
            },
        )

    def runs(self, status: str | None = None, run_ids: Sequence[str] | None = None) -> list[RunRecord]:
        """The runs (all, or of one status, or these ids), in sweep order."""
        records = self._records("WHERE status = ?", (status,)) if status is not None else self._records()
        if run_ids is not None:
            wanted = set(run_ids)
            records = [r for r in records if r.run_id in wanted]
        return records

    def find(self, prefix: str) -> RunRecord:
        """The run whose id starts with ``prefix`` (at least 4 hex digits). Raises StoreError if none or several."""
        text = prefix.strip().lower()
        if len(text) < 4 or any(ch not in "0123456789abcdef" for ch in text):
            raise StoreError(f"run id {prefix!r} must be at least 4 hex digits (as `sgdstab runs list` shows)")
        found = self._records("WHERE run_id LIKE ?", (text + "%",))
        if not found:
            raise StoreError(f"no run with id {prefix!r} in {str(self.path.parent)!r}; see `sgdstab runs list`")
        if len(found) > 1:
            raise StoreError(f"run id {prefix!r} is ambiguous ({len(found)} runs); give more digits")
        return found[0]

    def history(self, run_id: str) -> dict[str, list[float]]:
        """The per-step metrics of a run as columns: ``step`` and one per name (NaN where a value is missing)."""
        check = self._run_row(run_id)
        rows = [
            self._metric(check, name, step, value)
            for name, step, value in self._query(
                f"SELECT {_capped('name')}, step, {_capped('value')} FROM metrics WHERE run_id = ? ORDER BY name, step",
                (run_id,),
            )
        ]
        steps = sorted({step for _, step, _ in rows})
        index = {s: i for i, s in enumerate(steps)}
        columns: dict[str, list[float]] = {"step": [float(s) for s in steps]}
        for name, step, value in rows:
            column = columns.setdefault(name, [math.nan] * len(steps))
            column[index[step]] = value
        return columns

    @staticmethod
    def _metric(check: _Row, name: Any, step: Any, value: Any) -> tuple[str, int, float]:
        """One checked ``metrics`` row: a name (not ``step``, the column of steps), an integer step, a number."""
        # the common case first, without building a message per row (a store holds millions of them)
        if type(name) is str and type(step) is int and name != "step" and len(name) <= MAX_TEXT:
            if type(value) is float:
                return name, step, value
            if value is None or value == _NAN_TEXT:
                return name, step, math.nan
        text = str(check.text("a metric name", name))
        if text == "step":
            raise check.error("a metric name", name, "the name of the column of steps")
        number = check.integer(f"the step of metric {_shown(text)}", step)
        return text, number, check.metric(f"metric {_shown(text)} at step {number}", value)

    def metric_rows(self) -> list[dict[str, Any]]:
        """Every metric of the runs in the store as a long-format row {run_id, name, step, value}."""
        rows = []
        checks: dict[str, _Row] = {}
        for rid, name, step, value in self._query(
            f"SELECT run_id, {_capped('name')}, step, {_capped('value')} FROM metrics "
            "WHERE run_id IN (SELECT run_id FROM runs) ORDER BY run_id, name, step"
        ):
            check = checks.get(rid) or checks.setdefault(rid, self._run_row(rid))
            text, number, value = self._metric(check, name, step, value)
            rows.append({"run_id": rid, "name": text, "step": number, "value": value})
        return rows

    def counts(self, run_ids: Sequence[str] | None = None) -> dict[str, int]:
        """Runs per status (of these ids, or all)."""
        counts = dict.fromkeys(STATUSES, 0)
        wanted = set(run_ids) if run_ids is not None else None
        for rowid, rid, status in self._query(f"SELECT rowid, {_capped('run_id')}, {_capped('status')} FROM runs"):
            if wanted is None or rid in wanted:
                counts[self._run_row(rid, rowid).status(status)] += 1
        return counts

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check``: ``"ok"`` for an undamaged file, else its findings (at most 20)
        joined by ``"; "``; a file too damaged to check gives SQLite's error."""
        try:
            rows = self._conn.execute("PRAGMA integrity_check(20)").fetchall()
        except sqlite3.DatabaseError as exc:
            return str(exc)
        return "; ".join(str(row[0]) for row in rows)

    def verify(self) -> None:
        """Refuse a damaged file: raise StoreError (one line naming the recovery) unless :meth:`integrity_check`
        says ``ok``. The full check, since ``quick_check`` misses an index that no longer matches its table."""
        findings = self.integrity_check()
        if findings != "ok":
            raise StoreError(_damaged(self.path, findings))


def _damaged(path: Path, findings: str) -> str:
    """The one-line refusal of a damaged store file, with SQLite's findings and the ways to recover."""
    lines = [line.strip() for line in findings.replace("; ", "\n").splitlines()]
    lines = [line for line in lines if line and not line.startswith("*** in database")]
    detail = "; ".join(lines[:3]) + (f"; {len(lines) - 3} more" if len(lines) > 3 else "")
    detail = printable(detail if len(detail) <= 200 else detail[:200] + "…")
    return (
        f"the sweep store {str(path)!r} is damaged (SQLite: {detail}) and is not read, as it could give cut data; "
        f"salvage what is readable with `sqlite3 {shlex.quote(str(path))} .recover > recovered.sql` (rows may be "
        f"missing), use the per-run files in {str(path.parent / 'runs')!r}, or rerun the sweep into a new --out DIR"
    )


def _describe_db_error(path: Path, exc: sqlite3.DatabaseError) -> str:
    """SQLite's error as one line: what happened to the store at ``path`` and what to do."""
    text = printable(str(exc))
    if "Could not decode to UTF-8" in text:
        # the message quotes the undecodable text itself: name the column only
        column = text.split("'")[1] if text.count("'") >= 2 else "?"
        return (
            f"the sweep store {str(path)!r} is damaged: column {column!r} holds text that is not UTF-8; "
            "rerun the sweep into a new --out DIR"
        )
    text = text if len(text) <= 200 else text[:200] + "…"
    if "database or disk is full" in text:
        return (
            f"the disk holding the sweep store {str(path)!r} is full ({text}); the change was rolled back whole, "
            "nothing of it was written: free space and rerun the same command to resume"
        )
    if "disk I/O error" in text:
        return (
            f"reading or writing the sweep store {str(path)!r} failed ({text}); an unfinished change is rolled back "
            "whole: check the disk, then rerun the same command to resume"
        )
    if "malformed" in text:
        return _damaged(path, text)
    if "locked" in text or "busy" in text:
        return (
            f"the sweep store {str(path)!r} stayed locked by another process for more than the busy timeout; "
            "wait for the other sweep or stop it"
        )
    if "not a database" in text or "file is encrypted" in text:
        return f"{str(path)!r} is not a readable SQLite sweep store ({text}); choose another directory"
    if "unable to open" in text:
        return f"cannot open the sweep store {str(path)!r} ({text}); check that its directory is writable"
    if "readonly" in text:
        return f"the sweep store {str(path)!r} is read-only ({text}); pass a writable --out DIR"
    return f"sweep store {str(path)!r}: {text}"


def _switch_to_wal(conn: sqlite3.Connection, busy_timeout: float) -> None:
    """Put the store in WAL mode (persistent, so once per file). SQLite answers "database is locked" to this
    pragma at once, without its busy handler, while another process opens the same new file; two sweeps started
    together on one directory hit that, so the switch is retried here for up to ``busy_timeout``."""
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


__all__ = [
    "LEASE_SECONDS",
    "MAX_TEXT",
    "STATUSES",
    "STORE_FILE",
    "ClaimOutcome",
    "RunRecord",
    "Store",
    "StoreError",
    "pid_alive",
]
