"""Tables of a sweep's runs: one row per run (for ``runs list``, ``results.csv`` and ``runs export``) and the
long-format per-step metrics; written as CSV (stdlib) or Parquet (only when pyarrow is importable).

A run row: ``run_id``, ``status``, ``attempts``, ``seconds``, ``error``, then every config field (tuples as
``16-16`` text in CSV, lists in Parquet), then the results (empty for runs not done). Non-finite floats are written
as ``nan``/``inf`` in CSV and as IEEE values in Parquet.

The file is written through :mod:`sgdstab.utils.files` (atomic and durable), and only over a regular file or at a new
path: the store itself and its companions (``sweep.db``, ``-wal``, ``-shm``, ``-journal``), a symbolic link, a
FIFO, a device, a socket, a directory, or a file in an sgdstab output directory that sgdstab did not write are
refused in one line before anything is read, and left untouched.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sgdstab.errors import ExportError
from sgdstab.experiments.io import atomic_write, atomic_write_csv, atomic_write_text
from sgdstab.sweep.config import RUN_FIELDS
from sgdstab.sweep.run import RESULT_NAMES
from sgdstab.sweep.store import RunRecord, Store
from sgdstab.utils import files

FORMATS = ("csv", "parquet")
TABLES = ("runs", "metrics")
STORE_COMPANIONS = ("", "-wal", "-shm", "-journal")  # SQLite's files beside the store: never replaced
EMPTY_HEADER = {
    "runs": ("run_id", "status", "attempts", "seconds", "error", *RUN_FIELDS),
    "metrics": ("run_id", "name", "step", "value"),
}


def run_row(record: RunRecord, flat: bool = True) -> dict[str, Any]:
    """One run as a flat dict (``flat``: tuples joined with ``-`` so that a CSV cell holds them)."""
    row: dict[str, Any] = {
        "run_id": record.run_id,
        "status": record.status,
        "attempts": record.attempts,
        "seconds": record.seconds,
        "error": record.error or "",
    }
    for name in RUN_FIELDS:
        value = record.config.get(name)
        if flat and isinstance(value, list | tuple):
            value = "-".join(str(v) for v in value)
        row[name] = value
    order = {name: i for i, name in enumerate(RESULT_NAMES)}
    for name in sorted(record.results, key=lambda k: (order.get(k, len(order)), k)):
        row[name] = record.results[name]
    return row


def run_table(records: Sequence[RunRecord], flat: bool = True) -> list[dict[str, Any]]:
    """Rows of :func:`run_row`, every row with every column (missing results as None)."""
    rows = [run_row(r, flat) for r in records]
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    return [{c: row.get(c) for c in columns} for row in rows]


def _require_pyarrow() -> Any:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ExportError(
            "Parquet export needs pyarrow, which is not installed; pip install pyarrow, or use --format csv"
        ) from None
    return pq


def _parquet(path: Path, rows: list[dict[str, Any]], protect: list[Path]) -> None:
    import pyarrow as pa

    pq = _require_pyarrow()
    table = pa.Table.from_pylist(rows)
    atomic_write(path, lambda p: pq.write_table(table, p), protect=protect)


def store_files(store: Store) -> list[Path]:
    """The store's file and the companions SQLite keeps beside it (present or not)."""
    return [Path(f"{store.path}{suffix}") for suffix in STORE_COMPANIONS]


def check_export_target(target: Path, store: Store) -> None:
    """Refuse (one line) a target that is the store or a companion, that is not a regular file, or whose folder
    does not exist; nothing is read or written before."""
    if not target.parent.is_dir():
        raise ExportError(f"cannot write {str(target)!r}: its folder does not exist")
    try:
        st = os.lstat(target)
    except OSError:
        st = None
    for other in store_files(store):
        if files.same_file(target, other, st):
            raise files.OutputError(
                f"refusing to write {str(target)!r}: it is the sweep store ({other.name}) this export reads; "
                f"choose another --out FILE"
            )
    files.check_target(target)


def export(
    store: Store, path: str | os.PathLike[str], fmt: str = "csv", table: str = "runs", status: str | None = None
) -> Path:
    """Write ``table`` (``runs`` or ``metrics``) of the store to ``path`` as ``fmt`` (atomically)."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    if table not in TABLES:
        raise ExportError(f"unknown table {table!r}; use one of {', '.join(TABLES)}")
    target = Path(path)
    check_export_target(target, store)  # before reading anything
    protect = store_files(store)  # and again at the rename
    if fmt == "parquet":
        _require_pyarrow()  # fail before reading anything
    if table == "runs":
        rows = run_table(store.runs(status=status), flat=(fmt == "csv"))
    else:
        wanted = {r.run_id for r in store.runs(status=status)}
        rows = [row for row in store.metric_rows() if row["run_id"] in wanted]
    if fmt == "csv" and not rows:
        atomic_write_text(target, ",".join(EMPTY_HEADER[table]) + "\n", protect=protect)
    elif fmt == "csv":
        atomic_write_csv(target, rows, protect=protect)
    else:
        _parquet(target, rows, protect)
    return target


__all__ = ["FORMATS", "TABLES", "ExportError", "check_export_target", "export", "run_row", "run_table", "store_files"]
