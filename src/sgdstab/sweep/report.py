"""The sweep report: ``report.md``, ``results.csv`` and three figures in the sweep directory, written with the
experiments' helpers (:mod:`sgdstab.experiments.report` claims and tables, :mod:`sgdstab.experiments.io` atomic
writes and Agg figures).

Figures: ``sweep_figures.png`` — the final loss and ||H||_F against the first varying numeric field (``lr``
when it varies), one line per value of the other varying fields; ``sweep_bound.png`` — ||H||_F against the bound
sqrt(1/(cμ))/η (THEORY.md §3; c the noise scale), with the line of equality; ``sweep_curves.png`` — every run's
loss curve. Claims: every run finished; ||H||_F ≤ sqrt(1/(cμ))/η at every finished, non-diverged run (a theorem
at linearly stable global minima; the trained points approach one when their loss is small).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from sgdstab._version import __version__
from sgdstab.experiments.io import atomic_write_csv, atomic_write_text, new_figure, save_figure
from sgdstab.experiments.report import Claim, count_claim, fmt, markdown_table, render_report
from sgdstab.sweep.config import SweepConfig
from sgdstab.sweep.export import run_table
from sgdstab.sweep.store import RunRecord, Store

REPORT_FILE = "report.md"
RESULTS_FILE = "results.csv"
_COLUMNS = (
    ("final_loss", "final L"),
    ("hessian_frobenius", "||H||_F"),
    ("sharpness", "λ_max(H)"),
    ("mu", "μ"),
    ("frobenius_bound", "sqrt(1/(cμ))/η"),
    ("bound_ratio", "||H||_F / bound"),
    ("diverged_at", "diverged at"),
    ("seconds", "s"),
)


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def _axes_fields(sweep: SweepConfig, records: list[RunRecord]) -> tuple[str | None, list[str]]:
    varying = [name for name in sweep.varying() if len({str(r.config.get(name)) for r in records}) > 1]
    numeric = [n for n in varying if all(isinstance(r.config.get(n), int | float) for r in records)]
    x = "lr" if "lr" in numeric else (numeric[0] if numeric else None)
    return x, [n for n in varying if n != x]


def _series_label(config: dict[str, Any], fields: list[str]) -> str:
    return ", ".join(f"{k}={config.get(k)}" for k in fields) or "runs"


def _figures(folder: Path, sweep: SweepConfig, done: list[RunRecord], store: Store) -> list[tuple[str, str]]:
    figures: list[tuple[str, str]] = []
    if not done:
        return figures
    x, others = _axes_fields(sweep, done)
    if x is not None:
        fig, (ax_loss, ax_h) = new_figure(1, 2, size=(11.0, 4.2))
        groups: dict[str, list[RunRecord]] = {}
        for r in done:
            groups.setdefault(_series_label(r.config, others), []).append(r)
        for label, group in groups.items():
            group = sorted(group, key=lambda r: r.config[x])
            xs = [r.config[x] for r in group]
            ax_loss.plot(xs, [_number(r.results.get("final_loss")) for r in group], "o-", label=label)
            ax_h.plot(xs, [_number(r.results.get("hessian_frobenius")) for r in group], "o-", label=label)
        for ax, what in ((ax_loss, "final loss L"), (ax_h, "||H||_F at the final point")):
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel(x)
            ax.set_ylabel(what)
            ax.grid(True, which="both", alpha=0.3)
        ax_h.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
        save_figure(fig, folder / "sweep_figures.png")
        figures.append(("sweep_figures.png", f"Final loss and ||H||_F against {x} (diverged runs are not drawn)."))
    pairs = [
        (_number(r.results.get("frobenius_bound")), _number(r.results.get("hessian_frobenius")))
        for r in done
        if not r.results.get("diverged")
    ]
    pairs = [(b, h) for b, h in pairs if math.isfinite(b) and math.isfinite(h) and b > 0 and h > 0]
    if pairs:
        fig, ax = new_figure()
        ax.scatter([b for b, _ in pairs], [h for _, h in pairs], s=18)
        lo = min(min(p) for p in pairs) / 1.5
        hi = max(max(p) for p in pairs) * 1.5
        ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="||H||_F = sqrt(1/(cμ))/η")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("sqrt(1/(cμ))/η")
        ax.set_ylabel("||H||_F")
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        save_figure(fig, folder / "sweep_bound.png")
        figures.append(("sweep_bound.png", "||H||_F against the bound sqrt(1/(cμ))/η; below the dashed line it holds."))
    fig, ax = new_figure()
    varying = [n for n in sweep.varying()]
    for r in done[:40]:  # a legend beyond that is unreadable
        history = store.history(r.run_id)
        steps, losses = history.get("step", []), history.get("loss", [])
        points = [(s, v) for s, v in zip(steps, losses, strict=True) if math.isfinite(v) and v > 0]
        if points:
            ax.plot([p[0] for p in points], [p[1] for p in points], lw=1, label=_series_label(r.config, varying))
    ax.set_yscale("log")
    ax.set_xlabel("SGD step")
    ax.set_ylabel("full-data loss L")
    if len(done) <= 12:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    ax.grid(True, which="both", alpha=0.3)
    save_figure(fig, folder / "sweep_curves.png")
    shown = "" if len(done) <= 40 else f" (the first 40 of {len(done)})"
    figures.append(("sweep_curves.png", f"Loss curves of the finished runs{shown}."))
    return figures


def _claims(records: list[RunRecord]) -> list[Claim]:
    finished = count_claim(
        "all_runs_done",
        "every run of the sweep finished",
        [r.status == "done" for r in records],
        "runs done",
        extra={"failed": sum(r.status == "failed" for r in records)},
    )
    measured = [r for r in records if r.status == "done" and not r.results.get("diverged")]
    ratios = [_number(r.results.get("bound_ratio")) for r in measured]
    bound = count_claim(
        "frobenius_bound",
        "||H||_F ≤ sqrt(1/(cμ))/η at the final point of every finished, non-diverged run (Wu, Wang & Su 2022; a "
        "theorem at linearly stable global minima)",
        [math.isfinite(q) and q <= 1 for q in ratios],
        "runs satisfy it",
        ratio=ratios,
        ratio_name="largest ||H||_F / bound",
    )
    return [finished, bound]


def write_report(
    folder: Path, store: Store, sweep: SweepConfig, run_ids: list[str], seconds: float | None = None
) -> Path:
    """Write ``results.csv``, the figures and ``report.md`` for the runs ``run_ids`` of the store."""
    records = store.runs(run_ids=run_ids)
    atomic_write_csv(folder / RESULTS_FILE, run_table(records))
    done = [r for r in records if r.status == "done"]
    figures = _figures(folder, sweep, done, store)
    varying = list(sweep.varying())
    rows = []
    for r in records:
        row: dict[str, Any] = {"run": r.short_id, "status": r.status, **{k: r.config.get(k) for k in varying}}
        row.update({key: r.results.get(key) for key, _ in _COLUMNS})
        row["seconds"] = r.seconds
        rows.append(row)
    columns = [("run", "run"), ("status", "status"), *[(k, k) for k in varying], *_COLUMNS]
    sections = ["## Runs\n\n" + markdown_table(rows, columns)]
    failed = [r for r in records if r.status == "failed"]
    if failed:
        lines = [
            f"- `{r.short_id}` ({', '.join(f'{k}={r.config.get(k)}' for k in varying)}): {r.error}" for r in failed
        ]
        sections.append("## Failed runs\n\nRerun the same command to retry them.\n\n" + "\n".join(lines))
    total_seconds = sum(r.seconds or 0.0 for r in records)
    intro = (
        f"Sweep `{sweep.name}`: {len(records)} runs over {', '.join(varying) or 'one configuration'}; "
        f"{len(done)} done, {len(failed)} failed. Each run trains an MLP with SGD (half-MSE loss "
        f"L = (1/2n) Σ ||f(x_i) − y_i||², float64) and measures ||H||_F, λ_max(H), μ and the bound "
        f"sqrt(1/(cμ))/η at its final point. Run time summed over runs: {fmt(total_seconds, 3)} s"
        + (f"; wall time of the last `sgdstab sweep` call: {fmt(seconds, 3)} s." if seconds is not None else ".")
    )
    footer = (
        f"Store: `{store.path.name}` (SQLite; `sgdstab runs list|show|export {folder}`). "
        f"sgdstab {__version__}, {time.strftime('%Y-%m-%d %H:%M:%S')}."
    )
    text = render_report(f"Sweep {sweep.name}", intro, _claims(records), sections, figures, footer)
    return atomic_write_text(folder / REPORT_FILE, text)


__all__ = ["REPORT_FILE", "RESULTS_FILE", "write_report"]
