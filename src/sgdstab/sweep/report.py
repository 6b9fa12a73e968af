"""The sweep report: ``report.md``, ``results.csv`` and three figures in the sweep directory, written with the
experiments' helpers (:mod:`sgdstab.experiments.report` claims and tables, :mod:`sgdstab.experiments.io` atomic
writes and Agg figures, the ``flatness`` experiment's certificate plot).

**Claims**, each over the runs where its hypothesis holds (:mod:`sgdstab.sweep.outcome`):

- ``all_runs_converged``: every run ran to its end without failing or diverging (a diverged run is counted as
  diverged, not as finished);
- ``reached_minimum``: every converged run was polished to a global minimum (L zero to float64 rounding);
- ``linearly_stable`` (runs with ``stability = true``): SGD can stay at every minimum reached, ρ(T) ≤ 1;
- ``frobenius_bound``: ||H||_F ≤ sqrt(1/(cμ))/η at every run where the theorem applies — a global minimum, and
  ρ(T) ≤ 1 there where stability was computed; every other run is named with the reason ("not applicable, L = …").

**Figures**: ``sweep_figures.png`` — the loss where SGD stopped and ||H||_F at the minimum against the first
varying numeric field (``lr`` when it varies), one line per value of the other varying fields, diverged runs
marked; ``sweep_bound.png`` — ||H||_F against the bound sqrt(1/(cμ))/η (y = x line, colour B, marker η) and
λ_max(H) against 2/η, for the runs where the theorem applies; ``sweep_curves.png`` — every run's loss curve.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sgdstab._version import __version__
from sgdstab.errors import OutputError, SgdstabError
from sgdstab.experiments.io import atomic_write_csv, atomic_write_text, new_figure, plain_log_ticks, save_figure
from sgdstab.experiments.report import Claim, count_claim, fmt, markdown_table, render_report
from sgdstab.sweep.config import SweepConfig
from sgdstab.sweep.export import run_table
from sgdstab.sweep.outcome import bound_applies, bound_note, counts_line, diverged, outcome, status_label
from sgdstab.sweep.store import RunRecord, Store

REPORT_FILE = "report.md"
RESULTS_FILE = "results.csv"
MAX_CURVES = 40  # loss curves drawn; a legend beyond that is unreadable
_COLUMNS = (
    ("final_loss", "final L"),
    ("minimum_loss", "L polished"),
    ("polish_relative", "||Δθ||/||θ||"),
    ("hessian_frobenius", "||H||_F"),
    ("sharpness", "λ_max(H)"),
    ("mu", "μ"),
    ("frobenius_bound", "sqrt(1/(cμ))/η"),
    ("bound_ratio", "||H||_F / bound"),
)
_STABILITY_COLUMNS = (("lr_ratio", "η/η*"), ("rho", "ρ(T)"))


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


def _run_label(record: RunRecord, fields: list[str]) -> str:
    return f"`{record.short_id}` ({_series_label(record.config, fields)})"


def _grid_ticks(ax: Any, values: list[float], log: bool) -> None:
    """Ticks at the grid's own values when there are few (no 2×10⁻² labels colliding), else 1-2-5 log ticks."""
    from matplotlib.ticker import NullFormatter, NullLocator

    distinct = sorted(set(values))
    if log and len(distinct) > 8:
        plain_log_ticks(ax, "x")
        return
    ax.set_xticks(distinct, [f"{v:g}" for v in distinct])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())


def _log_ticks(ax: Any, axis: str, values: list[float]) -> None:
    """Plain 1-2-5 labels over a few decades; beyond that one label per decade (10ⁿ), so labels never collide
    (matplotlib draws no ticks at all for 1-2-5 over a wide range)."""
    from matplotlib.ticker import LogFormatterSciNotation, LogLocator, NullFormatter

    finite = [v for v in values if math.isfinite(v) and v > 0]
    if not finite or math.log10(max(finite) / min(finite)) <= 4:
        plain_log_ticks(ax, axis)
        return
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(LogLocator(base=10, numticks=12))
    target.set_major_formatter(LogFormatterSciNotation())
    target.set_minor_formatter(NullFormatter())


