"""Progress of a sweep on stderr: runs done / running / failed and the time left.

On a terminal, a rich progress bar (done of total, running, failed, elapsed, ETA); otherwise (a log file, CI)
one plain line per finished run. ETA = (runs left) × (wall time of this call) / (runs finished in this call):
runs skipped on resume do not count, and with N workers the mean interval between completions already reflects
the parallelism.
"""

from __future__ import annotations

import math
import time

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


class SweepProgress:
    """Call :meth:`start`, then :meth:`update` whenever counts change and :meth:`finished` per completed run."""

    def __init__(self, quiet: bool = False, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, quiet=quiet)
        self.quiet = quiet
        self._bar: Progress | None = None
        self._task: int | None = None
        self.total = 0
        self.done = 0
        self.failed = 0
        self.running = 0
        self._finished_here = 0
        self._start = time.perf_counter()

    def start(self, name: str, total: int, already_done: int, executor: str, capacity: int) -> None:
        self.total, self.done = total, already_done
        self._start = time.perf_counter()
        self.message(
            f"sweep {name}: {total} runs, {already_done} already done, {total - already_done} to run "
            f"({executor}, {capacity} at a time)"
        )
        if self.console.is_terminal and not self.quiet:
            self._bar = Progress(
                TextColumn("[bold]sweep"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("running {task.fields[running]} · failed {task.fields[failed]} · ETA {task.fields[eta]}"),
                TimeElapsedColumn(),
                console=self.console,
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task("sweep", total=total, completed=already_done, running=0, failed=0, eta="?")

    def eta(self) -> float:
        if self._finished_here == 0:
            return math.nan
        per_run = (time.perf_counter() - self._start) / self._finished_here
        return per_run * (self.total - self.done - self.failed)

    def update(self, running: int) -> None:
        self.running = running
        if self._bar is not None and self._task is not None:
            self._bar.update(
                self._task,
                completed=self.done + self.failed,
                running=running,
                failed=self.failed,
                eta=format_eta(self.eta()),
            )

    def finished(self, label: str, ok: bool, seconds: float | None, error: str | None = None) -> None:
        self._finished_here += 1
        if ok:
            self.done += 1
        else:
            self.failed += 1
        self.update(self.running)
        if self._bar is None:
            took = f" in {seconds:.1f} s" if seconds is not None else ""
            what = "done" if ok else f"FAILED: {error}"
            self.message(
                f"[{self.done + self.failed}/{self.total}] {label} {what}{took} · running {self.running} · "
                f"failed {self.failed} · ETA {format_eta(self.eta())}"
            )
        elif not ok:
            self.message(f"{label} FAILED: {error}")

    def message(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(escape(text), highlight=False)
        else:
            self.console.print(escape(text), highlight=False, soft_wrap=True)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


__all__ = ["SweepProgress", "format_eta"]
