"""Plain SGD on a :class:`sgdstab.Problem`, batches drawn on-tensor (THEORY.md §1).

Step: ``θ ← θ − (η/B) Σ_{i∈batch} ∇ℓ_i(θ)`` with ``ℓ_i = ½||r_i||²`` and η on the half-MSE convention (a
``torch_mse`` problem's learning rate is converted by :meth:`Problem.half_mse_lr`); for a loss of THEORY.md §9
ℓ_i is that loss (softmax cross-entropy, ``bce_with_logits``) and η its step. Sampling:
``"with_replacement"`` (B i.i.d. uniform indices), ``"without_replacement"`` (a uniform B-subset each step;
B = n is GD) or ``"reshuffle"`` (epoch-wise permutation, what a DataLoader does; a last partial batch is dropped).

The step runs on the problem's module itself (``index_select`` of the batch, forward, ``torch.autograd.grad`` of
the batch's summed squared error, in-place ``p.add_(g, alpha=−η/(2B))``): the arithmetic of a hand-written torch
loop, bit for bit, with no per-step host synchronisation (``torch.optim.SGD.step`` alone costs more than the rest
of a small model's step; ``torch.func.grad`` on a flat θ ran at ≈ 0.4× the bare loop); the full-data loss L is
evaluated only every ``track_every`` steps. Batches are indexed from a private CPU ``torch.Generator`` seeded with
``seed``, so a run is reproducible bit for bit on the same machine, and a run resumed from a checkpoint equals the
uninterrupted one.

The run in steps: :func:`train` checks its arguments into ``_Settings``; a ``_Trainer`` starts (or resumes from a
checkpoint, :mod:`sgdstab.training.checkpoint`), loops over the SGD steps, evaluates L and the tracked figures,
writes checkpoints, shows progress, and leaves the problem at a finite θ however the run ends; its record becomes
the :class:`~sgdstab.training.history.History`.

Files: :meth:`History.save` writes strict JSON (floats as Python's shortest round-trip repr, non-finite values as
the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"``); checkpoints are ``torch.save`` files of plain tensors,
numbers and strings, read back with ``torch.load(..., weights_only=True)`` (no arbitrary unpickling). Both are
written to a temporary file in the target folder and renamed into place.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sgdstab.conventions import SAMPLING_SCHEMES, check_batch_size
from sgdstab.errors import CheckpointError, ConventionError, HistoryError, TrainingError
from sgdstab.measure.alignment import alignment
from sgdstab.measure.curvature import curvature
from sgdstab.problem.problem import Problem
from sgdstab.training.checkpoint import (
    check_checkpoint,
    data_fingerprint,
    read_checkpoint,
    saved_history,
    write_checkpoint,
)
from sgdstab.training.history import History
from sgdstab.utils.validation import check_float, check_int

__all__ = [
    "TRACKABLE",
    "TRAIN_SAMPLING",
    "CheckpointError",
    "History",
    "HistoryError",
    "TrainingError",
    "train",
]

TRAIN_SAMPLING = (*SAMPLING_SCHEMES, "reshuffle")

# Settings of the named trackers: cheap enough to run every few hundred steps on the demo's problems. ``auto``
# is exact (dense or kernel route) on small problems; otherwise the stochastic figures aim at 1% standard error.
TRACK_RTOL = 1e-2
TRACK_MAX_MATVECS = 1000

# Columns each named figure adds to the history.
TRACKABLE: dict[str, tuple[str, ...]] = {
    "loss": (),  # always recorded
    "curvature": ("hessian_frobenius", "sharpness", "trace"),
    "alignment": ("mu", "mu_inf"),
}


# ---------------------------------------------------------------------------------------------------- tracking
Tracker = Callable[[Problem], dict[str, float]]


def _named_tracker(name: str, seed: int) -> Tracker:
    if name == "curvature":

        def measure_curvature(problem: Problem) -> dict[str, float]:
            c = curvature(problem, method="auto", rtol=TRACK_RTOL, seed=seed, top=1, max_matvecs=TRACK_MAX_MATVECS)
            return {"hessian_frobenius": c.hessian_frobenius, "sharpness": c.sharpness, "trace": c.trace}

        return measure_curvature

    def measure_alignment(problem: Problem) -> dict[str, float]:
        a = alignment(problem, top=1, method="auto", hessian=False, rtol=TRACK_RTOL, seed=seed)
        return {"mu": a.mu, "mu_inf": a.mu_inf}

    return measure_alignment


def _trackers(track: object, seed: int) -> tuple[list[str], list[Tracker]]:
    """Normalise ``track`` to (column names, functions returning {column: value})."""
    if track is None:
        return [], []
    if isinstance(track, Mapping):
        columns, trackers = [], []
        for name, fn in track.items():
            if not isinstance(name, str) or not callable(fn):
                raise TrainingError(f"track maps names to functions of the problem; got {name!r}: {fn!r}")
            columns.append(name)
            trackers.append(lambda problem, name=name, fn=fn: {name: fn(problem)})
    else:
        names = [track] if isinstance(track, str) else track
        if not isinstance(names, Iterable) or not all(isinstance(x, str) for x in names):
            raise TrainingError(f"track must be figure names or a dict of name → function, got {track!r}")
        names = list(dict.fromkeys(names))
        unknown = [x for x in names if x not in TRACKABLE]
        if unknown:
            raise TrainingError(f"unknown tracked figure {unknown[0]!r}; use any of {', '.join(TRACKABLE)}")
        columns = [c for x in names for c in TRACKABLE[x]]
        trackers = [_named_tracker(x, seed) for x in names if TRACKABLE[x]]
    clash = next((c for c in columns if c in ("step", "loss")), None)
    if clash is not None:
        raise TrainingError(f"a tracked figure cannot be named {clash!r}: the history has that column already")
    return columns, trackers


# ---------------------------------------------------------------------------------------------------- batches
class _BatchSampler:
    """Batch indices drawn from a private CPU generator; its whole state is (generator, permutation, position)."""

    def __init__(self, n: int, batch_size: int, sampling: str, seed: int, device: torch.device) -> None:
        self.n, self.b, self.sampling, self.device = n, batch_size, sampling, device
        self.gen = torch.Generator(device="cpu").manual_seed(seed)
        self._perm: Tensor | None = None
        self._pos = 0

    def __call__(self) -> Tensor | None:
        if self.sampling == "without_replacement" and self.b == self.n:
            return None  # GD: the whole data set, no indexing
        if self.sampling == "with_replacement":
            idx = torch.randint(self.n, (self.b,), generator=self.gen)
        elif self.sampling == "without_replacement":
            idx = torch.randperm(self.n, generator=self.gen)[: self.b]
        else:
            if self._perm is None or self._pos + self.b > self.n:
                self._perm, self._pos = torch.randperm(self.n, generator=self.gen), 0
            idx = self._perm[self._pos : self._pos + self.b]
            self._pos += self.b
        return idx.to(self.device)

    def state(self) -> dict[str, Any]:
        return {"generator": self.gen.get_state(), "perm": self._perm, "pos": self._pos}

    def load_state(self, state: Mapping[str, Any]) -> None:
        self.gen.set_state(state["generator"])
        self._perm, self._pos = state["perm"], state["pos"]


# ---------------------------------------------------------------------------------------------------- arguments
@dataclass(frozen=True)
class _Settings:
    """The checked arguments of one call of :func:`train`."""

    lr: float  # as given, in the problem's loss convention (what the history and the checkpoint record)
    eta: float  # the same step on the half-MSE convention (what the update uses)
    batch_size: int
    sampling: str
    seed: int
    steps: int | None
    until_loss: float | None
    track_every: int
    divergence_factor: float
    columns: tuple[str, ...]
    trackers: tuple[Tracker, ...]
    checkpoint_every: int | None
    checkpoint_path: Path | None

    def run_entry(self, problem: Problem, fingerprint: bool) -> dict[str, Any]:
        """The settings a checkpoint stores and a resumed run must repeat (with the data's fingerprint when the run
        writes or reads checkpoints); the initial loss ``loss0`` is added once known."""
        run: dict[str, Any] = {
            "lr": self.lr,
            "batch_size": self.batch_size,
            "sampling": self.sampling,
            "seed": self.seed,
            "n": problem.n,
            "loss_convention": problem.loss_convention,
            "track_every": self.track_every,
            "columns": list(self.columns),
        }
        if fingerprint:
            run["data"] = data_fingerprint(problem)
        return run


def _check_seed(seed: object) -> int:
    try:  # torch.Generator takes 64 bits
        return check_int(seed, "seed", minimum=0, maximum=2**63 - 1, error=TrainingError)
    except TrainingError:
        raise TrainingError(f"seed must be an integer in [0, 2**63), got {seed!r}") from None


def _check_stopping(steps: int | None, until_loss: float | None) -> tuple[int | None, float | None]:
    if steps is None and until_loss is None:
        raise TrainingError("steps=None runs until the loss falls below until_loss; give until_loss too")
    checked_steps = None if steps is None else check_int(steps, "steps", minimum=0, error=TrainingError)
    checked_until = None
    if until_loss is not None:
        checked_until = check_float(until_loss, "until_loss", minimum=0, finite=False, error=TrainingError)
    return checked_steps, checked_until


def _check_checkpointing(every: int | None, path: str | os.PathLike[str] | None) -> tuple[int | None, Path | None]:
    if every is None:
        return None, None if path is None else Path(path)
    checked = check_int(every, "checkpoint_every", minimum=1, error=TrainingError)
    if path is None:
        raise TrainingError("checkpoint_every needs checkpoint_path (where to write the checkpoints)")
    return checked, Path(path)


def _check_settings(
    problem: Problem,
    lr: float,
    batch_size: int,
    sampling: str,
    *,
    steps: int | None,
    until_loss: float | None,
    track_every: int,
    track: object,
    seed: int,
    divergence_factor: float,
    checkpoint_every: int | None,
    checkpoint_path: str | os.PathLike[str] | None,
) -> _Settings:
    """:func:`train`'s arguments, checked (sampling, batch size and learning rate first, as every sgdstab entry point
    checks them); each refusal is one typed line."""
    if sampling not in TRAIN_SAMPLING:
        raise ConventionError(f"unknown sampling scheme {sampling!r}; use one of {', '.join(TRAIN_SAMPLING)}")
    b = check_batch_size(batch_size, problem.n)
    eta = problem.half_mse_lr(lr)
    seed = _check_seed(seed)
    steps, until_loss = _check_stopping(steps, until_loss)
    track_every = check_int(track_every, "track_every", minimum=1, error=TrainingError)
    divergence_factor = check_float(
        divergence_factor, "divergence_factor", minimum=1, include_minimum=False, finite=False, error=TrainingError
    )
    every, path = _check_checkpointing(checkpoint_every, checkpoint_path)
    columns, trackers = _trackers(track, seed)
    return _Settings(
        lr=float(lr),
        eta=eta,
        batch_size=b,
        sampling=sampling,
        seed=seed,
        steps=steps,
        until_loss=until_loss,
        track_every=track_every,
        divergence_factor=divergence_factor,
        columns=tuple(columns),
        trackers=tuple(trackers),
        checkpoint_every=every,
        checkpoint_path=path,
    )


# ---------------------------------------------------------------------------------------------------- the record
@dataclass
class _Record:
    """The history so far, as the lists a checkpoint stores; ``seconds_before`` is the time of earlier sessions."""

    columns: tuple[str, ...]
    steps: list[int] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    tracked: dict[str, list[float]] = field(default_factory=dict)
    seconds_before: float = 0.0

    def __post_init__(self) -> None:
        for c in self.columns:
            self.tracked.setdefault(c, [])

    def add(self, step: int, loss: float, values: Mapping[str, float] | None) -> None:
        """One row; ``values=None`` (a diverged evaluation) records NaN for every tracked figure."""
        self.steps.append(step)
        self.losses.append(loss)
        for c in self.columns:
            self.tracked[c].append(math.nan if values is None else float(values[c]))

    def for_checkpoint(self, seconds: float) -> dict[str, Any]:
        return {
            "steps": list(self.steps),
            "losses": list(self.losses),
            "tracked": {c: list(v) for c, v in self.tracked.items()},
            "seconds": seconds,
        }


# ---------------------------------------------------------------------------------------------------- the trainer
class _Trainer:
    """One call of :func:`train`: the SGD loop and its named steps — start or resume, evaluate, checkpoint, show
    progress, and leave the problem at a finite θ however the run ends.

    The step itself works on the module's parameters (see the module docstring); ``problem.theta`` is synchronised
    with them at each evaluation (the trackers read it) and when the run ends.
    """

    def __init__(self, problem: Problem, settings: _Settings, resume: str | os.PathLike[str] | None) -> None:
        self.problem, self.settings = problem, settings
        self.run_entry = settings.run_entry(
            problem, fingerprint=settings.checkpoint_path is not None or resume is not None
        )
        self.sampler = _BatchSampler(problem.n, settings.batch_size, settings.sampling, settings.seed, problem.device)
        named = dict(problem.model.named_parameters())
        self.params = [named[name] for name in problem.layout.names]
        self.theta_start = problem.theta.clone()
        self.start = time.perf_counter()
        self.diverged_at: int | None = None
        if resume is None:
            self.step0, self.loss0, self.record = self._start_fresh()
        else:
            self.step0, self.loss0, self.record = self._resume(resume)
        self.run_entry["loss0"] = self.loss0

    # ------------------------------------------------------------------ start or resume
    def _start_fresh(self) -> tuple[int, float, _Record]:
        self.problem.set_parameters(self.problem.theta)  # the module's parameters hold θ from here on
        return 0, _full_loss(self.problem), _Record(self.settings.columns)

    def _resume(self, path: str | os.PathLike[str]) -> tuple[int, float, _Record]:
        """Continue from a checkpoint of this run: its θ, sampler state, history so far and initial loss."""
        source = repr(str(path))
        state = read_checkpoint(path)
        check_checkpoint(state, self.problem, self.run_entry, source)
        steps, losses, tracked, seconds = saved_history(state["history"], list(self.settings.columns), source)
        record = _Record(self.settings.columns, steps, losses, tracked, seconds)
        try:
            self.sampler.load_state(state["sampler"])
        except (RuntimeError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {source} holds an unusable sampler state: {exc}") from exc
        self.problem.set_parameters(self.problem.layout.flatten(state["parameters"]))
        return state["step"], state["run"]["loss0"], record

    # ------------------------------------------------------------------ the run
    def train(self, progress: bool) -> History:
        """Run to the end (step count, target loss or divergence) and return the history."""
        shown = _Progress(progress, self.settings, self.step0)
        completed = False
        try:
            step = self._loop(shown)
            self._finish(step)
            completed = True
        finally:
            shown.close()
            self._leave_problem(completed)
        return self._history()

    def _loop(self, shown: _Progress) -> int:
        """The SGD steps; returns the last step taken."""
        step, stop = self.step0, self._start_evaluation()
        # mse_loss(reduction="sum") = Σ_batch ||r_i||² = 2 Σ_batch ℓ_i, hence the step −η/(2B) on its gradient; the
        # scaling by 2 is exact, so the step equals the one on ½Σ||r_i||² bit for bit, with fewer autograd nodes.
        # a loss of THEORY.md §9 steps on its own batch sum Σ_batch ℓ_i: −η/B
        halve = 2 if self.problem.square_loss else 1
        X, Y, scale = self.problem.X, self.problem.Y, -self.settings.eta / (halve * self.settings.batch_size)
        for step in () if stop else self._remaining_steps():  # step outlives the loop: the last step taken
            self._sgd_step(X, Y, scale)
            stop = self._after_step(step)
            shown.update(step, self.record.losses[-1])
            if stop:
                break
        return step

    def _remaining_steps(self) -> Iterable[int]:
        steps = self.settings.steps
        return itertools.count(self.step0 + 1) if steps is None else range(self.step0 + 1, steps + 1)

    def _sgd_step(self, X: Tensor, Y: Tensor, scale: float) -> None:
        idx = self.sampler()
        x, y = (X, Y) if idx is None else (X.index_select(0, idx), Y.index_select(0, idx))
        out = self.problem.model(x).reshape(y.shape)
        grads = torch.autograd.grad(_batch_sum(self.problem, out, y), self.params)
        with torch.no_grad():
            for p, g in zip(self.params, grads, strict=True):
                p.add_(g, alpha=scale)

    def _after_step(self, step: int) -> bool:
        """Evaluate and checkpoint where due; True when the run must stop."""
        settings = self.settings
        stop = step % settings.track_every == 0 and self._evaluate(step)
        every = settings.checkpoint_every
        if every is not None and step % every == 0 and self.diverged_at is None:
            if step % settings.track_every != 0 and not self._theta_is_finite():
                stop = self._evaluate(step)  # a non-finite θ must not be saved: record the divergence instead
            else:
                self._save_checkpoint(step)
        return stop

    def _finish(self, step: int) -> None:
        """Evaluate the last step (unless just done) and checkpoint the end of a run that did not diverge."""
        if self.diverged_at is None and self.record.steps[-1] != step:
            self._evaluate(step)
        if self.diverged_at is None and self.settings.checkpoint_path is not None:
            self._save_checkpoint(step)

    def _leave_problem(self, completed: bool) -> None:
        if self.diverged_at is not None:
            self.problem.set_parameters(self.theta_start)
        elif not completed:  # interrupted: keep the last finite θ, so that problem.theta matches its model
            theta = self._current_theta()
            self.problem.set_parameters(theta if bool(torch.isfinite(theta).all()) else self.theta_start)

    # ------------------------------------------------------------------ evaluate
    def _start_evaluation(self) -> bool:
        """Record step 0 of a fresh run; True when the run must not take a step."""
        record, until_loss = self.record, self.settings.until_loss
        if not record.steps:
            return self._evaluate(0, self.loss0)
        # resumed from the checkpoint of a run that had already reached its target
        return until_loss is not None and record.steps[-1] == self.step0 and record.losses[-1] <= until_loss

    def _evaluate(self, step: int, loss: float | None = None) -> bool:
        """Record L (and the tracked figures) at ``step``; True when the run must stop (diverged or at target)."""
        settings = self.settings
        theta = self._current_theta()
        loss = _full_loss(self.problem) if loss is None else loss
        if not math.isfinite(loss) or loss > settings.divergence_factor * max(self.loss0, 1e-12):
            self.diverged_at = step
            self.record.add(step, loss, None)
            return True
        self.problem.set_parameters(theta)
        values: dict[str, float] = {}
        for fn in settings.trackers:
            values.update(fn(self.problem))
        self.record.add(step, loss, values)
        return settings.until_loss is not None and loss <= settings.until_loss

    def _current_theta(self) -> Tensor:
        return torch.cat([p.detach().reshape(-1) for p in self.params])

    def _theta_is_finite(self) -> bool:
        return bool(torch.isfinite(self._current_theta()).all())

    # ------------------------------------------------------------------ checkpoint
    def _save_checkpoint(self, step: int) -> None:
        history = self.record.for_checkpoint(self._seconds())
        names = self.problem.layout.names
        parameters = {n: p.detach().to("cpu", copy=True) for n, p in zip(names, self.params, strict=True)}
        assert self.settings.checkpoint_path is not None
        write_checkpoint(
            self.settings.checkpoint_path,
            parameters=parameters,
            step=step,
            sampler=self.sampler.state(),
            run=self.run_entry,
            history=history,
        )

    # ------------------------------------------------------------------ the result
    def _seconds(self) -> float:
        """Wall time of the run: earlier sessions and this one."""
        return self.record.seconds_before + time.perf_counter() - self.start

    def _history(self) -> History:
        seconds, record, settings = self._seconds(), self.record, self.settings
        return History(
            steps=tuple(record.steps),
            losses=tuple(record.losses),
            tracked={c: tuple(v) for c, v in record.tracked.items()},
            final_loss=record.losses[-1],
            diverged_at=self.diverged_at,
            seconds=seconds,
            lr=settings.lr,
            batch_size=settings.batch_size,
            sampling=settings.sampling,
            seed=settings.seed,
            steps_per_second=record.steps[-1] / seconds if seconds > 0 else math.nan,
        )


# ---------------------------------------------------------------------------------------------------- train
def train(
    problem: Problem,
    lr: float,
    batch_size: int,
    sampling: str = "with_replacement",
    steps: int | None = 1000,
    until_loss: float | None = None,
    track_every: int = 10,
    track: Mapping[str, Callable[[Problem], float]] | Iterable[str] | str | None = None,
    seed: int = 0,
    divergence_factor: float = 1e6,
    progress: bool = True,
    *,
    checkpoint_every: int | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    resume: str | os.PathLike[str] | None = None,
) -> History:
    """Run SGD on ``problem`` in place (its parameters and its model's are updated) and return the history.

    Args:
        problem: the :class:`~sgdstab.Problem` to train; its θ and its model's parameters are updated in place.
        lr: learning rate in the problem's loss convention.
        batch_size: B; with ``sampling="without_replacement"``, B = n is GD.
        sampling: ``"with_replacement"``, ``"without_replacement"`` or ``"reshuffle"`` (see the module docstring).
        steps: the most steps to take (counted from the start of the run, also when resuming); ``until_loss``
            stops earlier once the full-data L falls to it. ``steps=None`` runs until then (or divergence).
        until_loss: stop at the first evaluation where L ≤ this.
        track_every: evaluate the full-data loss (and the tracked figures) every this many steps.
        track: extra figures to record at each evaluation: names from :data:`TRACKABLE` — ``"curvature"``
            (columns hessian_frobenius, sharpness, trace from :func:`sgdstab.curvature` with ``method="auto"``,
            ``rtol=1e-2``, ``top=1``, at most 1000 Hessian-vector products) and ``"alignment"`` (columns mu,
            mu_inf from :func:`sgdstab.alignment` with ``method="auto"``, ``rtol=1e-2``, ``hessian=False``),
            estimators seeded with ``seed``; ``"loss"`` is always recorded — or a dict name → function of the
            problem (e.g. ``{"mu": lambda P: alignment(P).mu}``).
        seed: seeds the batch sampler (and the tracked estimators); the run is reproducible from it.
        divergence_factor: the run is recorded as diverged (not raised) when L exceeds this multiple of its
            initial value or becomes non-finite at an evaluation (or θ is non-finite at a checkpoint); the problem
            then keeps its parameters from before the run.
        progress: show a progress bar (loss, steps/s) on stderr when it is a terminal, else a plain line every 60 s.
        checkpoint_every, checkpoint_path: save a checkpoint (θ, step, sampler state, history so far) to
            ``checkpoint_path`` every this many steps, replacing the previous one, and at the end of a run that
            did not diverge (with ``checkpoint_path`` alone: only at the end).
        resume: a checkpoint of this run (same model architecture, data size, lr, B, sampling, seed, track,
            track_every); the run continues from it exactly as if it had never stopped.

    Returns:
        The :class:`History`: one row per evaluation (every ``track_every`` steps, step 0 and the last step), the
        final loss, the step of divergence if any, and the run's settings and wall time.

    Raises:
        TrainingError: bad step counts, seed, ``until_loss``, ``divergence_factor``, tracked figures, or
            ``checkpoint_every`` without ``checkpoint_path``.
        sgdstab.conventions.ConventionError: an unknown sampling scheme, a batch size outside [1, n] or a bad
            learning rate.
        CheckpointError: ``resume`` is not a readable checkpoint of this problem and these settings.

    If the run is interrupted by an exception (e.g. Ctrl-C) the problem keeps the last finite θ reached.

    Example:
        >>> import torch, sgdstab
        >>> model = sgdstab.mlp((3,), 1, widths=(8,), seed=0).double()
        >>> X = torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> problem = sgdstab.Problem(model, X, X[:, :1])
        >>> history = sgdstab.train(problem, lr=0.1, batch_size=4, steps=20, track_every=5, progress=False)
        >>> history.steps, history.diverged_at, history.final_loss < history.losses[0]
        ((0, 5, 10, 15, 20), None, True)
        >>> abs(history.final_loss - float(problem.loss())) < 1e-12  # the problem holds the trained θ
        True
    """
    settings = _check_settings(
        problem,
        lr,
        batch_size,
        sampling,
        steps=steps,
        until_loss=until_loss,
        track_every=track_every,
        track=track,
        seed=seed,
        divergence_factor=divergence_factor,
        checkpoint_every=checkpoint_every,
        checkpoint_path=checkpoint_path,
    )
    return _Trainer(problem, settings, resume).train(progress)


def _batch_sum(problem: Problem, out: Tensor, y: Tensor) -> Tensor:
    """Σ_batch ||r_i||² (twice the square loss's sum, whose gradient the step halves), or Σ_batch ℓ_i."""
    if problem.square_loss:
        return F.mse_loss(out, y, reduction="sum")
    return problem.output_loss.per_sample(out, y).sum()


def _full_loss(problem: Problem) -> float:
    """L = (1/(2n)) Σ_i ||r_i||² (or (1/n) Σ_i ℓ_i) at the parameters the model holds, in chunks of at least 1024
    samples: a forward pass alone needs far less memory than the per-sample derivatives ``problem.chunk_size`` is
    sized for."""
    total = 0.0
    with torch.no_grad():
        for s in problem.chunks(max(problem.chunk_size, 1024)):
            y = problem.Y[s]
            total += float(_batch_sum(problem, problem.model(problem.X[s]).reshape(y.shape), y))
    return (0.5 if problem.square_loss else 1.0) * total / problem.n


# ---------------------------------------------------------------------------------------------------- progress
def _stderr_is_terminal() -> bool:
    from rich.console import Console

    return Console(stderr=True).is_terminal


class _Progress:
    """What a run shows while it goes: a rich bar on a terminal, a plain line a minute in a log, or nothing. The bar
    moves about 200 times over the run and at each evaluation, with the last evaluated loss."""

    def __init__(self, show: bool, settings: _Settings, start: int) -> None:
        self._bar: _ProgressBar | _ProgressLines | None = None
        if show:
            total = settings.steps
            self._bar = _ProgressBar(total, start) if _stderr_is_terminal() else _ProgressLines(total, start)
        self._every = max(1, (settings.steps or 10_000) // 200)
        self._track_every = settings.track_every

    def update(self, step: int, loss: float) -> None:
        if self._bar is not None and (step % self._every == 0 or step % self._track_every == 0):
            self._bar.update(step, loss)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class _ProgressLines:
    """Without a terminal (a log file, a batch job): one plain line on stderr at most every ``interval`` seconds,
    so a long run is not silent; nothing for runs shorter than that."""

    def __init__(self, total: int | None, start: int = 0, interval: float = 60.0) -> None:
        self._total, self._start, self._interval = total, start, interval
        self._t0 = self._last = time.perf_counter()

    def update(self, step: int, loss: float) -> None:
        now = time.perf_counter()
        if now - self._last < self._interval:
            return
        self._last = now
        rate = (step - self._start) / (now - self._t0)
        of = f"/{self._total}" if self._total is not None else ""
        print(f"SGD step {step}{of}  loss {loss:.3e}  {rate:.0f} steps/s", file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


class _ProgressBar:
    """A rich progress bar on stderr: steps done, the last evaluated loss and the step rate of this session."""

    def __init__(self, total: int | None, start: int = 0, console: Any = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._p = Progress(
            TextColumn("SGD"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("steps  loss {task.fields[loss]:.3e}  {task.fields[rate]:.0f} steps/s"),
            TimeRemainingColumn(),
            console=console or Console(stderr=True),
            transient=True,
        )
        self._start, self._t0 = start, time.perf_counter()
        self._task = self._p.add_task("train", total=total, completed=start, loss=math.nan, rate=0.0)
        self._p.start()

    def update(self, step: int, loss: float) -> None:
        elapsed = time.perf_counter() - self._t0
        rate = (step - self._start) / elapsed if elapsed > 0 else 0.0
        self._p.update(self._task, completed=step, loss=loss, rate=rate)

    def close(self) -> None:
        self._p.stop()