def _colors(count: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(0.85 * i / max(count - 1, 1)) for i in range(count)]


def _plot_against(done: list[RunRecord], x: str, others: list[str]) -> tuple[Any, str]:
    """Left: L where SGD stopped; right: ||H||_F at the minimum (or endpoint, hollow); diverged runs as red ×."""
    fig, (ax_loss, ax_h) = new_figure(1, 2, size=(12.0, 4.6))
    xs_all = [float(r.config[x]) for r in done]
    converged = [r for r in done if not diverged(r)]
    _draw_series(ax_loss, ax_h, converged, x, others)
    bad = [r for r in done if diverged(r)]
    if bad:
        _mark_diverged(ax_loss, ax_h, [r.config[x] for r in bad])
    hollow = any(not r.results.get("at_minimum") for r in converged)
    if hollow:
        ax_h.scatter([], [], s=36, facecolor="none", edgecolor="gray", label="not polished to a minimum: endpoint")
    panels = (
        (ax_loss, [_number(r.results.get("final_loss")) for r in converged]),
        (ax_h, [_number(r.results.get("hessian_frobenius")) for r in converged]),
    )
    for ax, ys in panels:
        # headroom above the loss data for the diverged markers
        _scale_panel(ax, x, xs_all, ys, top=4.0 if bad and ax is ax_loss else 1.5)
    ax_loss.set_ylabel("L where SGD stopped")
    ax_loss.set_title("Loss at the end of SGD")
    ax_h.set_ylabel(r"$\|H\|_F$ at the minimum next to it (H = G)")
    ax_h.set_title("Flatness of the minimum reached")
    if ax_h.get_legend_handles_labels()[0]:  # one legend for both panels (same colours), clear of the data
        ax_h.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    fig.tight_layout()
    return fig, _against_caption(x, others, len(bad), hollow)


def _draw_series(ax_loss: Any, ax_h: Any, converged: list[RunRecord], x: str, others: list[str]) -> None:
    """One coloured line per value of the other varying fields: the loss (left) and ||H||_F (right), the markers
    of runs not polished to a minimum hollow."""
    groups: dict[str, list[RunRecord]] = {}
    for r in converged:
        groups.setdefault(_series_label(r.config, others), []).append(r)
    for (label, group), color in zip(groups.items(), _colors(len(groups)), strict=True):
        group = sorted(group, key=lambda r: r.config[x])
        xs = [r.config[x] for r in group]
        ax_loss.plot(xs, [_number(r.results.get("final_loss")) for r in group], "o-", color=color, label=label)
        hs = [_number(r.results.get("hessian_frobenius")) for r in group]
        ax_h.plot(xs, hs, "-", color=color, label=label)
        for r, h in zip(group, hs, strict=True):
            at_min = bool(r.results.get("at_minimum"))
            face = color if at_min else "none"
            ax_h.scatter([r.config[x]], [h], s=36, facecolor=face, edgecolor=color, zorder=3)


def _mark_diverged(ax_loss: Any, ax_h: Any, xs: list[Any]) -> None:
    # a diverged run has no figures: mark where it is on the grid, at the top of the loss panel
    ax_loss.scatter(
        xs,
        [0.96] * len(xs),
        marker="x",
        color="tab:red",
        s=60,
        transform=ax_loss.get_xaxis_transform(),
        zorder=4,
    )
    ax_h.scatter([], [], marker="x", color="tab:red", s=60, label=f"diverged ({len(xs)}): × atop the left panel")


def _scale_panel(ax: Any, x: str, xs_all: list[float], ys: list[float], top: float) -> None:
    """Log axes (x too when the grid spans more than a factor 2), the y range ``top`` times above the data."""
    lo, hi = min(xs_all), max(xs_all)
    log_x = lo > 0 and hi / lo > 2
    if log_x:
        ax.set_xscale("log")
        ax.set_xlim(lo / 1.25, hi * 1.25)  # room for the end markers
    _grid_ticks(ax, xs_all, log_x)
    ax.set_yscale("log")
    finite = [y for y in ys if math.isfinite(y) and y > 0]
    if finite:
        ax.set_ylim(min(finite) / 1.5, max(finite) * top)
    _log_ticks(ax, "y", ys)
    ax.set_xlabel(x)
    ax.grid(True, which="major", alpha=0.3)


