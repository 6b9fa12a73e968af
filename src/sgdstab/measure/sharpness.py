"""The SGD-aware sharpness measures of Andreyev & Beneventano (2024) (docs/THEORY.md §9), with standard errors.

- **batch sharpness** ``E_B[g_Bᵀ H_B g_B / ||g_B||²]``: g_B and H_B the gradient and Hessian of the *same*
  mini-batch loss L_B = (1/B) Σ_{i∈B} ℓ_i (the curvature SGD's own step sees along its own direction; under SGD it
  settles at 2/η while λ_max(H) stays below);
- **gradient–noise interaction** ``E_B[g_Bᵀ H g_B] / ||∇L||²`` with the full-data Hessian H.

Batches are drawn as SGD draws them (``"with_replacement"``: B i.i.d. uniform indices; ``"without_replacement"``: a
uniform B-subset). When every batch can be listed (at most ``max_exact`` of them: n^B ordered draws, or C(n, B)
subsets) the expectation is exact (standard error 0); otherwise it is a Monte-Carlo mean over seeded batches,
stopped once its standard error is within ``rtol`` of the mean (at least 32 batches) or at ``max_batches``.
A batch whose gradient is exactly zero has no direction: it is skipped and counted (at a global minimum of the square
loss every batch gradient is zero, and batch sharpness is undefined there: NaN with a note).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch

from sgdstab.conventions import check_batch_size, check_sampling, is_global_minimum
from sgdstab.errors import MethodError
from sgdstab.measure.plan import check_rtol, check_seed
from sgdstab.operators.products import hessian_vector_product
from sgdstab.problem.problem import Problem
from sgdstab.utils.results import ResultMixin
from sgdstab.utils.validation import check_int

__all__ = ["BatchSharpness", "batch_sharpness"]

_MIN_BATCHES = 32


@dataclass(frozen=True)
class BatchSharpness(ResultMixin):
    """Batch sharpness (``value`` ± ``stderr``, 0 when exact) and the gradient–noise interaction at θ.

    ``batches``: batches averaged; ``zero_gradient_batches``: skipped (no direction); ``exact``: every batch listed.
    ``interaction`` is NaN when not asked for (``interaction=False``) or when ∇L = 0.

    Example:
        >>> import torch, sgdstab
        >>> model = sgdstab.mlp((3,), 1, widths=(4,), seed=0).double()
        >>> X = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> problem = sgdstab.Problem(model, X, torch.zeros(5, 1, dtype=torch.float64))
        >>> bs = sgdstab.batch_sharpness(problem, 2, "without_replacement")  # C(5, 2) = 10 subsets: exact
        >>> bs.exact, bs.batches, bs.stderr
        (True, 10, 0.0)
    """

    value: float
    stderr: float
    interaction: float
    interaction_stderr: float
    batch_size: int
    sampling: str
    batches: int
    zero_gradient_batches: int
    exact: bool
    seconds: float
    notes: tuple[str, ...] = field(default=())


def _all_batches(n: int, b: int, sampling: str) -> Iterator[tuple[int, ...]]:
    if sampling == "with_replacement":
        return itertools.product(range(n), repeat=b)
    return itertools.combinations(range(n), b)


def _count(n: int, b: int, sampling: str) -> int:
    return n**b if sampling == "with_replacement" else math.comb(n, b)


def _random_batches(n: int, b: int, sampling: str, seed: int) -> Iterator[tuple[int, ...]]:
    gen = torch.Generator().manual_seed(seed)
    while True:
        if sampling == "with_replacement":
            yield tuple(torch.randint(n, (b,), generator=gen).tolist())
        else:
            yield tuple(torch.randperm(n, generator=gen)[:b].tolist())


def _batch_figures(problem: Problem, batch: tuple[int, ...], interaction: bool) -> tuple[float, float, float] | None:
    """(g_Bᵀ H_B g_B / ||g_B||², g_Bᵀ H g_B, ||g_B||²) for one batch; None when g_B = 0."""
    idx = torch.tensor(batch, device=problem.device)
    x, y = problem.X.index_select(0, idx), problem.Y.index_select(0, idx)
    with torch.enable_grad():
        t = problem.theta.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(problem.batch_loss_sum(t, x, y) / len(batch), t, create_graph=True)
        norm2 = float((g.detach().double() ** 2).sum())
        if norm2 == 0.0:
            return None
        (hg,) = torch.autograd.grad(g, t, grad_outputs=g.detach())
    sharp = float((g.detach().double() * hg.double()).sum()) / norm2
    full = math.nan
    if interaction:
        full = float((g.detach().double() * hessian_vector_product(problem, g.detach()).double()).sum())
    return sharp, full, norm2


def _mean_and_stderr(values: list[float], exact: bool) -> tuple[float, float]:
    if not values:
        return math.nan, math.nan
    t = torch.tensor(values, dtype=torch.float64)
    if exact or len(values) < 2:
        return float(t.mean()), 0.0
    return float(t.mean()), float(t.std()) / math.sqrt(len(values))


def batch_sharpness(
    problem: Problem,
    batch_size: int,
    sampling: str = "with_replacement",
    *,
    interaction: bool = True,
    rtol: float = 0.01,
    max_batches: int = 10_000,
    max_exact: int = 2_000,
    seed: int = 0,
) -> BatchSharpness:
    """Batch sharpness E_B[g_Bᵀ H_B g_B / ||g_B||²] and the gradient–noise interaction E_B[g_Bᵀ H g_B]/||∇L||² at θ
    (module docstring), exact by enumeration when there are at most ``max_exact`` batches, else Monte Carlo.

    Args:
        problem: the problem at θ (any loss: H_B and H are the true Hessians of the batch and full losses).
        batch_size: B, in 1..n.
        sampling: ``"with_replacement"`` or ``"without_replacement"``, as SGD draws its batches.
        interaction: also the gradient–noise interaction (one full-data Hessian-vector product per batch).
        rtol: Monte Carlo stops when the standard error of the batch sharpness is within ``rtol`` of its mean.
        max_batches: the most batches Monte Carlo draws.
        max_exact: enumerate every batch when there are at most this many.
        seed: seed of the Monte Carlo batches.

    Returns:
        A :class:`BatchSharpness`.

    Raises:
        ConventionError: a bad batch size or sampling scheme.
        MethodError: a bad ``rtol``, ``max_batches``, ``max_exact`` or ``seed``.

    Example:
        >>> import torch, sgdstab
        >>> model = sgdstab.mlp((3,), 2, widths=(4,), seed=0).double()
        >>> X = torch.randn(40, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> problem = sgdstab.Problem(model, X, torch.randint(0, 2, (40,)), loss="cross_entropy")
        >>> bs = sgdstab.batch_sharpness(problem, 4)  # 40⁴ batches: Monte Carlo to 1% standard error
        >>> bs.exact, bs.stderr <= 0.01 * bs.value, bs.batches >= 32
        (False, True, True)
    """
    start = time.perf_counter()
    scheme = check_sampling(sampling)
    b = check_batch_size(batch_size, problem.n)
    rtol, seed = check_rtol(rtol), check_seed(seed)
    max_batches = check_int(max_batches, "max_batches", minimum=1, error=MethodError)
    max_exact = check_int(max_exact, "max_exact", minimum=0, error=MethodError)
    if problem.square_loss and is_global_minimum(float(problem.loss()), problem.Y, problem.dtype):
        note = "θ is a global minimum to rounding: every batch gradient is rounding noise, batch sharpness is undefined"
        nan = math.nan
        return BatchSharpness(nan, nan, nan, nan, b, scheme, 0, 0, True, time.perf_counter() - start, (note,))
    exact = _count(problem.n, b, scheme) <= max_exact
    source = _all_batches(problem.n, b, scheme) if exact else _random_batches(problem.n, b, scheme, seed)
    sharp: list[float] = []
    inter: list[float] = []
    zero = 0
    for drawn, batch in enumerate(source, start=1):
        figures = _batch_figures(problem, batch, interaction)
        if figures is None:
            zero += 1
        else:
            sharp.append(figures[0])
            inter.append(figures[1])
        if not exact and (drawn >= max_batches or _precise(sharp, rtol)):
            break
    value, se = _mean_and_stderr(sharp, exact)
    grad2 = float((problem.gradient().double() ** 2).sum()) if interaction else math.nan
    # zero-gradient batches add 0 to E[g_Bᵀ H g_B]: average over every batch drawn
    drawn_total = len(sharp) + zero
    padded = inter + [0.0] * zero
    mean_i, se_i = _mean_and_stderr(padded, exact) if interaction and drawn_total else (math.nan, math.nan)
    notes = _notes(zero, drawn_total, exact, sharp, rtol, se, value, grad2, interaction)
    scale = grad2 if interaction and grad2 > 0 else math.nan
    return BatchSharpness(
        value=value,
        stderr=se,
        interaction=mean_i / scale,
        interaction_stderr=se_i / scale,
        batch_size=b,
        sampling=scheme,
        batches=len(sharp),
        zero_gradient_batches=zero,
        exact=exact,
        seconds=time.perf_counter() - start,
        notes=notes,
    )


def _precise(values: list[float], rtol: float) -> bool:
    """Whether the Monte-Carlo mean is within ``rtol`` (one standard error), looked at every 16 batches from
    :data:`_MIN_BATCHES` on (not the whole list again after every batch)."""
    if len(values) < _MIN_BATCHES or len(values) % 16:
        return False
    mean, se = _mean_and_stderr(values, exact=False)
    return se <= rtol * abs(mean)


def _notes(
    zero: int,
    drawn: int,
    exact: bool,
    sharp: list[float],
    rtol: float,
    se: float,
    value: float,
    grad2: float,
    interaction: bool,
) -> tuple[str, ...]:
    notes = []
    if zero:
        notes.append(f"{zero} of {drawn} batches have a zero gradient (no direction) and are left out of the mean")
    if not sharp:
        notes.append("every batch gradient is zero (a global minimum?): batch sharpness is undefined here")
    elif not exact and se > rtol * abs(value):
        notes.append(f"Monte Carlo stopped at its budget with a standard error of {se:.2g} (rtol {rtol:g} not met)")
    if interaction and grad2 == 0:
        notes.append("∇L = 0: the gradient–noise interaction is undefined (NaN)")
    return tuple(notes)
