"""Shared set-up of the experiments: a small net on the built-in data, and a global minimum of its square loss.

:class:`NetConfig` holds the config fields of the data and the model (every experiment config that trains a net
inherits them). :func:`build_problem` turns them into a float64 :class:`~sgdstab.problem.Problem`;
:func:`find_minimum` trains it with GD to a small loss and then *polishes* the point with Gauss–Newton steps.

**Why polish.** The stability analysis of THEORY.md §4 is exact at a global minimum (r = 0, so H = G = JᵀJ/n).
GD only approaches one linearly, slowly along K's small eigen-directions. When the net interpolates (p ≫ nk and
K = JJᵀ non-singular), the minimum-norm Gauss–Newton step ``δ = −Jᵀ K⁺ r`` (K = JJᵀ, ``K⁺`` its
pseudo-inverse by ``torch.linalg.lstsq``) moves θ to the nearest point with f(x_i) = y_i to first order and converges
quadratically: from L ≈ 1e-5 three steps reach L ≈ 1e-31 (float64 rounding), moving θ by about 1e-4 of its
norm, so the curvature of the point GD found is kept. Steps that do not lower L are rejected.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from sgdstab.data import DATASETS, DEFAULT_DATASET, load_dataset
from sgdstab.data.dataset import Dataset
from sgdstab.experiments.config import param
from sgdstab.models import ACTIVATIONS, mlp
from sgdstab.problem import Problem
from sgdstab.results import ResultMixin
from sgdstab.training import History, train

SUBSET_RULES = ("first", "stratified")


@dataclass(frozen=True)
class NetConfig:
    """Data and model fields shared by the experiments (all trained in float64)."""

    dataset: str = param(DEFAULT_DATASET, choices=tuple(DATASETS), help="data set (sgdstab.load_dataset name)")
    data_dir: str = param("", help="folder of the data files for fashion-mnist / cifar10 (empty: the default)")
    classes: tuple[int, ...] = param(
        (0, 6), ge=0, min_len=2, help="class ids; two classes give one ±1 output, more give one-hot targets"
    )
    n: int = param(64, ge=2, help="number of training samples (nk sets the cost of the exact analysis)")
    subset: str = param("stratified", choices=SUBSET_RULES, help="which n samples: first in file order or stratified")
    widths: tuple[int, ...] = param((64,), ge=1, min_len=1, help="hidden widths of the MLP")
    activation: str = param("tanh", choices=ACTIVATIONS, help="activation of the MLP")
    seed: int = param(0, ge=0, help="seed of the data subset, the initialization and SGD's batches")


def load_data(cfg: NetConfig) -> Dataset:
    return load_dataset(
        cfg.dataset, n=cfg.n, classes=cfg.classes, seed=cfg.seed, data_dir=cfg.data_dir or None, subset=cfg.subset
    )


def build_problem(cfg: NetConfig, data: Dataset | None = None) -> tuple[Problem, Dataset]:
    """A fresh float64 MLP problem on the configured data (same initialization for the same seed)."""
    data = data if data is not None else load_data(cfg)
    model = mlp(data.input_shape, data.num_outputs, widths=cfg.widths, activation=cfg.activation, seed=cfg.seed)
    return Problem(model, data.X, data.Y, dtype=torch.float64), data


@dataclass(frozen=True)
class Minimum(ResultMixin):
    """How a minimum was reached: GD for ``gd_steps`` to ``gd_loss``, then ``polish_steps`` Gauss–Newton steps
    to ``loss``, moving θ by ``polish_distance`` (``polish_relative`` of ||θ||)."""

    gd_lr: float
    gd_steps: int
    gd_loss: float
    gd_diverged: bool
    polish_steps: int
    polish_distance: float
    polish_relative: float
    loss: float
    seconds: float


def polish(problem: Problem, steps: int, target: float = 0.0) -> tuple[int, float]:
    """Up to ``steps`` minimum-norm Gauss–Newton steps θ ← θ − J⁺r; returns (steps taken, distance moved).

    A step that does not lower L is undone and ends the polish; so does reaching L ≤ ``target``."""
    start = problem.theta.clone()
    loss = float(problem.loss())
    taken = 0
    for _ in range(steps):
        if loss <= target:
            break
        J = problem.jacobian().reshape(problem.n * problem.k, problem.p)
        r = problem.residuals().reshape(-1, 1)
        # δ = Jᵀ K⁺ r with K = JJᵀ: the minimum-norm solution of Jδ = r (SVD-based, safe for a singular K)
        K = J @ J.T
        delta = (J.T @ torch.linalg.lstsq(K, r, driver="gelsd").solution).reshape(-1)
        trial = problem.theta - delta
        if not bool(torch.isfinite(trial).all()):
            break
        new = float(problem.loss(trial))
        if not new < loss:
            break
        problem.set_parameters(trial)
        loss, taken = new, taken + 1
    return taken, float(torch.linalg.vector_norm(problem.theta - start))


def find_minimum(
    problem: Problem,
    lr: float,
    max_steps: int,
    until_loss: float,
    polish_steps: int,
    seed: int = 0,
    progress: bool = False,
    at_gd_end: Callable[[Problem], None] | None = None,
) -> tuple[Minimum, History]:
    """GD (B = n) from the problem's θ to L ≤ ``until_loss`` (or ``max_steps``), then :func:`polish`.

    ``at_gd_end(problem)`` is called between the two, e.g. to measure the alignment μ, which needs a non-zero
    residual (at the polished minimum μ is 0/0)."""
    start = time.perf_counter()
    history = train(
        problem,
        lr,
        problem.n,
        "without_replacement",
        steps=max_steps,
        until_loss=until_loss,
        track_every=10,
        seed=seed,
        progress=progress,
    )
    if at_gd_end is not None and history.diverged_at is None:
        at_gd_end(problem)
    theta_norm = float(torch.linalg.vector_norm(problem.theta))
    tiny = 1e-28 * max(float((problem.Y**2).sum()) / (2 * problem.n), 1e-300)
    taken, moved = polish(problem, polish_steps, target=tiny) if history.diverged_at is None else (0, 0.0)
    return (
        Minimum(
            gd_lr=float(lr),
            gd_steps=history.steps[-1],
            gd_loss=history.final_loss,
            gd_diverged=history.diverged_at is not None,
            polish_steps=taken,
            polish_distance=moved,
            polish_relative=moved / theta_norm if theta_norm > 0 else math.nan,
            loss=float(problem.loss()),
            seconds=time.perf_counter() - start,
        ),
        history,
    )


def perturbation(problem: Problem, target_loss: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random direction δ in parameter space (seeded), scaled so that the linearized loss ||Jδ||²/(2n) equals
    ``target_loss``; returns (δ, u0 = Jδ)."""
    gen = torch.Generator().manual_seed(seed)
    d = torch.randn(problem.p, generator=gen, dtype=torch.float64).to(problem.theta)
    J = problem.jacobian().reshape(problem.n * problem.k, problem.p)
    u = J @ d
    scale = math.sqrt(target_loss * 2 * problem.n / float(u @ u))
    return scale * d, scale * u


__all__ = ["Minimum", "NetConfig", "build_problem", "find_minimum", "load_data", "perturbation", "polish"]
