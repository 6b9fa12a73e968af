"""Writes of experiment outputs, all through :mod:`sgdstab.utils.files` (atomic and durable: a temporary file in the
same folder, ``fsync``, rename, ``fsync`` of the folder; never over a link, a FIFO, a device or a file sgdstab did not
write), and output directories that sgdstab can prove are its own (:func:`prepare_output_dir`).

A run killed mid-write therefore leaves either the old file or the new one, never a half-written file. Figures
are rendered by matplotlib's Agg backend without pyplot, so no global backend state is touched.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from sgdstab.errors import OutputError
from sgdstab.utils import files
from sgdstab.utils.files import MARKER
from sgdstab.utils.results import strict_json

# what an experiment, the demo or a sweep writes at the top of its directory: in a directory without sgdstab's
# marker, any of these (or any *.png, *.csv, *.parquet: figures and tables) is a clash, and the directory is refused
OUTPUT_NAMES = ("config.json", "report.md", "results.csv", "summary.json", "sweep.db", "runs")
OUTPUT_PATTERNS = ("*.png", "*.csv", "*.parquet")
_SHOWN_CLASHES = 6
_LEGACY_CONFIG_MAX_BYTES = 1 << 20  # sgdstab's config.json is a few kB; a larger one is not ours
SWEEP_OWNER = "sweep"  # sgdstab.sweep.driver.OWNER_TAG: its store is opened (and checked), never replaced


def atomic_write(
    path: str | os.PathLike[str], write: Callable[[Path], None], *, protect: Iterable[str | os.PathLike[str]] = ()
) -> Path:
    """Call ``write(tmp)`` on a fresh temporary path beside ``path``, then rename it onto ``path``
    (:func:`sgdstab.utils.files.write_path`: durable, only over a regular file sgdstab may replace)."""
    return files.write_path(path, write, protect=protect)


def atomic_write_text(
    path: str | os.PathLike[str], text: str, *, protect: Iterable[str | os.PathLike[str]] = ()
) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically and durably (:func:`sgdstab.utils.files.write_text`)."""
    return files.write_text(path, text, protect=protect)


def to_json_text(value: Any) -> str:
    """Strict JSON, indented, with non-finite floats as the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``
    (:func:`sgdstab.utils.results.strict_json`; :func:`sgdstab.utils.results.decode_float` reads them back, and the
    ``"nan"``/``"inf"`` of files written before)."""
    return strict_json(value, indent=2, ensure_ascii=False) + "\n"


def atomic_write_json(
    path: str | os.PathLike[str], value: Any, *, protect: Iterable[str | os.PathLike[str]] = ()
) -> Path:
    """Write ``value`` as JSON (:func:`to_json_text`) to ``path`` atomically and durably."""
    return atomic_write_text(path, to_json_text(value), protect=protect)


def atomic_write_csv(
    path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]], *, protect: Iterable[str | os.PathLike[str]] = ()
) -> Path:
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
    return atomic_write_text(path, buffer.getvalue(), protect=protect)


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
    """Create ``path`` (and parents), check that it is a writable directory and delete the temporary files that
    killed sgdstab writers left there (:func:`sgdstab.utils.files.remove_temporaries`: nothing else).

    ``owner``: the experiment (or ``"demo"``, ``"sweep"``) about to write there; the directory must then be its
    own (:func:`claim_output_dir`). Raises :class:`OutputError` with a one-line message.
    """
    out = files.make_directory(path, "output directory", "pass another --out DIR")
    if not os.access(out, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {str(out)!r} is not writable; pass another --out DIR")
    files.remove_temporaries(out)
    if owner is not None:
        claim_output_dir(out, owner)
    return out


def claim_output_dir(out: Path, owner: str) -> None:
    """Make ``out`` the output directory of ``owner``, or refuse it (one-line :class:`OutputError`).

    - It holds sgdstab's marker (:data:`sgdstab.utils.files.MARKER`): accepted when the marker names ``owner``,
      refused when it names another experiment. Later writes replace only the files the marker lists.
    - No marker, but a ``config.json`` whose ``"experiment"`` names ``owner`` (a directory written by sgdstab
      before markers existed): adopted — the marker is written listing the outputs found there
      (:data:`OUTPUT_NAMES`, ``*.png``, ``*.csv``, ``*.parquet``), which a re-run may then replace. A
      ``config.json`` naming another experiment is refused.
    - Otherwise: refused if it holds any of those outputs (they would be overwritten, and nothing proves they are
      sgdstab's), else the marker is written listing them (none, or, for a sweep, the ``sweep.db`` and ``runs``
      it opens: the store itself refuses a file that is not the same sweep's store). Other files of the user stay
      untouched: a later write over any file the marker does not list is refused.
    """
    with files.folder_lock(out):  # two sweep drivers starting on one directory write one marker
        marker = files.read_marker(out)
        if marker is not None:
            _refuse_other(out, marker["owner"], owner)
            return
        previous = _legacy_owner(out)
        found = _existing_outputs(out)
        if owner == SWEEP_OWNER and "sweep.db" in found:
            # a sweep opens its store, never replaces it: the store itself refuses another sweep's or a foreign file
            clashes = [name for name in found if name not in ("sweep.db", "runs")]
        else:
            clashes = found
        if previous is not None:
            _refuse_other(out, previous, owner)
        elif clashes:
            shown = ", ".join(clashes[:_SHOWN_CLASHES]) + (
                f" and {len(clashes) - _SHOWN_CLASHES} more" if len(clashes) > _SHOWN_CLASHES else ""
            )
            raise OutputError(
                f"output directory {str(out)!r} already holds {shown}, which sgdstab did not write (it has no "
                f"{MARKER}) and would overwrite; choose an empty or new directory, or move those files away"
            )
        files.write_marker(out, owner, found)


def _refuse_other(out: Path, other: str, owner: str) -> None:
    if other != owner:
        raise OutputError(
            f"output directory {str(out)!r} holds the results of experiment {other!r}; "
            f"choose an empty directory for {owner!r}"
        )


def _legacy_owner(out: Path) -> str | None:
    """The experiment a marker-less directory's ``config.json`` names (sgdstab's own before markers), or None."""
    previous = out / "config.json"
    if not previous.is_file() or previous.is_symlink() or previous.stat().st_size > _LEGACY_CONFIG_MAX_BYTES:
        return None
    try:
        other = json.loads(previous.read_text(encoding="utf-8")).get("experiment")
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    return other if isinstance(other, str) else None


def _existing_outputs(out: Path) -> list[str]:
    """The names at the top of ``out`` that an sgdstab run writes (sorted; hidden files are never outputs)."""
    found = {name for name in OUTPUT_NAMES if os.path.lexists(out / name)}
    for pattern in OUTPUT_PATTERNS:
        found.update(p.name for p in out.glob(pattern) if not p.name.startswith("."))
    return sorted(found)


__all__ = [
    "OUTPUT_NAMES",
    "OutputError",
    "atomic_write",
    "atomic_write_csv",
    "atomic_write_json",
    "atomic_write_text",
    "claim_output_dir",
    "new_figure",
    "plain_log_ticks",
    "prepare_output_dir",
    "save_figure",
    "to_json_text",
]
