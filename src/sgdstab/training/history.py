"""The record of a training run: :class:`History`, a tidy table (step, loss, tracked figures) with the run's metadata,
saved and loaded losslessly.

Files are strict JSON: floats as Python's shortest round-trip repr, non-finite values as the strings ``"NaN"``,
``"Infinity"``, ``"-Infinity"``; written to a temporary file in the target folder and renamed into place.
"""

from __future__ import annotations

import json
import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from sgdstab.errors import HistoryError, ParseError
from sgdstab.utils import files
from sgdstab.utils.parsing import load_json_text
from sgdstab.utils.results import ResultMixin, decode_float, encode_float

_HISTORY_FORMAT = "sgdstab-history"
_FORMAT_VERSION = 1


def _same_float(a: float, b: float) -> bool:
    """Equal bit patterns, except that every NaN equals every NaN (JSON keeps no NaN payload or sign)."""
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return struct.pack("<d", a) == struct.pack("<d", b)


def _decode_float(x: object, what: str) -> float:
    """A number of a history file (non-finite ones spelt as :func:`sgdstab.utils.results.decode_float` reads)."""
    try:
        value = decode_float(x)
    except OverflowError:  # an integer beyond float range
        value = None
    if value is None:
        raise HistoryError(f"{what} must be a number or 'NaN'/'Infinity'/'-Infinity', got {x!r}")
    return value


def _decode_int(x: object, what: str, optional: bool = False) -> int | None:
    if x is None and optional:
        return None
    if isinstance(x, int) and not isinstance(x, bool):
        return x
    raise HistoryError(f"{what} must be an integer, got {x!r}")