def _against_caption(x: str, others: list[str], diverged_count: int, hollow: bool) -> str:
    return (
        f"Left: the full-data loss L where SGD stopped against {x}, one line per "
        f"{', '.join(others) or 'run'} value (converged runs)"
        + (
            f"; red × at the top: the {diverged_count} diverged run(s), whose loss blew up (not plotted)"
            if diverged_count
            else ""
        )
        + f". Right: ||H||_F at the global minimum next to the SGD endpoint (Gauss–Newton polishing), against {x}"
        + ("; hollow markers: runs not polished to a minimum, measured where SGD stopped" if hollow else "")
        + "."
    )


def _certificate_rows(records: list[RunRecord]) -> list[dict[str, Any]]:
    """The runs where the theorem applies, as rows of the flatness experiment's certificate plot."""
    rows = []
    for r in records:
        if not bound_applies(r):
            continue
        res = r.results
        c = _number(res.get("noise_scale"))
        rows.append(
            {
                "status": "ok",
                "method": "GD" if c == 0 else "SGD",
                "lr": float(r.config["lr"]),
                "batch_size": int(r.config["batch_size"]),
                "frobenius_bound": _number(res.get("frobenius_bound")),
                "hessian_frobenius": _number(res.get("hessian_frobenius")),
                "lambda_max": _number(res.get("sharpness")),
            }
        )
    return rows


def _plot_curves(done: list[RunRecord], store: Store, x: str | None, others: list[str]) -> tuple[Any, str]:
    """Every run's loss curve: colour by the value of ``x`` (tab10), line style by the other varying fields."""
    fig, ax = new_figure(size=(8.5, 4.8))
    shown = done[:MAX_CURVES]
    xs = sorted({repr(r.config.get(x)) for r in shown}) if x is not None else []
    series = sorted({_series_label(r.config, others) for r in shown})
    styles = ["-", "--", ":", "-."]
    fields = ([x] if x is not None else []) + others
    kept: list[float] = []
    for i, r in enumerate(shown):
        history = store.history(r.run_id)
        points = [
            (s, v)
            for s, v in zip(history.get("step", []), history.get("loss", []), strict=True)
            if math.isfinite(v) and v > 0
        ]
        if not points:
            continue
        colour = f"C{(xs.index(repr(r.config.get(x))) if x is not None else i) % 10}"
        style = styles[series.index(_series_label(r.config, others)) % len(styles)]
        label = _series_label(r.config, fields) + (
            f" ({status_label(r).removeprefix('done (')[:-1]})" if diverged(r) else ""
        )
        ax.plot([p[0] for p in points], [p[1] for p in points], style, color=colour, lw=1.1, alpha=0.85, label=label)
        if diverged(r):  # where the run blew up, at the top edge (its loss leaves the plot)
            ax.scatter(
                [points[-1][0]], [0.96], marker="x", color="tab:red", s=50, zorder=4, transform=ax.get_xaxis_transform()
            )
        else:
            kept.extend(p[1] for p in points)
    ax.set_yscale("log")
    if kept:  # the converged runs set the scale: a diverged loss of 1e11 would flatten them into one line
        ax.set_ylim(min(kept) / 2, max(kept) * (20 if any(diverged(r) for r in shown) else 1.5))
    _log_ticks(ax, "y", list(ax.get_ylim()))
    ax.set_xlabel("SGD step")
    ax.set_ylabel("full-data loss L")
    ax.set_title("Loss curves of the runs")
    if len(shown) <= 12:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    more = "" if len(done) <= MAX_CURVES else f" (the first {MAX_CURVES} of {len(done)})"
    encoding = (f"colour: {x}" if x is not None else "colour: run") + (
        f", line style: {', '.join(others)}" if others else ""
    )
    caption = f"Full-data loss L during SGD of every run that ran to its end{more} ({encoding}); " + (
        "a red × marks the last finite loss of a diverged run."
        if any(diverged(r) for r in shown)
        else "no run diverged."
    )
    return fig, caption


