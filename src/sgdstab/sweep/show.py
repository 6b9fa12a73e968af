"""What ``sgdstab runs list`` and ``sgdstab runs show`` print: a rich table of runs, and one run in full."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from sgdstab.experiments.report import fmt
from sgdstab.sweep.artifacts import run_dir
from sgdstab.sweep.config import RUN_FIELDS
from sgdstab.sweep.store import RunRecord, Store

LIST_RESULTS = (
    ("final_loss", "final L"),
    ("hessian_frobenius", "‖H‖_F"),
    ("mu", "μ"),
    ("bound_ratio", "‖H‖_F/bound"),
)


def varying_fields(records: Sequence[RunRecord]) -> list[str]:
    """Config fields whose value differs between the runs (in RunConfig order)."""
    return [n for n in RUN_FIELDS if len({repr(r.config.get(n)) for r in records}) > 1]


def _value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "-".join(str(v) for v in value)
    return fmt(value, 4)


def runs_table(records: Sequence[RunRecord], title: str) -> Table:
    """One row per run: id, status, attempts, the varying config fields, key results, seconds, error."""
    fields = varying_fields(records)
    table = Table(title=escape(title), title_justify="left")
    table.add_column("run")
    table.add_column("status")
    table.add_column("tries", justify="right")
    for name in fields:
        table.add_column(name, justify="right")
    for _, header in LIST_RESULTS:
        table.add_column(header, justify="right")
    table.add_column("s", justify="right")
    table.add_column("error", overflow="fold")
    style = {"done": "green", "failed": "red", "running": "yellow", "pending": "dim"}
    for r in records:
        diverged = r.results.get("diverged")
        status = f"[{style[r.status]}]{r.status}[/]" + (" (diverged)" if diverged else "")
        table.add_row(
            r.short_id,
            status,
            str(r.attempts),
            *[escape(_value(r.config.get(n))) for n in fields],
            *[_value(r.results.get(key)) for key, _ in LIST_RESULTS],
            fmt(r.seconds, 3),
            escape((r.error or "")[:120]),
        )
    return table


def run_text(store: Store, record: RunRecord) -> str:
    """Everything about one run, as plain text: status, timings, config, results, history, files, error."""
    r = record
    lines = [f"run {r.run_id}", f"  status    {r.status} (attempts: {r.attempts})"]
    if r.worker:
        lines.append(f"  worker    {r.worker}")
    if r.sgdstab_version:
        lines.append(f"  sgdstab   {r.sgdstab_version}")
    if r.seconds is not None:
        parts = ", ".join(f"{k} {v:.3g} s" for k, v in r.timings.items()) or f"{r.seconds:.3g} s"
        lines.append(f"  seconds   {parts}")
    lines.append("config")
    width = max(len(k) for k in r.config)
    lines += [f"  {k.ljust(width)}  {_value(v)}" for k, v in r.config.items()]
    if r.results:
        lines.append("results")
        width = max(len(k) for k in r.results)
        lines += [f"  {k.ljust(width)}  {_value(v)}" for k, v in r.results.items()]
    history = store.history(r.run_id)
    steps, losses = history.get("step", []), history.get("loss", [])
    if steps:
        finite = [v for v in losses if math.isfinite(v)]
        lines.append(
            f"history   {len(steps)} points, steps {int(steps[0])}–{int(steps[-1])}, loss {fmt(losses[0])} → "
            f"{fmt(losses[-1])}" + (f" (min {fmt(min(finite))})" if finite else "")
        )
    folder = run_dir(Path(store.path).parent, r.run_id)
    if folder.is_dir():
        files = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
        lines.append(f"files     {folder}: {', '.join(files)}")
    if r.error:
        lines.append(f"error     {r.error}")
    if r.traceback:
        lines += ["traceback", *("  " + line for line in r.traceback.rstrip().splitlines())]
    return "\n".join(lines)


__all__ = ["run_text", "runs_table", "varying_fields"]
