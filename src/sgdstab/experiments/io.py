"""Safe writes for experiment outputs: every file goes through a temporary name in the same folder and a rename.

A run killed mid-write therefore leaves either the old file or the new one, never a half-written file
(``os.replace`` is atomic within one file system). Figures are rendered by matplotlib's Agg backend without pyplot,
so no global backend state is touched.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from sgdstab.errors import SgdstabError


class OutputError(SgdstabError, OSError):
    """An output directory cannot be created or written, or holds another experiment's results."""


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a fresh temporary path beside ``path``, then rename it onto ``path``."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def to_json_text(value: Any) -> str:
    """JSON with non-finite floats as the strings ``"inf"``, ``"-inf"``, ``"nan"`` (strict JSON has none)."""
    return json.dumps(_finite_json(value), indent=2, ensure_ascii=False) + "\n"


def _finite_json(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, Mapping):
        return {str(k): _finite_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_json(v) for v in value]
    return value


def atomic_write_json(path: str | os.PathLike[str], value: Any) -> Path:
    return atomic_write_text(path, to_json_text(value))


def atomic_write_csv(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write dict rows as CSV; the header is the union of the keys in first-seen order, floats in full precision."""
    rows = list(rows)
    header: list[str] = []
    for row in rows:
        header += [k for k in row if k not in header]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in row.items()})
    return atomic_write_text(path, buffer.getvalue())


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG atomically (``bbox_inches="tight"`` keeps outside legends)."""
    return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=dpi, bbox_inches="tight"))


def new_figure(rows: int = 1, cols: int = 1, size: tuple[float, float] = (7.0, 4.5)) -> tuple[Any, Any]:
    """A bare Agg figure and its axes (an array when rows·cols > 1), independent of pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=True)
    return fig, axes


def plain_log_ticks(ax: Any, axis: str = "both") -> None:
    """Log-scaled axes labelled 1, 2, 5, 10, 20, … in plain numbers (no 2×10¹ labels crowding each other)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    targets = {"x": [ax.xaxis], "y": [ax.yaxis], "both": [ax.xaxis, ax.yaxis]}[axis]
    for target in targets:
        target.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        target.set_minor_formatter(NullFormatter())


def prepare_output_dir(path: str | os.PathLike[str], owner: str | None = None) -> Path:
    """Create ``path`` (and parents) and check that it is a writable directory.

    ``owner``: the experiment about to write there; a directory whose ``config.json`` names another experiment is
    refused, so that two experiments never mix their files. Raises :class:`OutputError` with a one-line message.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise OutputError(f"output path {str(out)!r} is a file, not a directory; pass --out DIR")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output directory {str(out)!r}: {exc.strerror}; pass another --out") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {str(out)!r} is not writable; pass another --out DIR")
    # a run killed mid-write leaves its temporary file (never a final name): clear them before writing again
    for stale in out.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    if owner is not None:
        previous = out / "config.json"
        if previous.is_file():
            try:
                other = json.loads(previous.read_text(encoding="utf-8")).get("experiment")
            except (OSError, ValueError, AttributeError):
                other = None
            if other is not None and other != owner:
                raise OutputError(
                    f"output directory {str(out)!r} holds the results of experiment {other!r}; "
                    f"choose an empty directory for {owner!r}"
                )
    return out


__all__ = [
    "OutputError",
    "atomic_write",
    "atomic_write_csv",
    "atomic_write_json",
    "atomic_write_text",
    "new_figure",
    "plain_log_ticks",
    "prepare_output_dir",
    "save_figure",
    "to_json_text",
]
