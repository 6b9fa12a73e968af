"""The tracker's table: one row per measurement, kept durable in ``track.csv`` and ``track.json``, and read back to
resume.

- ``track.csv``: a header and one line per measurement, appended, flushed and ``fsync``-ed as each is measured (a
  run killed at any moment keeps every row written before; a line cut short by the kill has no newline and is
  dropped when the table is read back);
- ``track.json``: ``{"format": "sgdstab-track", "version": 1, "meta": {...}, "state": {...}, "rows": [...]}``,
  replaced atomically after each row (:mod:`sgdstab.utils.files`): the same rows, what was tracked (optimizer,
  loss convention, data, schedule, column meanings) and the tracker's state (steps seen, time spent);
- the folder carries sgdstab's ownership marker (owner ``"tracker"``): a folder of another owner, or one holding a
  ``track.csv``/``track.json`` that sgdstab did not write, is refused, and nothing else in it is touched.

Non-finite numbers are ``nan``/``inf`` in the CSV (what ``float()`` reads) and ``"NaN"``/``"Infinity"`` in the JSON.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sgdstab.errors import OutputError, TrackerError
from sgdstab.utils import files
from sgdstab.utils.results import decode_float, strict_json

CSV_NAME = "track.csv"
JSON_NAME = "track.json"
FIGURE_NAME = "track.png"
OWNER = "tracker"
FORMAT = "sgdstab-track"

# column → meaning; every Hessian figure is of the loss in the user's convention, every rate in the optimizer's units
COLUMNS: dict[str, str] = {
    "step": "optimizer steps taken when measured",
    "seconds": "wall time since tracking began (training and measuring)",
    "lr": "the optimizer's learning rate η at this step",
    "threshold": "the edge of stability for the optimizer at η (2/η for plain SGD; docs/THEORY.md §9)",
    "loss": "the loss on the evaluation subset",
    "train_loss": "the loss handed to step(loss=...) (the training batch's, as the user computed it)",
    "sharpness": "λ_max(H) on the evaluation subset (Lanczos, warm-started)",
    "sharpness_residual": "relative residual ||Hv − λv||/|λ| of that eigenpair",
    "preconditioned_sharpness": "λ_max(P⁻¹H) with P from the optimizer's state (Adam, RMSprop)",
    "batch_sharpness": "E_B[g_Bᵀ H_B g_B / ||g_B||²] over batches of the evaluation subset (Monte Carlo)",
    "batch_sharpness_stderr": "its standard error (0 when every batch was enumerated)",
    "step_sharpness": "Δθᵀ H Δθ / ||Δθ||² along the update of this step",
    "mu": "the alignment μ of SGD's noise with the curvature (on the kernel subset)",
    "gauss_newton_frobenius": "||G||_F of the (generalized) Gauss–Newton matrix (on the kernel subset)",
    "frobenius_bound": "sqrt(1/(c·μ))/η: the largest ||H||_F at which plain SGD can stay at a minimum (THEORY.md §5)",
    "mean_square_proxy": "λ_max(E_B[(I − ηH_B)²]) of plain SGD on the kernel subset: ≥ ρ(T), so ≤ 1 is only sufficient",
    "critical_lr": "the exact mean-square critical learning rate η*(B, β) of SGD's linearization here",
    "measure_seconds": "wall time of this measurement",
    "hessian_products": "Hessian-vector products of the sharpness solve",
}


def _cell(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    x = float(value)
    return repr(x) if math.isfinite(x) else ("nan" if math.isnan(x) else ("inf" if x > 0 else "-inf"))


def claim_folder(out: Path) -> None:
    """Create ``out`` if needed and make it the tracker's (ownership marker), or refuse it (:class:`OutputError`)."""
    files.make_directory(out, "tracker output", "pass another out=DIR")
    with files.folder_lock(out):
        marker = files.read_marker(out)
        if marker is not None:
            if marker["owner"] != OWNER:
                raise OutputError(
                    f"{str(out)!r} holds the output of sgdstab's {marker['owner']!r}, not a tracker's; pass another out"
                )
            return
        ours = [name for name in (CSV_NAME, JSON_NAME, FIGURE_NAME) if os.path.lexists(out / name)]
        if ours:
            raise OutputError(
                f"refusing to write into {str(out)!r}: it holds {', '.join(ours)} that sgdstab did not write; "
                "move them away or pass another out"
            )
        files.write_marker(out, OWNER, [])
    files.remove_temporaries(out)


