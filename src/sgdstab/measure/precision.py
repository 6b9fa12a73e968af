"""How much float32 rounding moves the figures: the same exact figures on a subsample in float32 and float64.

A float32 problem's figures are checked against float64 on a deterministic subsample of at most ``samples``
samples: the NTK of the subsample, its ||G||_F, loss, Tr(ΣG) and μ (THEORY.md §2–3) are computed in both
precisions and the largest relative difference is reported. It bounds the rounding error of the kernel route's
building blocks at this θ; it is not a bound on stochastic error (see the ``*_stderr`` fields for that).

Differences are relative to the figure's natural scale, never to a value that is zero by nature: the loss against
the zero predictor's ½·mean||y||², Tr(ΣG) against 2·½·mean||y||²·||G||_F², so that at a global minimum (L ≈ 0 in
both precisions) the check reports rounding, not 0/0. μ = Tr(ΣG)/(2L||G||_F²) is undefined at a global minimum
(0/0) and is compared only where the float64 loss is above its rounding level; a figure that one precision cannot
give at all (NaN on one side only) counts as 100% different, so the check is never inf or NaN.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from sgdstab.conventions import is_global_minimum, zero_predictor_loss
from sgdstab.kernel import figures as kf
from sgdstab.kernel.kernel import Kernel
from sgdstab.kernel.ntk import ggn_kernel
from sgdstab.problem.problem import Problem
from sgdstab.utils.results import ResultMixin

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

    def worst_of(self, figures: tuple[str, ...] | None = None) -> float:
        """The largest difference among ``figures`` (field names; default: all of them)."""
        return self.worst if figures is None else max(getattr(self, name) for name in figures)

    def note(self, figures: tuple[str, ...] | None = None) -> str | None:
        """A note advising float64 when the difference among ``figures`` exceeds ``WARN_ABOVE``, else None."""
        worst = self.worst_of(figures)
        if not worst > WARN_ABOVE:
            return None
        return (
            f"float32 rounding moves exact figures by up to {worst:.2g} (relative) on a {self.samples}-sample "
            "float64 check: use dtype=torch.float64 for figures you will cite"
        )


def _relative(a: float, b: float, scale: float = 0.0) -> float:
    """|a − b| relative to max(|a|, |b|, scale); ``scale`` is the figure's natural size (so zeros compare sanely).
    A figure that one precision cannot give at all (NaN or inf on one side only) differs by 1, i.e. 100%."""
    if not (math.isfinite(a) and math.isfinite(b)):
        return 0.0 if (math.isnan(a) and math.isnan(b)) or a == b else 1.0
    scale = max(abs(a), abs(b), scale)
    return abs(a - b) / scale if scale > 0 else 0.0


def float64_check(
    problem: Problem,
    samples: int = DEFAULT_SAMPLES,
    kernel: Kernel | torch.Tensor | None = None,
    residuals: torch.Tensor | None = None,
) -> PrecisionCheck | None:
    """The float32-vs-float64 check of ``problem``; ``None`` for a float64 problem (nothing to check) and when even
    two samples' float64 Jacobian would exceed 256 MiB (the caller then states that the figures are unchecked).
    ``kernel`` and ``residuals``: the problem's float32 NTK and residuals at θ when already computed; the
    subsample's float32 figures then come from their rows instead of a second float32 problem (a
    :class:`sgdstab.Kernel` counts by its :attr:`~sgdstab.Kernel.matrix`, K as built)."""
    if problem.dtype == torch.float64:
        return None
    if isinstance(kernel, Kernel):
        kernel = kernel.matrix
    m = min(problem.n, samples, _MAX_JACOBIAN_BYTES // (8 * problem.k * problem.p))
    if m < 2:
        return None
    # evenly spread, deterministic: the same subsample every call
    idx = torch.linspace(0, problem.n - 1, m).round().long().unique().to(problem.device)
    figures = []
    rows = (idx[:, None] * problem.k + torch.arange(problem.k, device=idx.device)).reshape(-1)
    m, k = len(idx), problem.k
    for dtype in (torch.float32, torch.float64):
        if dtype == torch.float32 and kernel is not None and kernel.dtype == torch.float32 and residuals is not None:
            K, r = kernel[rows][:, rows], residuals[idx]
        else:
            # Problem copies the model itself when the dtype differs; float32 keeps the user's (θ is only read)
            model = problem.model if dtype != problem.dtype else copy.deepcopy(problem.model)
            sub = Problem(model, problem.X[idx], problem.Y[idx], dtype=dtype, loss=problem.loss_convention)
            sub.set_parameters(problem.theta.to(dtype))
            K, r = ggn_kernel(sub).matrix, sub.kernel_residuals()  # K and r for the square loss
        nf = kf.noise_figures(K, r, m, k)
        figures.append((kf.gauss_newton_frobenius(K, m), nf.loss, nf.tr_sigma_g, nf.mu))
    (frob32, loss32, tsg32, mu32), (frob64, loss64, tsg64, mu64) = figures
    loss_scale = zero_predictor_loss(problem.Y[idx])
    # μ = 0/0 where the float64 loss itself is zero to rounding: nothing to compare there
    undefined_mu = is_global_minimum(loss64, problem.Y[idx], torch.float64)
    diffs = [
        _relative(frob32, frob64),
        _relative(loss32, loss64, loss_scale),
        _relative(tsg32, tsg64, 2 * loss_scale * frob64**2),
        0.0 if undefined_mu else _relative(mu32, mu64),
    ]
    return PrecisionCheck(len(idx), *diffs, worst=max(diffs))


# The building blocks of the float64 check that curvature figures rest on (μ and Tr(ΣG) are the alignment's).
CURVATURE_CHECKED = ("gauss_newton_frobenius", "loss")


def precision_check(
    problem: Problem,
    kernel: Kernel | torch.Tensor | None = None,
    residuals: torch.Tensor | None = None,
    figures: tuple[str, ...] | None = CURVATURE_CHECKED,
) -> tuple[float | None, list[str]]:
    """(largest relative float32-vs-float64 difference among ``figures`` of :class:`PrecisionCheck` — all of them
    with None — or None for float64, notes) for a result on ``problem``; ``kernel``: its NTK at θ when built, and
    ``residuals`` (their rows serve the float32 side of the subsample)."""
    if problem.dtype == torch.float64:
        return None, []
    check = float64_check(problem, kernel=kernel, residuals=residuals)
    if check is None:
        return None, ["float32 figures unchecked: the float64 subsample check would not fit in memory"]
    note = check.note(figures)
    return check.worst_of(figures), [note] if note else []
