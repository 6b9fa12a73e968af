"""How much float32 rounding moves the figures: the same exact figures on a subsample in float32 and float64.

A float32 problem's figures are checked against float64 on a deterministic subsample of at most ``samples``
samples: the NTK of the subsample, its ||G||_F, loss, Tr(ΣG) and μ (THEORY.md §2–3) are computed in both
precisions and the largest relative difference is reported. It bounds the rounding error of the kernel route's
building blocks at this θ; it is not a bound on stochastic error (see the ``*_stderr`` fields for that).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from sgdstab import kernel_figures as kf
from sgdstab.ntk import ntk
from sgdstab.problem import Problem
from sgdstab.results import ResultMixin

DEFAULT_SAMPLES = 64
_MAX_JACOBIAN_BYTES = 256 * 1024**2  # the subsample's float64 Jacobian
WARN_ABOVE = 1e-3  # relative difference above which a result carries a note advising float64


@dataclass(frozen=True)
class PrecisionCheck(ResultMixin):
    """Relative float32-vs-float64 differences of exact figures on a subsample of ``samples`` samples."""

    samples: int
    gauss_newton_frobenius: float
    loss: float
    tr_sigma_g: float
    mu: float
    worst: float

    def note(self) -> str | None:
        if not self.worst > WARN_ABOVE:
            return None
        return (
            f"float32 rounding moves exact figures by up to {self.worst:.2g} (relative) on a {self.samples}-sample "
            "float64 check: use dtype=torch.float64 for figures you will cite"
        )


def _relative(a: float, b: float) -> float:
    if not (math.isfinite(a) and math.isfinite(b)):
        return 0.0 if (math.isnan(a) and math.isnan(b)) or a == b else math.inf
    scale = max(abs(a), abs(b))
    return abs(a - b) / scale if scale > 0 else 0.0


def float64_check(problem: Problem, samples: int = DEFAULT_SAMPLES) -> PrecisionCheck | None:
    """The float32-vs-float64 check of ``problem``; ``None`` for a float64 problem (nothing to check) and when even
    two samples' float64 Jacobian would exceed 256 MiB (the caller then states that the figures are unchecked)."""
    if problem.dtype == torch.float64:
        return None
    m = min(problem.n, samples, _MAX_JACOBIAN_BYTES // (8 * problem.k * problem.p))
    if m < 2:
        return None
    # evenly spread, deterministic: the same subsample every call
    idx = torch.linspace(0, problem.n - 1, m).round().long().unique().to(problem.device)
    figures = []
    for dtype in (torch.float32, torch.float64):
        sub = Problem(copy.deepcopy(problem.model), problem.X[idx], problem.Y[idx], dtype=dtype)
        sub.set_parameters(problem.theta.to(dtype))
        K = ntk(sub)
        nf = kf.noise_figures(K, sub.residuals(), sub.n, sub.k)
        figures.append((kf.gauss_newton_frobenius(K, sub.n), nf.loss, nf.tr_sigma_g, nf.mu))
    diffs = [_relative(a, b) for a, b in zip(*figures, strict=True)]
    return PrecisionCheck(len(idx), *diffs, worst=max(diffs))