class Table:
    """The rows of one tracked run and their two files (module docstring)."""

    def __init__(self, out: Path, meta: Mapping[str, Any]) -> None:
        self.out = out
        self.meta = dict(meta)
        self.rows: list[dict[str, float]] = []
        self.state: dict[str, Any] = {}

    @property
    def csv_path(self) -> Path:
        return self.out / CSV_NAME

    @property
    def json_path(self) -> Path:
        return self.out / JSON_NAME

    def exists(self) -> bool:
        return self.csv_path.exists() or self.json_path.exists()

    def start(self) -> None:
        """A new table: the CSV's header and an empty JSON, both durable."""
        files.write_text(self.csv_path, ",".join(COLUMNS) + "\n")
        self._write_json()

    def append(self, row: Mapping[str, Any], state: Mapping[str, Any]) -> None:
        """Add one row: appended to the CSV and ``fsync``-ed, then the JSON replaced atomically."""
        full = {name: row.get(name, math.nan) for name in COLUMNS}
        self.rows.append(full)
        self.state = dict(state)
        line = ",".join(_cell(full[name]) for name in COLUMNS) + "\n"
        try:
            with open(self.csv_path, "a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise OutputError(files.describe_os_error(exc, self.csv_path)) from None
        self._write_json()

    def save_state(self, state: Mapping[str, Any]) -> None:
        self.state = dict(state)
        self._write_json()

    def _write_json(self) -> None:
        content = {"format": FORMAT, "version": 1, "meta": self.meta, "state": self.state, "rows": self.rows}
        files.write_text(self.json_path, strict_json(content, indent=1) + "\n")

    def load(self) -> None:
        """Read the rows back (the CSV's complete lines, which every append wrote first) and the state (the JSON's)."""
        text = self._read(self.csv_path)
        lines = text.split("\n")
        complete = lines[:-1]  # the last piece has no newline: empty, or a line the kill cut short
        if not complete or complete[0] != ",".join(COLUMNS):
            raise TrackerError(
                f"{str(self.csv_path)!r} is not a tracker table of this version (its header differs); pass another out"
            )
        self.rows = [_parse_row(record) for record in csv.reader(io.StringIO("\n".join(complete[1:])))]
        if lines[-1]:  # cut the killed row off, or the next append would continue it
            kept = len("\n".join(complete).encode("utf-8")) + 1
            try:
                os.truncate(self.csv_path, kept)
            except OSError as exc:
                raise OutputError(files.describe_os_error(exc, self.csv_path)) from None
        with contextlib.suppress(TrackerError, ValueError, TypeError, KeyError):
            saved = json.loads(self._read(self.json_path))
            if saved.get("format") == FORMAT:
                self.state = dict(saved.get("state") or {})

    @staticmethod
    def _read(path: Path) -> str:
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TrackerError(f"cannot resume: {str(path)!r} is missing") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise TrackerError(f"cannot read {str(path)!r} to resume: {exc}") from None


def _parse_row(record: list[str]) -> dict[str, float]:
    if len(record) != len(COLUMNS):
        raise TrackerError(f"a row of the tracker table has {len(record)} cells, not {len(COLUMNS)}: damaged table")
    row: dict[str, float] = {}
    for name, cell in zip(COLUMNS, record, strict=True):
        value = decode_float(cell) if cell in ("NaN", "Infinity", "-Infinity") else _float(cell)
        row[name] = int(value) if name == "step" and value is not None and math.isfinite(value) else value
    return row


def _float(cell: str) -> float:
    try:
        return float(cell)
    except ValueError:
        raise TrackerError(f"a cell of the tracker table is not a number: {cell[:40]!r}; damaged table") from None