def _figures(folder: Path, sweep: SweepConfig, done: list[RunRecord], store: Store) -> list[tuple[str, str]]:
    from sgdstab.experiments.flatness import plot_certificates

    figures: list[tuple[str, str]] = []
    if not done:
        return figures
    x, others = _axes_fields(sweep, done)
    if x is not None:
        fig, caption = _plot_against(done, x, others)
        save_figure(fig, folder / "sweep_figures.png")
        figures.append(("sweep_figures.png", caption))
    rows = _certificate_rows(done)
    if rows:
        fig = plot_certificates(rows, "sweep")
        save_figure(fig, folder / "sweep_bound.png")
        left_out = len(done) - len(rows)
        figures.append(
            (
                "sweep_bound.png",
                f"Left: ||H||_F at the minimum against the Frobenius bound sqrt(1/(cμ))/η (μ measured where SGD "
                "stopped), colour the batch size B, marker the learning rate η; below the line y = x the bound "
                "holds. Right: λ_max(H) against 2/η (the GD bound). Drawn: the "
                f"{len(rows)} run(s) where the theorem applies"
                + (
                    f"; left out: {left_out} (diverged, or not at a stable global minimum: see the table)"
                    if left_out
                    else ""
                )
                + ".",
            )
        )
    fig, caption = _plot_curves(done, store, x, others if x is not None else list(sweep.varying()))
    save_figure(fig, folder / "sweep_curves.png")
    figures.append(("sweep_curves.png", caption))
    return figures


@dataclass(frozen=True)
class _Groups:
    """The runs of a report by outcome, each claim's population (:mod:`sgdstab.sweep.outcome`)."""

    failed: list[RunRecord]
    diverged: list[RunRecord]
    unfinished: list[RunRecord]
    converged: list[RunRecord]
    checked: list[RunRecord]  # converged, at a minimum, with ρ(T) computed

    @classmethod
    def of(cls, records: list[RunRecord]) -> _Groups:
        converged = [r for r in records if outcome(r) == "converged"]
        return cls(
            failed=[r for r in records if r.status == "failed"],
            diverged=[r for r in records if diverged(r)],
            unfinished=[r for r in records if r.status in ("pending", "running")],
            converged=converged,
            checked=[r for r in converged if r.results.get("at_minimum") and "stable" in r.results],
        )


def _claims(records: list[RunRecord], fields: list[str]) -> list[Claim]:
    groups = _Groups.of(records)
    claims = [_converged_claim(records, groups, fields), _minimum_claim(groups, fields)]
    if groups.checked:
        claims.append(_stability_claim(groups.checked))
    claims.append(_bound_claim(records, groups, fields))
    return claims


def _converged_claim(records: list[RunRecord], groups: _Groups, fields: list[str]) -> Claim:
    bad, failed, unfinished = groups.diverged, groups.failed, groups.unfinished
    claim = count_claim(
        "all_runs_converged",
        "every run of the sweep ran to its end without failing or diverging",
        [outcome(r) == "converged" for r in records],
        "runs converged",
        extra={"diverged": len(bad), "failed": len(failed), "not_run": len(unfinished)},
    )
    parts = [f"{len(x)} {what}" for x, what in ((bad, "diverged"), (failed, "failed"), (unfinished, "not run")) if x]
    if parts:
        named = "; ".join(f"{_run_label(r, fields)} {status_label(r)}" for r in bad)
        claim = _with(claim, f" ({', '.join(parts)})" + (f": {named}" if named else ""))
    return claim