@dataclass(frozen=True, eq=False)
class History(ResultMixin):
    """What a run did, as a tidy table with one row per evaluation: ``step``, ``loss`` (the full-data L, half-MSE
    convention) and one column per tracked figure; plus the run's metadata.

    Rows are taken every ``track_every`` steps, at step 0 and at the last step. A diverged run's last row is the
    step where divergence was detected, with its (non-finite or exploded) loss and NaN for tracked figures.
    ``seconds`` is the wall time of the run (summed over resumed sessions, tracking included) and
    ``steps_per_second`` the last step over it. Equality compares every field exactly (all NaNs equal).

    Raises :class:`HistoryError` when the columns do not form a table (lengths differ, a tracked figure named
    ``step`` or ``loss``).

    Example:
        >>> import math
        >>> from sgdstab import History
        >>> h = History(steps=(0, 10), losses=(0.5, math.inf), tracked={"mu": (0.25, math.nan)}, diverged_at=10)
        >>> h.rows()
        [{'step': 0, 'loss': 0.5, 'mu': 0.25}, {'step': 10, 'loss': inf, 'mu': nan}]
        >>> h.to_file_dict()["columns"]  # strict JSON: non-finite values as strings
        {'step': [0, 10], 'loss': [0.5, 'Infinity'], 'mu': [0.25, 'NaN']}
        >>> History.from_file_dict(h.to_file_dict()) == h
        True
    """

    steps: tuple[int, ...]
    losses: tuple[float, ...]
    tracked: dict[str, tuple[float, ...]] = field(default_factory=dict)
    final_loss: float = math.nan
    diverged_at: int | None = None
    seconds: float = 0.0
    lr: float = math.nan
    batch_size: int = 0
    sampling: str = ""
    seed: int = 0
    steps_per_second: float = math.nan

    def __post_init__(self) -> None:
        if len(self.steps) != len(self.losses):
            raise HistoryError(f"history has {len(self.steps)} steps but {len(self.losses)} losses")
        for name, column in self.tracked.items():
            if name in ("step", "loss"):
                raise HistoryError(f"a tracked figure cannot be named {name!r} (a column of its own)")
            if len(column) != len(self.steps):
                raise HistoryError(f"tracked column {name!r} has {len(column)} values for {len(self.steps)} steps")

    # ------------------------------------------------------------------ the table
    def columns(self) -> dict[str, tuple[float, ...] | tuple[int, ...]]:
        """The table by column: ``step``, ``loss``, then the tracked figures in the order they were asked for."""
        return {"step": self.steps, "loss": self.losses, **self.tracked}

    def rows(self) -> list[dict[str, float | int]]:
        """The table by row, e.g. for ``pandas.DataFrame(history.rows())``."""
        cols = self.columns()
        return [dict(zip(cols, values, strict=True)) for values in zip(*cols.values(), strict=True)]

    def metadata(self) -> dict[str, Any]:
        """Every field that is not a column."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("steps", "losses", "tracked")}

    def __len__(self) -> int:
        return len(self.steps)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, History):
            return NotImplemented
        if self.steps != other.steps or list(self.tracked) != list(other.tracked):
            return False
        mine, theirs = self.metadata(), other.metadata()
        for key, value in mine.items():
            if isinstance(value, float):
                if not (isinstance(theirs[key], float) and _same_float(value, theirs[key])):
                    return False
            elif value != theirs[key] or type(value) is not type(theirs[key]):
                return False
        pairs = [(self.losses, other.losses)] + [(self.tracked[k], other.tracked[k]) for k in self.tracked]
        return all(_same_float(a, b) for x, y in pairs for a, b in zip(x, y, strict=True))

    __hash__ = None  # type: ignore[assignment]  # mutable dict field; equality is by value

    # ------------------------------------------------------------------ files
    def to_file_dict(self) -> dict[str, Any]:
        """The strict-JSON form :meth:`save` writes (non-finite floats as strings)."""
        meta = {k: encode_float(v) if isinstance(v, float) else v for k, v in self.metadata().items()}
        cols: dict[str, list[Any]] = {"step": list(self.steps)}
        for name, column in self.columns().items():
            if name != "step":
                cols[name] = [encode_float(float(x)) for x in column]
        return {"format": _HISTORY_FORMAT, "version": _FORMAT_VERSION, "metadata": meta, "columns": cols}

    @classmethod
    def from_file_dict(cls, data: object, source: str = "history") -> History:
        """The history :meth:`to_file_dict` made ``data`` from; :class:`HistoryError` (naming ``source``) for
        anything else."""
        if not isinstance(data, dict) or data.get("format") != _HISTORY_FORMAT:
            raise HistoryError(f"{source} is not an sgdstab history (no format {_HISTORY_FORMAT!r})")
        if data.get("version") != _FORMAT_VERSION:
            raise HistoryError(f"{source} has history format version {data.get('version')!r}; this reads 1")
        meta, cols = data.get("metadata"), data.get("columns")
        if not isinstance(meta, dict) or not isinstance(cols, dict) or "step" not in cols or "loss" not in cols:
            raise HistoryError(f"{source} lacks its metadata or its step/loss columns")
        if not all(isinstance(c, list) for c in cols.values()):
            raise HistoryError(f"{source}: every column must be a list")
        known = {f.name: f for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in meta.items():
            if key not in known or key in ("steps", "losses", "tracked"):
                raise HistoryError(f"{source}: unknown metadata field {key!r}")
            if key in ("final_loss", "seconds", "lr", "steps_per_second"):
                kwargs[key] = _decode_float(value, f"{source}: {key}")
            elif key in ("batch_size", "seed", "diverged_at"):
                kwargs[key] = _decode_int(value, f"{source}: {key}", optional=key == "diverged_at")
            elif not isinstance(value, str):
                raise HistoryError(f"{source}: {key} must be a string, got {value!r}")
            else:
                kwargs[key] = value
        steps = tuple(_decode_int(s, f"{source}: step") for s in cols["step"])
        losses = tuple(_decode_float(x, f"{source}: loss") for x in cols["loss"])
        tracked = {
            name: tuple(_decode_float(x, f"{source}: {name}") for x in column)
            for name, column in cols.items()
            if name not in ("step", "loss")
        }
        return cls(steps=steps, losses=losses, tracked=tracked, **kwargs)  # type: ignore[arg-type]

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the history as JSON to ``path`` atomically; :meth:`load` reads it back exactly."""
        text = json.dumps(self.to_file_dict(), allow_nan=False, indent=1) + "\n"
        return write_atomically(Path(path), lambda f: f.write(text.encode()))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> History:
        """Read a history written by :meth:`save`; :class:`HistoryError` if the file cannot be read or is not one."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise HistoryError(f"cannot read history {str(path)!r}: {type(exc).__name__}: {exc}") from exc
        try:  # sgdstab wrote it, but a damaged or hostile file must not end in a RecursionError traceback
            data = load_json_text(text, f"history {str(path)!r}", max_depth=None, int64=False, max_chars=None)
        except ParseError as exc:
            raise HistoryError(f"cannot read {exc}") from None
        return cls.from_file_dict(data, source=repr(str(path)))


def write_atomically(path: Path, write: Callable[[Any], object]) -> Path:
    """Create ``path``'s folder if needed, then write it through :func:`sgdstab.utils.files.write_stream`:
    ``write(f)`` fills a binary handle of a temporary file in that folder, which is ``fsync``-ed and renamed over
    ``path`` (a reader, a kill or an OS crash never sees a half-written file; only a regular file is ever replaced).
    Returns ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return files.write_stream(path, write)


__all__ = ["History", "HistoryError", "write_atomically"]
