"""The experiment machinery: an :class:`Experiment` binds a name, a config class and a body; ``run`` does the rest.

``Experiment.run(config, out_dir)`` creates the output directory and makes it the experiment's own
(:func:`~sgdstab.experiments.io.prepare_output_dir`: an unwritable directory, one holding another experiment's
results, or one holding files sgdstab did not write that a run would overwrite is refused in one line), writes
``config.json`` (the resolved config) first, calls the body with a :class:`Context` (stage messages, figure
saving), and writes what the body returns (:class:`Outcome`): ``results.csv``, ``report.md`` and
``summary.json``. Every file goes through :mod:`sgdstab.utils.files` (atomic, ``fsync``-ed with its folder, listed in
the directory's ownership marker ``.sgdstab-output.json`` before it appears). It returns the summary dict.

summary.json::

    {"experiment", "title", "sgdstab_version", "config", "passed", "claims": [{name, statement, passed, detail,
     numbers}], "numbers", "files": {"report", "results", "config", "figures", "tables"}, "seconds",
     "cpu_seconds"}

Non-finite numbers are written as the strings "NaN", "Infinity", "-Infinity" (strict JSON has none; see
:mod:`sgdstab.utils.results`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from sgdstab._version import __version__
from sgdstab.experiments.config import build_config, config_to_dict, load_config
from sgdstab.experiments.io import (
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    prepare_output_dir,
    save_figure,
)
from sgdstab.experiments.report import Claim, render_report

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.csv"
REPORT_FILE = "report.md"
SUMMARY_FILE = "summary.json"


class Context:
    """What a body may use while it runs: the output folder, progress lines and figure saving."""

    def __init__(self, out_dir: Path, quiet: bool = False) -> None:
        self.out_dir = out_dir
        self.console = Console(stderr=True, quiet=quiet)
        self.quiet = quiet
        self.figures: list[tuple[str, str]] = []
        self.tables: list[str] = []
        self._start = time.perf_counter()

    @property
    def progress(self) -> bool:
        """Whether long loops should show a progress bar (not quiet; :func:`sgdstab.train` also needs a terminal)."""
        return not self.quiet

    def stage(self, message: str) -> None:
        """One progress line on stderr, with the elapsed wall time (silent when quiet)."""
        self.console.print(f"[dim]{time.perf_counter() - self._start:7.1f} s[/dim]  {escape(message)}", highlight=False)

    def table(self, name: str, rows: list[dict[str, Any]]) -> Path:
        """Write an extra CSV table (e.g. trajectories) as ``out_dir/name``, atomically, and list it."""
        path = atomic_write_csv(self.out_dir / name, rows)
        self.tables.append(name)
        return path

    def figure(self, name: str, fig: Any, caption: str) -> Path:
        """Save a matplotlib figure as ``out_dir/name`` (PNG, atomically) and list it in the report."""
        path = save_figure(fig, self.out_dir / name)
        self.figures.append((name, caption))
        return path


@dataclass
class Outcome:
    """What a body hands back. ``rows``: the results table (one dict per row, written as results.csv);
    ``claims``: every claim checked; ``numbers``: the key figures (summary.json); ``intro``: what was run, in
    Markdown; ``sections``: further Markdown blocks (tables, notes) placed after the claims."""

    rows: list[dict[str, Any]]
    claims: list[Claim]
    numbers: dict[str, Any] = field(default_factory=dict)
    intro: str = ""
    sections: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Experiment:
    """A named experiment. ``config_type``: its frozen config dataclass (the defaults are the full run);
    ``quick``: the CI-sized config; ``body(config, ctx) -> Outcome``: the work."""

    name: str
    title: str
    summary: str
    config_type: type
    quick: Callable[[], Any]
    body: Callable[[Any, Context], Outcome]
    run_time: str = ""  # documented run time of the full and quick variants on 2 cores

    def default_config(self, quick: bool = False) -> Any:
        return self.quick() if quick else self.config_type()

    def config(self, path: str | None = None, quick: bool = False, overrides: dict[str, Any] | None = None) -> Any:
        """The resolved config: defaults (or the quick variant), then the file's keys, then ``overrides``."""
        base = self.default_config(quick)
        if path is not None:
            base = load_config(self.config_type, path, base=base, experiment=self.name)
        if overrides:
            base = build_config(self.config_type, overrides, base=base, source="overrides")
        return base

    def run(self, config: Any, out_dir: str | Path, quiet: bool = True) -> dict[str, Any]:
        """Run the experiment into ``out_dir`` and return the summary (also written as summary.json)."""
        if not isinstance(config, self.config_type):
            raise TypeError(f"config must be a {self.config_type.__name__}, got {type(config).__name__}")
        out = prepare_output_dir(out_dir, owner=self.name)
        atomic_write_json(out / CONFIG_FILE, {"experiment": self.name, **config_to_dict(config)})
        ctx = Context(out, quiet=quiet)
        ctx.console.print(f"[bold]sgdstab experiment {self.name}[/bold]: {self.summary}", highlight=False)
        wall, cpu = time.perf_counter(), time.process_time()
        outcome = self.body(config, ctx)
        seconds, cpu_seconds = time.perf_counter() - wall, time.process_time() - cpu
        atomic_write_csv(out / RESULTS_FILE, outcome.rows)
        summary = {
            "experiment": self.name,
            "title": self.title,
            "sgdstab_version": __version__,
            "config": config_to_dict(config),
            "passed": all(c.passed for c in outcome.claims),
            "claims": [c.to_dict() for c in outcome.claims],
            "numbers": outcome.numbers,
            "files": {
                "report": REPORT_FILE,
                "results": RESULTS_FILE,
                "config": CONFIG_FILE,
                "figures": [name for name, _ in ctx.figures],
                "tables": list(ctx.tables),
            },
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
        }
        footer = (
            f"Run time: {seconds:.1f} s wall, {cpu_seconds:.1f} s CPU (sgdstab {__version__}). "
            f"Files: `{CONFIG_FILE}` (the resolved config; rerun with `--config {CONFIG_FILE}`), "
            f"`{RESULTS_FILE}`, `{SUMMARY_FILE}`" + "".join(f", `{t}`" for t in ctx.tables) + "."
        )
        text = render_report(self.title, outcome.intro, outcome.claims, outcome.sections, ctx.figures, footer)
        atomic_write_text(out / REPORT_FILE, text)
        atomic_write_json(out / SUMMARY_FILE, summary)
        failed = [c.name for c in outcome.claims if not c.passed]
        verdict = "all claims passed" if not failed else f"FAILED: {', '.join(failed)}"
        ctx.stage(f"{len(outcome.claims)} claims checked, {verdict}")
        return summary


def claims_by_name(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The summary's claims keyed by name."""
    return {c["name"]: c for c in summary["claims"]}


__all__ = [
    "CONFIG_FILE",
    "REPORT_FILE",
    "RESULTS_FILE",
    "SUMMARY_FILE",
    "Context",
    "Experiment",
    "Outcome",
    "claims_by_name",
]
