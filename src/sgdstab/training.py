"""Plain SGD on a :class:`~sgdstab.problem.Problem`, batches drawn on-tensor (THEORY.md §1).

Step: ``θ ← θ − (η/B) Σ_{i∈batch} ∇ℓ_i(θ)`` with ``ℓ_i = ½||r_i||²`` and η on the half-MSE convention (a
``torch_mse`` problem's learning rate is converted by :meth:`Problem.half_mse_lr`). Sampling:
``"with_replacement"`` (B i.i.d. uniform indices), ``"without_replacement"`` (a uniform B-subset each step;
B = n is GD) or ``"reshuffle"`` (epoch-wise permutation, what a DataLoader does; a last partial batch is dropped).

The step runs on the problem's module itself (``index_select`` of the batch, forward, ``torch.autograd.grad`` of
the batch's summed squared error, in-place ``p.add_(g, alpha=−η/(2B))``): the arithmetic of a hand-written torch
loop, bit for bit, with no per-step host synchronisation (``torch.optim.SGD.step`` alone costs more than the rest
of a small model's step; ``torch.func.grad`` on a flat θ ran at ≈ 0.4× the bare loop); the full-data loss L is
evaluated only every ``track_every`` steps. Batches are indexed
from a private CPU ``torch.Generator`` seeded with ``seed``, so a run is reproducible bit for bit on the same
machine, and a run resumed from a checkpoint equals the uninterrupted one.

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
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from sgdstab.alignment import alignment
from sgdstab.conventions import SAMPLING_SCHEMES, ConventionError, check_batch_size
from sgdstab.curvature import curvature
from sgdstab.errors import SgdstabError
from sgdstab.history import (
    _FORMAT_VERSION,
    History,
    HistoryError,
    _atomic_write,
)
from sgdstab.problem import Problem

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

_CHECKPOINT_FORMAT = "sgdstab-train-checkpoint"


class TrainingError(SgdstabError, ValueError):
    """Invalid arguments to :func:`train` (unknown tracked figure, bad step counts, checkpoint settings)."""


class CheckpointError(SgdstabError, ValueError):
    """A checkpoint is unreadable (missing, truncated, corrupt) or does not belong to this problem or run."""


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


# ---------------------------------------------------------------------------------------------------- checkpoints
def _write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    _atomic_write(path, lambda f: torch.save(state, f))


def _read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, a forbidden global: all mean "not a checkpoint we wrote"
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r}: truncated, corrupt, or holding more than plain tensors and values "
            f"({type(exc).__name__}: {detail})"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != _CHECKPOINT_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an sgdstab training checkpoint")
    if state.get("version") != _FORMAT_VERSION:
        raise CheckpointError(f"checkpoint {str(path)!r} has format version {state.get('version')!r}; this reads 1")
    expected = {"parameters": dict, "step": int, "sampler": dict, "run": dict, "history": dict}
    for key, kind in expected.items():
        if not isinstance(state.get(key), kind):
            raise CheckpointError(f"checkpoint {str(path)!r} lacks a valid {key!r} entry")
    return state


def _check_checkpoint(state: dict[str, Any], problem: Problem, run: dict[str, Any], source: str) -> None:
    """Refuse a checkpoint of another architecture or another run, naming the first difference."""
    params = state["parameters"]
    names = tuple(params)
    if names != problem.layout.names:
        missing = [n for n in problem.layout.names if n not in params]
        extra = [n for n in names if n not in problem.layout.names]
        what = "are in another order"
        if missing or extra:
            what = f"lack {missing[0]!r}" if missing else f"include {extra[0]!r}, which the model has not"
        raise CheckpointError(f"checkpoint {source} does not fit this model: its parameters {what}")
    for name, shape in zip(problem.layout.names, problem.layout.shapes, strict=True):
        value = params[name]
        if not isinstance(value, Tensor) or value.shape != shape:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise CheckpointError(
                f"checkpoint {source} does not fit this model: {name!r} has shape {got}, the model's is {tuple(shape)}"
            )
        if value.dtype != problem.dtype:
            raise CheckpointError(f"checkpoint {source} holds {value.dtype} parameters; the problem is {problem.dtype}")
        if not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"checkpoint {source}: parameter {name!r} is not finite")
    saved = state["run"]
    for key, value in run.items():
        if key == "loss0":
            continue
        if key == "data":
            theirs = saved.get(key)
            # sums may differ in their last bits with the thread count; other data differ far more
            same = isinstance(theirs, list) and len(theirs) == len(value)
            same = same and all(
                math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9) for a, b in zip(theirs, value, strict=True)
            )
            if not same:
                raise CheckpointError(f"checkpoint {source} was written on other data (X, Y sums differ)")
            continue
        if saved.get(key) != value:
            raise CheckpointError(
                f"checkpoint {source} was written with {key}={saved.get(key)!r}, this call has {key}={value!r}; "
                "resume with the same settings"
            )
    sampler = state["sampler"]
    if not isinstance(sampler.get("generator"), Tensor) or not isinstance(sampler.get("pos"), int):
        raise CheckpointError(f"checkpoint {source} lacks a valid sampler state")
    if not isinstance(saved.get("loss0"), float):
        raise CheckpointError(f"checkpoint {source} lacks the run's initial loss")


def _fingerprint(problem: Problem) -> list[float]:
    """Sums and sums of squares of X and Y: a cheap check that a run resumes on the data it was trained on."""
    out = []
    for t in (problem.X, problem.Y):
        out += [float(t.sum(dtype=torch.float64)), float(t.square().sum(dtype=torch.float64))]
    return out


def _history_lists(history: Mapping[str, Any], columns: list[str], source: str) -> tuple[list, list, dict, float]:
    try:
        steps = [int(s) for s in history["steps"]]
        losses = [float(x) for x in history["losses"]]
        tracked = {c: [float(x) for x in history["tracked"][c]] for c in columns}
        seconds = float(history["seconds"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {source} lacks a valid history ({type(exc).__name__}: {exc})") from exc
    if not steps or any(len(v) != len(steps) for v in (losses, *tracked.values())):
        raise CheckpointError(f"checkpoint {source} holds a history whose columns differ in length")
    return steps, losses, tracked, seconds


# ---------------------------------------------------------------------------------------------------- the loop
def _check_positive_int(value: object, name: str, allow_zero: bool = False) -> int:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        kind = "a non-negative" if allow_zero else "a positive"
        raise TrainingError(f"{name} must be {kind} integer, got {value!r}")
    return value


def _check_arguments(
    steps: int | None,
    until_loss: float | None,
    track_every: int,
    divergence_factor: float,
    checkpoint_every: int | None,
    checkpoint_path: object,
) -> None:
    if steps is None:
        if until_loss is None:
            raise TrainingError("steps=None runs until the loss falls below until_loss; give until_loss too")
    else:
        _check_positive_int(steps, "steps", allow_zero=True)
    if until_loss is not None and not (isinstance(until_loss, int | float) and until_loss >= 0):
        raise TrainingError(f"until_loss must be a non-negative number, got {until_loss!r}")
    _check_positive_int(track_every, "track_every")
    if not (isinstance(divergence_factor, int | float) and divergence_factor > 1):
        raise TrainingError(f"divergence_factor must be a number above 1, got {divergence_factor!r}")
    if checkpoint_every is not None:
        _check_positive_int(checkpoint_every, "checkpoint_every")
        if checkpoint_path is None:
            raise TrainingError("checkpoint_every needs checkpoint_path (where to write the checkpoints)")


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
        lr: learning rate in the problem's loss convention.
        batch_size: B; with ``sampling="without_replacement"``, B = n is GD.
        steps: the most steps to take (counted from the start of the run, also when resuming); ``until_loss``
            stops earlier once the full-data L falls to it. ``steps=None`` runs until then (or divergence).
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

    If the run is interrupted by an exception (e.g. Ctrl-C) the problem keeps the last finite θ reached.
    """
    if sampling not in TRAIN_SAMPLING:
        raise ConventionError(f"unknown sampling scheme {sampling!r}; use one of {', '.join(TRAIN_SAMPLING)}")
    b = check_batch_size(batch_size, problem.n)
    eta = problem.half_mse_lr(lr)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:  # torch.Generator: 64 bits
        raise TrainingError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    _check_arguments(steps, until_loss, track_every, divergence_factor, checkpoint_every, checkpoint_path)
    columns, trackers = _trackers(track, seed)
    ckpt = Path(checkpoint_path) if checkpoint_path is not None else None
    run: dict[str, Any] = {
        "lr": float(lr),
        "batch_size": b,
        "sampling": sampling,
        "seed": seed,
        "n": problem.n,
        "loss_convention": problem.loss_convention,
        "track_every": track_every,
        "columns": list(columns),
    }
    if ckpt is not None or resume is not None:
        run["data"] = _fingerprint(problem)
    sampler = _BatchSampler(problem.n, b, sampling, seed, problem.device)
    named = dict(problem.model.named_parameters())
    params = [named[name] for name in problem.layout.names]
    theta_start = problem.theta.clone()
    start = time.perf_counter()

    if resume is not None:
        source = repr(str(resume))
        state = _read_checkpoint(resume)
        _check_checkpoint(state, problem, run, source)
        rec_steps, rec_loss, rec_tracked, seconds_before = _history_lists(state["history"], columns, source)
        step0, loss0 = state["step"], state["run"]["loss0"]
        try:
            sampler.load_state(state["sampler"])
        except (RuntimeError, TypeError) as exc:
            raise CheckpointError(f"checkpoint {source} holds an unusable sampler state: {exc}") from exc
        problem.set_parameters(problem.layout.flatten(state["parameters"]))
    else:
        problem.set_parameters(problem.theta)  # the module's parameters hold θ from here on
        rec_steps, rec_loss, rec_tracked, seconds_before = [], [], {c: [] for c in columns}, 0.0
        step0, loss0 = 0, _full_loss(problem)
    run["loss0"] = loss0
    diverged_at: int | None = None

    def current_theta() -> Tensor:
        return torch.cat([p.detach().reshape(-1) for p in params])

    def evaluate(step: int, loss: float | None = None) -> bool:
        """Record L (and the tracked figures) at ``step``; True when the run must stop."""
        nonlocal diverged_at
        theta = current_theta()
        loss = _full_loss(problem) if loss is None else loss
        rec_steps.append(step)
        rec_loss.append(loss)
        if not math.isfinite(loss) or loss > divergence_factor * max(loss0, 1e-12):
            diverged_at = step
            for c in columns:
                rec_tracked[c].append(math.nan)
            return True
        problem.set_parameters(theta)
        values: dict[str, float] = {}
        for fn in trackers:
            values.update(fn(problem))
        for c in columns:
            rec_tracked[c].append(float(values[c]))
        return until_loss is not None and loss <= until_loss

    def save_checkpoint(step: int) -> None:
        history = {
            "steps": list(rec_steps),
            "losses": list(rec_loss),
            "tracked": {c: list(v) for c, v in rec_tracked.items()},
            "seconds": seconds_before + time.perf_counter() - start,
        }
        parameters = {n: p.detach().to("cpu", copy=True) for n, p in zip(problem.layout.names, params, strict=True)}
        sampler_state = sampler.state()
        assert ckpt is not None
        _write_checkpoint(
            ckpt,
            {
                "format": _CHECKPOINT_FORMAT,
                "version": _FORMAT_VERSION,
                "parameters": parameters,
                "step": step,
                "sampler": sampler_state,
                "run": run,
                "history": history,
            },
        )

    bar: _ProgressBar | _ProgressLines | None = None
    if progress:
        bar = _ProgressBar(steps, step0) if _stderr_is_terminal() else _ProgressLines(steps, step0)
    bar_every = max(1, (steps or 10_000) // 200)
    step = step0
    completed = False
    try:
        stop = False
        if not rec_steps:
            stop = evaluate(0, loss0)
        elif until_loss is not None and rec_steps[-1] == step0 and rec_loss[-1] <= until_loss:
            stop = True  # resumed from the checkpoint of a run that had already reached its target
        # mse_loss(reduction="sum") = Σ_batch ||r_i||² = 2 Σ_batch ℓ_i, hence the step −η/(2B) on its gradient; the
        # scaling by 2 is exact, so the step equals the one on ½Σ||r_i||² bit for bit, with fewer autograd nodes.
        X, Y, scale = problem.X, problem.Y, -eta / (2 * b)
        remaining = itertools.count(step0 + 1) if steps is None else range(step0 + 1, steps + 1)
        for step in () if stop else remaining:  # step outlives the loop: the last step taken
            idx = sampler()
            x, y = (X, Y) if idx is None else (X.index_select(0, idx), Y.index_select(0, idx))
            out = problem.model(x).reshape(y.shape)
            grads = torch.autograd.grad(F.mse_loss(out, y, reduction="sum"), params)
            with torch.no_grad():
                for p, g in zip(params, grads, strict=True):
                    p.add_(g, alpha=scale)
            if step % track_every == 0:
                stop = evaluate(step)
            if checkpoint_every is not None and step % checkpoint_every == 0 and diverged_at is None:
                if step % track_every != 0 and not bool(torch.isfinite(current_theta()).all()):
                    stop = evaluate(step)  # a non-finite θ must not be saved: record the divergence instead
                else:
                    save_checkpoint(step)
            if bar is not None and (step % bar_every == 0 or step % track_every == 0):
                bar.update(step, rec_loss[-1])
            if stop:
                break
        if diverged_at is None and rec_steps[-1] != step:
            evaluate(step)
        if diverged_at is None and ckpt is not None:
            save_checkpoint(step)
        completed = True
    finally:
        if bar is not None:
            bar.close()
        if diverged_at is not None:
            problem.set_parameters(theta_start)
        elif not completed:  # interrupted: keep the last finite θ, so that problem.theta matches its model
            theta = current_theta()
            problem.set_parameters(theta if bool(torch.isfinite(theta).all()) else theta_start)
    seconds = seconds_before + time.perf_counter() - start
    last = rec_steps[-1]
    return History(
        steps=tuple(rec_steps),
        losses=tuple(rec_loss),
        tracked={c: tuple(v) for c, v in rec_tracked.items()},
        final_loss=rec_loss[-1],
        diverged_at=diverged_at,
        seconds=seconds,
        lr=float(lr),
        batch_size=b,
        sampling=sampling,
        seed=seed,
        steps_per_second=last / seconds if seconds > 0 else math.nan,
    )


def _full_loss(problem: Problem) -> float:
    """L = (1/(2n)) Σ_i ||r_i||² at the parameters the model holds, in chunks of at least 1024 samples: a forward
    pass alone needs far less memory than the per-sample derivatives ``problem.chunk_size`` is sized for."""
    total = 0.0
    with torch.no_grad():
        for s in problem.chunks(max(problem.chunk_size, 1024)):
            y = problem.Y[s]
            total += float(F.mse_loss(problem.model(problem.X[s]).reshape(y.shape), y, reduction="sum"))
    return 0.5 * total / problem.n


# ---------------------------------------------------------------------------------------------------- progress
def _stderr_is_terminal() -> bool:
    from rich.console import Console

    return Console(stderr=True).is_terminal


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
