"""The result store of a sweep: one SQLite file, ``DIR/sweep.db`` (stdlib :mod:`sqlite3`, WAL journal).

Tables::

    meta    (key, value)                       format, version, the sweep's name, created
    owners  (owner, host, pid, started, heartbeat)        the sweep processes ("drivers") at work
    runs    (run_id = config hash, position, config JSON, status, attempts, owner, created, started, finished,
             seconds, timings JSON, worker, error, traceback, sgdstab_version)
    metrics (run_id, name, step, value)         per-step history (name = "loss", ...)
    results (run_id, name, value)               final figures (REAL, INTEGER or TEXT)

``status`` is ``pending`` → ``running`` (claimed) → ``done`` or ``failed``. NaN is stored as the text ``'NaN'``
(SQLite turns a NaN REAL into NULL, which here means "no value") and read back as ``nan``.

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
"""

from __future__ import annotations

import json
import math
import os
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sgdstab._version import __version__
from sgdstab.errors import SgdstabError

STORE_FILE = "sweep.db"
FORMAT = "sgdstab-sweep-store"
VERSION = 1
LEASE_SECONDS = 60.0
BUSY_TIMEOUT = 30.0
STATUSES = ("pending", "running", "done", "failed")

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


class StoreError(SgdstabError, RuntimeError):
    """The sweep store is missing, not an sgdstab store, of another sweep, locked too long, or damaged."""


