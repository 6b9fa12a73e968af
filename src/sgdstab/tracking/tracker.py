"""``sgdstab.Tracker``: the SGD-aware edge-of-stability measures along a user's own training loop."""

from __future__ import annotations

import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sgdstab.conventions import check_loss_convention
from sgdstab.errors import OutputError, ProblemError, SgdstabError, TrackerError
from sgdstab.problem.problem import Problem
from sgdstab.tracking.evaluation import EvalData, eval_data, evaluation_copy, sync
from sgdstab.tracking.figures import track_figure
from sgdstab.tracking.measures import Measurer, Settings
from sgdstab.tracking.optimizers import preconditioner, read_optimizer
from sgdstab.tracking.schedule import Clock, make_schedule
from sgdstab.tracking.table import COLUMNS, FIGURE_NAME, Table, claim_folder
from sgdstab.utils import files
from sgdstab.utils.validation import check_float, check_int

__all__ = ["Tracker"]

_MIN_TRAIN_SECONDS = 1.0  # the overhead warning waits for this much training: a first step is no measure of a run


class Tracker:
    """Track λ_max(H), the batch sharpness and the step sharpness against the optimizer's edge of stability (2/η for
    SGD; 2(1+β)/η with heavy-ball momentum; (2+2β₁)/((1−β₁)η) on λ_max(P⁻¹H) for Adam: docs/THEORY.md §9), the loss,
    and where affordable μ, ||G||_F, the Frobenius bound and the exact η*(B, β), along any training loop.

    Call :meth:`step` after each ``optimizer.step()``; it measures on a schedule and appends a row to
    ``out/track.csv`` (flushed to disk row by row) and ``out/track.json``; :meth:`close` (or leaving a ``with``
    block) also draws ``out/track.png``. Measurements run on a fixed evaluation subset, on a copy of the model in
    evaluation mode; the user's model, optimizer and data are never changed. Learning rates are read from the
    optimizer at every measurement, so schedulers are followed.

    Args:
        model: the ``nn.Module`` being trained.
        X: training inputs (a tensor), or a ``DataLoader`` yielding ``(inputs, targets)`` (then ``Y=None``).
        Y: training targets (as the loss takes them; class indices for ``cross_entropy``).
        optimizer: the ``torch.optim`` optimizer (SGD with or without momentum/Nesterov, Adam, AdamW, RMSprop are
            read; any other is tracked without a threshold, with a warning that says so).
        loss: the loss the loop minimizes: ``"half_mse"``, ``"torch_mse"`` (``nn.MSELoss()``), ``"cross_entropy"``
            or ``"bce_with_logits"``. Every curvature is reported for that loss.
        every, seconds, overhead: the schedule, at most one: every N steps; every T seconds; or whenever measuring
            stays within a fraction f of the training time (the default, f = 0.1).
        out: the folder of the table and figure (created; refused if it holds files sgdstab did not write).
        eval_size: samples of the evaluation subset (drawn once, seeded).
        batch_size, sampling: the loop's batch size and scheme (default: a DataLoader's own; with tensors, every
            sample — gradient descent — and ``"without_replacement"``).
        kernel_size: samples of the subset for μ, the bound and η* (the kernel is kernel_size·k square; 0: never;
            default: 500/k samples, 256/k with momentum; none when that is not above B).
        kernel_every: those figures every this many rows.
        batch_rtol, max_batches: the batch sharpness's Monte-Carlo precision and budget.
        sharpness_rtol: the Lanczos solves' relative residual.
        measure_first: measure once at construction (step 0).
        resume: continue the table in ``out`` (a killed run's rows are all kept); without it an existing table is
            refused.
        max_overhead: warn when measuring has cost more than this multiple of the training time.
        seed: seeds the evaluation subset and the batches.

    Raises:
        TrackerError: bad arguments or data, a table in ``out`` without ``resume``, or a model the loss refuses.
        OutputError: ``out`` cannot be written, or holds files sgdstab did not write.

    Example:
        >>> import tempfile, torch, sgdstab
        >>> X = torch.randn(64, 5, generator=torch.Generator().manual_seed(0))
        >>> Y = X[:, :1] ** 2
        >>> model = sgdstab.mlp(5, 1, widths=(16,), seed=0)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.05)
        >>> with sgdstab.Tracker(model, X, Y, opt, every=10, out=tempfile.mkdtemp(), batch_size=16) as tracker:
        ...     for step in range(30):
        ...         idx = torch.randint(64, (16,), generator=torch.Generator().manual_seed(step))
        ...         opt.zero_grad()
        ...         loss = 0.5 * ((model(X[idx]) - Y[idx]) ** 2).sum(1).mean()
        ...         loss.backward()
        ...         opt.step()
        ...         _ = tracker.step(loss)
        >>> [row["step"] for row in tracker.rows], tracker.rows[-1]["threshold"] == 2 / 0.05
        ([0, 10, 20, 30], True)
    """

    def __init__(
        self,
        model: nn.Module,
        X: Any,
        Y: Any,
        optimizer: Any,
        *,
        loss: str = "half_mse",
        every: int | None = None,
        seconds: float | None = None,
        overhead: float | None = None,
        out: str | os.PathLike[str] = "track",
        eval_size: int = 512,
        batch_size: int | None = None,
        sampling: str | None = None,
        kernel_size: int | None = None,
        kernel_every: int = 10,
        batch_rtol: float = 0.05,
        max_batches: int = 32,
        sharpness_rtol: float = 1e-3,
        measure_first: bool = True,
        resume: bool = False,
        max_overhead: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.schedule = make_schedule(every, seconds, overhead)
        self.max_overhead = check_float(max_overhead, "max_overhead", minimum=0.0, error=TrackerError)
        try:
            self.view = read_optimizer(optimizer)
        except SgdstabError as exc:
            raise TrackerError(f"the tracker cannot read this optimizer: {exc}") from None
        seed = check_int(seed, "seed", minimum=0, error=TrackerError)
        self.data = eval_data(X, Y, eval_size, batch_size, sampling, seed)
        self._twin = evaluation_copy(model)
        self._notes: set[str] = set()
        self.problem, kernel_problem = self._problems(check_loss_convention(loss), kernel_size)
        self._names = self.problem.layout.names
        settings = _settings(self.data, batch_rtol, max_batches, sharpness_rtol, kernel_every, seed)
        self._measurer = Measurer(self.problem, kernel_problem, settings)
        self.out = Path(out)
        self.table = Table(self.out, self._meta())
        self.steps, self.clock = 0, Clock()
        self._previous: Tensor | None = None
        self._due_next = False
        self._closed = False
        self._warned_overhead = False
        self._open_table(bool(resume))
        self._announce()
        if measure_first and not self.table.rows:
            self._measure()
        self._arm()

    # ------------------------------------------------------------------ construction
    def _problems(self, convention: str, kernel_size: Any) -> tuple[Problem, Problem | None]:
        X, Y = self.data.X, self.data.Y
        try:
            problem = Problem(self._twin, X, Y, loss=convention)
        except ProblemError as exc:
            raise TrackerError(f"the tracker cannot measure this model on these data: {exc}") from None
        if kernel_size is None:  # rank ~500 costs about a second; with momentum its bisection ~30× that at rank 500
            kernel_size = (500 if self.view.momentum == 0 else 256) // problem.k
            if kernel_size <= self.data.batch_size < (self.data.train_size or math.inf):
                self._notes.add(
                    f"no μ, Frobenius bound or η*(B): the default kernel subset ({kernel_size} samples) is not larger "
                    f"than B = {self.data.batch_size}; pass kernel_size > B (the kernel is kernel_size·k square)"
                )
                kernel_size = 0
        size = min(check_int(kernel_size, "kernel_size", minimum=0, error=TrackerError), problem.n)
        if size == 0:
            return problem, None
        return problem, Problem(self._twin, X[:size], Y[:size], loss=convention)

    def _meta(self) -> dict[str, Any]:
        v, d, p = self.view, self.data, self.problem
        return {
            "optimizer": v.to_dict(),
            "preconditioned": v.preconditioned,
            "loss": p.loss_convention,
            "data": d.description,
            "eval_size": p.n,
            "outputs": p.k,
            "parameters": p.p,
            "batch_size": d.batch_size,
            "sampling": d.sampling,
            "schedule": self.schedule.describe(),
            "columns": COLUMNS,
            "title": f"{v.name} · {p.loss_convention} · {d.description}",
        }

    def _open_table(self, resume: bool) -> None:
        claim_folder(self.out)
        if self.table.exists():
            if not resume:
                raise TrackerError(
                    f"{str(self.out)!r} already holds a tracker table: pass resume=True to continue it, or another out"
                )
            self.table.load()
            saved = self.table.state
            last = int(self.table.rows[-1]["step"]) if self.table.rows else 0
            self.steps = max(int(saved.get("steps", last)), last)
            self.clock.train_seconds = float(saved.get("train_seconds", 0.0))
            self.clock.measure_seconds = float(saved.get("measure_seconds", 0.0))
            self.clock.resumed()
        else:
            self.table.start()

    def _announce(self) -> None:
        for note in self.view.notes:
            if self.view.kind == "unknown" or "no single threshold" in note:
                warnings.warn(f"sgdstab.Tracker: {note}", UserWarning, stacklevel=3)

    # ------------------------------------------------------------------ the loop
    def step(self, loss: Any = None, *, step: int | None = None) -> dict[str, float] | None:
        """Count one optimizer step (call it right after ``optimizer.step()``) and measure it if due.

        Args:
            loss: the training loss of this step as the loop computed it (a number or a 0-d tensor; recorded in
                the ``train_loss`` column), or None.
            step: the number of this step, when the loop keeps its own count (after resuming from a checkpoint);
                default: one more than the last.

        Returns:
            The row measured at this step, or None.

        Raises:
            TrackerError: the tracker is closed, or ``step`` is not after the last recorded row.
        """
        if self._closed:
            raise TrackerError("this tracker is closed; make a new one (resume=True continues its table)")
        self.clock.training_until_now()
        self._advance(step)
        row = None
        if self._due_next:
            row = self._measure(loss)
        self._arm()
        return row

    def _advance(self, step: int | None) -> None:
        if step is None:
            self.steps += 1
            return
        number = check_int(step, "step", minimum=1, error=TrackerError)
        last = int(self.table.rows[-1]["step"]) if self.table.rows else 0
        if number <= last:
            raise TrackerError(
                f"step {number} is not after the last recorded step {last} of {str(self.table.csv_path)!r}: resume "
                "from a later checkpoint, or track into another out"
            )
        if number != self.steps + 1:
            self._due_next = self.schedule.due(number, self.clock)
            self._previous = None  # the kept θ is not the previous step's
        self.steps = number

    def _arm(self) -> None:
        """Decide now whether the next step is measured, and keep θ if so (its update Δθ is then known)."""
        self._due_next = self.schedule.due(self.steps + 1, self.clock)
        self._previous = self._theta() if self._due_next else None

    def _theta(self) -> Tensor:
        named = dict(self.model.named_parameters())
        return torch.cat([named[name].detach().reshape(-1) for name in self._names]).clone()

    def _measure(self, train_loss: Any = None) -> dict[str, float]:
        start = time.perf_counter()
        sync(self._twin, self.model)
        theta = self._theta().to(self.problem.dtype)
        self.problem.theta = theta
        if self._measurer.kernel_problem is not None:
            self._measurer.kernel_problem.theta = theta
        self.view = read_optimizer(self.optimizer)  # schedulers change lr between rows
        update = None if self._previous is None else theta - self._previous.to(theta.dtype)
        if bool(torch.isfinite(theta).all()):
            row = self._measurer.row(len(self.table.rows), self.view, update, self._preconditioner())
        else:  # a diverged run: the row says so, and the loop goes on undisturbed
            self._notes.add(f"θ was not finite at step {self.steps} (training diverged): nothing measured there")
            row = {"lr": self.view.lr, "threshold": self.view.threshold, "loss": math.inf}
        row["step"] = self.steps
        row["train_loss"] = _number(train_loss)
        self.clock.measured(time.perf_counter() - start)
        row["measure_seconds"] = self.clock.last_measure_seconds
        row["seconds"] = self.clock.train_seconds + self.clock.measure_seconds
        self.table.append(row, self._state())
        self._check_overhead()
        return self.table.rows[-1]

    def _preconditioner(self) -> Tensor | None:
        if not self.view.preconditioned:
            return None
        named = dict(self.model.named_parameters())
        try:
            P = preconditioner(self.optimizer, [named[name] for name in self._names])
        except SgdstabError as exc:
            self._measurer.notes.add(f"no preconditioned sharpness: {exc}")
            return None
        return None if P is None else P.to(device=self.problem.device, dtype=self.problem.dtype)

    def _state(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "train_seconds": self.clock.train_seconds,
            "measure_seconds": self.clock.measure_seconds,
            "overhead": self.clock.overhead,
            "notes": list(self.notes),
        }

    def _check_overhead(self) -> None:
        c = self.clock
        if self._warned_overhead or c.train_seconds < _MIN_TRAIN_SECONDS or not c.overhead > self.max_overhead:
            return
        self._warned_overhead = True
        warnings.warn(
            f"sgdstab.Tracker: measuring took {c.measure_seconds:.1f} s against {c.train_seconds:.1f} s of training "
            f"({c.overhead:.1f}×, {self.schedule.describe()}): measure less often (every=, seconds=) or let the "
            "tracker keep to a fraction of the run (overhead=0.1)",
            UserWarning,
            stacklevel=4,
        )

    # ------------------------------------------------------------------ results
    @property
    def rows(self) -> list[dict[str, float]]:
        """The table so far, one dict per measurement (columns: ``sgdstab.tracking.table.COLUMNS``)."""
        return list(self.table.rows)

    @property
    def overhead(self) -> float:
        """Time spent measuring over time spent training (NaN before any training)."""
        return self.clock.overhead

    @property
    def notes(self) -> tuple[str, ...]:
        """What the tracker could not measure, and why."""
        return tuple(sorted(set(self.view.notes) | self._measurer.notes | self._notes))

    def plot(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Draw the figure of the table so far to ``path`` (default ``out/track.png``) and return its path."""
        target = Path(path) if path is not None else self.out / FIGURE_NAME
        fig = track_figure(self.table.rows, self.table.meta)
        return files.write_path(target, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))

    def close(self) -> None:
        """Save the tracker's state and draw its figure (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self.clock.training_until_now()
        self.table.save_state(self._state())
        try:
            self.plot()
        except OutputError as exc:
            warnings.warn(f"sgdstab.Tracker: the figure was not written: {exc}", UserWarning, stacklevel=2)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Tracker({self.view.name}, {self.problem.loss_convention}, {len(self.table.rows)} rows to step "
            f"{self.steps}, overhead {self.overhead:.2g}, out={str(self.out)!r})"
        )


def _settings(
    data: EvalData, batch_rtol: Any, max_batches: Any, sharpness_rtol: Any, kernel_every: Any, seed: int
) -> Settings:
    return Settings(
        batch_size=data.batch_size,
        sampling=data.sampling,
        train_size=data.train_size,
        batch_rtol=check_float(batch_rtol, "batch_rtol", minimum=0.0, include_minimum=False, error=TrackerError),
        max_batches=check_int(max_batches, "max_batches", minimum=2, error=TrackerError),
        sharpness_rtol=check_float(sharpness_rtol, "sharpness_rtol", minimum=1e-12, maximum=0.5, error=TrackerError),
        kernel_every=check_int(kernel_every, "kernel_every", minimum=1, error=TrackerError),
        seed=seed,
    )


def _number(value: Any) -> float:
    if value is None:
        return math.nan
    if isinstance(value, Tensor):
        return float(value.detach().reshape(-1)[0]) if value.numel() == 1 else math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