def _minimum_claim(groups: _Groups, fields: list[str]) -> Claim:
    converged = groups.converged
    claim = count_claim(
        "reached_minimum",
        "every converged run was polished to a global minimum (L zero to float64 rounding, where H = G)",
        [bool(r.results.get("at_minimum")) for r in converged],
        "converged runs at a global minimum",
        ratio=[_number(r.results.get("polish_relative")) for r in converged],
        ratio_name="largest distance polished ||Δθ||/||θ||",
    )
    missed = [r for r in converged if not r.results.get("at_minimum")]
    if missed:
        claim = _with(claim, "; not reached: " + "; ".join(f"{_run_label(r, fields)} {bound_note(r)}" for r in missed))
    return claim


def _stability_claim(checked: list[RunRecord]) -> Claim:
    return count_claim(
        "linearly_stable",
        "SGD can stay at every minimum reached: ρ(T) ≤ 1, i.e. η ≤ η*(B) (exact at the minimum, THEORY.md §4)",
        [bool(r.results.get("stable")) for r in checked],
        "minima linearly stable for the run's (η, B)",
        ratio=[_number(r.results.get("lr_ratio")) for r in checked],
        ratio_name="largest η/η*",
    )


def _bound_claim(records: list[RunRecord], groups: _Groups, fields: list[str]) -> Claim:
    converged, bad, failed = groups.converged, groups.diverged, groups.failed
    applies = [r for r in records if bound_applies(r)]
    ratios = [_number(r.results.get("bound_ratio")) for r in applies]
    hypothesis = (
        "a global minimum, linearly stable (ρ(T) ≤ 1)"
        if groups.checked
        else "a global minimum; linear stability not checked (stability = false), so a failure may be a minimum SGD "
        "cannot stay at"
    )
    claim = count_claim(
        "frobenius_bound",
        f"||H||_F ≤ sqrt(1/(cμ))/η at every run where the theorem applies — {hypothesis} (Wu, Wang & Su 2022; "
        "μ measured where SGD stopped)",
        [math.isfinite(q) and q <= 1 for q in ratios],
        "runs satisfy it",
        ratio=ratios,
        ratio_name="largest ||H||_F / bound",
        extra={"not_applicable": len(converged) - len(applies), "diverged": len(bad), "failed": len(failed)},
    )
    skipped = [r for r in converged if not bound_applies(r)]
    if skipped:
        claim = _with(
            claim, "; not applicable: " + "; ".join(f"{_run_label(r, fields)} {bound_note(r)}" for r in skipped)
        )
    if bad or failed:
        claim = _with(claim, f"; not checked: {len(bad)} diverged, {len(failed)} failed")
    return claim


def _with(claim: Claim, more: str) -> Claim:
    return replace(claim, detail=claim.detail + more)


def write_report(
    folder: Path, store: Store, sweep: SweepConfig, run_ids: list[str], seconds: float | None = None
) -> Path:
    """Write ``results.csv``, the figures and ``report.md`` for the runs ``run_ids`` of the store.

    A store found damaged now (:meth:`Store.verify`; it was checked when opened, but a sweep runs for long) is
    refused before anything is written: a report is never drawn from cut data. A file that cannot be written (a
    full disk) raises :class:`OutputError` in one line; each file is written whole or not at all, and the runs
    stay in the store, so rerunning the sweep redraws the report."""
    store.verify()
    try:
        return _write_report(folder, store, sweep, run_ids, seconds)
    except SgdstabError:
        raise
    except OSError as exc:
        where = exc.filename or folder
        raise OutputError(
            f"cannot write the sweep report {str(where)!r}: {exc.strerror or exc}; the runs are kept in the store: "
            "free space (or fix the directory) and rerun the same command to redraw the report"
        ) from None


