"""Plain SGD on a :class:`~sgdstab.problem.Problem`, batches drawn on-tensor (THEORY.md §1).

Step: ``θ ← θ − (η/B) Σ_{i∈batch} ∇ℓ_i(θ)`` with ``ℓ_i = ½||r_i||²`` and η on the half-MSE convention (a
``torch_mse`` problem's learning rate is converted by :meth:`Problem.half_mse_lr`). Sampling:
``"with_replacement"`` (B i.i.d. uniform indices), ``"without_replacement"`` (a uniform B-subset each step;
B = n is GD) or ``"reshuffle"`` (epoch-wise permutation, what a DataLoader does). Reproducible from ``seed``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.func import grad

from sgdstab.conventions import SAMPLING_SCHEMES, ConventionError, check_batch_size
from sgdstab.problem import Problem
from sgdstab.results import ResultMixin

TRAIN_SAMPLING = (*SAMPLING_SCHEMES, "reshuffle")


@dataclass(frozen=True)
class History(ResultMixin):
    """What a run did: the loss every ``track_every`` steps (full-data L), and how it ended."""

    steps: tuple[int, ...]
    losses: tuple[float, ...]
    tracked: dict[str, tuple[float, ...]] = field(default_factory=dict)
    final_loss: float = math.nan
    diverged_at: int | None = None
    seconds: float = 0.0
    lr: float = math.nan
    batch_size: int = 0
    sampling: str = ""


class _BatchSampler:
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


def train(
    problem: Problem,
    lr: float,
    batch_size: int,
    sampling: str = "with_replacement",
    steps: int = 1000,
    until_loss: float | None = None,
    track_every: int = 10,
    track: dict[str, Callable[[Problem], float]] | None = None,
    seed: int = 0,
    divergence_factor: float = 1e6,
    progress: bool = False,
) -> History:
    """Run SGD on ``problem`` in place (its parameters and its model's are updated) and return the history.

    Args:
        lr: learning rate in the problem's loss convention.
        steps: the most steps to take; ``until_loss`` stops earlier once the full-data L falls below it.
        track_every: evaluate the full-data loss (and ``track`` callables) every this many steps.
        track: extra figures to record, name → function of the problem (e.g. ``lambda P: alignment(P).mu``).
        divergence_factor: the run is recorded as diverged (not raised) when L exceeds this multiple of its
            initial value or becomes non-finite; the problem then keeps its parameters from before the run.
    """
    if sampling not in TRAIN_SAMPLING:
        raise ConventionError(f"unknown sampling scheme {sampling!r}; use one of {', '.join(TRAIN_SAMPLING)}")
    b = check_batch_size(batch_size, problem.n)
    eta = problem.half_mse_lr(lr)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConventionError(f"steps must be a non-negative integer, got {steps!r}")
    track = dict(track or {})
    sampler = _BatchSampler(problem.n, b, sampling, seed, problem.device)
    grad_fn = grad(problem._batch_loss_sum)
    theta = problem.theta.clone()
    rec_steps: list[int] = []
    rec_loss: list[float] = []
    rec_tracked: dict[str, list[float]] = {name: [] for name in track}
    start = time.perf_counter()
    loss0 = float(problem.loss(theta))
    diverged_at = None

    def record(step: int, loss: float) -> None:
        rec_steps.append(step)
        rec_loss.append(loss)
        if track:
            problem.set_parameters(theta)
            for name, fn in track.items():
                rec_tracked[name].append(float(fn(problem)))

    bar = _progress(steps) if progress else None
    loss = loss0
    record(0, loss0)
    for step in range(1, steps + 1):
        idx = sampler()
        if idx is None:
            g = grad_fn(theta, problem.X, problem.Y) / problem.n
        else:
            g = grad_fn(theta, problem.X[idx], problem.Y[idx]) / b
        theta = theta - eta * g
        if step % track_every == 0 or step == steps:
            loss = float(problem.loss(theta))
            if not math.isfinite(loss) or loss > divergence_factor * max(loss0, 1e-12):
                diverged_at = step
                rec_steps.append(step)
                rec_loss.append(loss)
                break
            record(step, loss)
            if bar is not None:
                bar.update(step, loss)
            if until_loss is not None and loss <= until_loss:
                break
    if bar is not None:
        bar.close()
    if diverged_at is None:
        problem.set_parameters(theta)
    return History(
        steps=tuple(rec_steps),
        losses=tuple(rec_loss),
        tracked={k: tuple(v) for k, v in rec_tracked.items()},
        final_loss=rec_loss[-1],
        diverged_at=diverged_at,
        seconds=time.perf_counter() - start,
        lr=float(lr),
        batch_size=b,
        sampling=sampling,
    )


class _progress:
    """A rich progress bar showing the loss and the step rate."""

    def __init__(self, total: int) -> None:
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

        self._p = Progress(
            TextColumn("SGD"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total} steps"),
            TextColumn("loss {task.fields[loss]:.3e}"),
            TimeRemainingColumn(),
            transient=True,
        )
        self._task = self._p.add_task("train", total=total, loss=math.nan)
        self._p.start()

    def update(self, step: int, loss: float) -> None:
        self._p.update(self._task, completed=step, loss=loss)

    def close(self) -> None:
        self._p.stop()