def _encode(value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    return value


def _decode(value: Any) -> Any:
    return math.nan if value == "NaN" else value


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
                conn.execute("PRAGMA journal_mode = WAL")
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
    ) -> Store:
        """Open ``DIR/sweep.db`` for sweep ``name``, creating it if missing; a store of another sweep is refused."""
        path = Path(directory) / STORE_FILE
        conn = cls._connect(path, create=True, busy_timeout=busy_timeout)
        store = cls(path, conn, lease)
        try:
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
    def open(cls, directory: str | os.PathLike[str], busy_timeout: float = BUSY_TIMEOUT) -> Store:
        """Open the existing store of a sweep directory (for reading). Raises StoreError if there is none."""
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
        except sqlite3.OperationalError as exc:
            raise StoreError(_describe_db_error(self.path, exc)) from None
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.DatabaseError as exc:  # pragma: no cover - disk full or I/O error at commit
            conn.execute("ROLLBACK")
            raise StoreError(_describe_db_error(self.path, exc)) from None

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
        return [o for (o,) in self._conn.execute("SELECT owner FROM owners") if o not in stale]

    def _stale_owners(self) -> set[str]:
        now = time.time()
        stale = set()
        for owner, host, pid, heartbeat in self._conn.execute("SELECT owner, host, pid, heartbeat FROM owners"):
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
        claimed: list[tuple[str, dict[str, Any]]] = []
        done: list[str] = []
        elsewhere: list[str] = []
        unclaimed: list[str] = []
        if not run_ids:
            return ClaimOutcome(claimed, done, elsewhere, unclaimed)
        with self._write() as conn:
            stale = self._stale_owners()
            rows = {}
            for start in range(0, len(run_ids), 500):
                chunk = list(run_ids[start : start + 500])
                marks = ",".join("?" * len(chunk))
                for rid, status, who, cfg in conn.execute(
                    f"SELECT run_id, status, owner, config FROM runs WHERE run_id IN ({marks})", chunk
                ):
                    rows[rid] = (status, who, cfg)
            now = time.time()
            for rid in run_ids:
                if rid not in rows:
                    raise StoreError(f"run {rid[:12]} is not registered in {str(self.path)!r}")
                status, who, cfg = rows[rid]
                if status == "done":
                    done.append(rid)
                elif status == "running" and who not in stale and who != owner:
                    elsewhere.append(rid)
                elif len(claimed) >= limit:
                    unclaimed.append(rid)
                else:
                    conn.execute(
                        "UPDATE runs SET status = 'running', owner = ?, started = ?, attempts = attempts + 1, "
                        "sgdstab_version = ? WHERE run_id = ?",
                        (owner, now, __version__, rid),
                    )
                    claimed.append((rid, json.loads(cfg)))
            if stale:
                marks = ",".join("?" * len(stale))
                still = conn.execute(
                    f"SELECT COUNT(*) FROM runs WHERE status = 'running' AND owner IN ({marks})", sorted(stale)
                ).fetchone()[0]
                if not still:
                    conn.execute(f"DELETE FROM owners WHERE owner IN ({marks})", sorted(stale))
        return ClaimOutcome(claimed, done, elsewhere, unclaimed)

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
                (time.time(), timings.get("total"), json.dumps(dict(timings)), worker, run_id),
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
                (time.time(), seconds, worker or None, error, traceback, run_id),
            )
        return True

    # ------------------------------------------------------------------------------------------ reading
    def _records(self, where: str = "", args: Sequence[Any] = ()) -> list[RunRecord]:
        try:
            rows = self._conn.execute(
                "SELECT run_id, position, config, status, attempts, owner, created, started, finished, seconds, "
                f"timings, worker, error, traceback, sgdstab_version FROM runs {where} ORDER BY position, run_id",
                args,
            ).fetchall()
            results: dict[str, dict[str, Any]] = {}
            for rid, name, value in self._conn.execute("SELECT run_id, name, value FROM results"):
                results.setdefault(rid, {})[name] = _decode(value)
        except sqlite3.DatabaseError as exc:
            raise StoreError(_describe_db_error(self.path, exc)) from None
        return [
            RunRecord(
                run_id=r[0],
                position=r[1],
                config=json.loads(r[2]),
                status=r[3],
                attempts=r[4],
                owner=r[5],
                created=r[6],
                started=r[7],
                finished=r[8],
                seconds=r[9],
                timings=json.loads(r[10]) if r[10] else {},
                worker=r[11],
                error=r[12],
                traceback=r[13],
                sgdstab_version=r[14],
                results=results.get(r[0], {}),
            )
            for r in rows
        ]

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
        """The per-step metrics of a run as columns: ``step`` and one per name."""
        rows = self._conn.execute(
            "SELECT name, step, value FROM metrics WHERE run_id = ? ORDER BY name, step", (run_id,)
        ).fetchall()
        steps = sorted({step for _, step, _ in rows})
        index = {s: i for i, s in enumerate(steps)}
        columns: dict[str, list[float]] = {"step": [float(s) for s in steps]}
        for name, step, value in rows:
            column = columns.setdefault(name, [math.nan] * len(steps))
            column[index[step]] = math.nan if value is None else float(_decode(value))
        return columns

    def metric_rows(self) -> list[dict[str, Any]]:
        """Every metric as a long-format row {run_id, name, step, value}."""
        return [
            {"run_id": rid, "name": name, "step": step, "value": _decode(value)}
            for rid, name, step, value in self._conn.execute(
                "SELECT run_id, name, step, value FROM metrics ORDER BY run_id, name, step"
            )
        ]

    def counts(self, run_ids: Sequence[str] | None = None) -> dict[str, int]:
        """Runs per status (of these ids, or all)."""
        counts = dict.fromkeys(STATUSES, 0)
        wanted = set(run_ids) if run_ids is not None else None
        for rid, status in self._conn.execute("SELECT run_id, status FROM runs"):
            if wanted is None or rid in wanted:
                counts[status] += 1
        return counts

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check``: ``"ok"`` for an undamaged file."""
        return "; ".join(row[0] for row in self._conn.execute("PRAGMA integrity_check"))


def _describe_db_error(path: Path, exc: sqlite3.DatabaseError) -> str:
    text = str(exc)
    if "locked" in text or "busy" in text:
        return (
            f"the sweep store {str(path)!r} stayed locked by another process for more than the busy timeout; "
            "wait for the other sweep or stop it"
        )
    if "not a database" in text or "malformed" in text or "file is encrypted" in text:
        return f"{str(path)!r} is not a readable SQLite sweep store ({text}); choose another directory"
    if "unable to open" in text:
        return f"cannot open the sweep store {str(path)!r} ({text}); check that its directory is writable"
    if "readonly" in text:
        return f"the sweep store {str(path)!r} is read-only ({text}); pass a writable --out DIR"
    return f"sweep store {str(path)!r}: {text}"


__all__ = [
    "LEASE_SECONDS",
    "STATUSES",
    "STORE_FILE",
    "ClaimOutcome",
    "RunRecord",
    "Store",
    "StoreError",
    "pid_alive",
]