def _write_report(
    folder: Path, store: Store, sweep: SweepConfig, run_ids: list[str], seconds: float | None = None
) -> Path:
    records = store.runs(run_ids=run_ids)
    atomic_write_csv(folder / RESULTS_FILE, run_table(records))
    done = [r for r in records if r.status == "done"]
    figures = _figures(folder, sweep, done, store)
    varying = list(sweep.varying())
    stability = any("stable" in r.results for r in done)
    sections = [_runs_section(records, varying, stability), *_notes_sections(records, done, varying)]
    footer = (
        f"Store: `{store.path.name}` (SQLite; `sgdstab runs list|show|export {folder}`). "
        f"sgdstab {__version__}, {time.strftime('%Y-%m-%d %H:%M:%S')}."
    )
    claims = _claims(records, varying)
    intro = _intro(sweep, records, varying, stability, seconds)
    text = render_report(f"Sweep {sweep.name}", intro, claims, sections, figures, footer)
    return atomic_write_text(folder / REPORT_FILE, text)


def _runs_section(records: list[RunRecord], varying: list[str], stability: bool) -> str:
    """The "Runs" section: one table row per run, the ratio shown as n/a where the theorem does not apply."""
    rows = []
    for r in records:
        row: dict[str, Any] = {"run": r.short_id, "status": status_label(r), **{k: r.config.get(k) for k in varying}}
        row.update({key: r.results.get(key) for key, _ in (*_COLUMNS, *_STABILITY_COLUMNS)})
        if r.status == "done" and not diverged(r) and not bound_applies(r):
            row["bound_ratio"] = "n/a"
        row["seconds"] = r.seconds
        rows.append(row)
    columns = [
        ("run", "run"),
        ("status", "status"),
        *[(k, k) for k in varying],
        *_COLUMNS,
        *(_STABILITY_COLUMNS if stability else ()),
        ("seconds", "run time (s)"),
    ]
    return (
        "## Runs\n\n"
        "final L: where SGD stopped; L polished: after Gauss–Newton polishing to the global minimum next to it, "
        "moving θ by ||Δθ||/||θ||; ||H||_F and λ_max(H) there (where the polish did not reach a minimum: at the "
        "SGD endpoint); μ where SGD stopped; the ratio only where the theorem applies (n/a: see below)"
        + ("; η/η* and ρ(T) at the minimum" if stability else "")
        + ".\n\n"
        + markdown_table(rows, columns)
    )


def _notes_sections(records: list[RunRecord], done: list[RunRecord], varying: list[str]) -> list[str]:
    """The sections naming the runs where the bound is not checked and the failed runs (none when empty)."""
    sections = []
    skipped = [r for r in done if not bound_applies(r)]
    if skipped:
        lines = [f"- {_run_label(r, varying)}: {bound_note(r)}" for r in skipped]
        sections.append("## Runs where the bound is not checked\n\n" + "\n".join(lines))
    failed = [r for r in records if r.status == "failed"]
    if failed:
        lines = [
            f"- `{r.short_id}` ({', '.join(f'{k}={r.config.get(k)}' for k in varying)}): {r.error}" for r in failed
        ]
        sections.append("## Failed runs\n\nRerun the same command to retry them.\n\n" + "\n".join(lines))
    return sections


def _intro(
    sweep: SweepConfig, records: list[RunRecord], varying: list[str], stability: bool, seconds: float | None
) -> str:
    total_seconds = sum(r.seconds or 0.0 for r in records)
    return (
        f"Sweep `{sweep.name}`: {len(records)} runs over {', '.join(varying) or 'one configuration'}; "
        f"{counts_line(records)}. Each run trains an MLP with SGD (half-MSE loss L = (1/2n) Σ ||f(x_i) − y_i||², "
        "float64), measures the alignment μ where SGD stopped, polishes θ by Gauss–Newton steps to the global "
        "minimum next to it (`sgdstab.polish_to_minimum`) and measures ||H||_F, λ_max(H)"
        + (", ρ(T) and η*" if stability else "")
        + " there, where H = G. The Frobenius bound sqrt(1/(cμ))/η is a theorem at linearly stable global minima: "
        "a run counts for it only there. "
        f"Run time summed over runs: {fmt(total_seconds, 3)} s"
        + (f"; wall time of the last `sgdstab sweep` call: {fmt(seconds, 3)} s." if seconds is not None else ".")
    )


__all__ = ["REPORT_FILE", "RESULTS_FILE", "write_report"]
