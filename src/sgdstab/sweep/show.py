"""What ``sgdstab runs list`` and ``sgdstab runs show`` print: a rich table of runs, and one run in full.

A diverged run is shown as such (``done (diverged at step N)``), never as a plain ``done``; the Frobenius ratio
only where the theorem applies (:mod:`sgdstab.sweep.outcome`), ``n/a`` elsewhere.

Everything printed from the store goes through :func:`sgdstab.utils.text.printable` (an escape sequence stored in an
error or a worker name is shown as ``\x1b[…``, never sent to the terminal), and the table's cells are rich
:class:`~rich.text.Text`, so stored text such as ``[bold]`` is shown as written, never read as rich markup.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.table import Table
from rich.text import Text

from sgdstab.sweep.artifacts import run_dir
from sgdstab.sweep.config import RUN_FIELDS
from sgdstab.sweep.outcome import bound_applies, bound_note, counts_line, diverged, status_label
from sgdstab.sweep.store import RunRecord, Store
from sgdstab.utils.text import fmt, printable

LIST_RESULTS = (
    ("final_loss", "final L"),
    ("minimum_loss", "L polished"),
    ("hessian_frobenius", "‖H‖_F"),
    ("mu", "μ"),
    ("bound_ratio", "‖H‖_F/bound"),
)
LIST_CAPTION = (
    "final L: where SGD stopped; L polished: after Gauss–Newton polishing to the minimum next to it; ‖H‖_F at that "
    "minimum (at the SGD endpoint where none was reached); μ at the SGD endpoint; ‖H‖_F/bound: ‖H‖_F over "
    "sqrt(1/(cμ))/η, only where the theorem applies (n/a: not a global minimum, or ρ(T) > 1 there; see `runs "
    "show`); seconds: wall time of the run. "
)


def varying_fields(records: Sequence[RunRecord]) -> list[str]:
    """Config fields whose value differs between the runs (in RunConfig order)."""
    return [n for n in RUN_FIELDS if len({repr(r.config.get(n)) for r in records}) > 1]


def _value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "-".join(str(v) for v in value)
    return fmt(value, 4)


def _ratio_cell(record: RunRecord) -> str:
    if record.status != "done" or diverged(record):
        return "—"
    return _value(record.results.get("bound_ratio")) if bound_applies(record) else "n/a"


def _cell(text: str, style: str = "") -> Text:
    """A table cell shown exactly as written: control characters escaped, no rich markup read."""
    return Text(printable(text), style=style)


def runs_table(records: Sequence[RunRecord], title: str) -> Table:
    """One row per run: id, status, attempts, the varying config fields, key results, seconds, error; the caption
    says what the columns are and how many runs converged, diverged and failed. Every cell, the title included,
    is literal text (see the module docstring)."""
    fields = varying_fields(records)
    table = Table(title=_cell(title), title_justify="left", caption_justify="left")
    table.caption = _cell(LIST_CAPTION + f"Runs: {counts_line(records)}.")
    table.add_column("run")
    table.add_column("status")
    table.add_column("tries", justify="right")
    for name in fields:
        table.add_column(name, justify="right")
    for _, header in LIST_RESULTS:
        table.add_column(header, justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("error", overflow="fold")
    style = {"done": "green", "failed": "red", "running": "yellow", "pending": "dim"}
    for r in records:
        color = "magenta" if diverged(r) else style[r.status]
        table.add_row(
            _cell(r.short_id),
            _cell(status_label(r), style=color),
            _cell(str(r.attempts)),
            *[_cell(_value(r.config.get(n))) for n in fields],
            *[_cell(_value(r.results.get(key))) for key, _ in LIST_RESULTS[:-1]],
            _cell(_ratio_cell(r)),
            _cell(fmt(r.seconds, 3)),
            _cell((r.error or "")[:120]),
        )
    return table


def _history_line(history: dict[str, list[float]]) -> str:
    """``history   301 points, steps 0–3000, loss 1.2 → 0.003 (min 0.002)``; the other metrics by name when a
    store holds no loss."""
    steps, losses = history["step"], history.get("loss", [])
    line = f"history   {len(steps)} points, steps {int(steps[0])}–{int(steps[-1])}"
    if not losses:
        return line + f", no loss (metrics: {', '.join(k for k in history if k != 'step')})"
    finite = [v for v in losses if math.isfinite(v)]
    return line + f", loss {fmt(losses[0])} → {fmt(losses[-1])}" + (f" (min {fmt(min(finite))})" if finite else "")


def run_text(store: Store, record: RunRecord) -> str:
    """Everything about one run, as plain text: status, timings, config, results, history, files, error, the
    traceback; each line with its control characters escaped (:func:`sgdstab.utils.text.printable`)."""
    r = record
    lines = [f"run {r.run_id}", f"  status    {status_label(r)} (attempts: {r.attempts})"]
    if r.status == "done":
        lines.append(f"  bound     {bound_note(r)}")
    if r.worker:
        lines.append(f"  worker    {r.worker}")
    if r.sgdstab_version:
        lines.append(f"  sgdstab   {r.sgdstab_version}")
    if r.seconds is not None:
        parts = ", ".join(f"{k} {v:.3g} s" for k, v in r.timings.items()) or f"{r.seconds:.3g} s"
        lines.append(f"  seconds   {parts}")
    lines.append("config")
    width = max((len(k) for k in r.config), default=0)
    lines += [f"  {k.ljust(width)}  {_value(v)}" for k, v in r.config.items()]
    if r.results:
        lines.append("results")
        width = max(len(k) for k in r.results)
        lines += [f"  {k.ljust(width)}  {_value(v)}" for k, v in r.results.items()]
    history = store.history(r.run_id)
    if history.get("step"):
        lines.append(_history_line(history))
    folder = run_dir(Path(store.path).parent, r.run_id)
    if folder.is_dir():
        files = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        lines.append(f"files     {folder}: {', '.join(files)}")
    if r.error:
        lines.append(f"error     {r.error}")
    if r.traceback:
        lines += ["traceback", *("  " + line for line in r.traceback.rstrip().split("\n"))]
    # a stored line break inside a field (an error, a config value) is escaped too: only these lines break
    return "\n".join(printable(line) for line in lines)


__all__ = ["LIST_CAPTION", "run_text", "runs_table", "varying_fields"]
