"""Shared set-up of the experiments: a small net on the built-in data, and a global minimum of its square loss.

:class:`NetConfig` holds the config fields of the data and the model (every experiment config that trains a net
inherits them). :func:`build_problem` turns them into a float64 :class:`sgdstab.Problem`;
:func:`find_minimum` trains it with GD to a small loss and then *polishes* the point with Gauss–Newton steps.

**Why polish.** The stability analysis of THEORY.md §4 is exact at a global minimum (r = 0, so H = G = JᵀJ/n),
which GD only approaches. The Gauss–Newton polishing (:func:`polish`, :func:`gauss_newton_step`) lives in the public
module :mod:`sgdstab.training.polish` (with :func:`sgdstab.polish_to_minimum`); the names stay importable from here.
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
from sgdstab.models.architectures import ACTIVATIONS, cnn, mlp
from sgdstab.operators.products import jacobian_vector_product
from sgdstab.problem.problem import Problem
from sgdstab.training.polish import gauss_newton_step, polish
from sgdstab.training.trainer import History, train
from sgdstab.utils.results import ResultMixin

SUBSET_RULES = ("first", "stratified")
NETWORKS = ("mlp", "cnn")


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
    network: str = param("mlp", choices=NETWORKS, help="mlp, or cnn: conv blocks (`channels`), then an MLP head")
    widths: tuple[int, ...] = param((64,), ge=1, min_len=1, help="hidden widths of the MLP (of the CNN's head)")
    channels: tuple[int, ...] = param((8, 16), ge=1, min_len=1, help="cnn only: channels of its 3×3 conv blocks")
    activation: str = param("tanh", choices=ACTIVATIONS, help="activation of the network")
    seed: int = param(0, ge=0, help="seed of the data subset, the initialization and SGD's batches")
    device: str = param("cpu", help="torch device of the run: cpu, cuda or cuda:N (float64 throughout)")


def load_data(cfg: NetConfig) -> Dataset:
    return load_dataset(
        cfg.dataset, n=cfg.n, classes=cfg.classes, seed=cfg.seed, data_dir=cfg.data_dir or None, subset=cfg.subset
    )


def build_problem(cfg: NetConfig, data: Dataset | None = None) -> tuple[Problem, Dataset]:
    """A fresh float64 problem on the configured data (same initialization for the same seed)."""
    data = data if data is not None else load_data(cfg)
    if cfg.network == "cnn":
        model = cnn(
            data.input_shape, data.num_outputs, channels=cfg.channels, widths=cfg.widths,
            activation=cfg.activation, seed=cfg.seed,
        )  # fmt: skip
    else:
        model = mlp(data.input_shape, data.num_outputs, widths=cfg.widths, activation=cfg.activation, seed=cfg.seed)
    # the data follow the model to its device (Problem moves them)
    return Problem(model.to(cfg.device), data.X, data.Y, dtype=torch.float64), data


def describe_network(cfg: NetConfig, data: Dataset, problem: Problem) -> str:
    """One line for the reports, e.g. "MLP 784 → 500 → 500 → 500 → 10 (relu)"."""
    head = " → ".join(map(str, (*cfg.widths, problem.k)))
    if cfg.network == "cnn":
        convs = " → ".join(f"conv{c}" for c in cfg.channels)
        return f"CNN {'×'.join(map(str, data.input_shape))} → {convs} (3×3, avg-pool 2) → {head} ({cfg.activation})"
    return f"MLP {math.prod(data.input_shape)} → {head} ({cfg.activation})"


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
    u = jacobian_vector_product(problem, d).reshape(-1)
    scale = math.sqrt(target_loss * 2 * problem.n / float(u @ u))
    return scale * d, scale * u


__all__ = [
    "Minimum",
    "NetConfig",
    "build_problem",
    "describe_network",
    "find_minimum",
    "gauss_newton_step",
    "load_data",
    "perturbation",
    "polish",
]
