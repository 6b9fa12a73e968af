"""λ_max of the Hessian, plain or diagonally preconditioned, by a warm-startable Lanczos; and the step sharpness.

- :func:`sharpness`: the largest algebraic eigenvalue of H = ∇²L(θ) (the true Hessian of the problem's L, in its
  own convention: :class:`~sgdstab.problem.problem.Problem`), or with a positive diagonal preconditioner P of
  ``P^{-1/2} H P^{-1/2}``, whose eigenvalues are those of P⁻¹H (similar matrices): the *preconditioned sharpness*
  an adaptive optimizer's step sees (THEORY.md §9.2). Lanczos in torch on the problem's device and dtype, one
  Hessian-vector product per step, every new basis vector orthogonalized twice against the whole basis (so no
  spurious copies of converged Ritz values). The top Ritz pair (θ, Qc) has residual ``||A Qc − θ Qc|| = β·|c_last|``
  (the Lanczos relation, no further product); it stops once that is within ``rtol·|θ|``. Its Ritz vector is
  returned, so that the next call, at a nearby θ, can start from it (a warm start: fewer products).
- :func:`step_sharpness`: ``dᵀHd / ||d||²``, the curvature of L along a direction d, e.g. an optimizer's update Δθ.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

import torch
from torch import Tensor

from sgdstab.errors import MethodError
from sgdstab.measure.plan import check_rtol, check_seed
from sgdstab.operators.products import hessian_operator, hessian_vector_product
from sgdstab.problem.problem import Problem
from sgdstab.utils.memory import check_allocation
from sgdstab.utils.results import ResultMixin, to_plain
from sgdstab.utils.validation import check_int

__all__ = ["Sharpness", "sharpness", "step_sharpness"]

# β below this many rounding units of ||T|| means the Krylov space is invariant: its Ritz values are exact
# eigenvalues, and a new basis vector would be rounding noise
_BREAKDOWN_ULPS = 10.0


@dataclass(frozen=True)
class Sharpness(ResultMixin):
    """λ_max of H (or of P^{-1/2} H P^{-1/2}) with its Lanczos diagnostics.

    ``value``: the top Ritz value; ``residual``: ``||A v − λ v|| / |λ|`` of the returned pair (A = H, or
    P^{-1/2} H P^{-1/2}), from the Lanczos relation; ``products``: Hessian-vector products used; ``converged``:
    the residual met ``rtol`` (or the Krylov space was exhausted: exact); ``preconditioned``: A is preconditioned;
    ``vector``: the unit Ritz vector, flat (p,), on the problem's device (A's eigenvector: in the preconditioned
    case that of P^{-1/2} H P^{-1/2}, in the coordinates where a warm start is given). The vector is left out of
    ``to_dict()``/``to_json()`` (p numbers; keep it in memory for the next warm start).

    Example:
        >>> import torch, sgdstab
        >>> from sgdstab.measure.top_eigen import sharpness
        >>> X = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> problem = sgdstab.Problem(sgdstab.mlp(3, 1, widths=(4,)).double(), X, X.sum(1))
        >>> s = sharpness(problem)
        >>> s.converged, s.vector.shape, "vector" in s.to_dict()
        (True, torch.Size([21]), False)
    """

    value: float
    residual: float
    products: int
    converged: bool
    preconditioned: bool
    seconds: float
    vector: Tensor | None = field(default=None, repr=False, compare=False)
    notes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Every field as plain Python values, except ``vector`` (p numbers, for warm starts only).

        Returns:
            A JSON-able dict.

        Raises:
            Nothing.

        Example:
            >>> from sgdstab.measure.top_eigen import Sharpness
            >>> sorted(Sharpness(2.0, 1e-4, 9, True, False, 0.01).to_dict())[:3]
            ['converged', 'notes', 'preconditioned']
        """
        return {f.name: to_plain(getattr(self, f.name)) for f in fields(self) if f.name != "vector"}


@dataclass(frozen=True)
class _Run:
    """One Lanczos run: the top Ritz pair, its absolute residual and how the run ended."""

    value: float
    vector: Tensor
    residual: float
    products: int
    converged: bool
    invariant: bool  # the Krylov space of the start closed before reaching dimension p


def _flat(problem: Problem, t: object, name: str) -> Tensor:
    """``t`` as a finite tensor of shape (p,) on the problem's device and dtype, else MethodError."""
    if not isinstance(t, Tensor) or t.is_complex() or t.dtype == torch.bool:
        raise MethodError(f"{name} must be a real torch tensor of shape ({problem.p},), got {type(t).__name__}")
    if t.shape != (problem.p,):
        raise MethodError(
            f"{name} must be a flat tensor of shape ({problem.p},) (one per parameter), got {tuple(t.shape)}"
        )
    t = t.detach().to(device=problem.device, dtype=problem.dtype)
    if not bool(torch.isfinite(t).all()):
        raise MethodError(f"{name} has {int((~torch.isfinite(t)).sum())} non-finite entries (NaN or inf)")
    return t


def _scale(problem: Problem, preconditioner: Tensor | None) -> Tensor | None:
    """P^{-1/2} for a strictly positive, finite diagonal P, else MethodError."""
    if preconditioner is None:
        return None
    P = _flat(problem, preconditioner, "preconditioner")
    if not bool((P > 0).all()):
        bad = int((P <= 0).sum())
        raise MethodError(f"preconditioner must be strictly positive (a diagonal P ≻ 0); {bad} entries are ≤ 0")
    s = P.rsqrt()
    if not bool(torch.isfinite(s).all()):  # P positive but below the dtype's range for 1/sqrt(P)
        raise MethodError(f"preconditioner has entries too small for P^(-1/2) in {problem.dtype}")
    return s


def _random_start(problem: Problem, seed: int) -> Tensor:
    # drawn on the CPU in float64: the same start on every device and dtype for one seed
    q = torch.randn(problem.p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (q / torch.linalg.vector_norm(q)).to(device=problem.device, dtype=problem.dtype)


def _top_ritz(alphas: list[float], betas: list[float]) -> tuple[float, Tensor]:
    """The largest eigenvalue of the Lanczos tridiagonal T and its unit eigenvector (float64, CPU)."""
    T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if betas:
        off = torch.tensor(betas, dtype=torch.float64)
        T += torch.diag(off, 1) + torch.diag(off, -1)
    values, vectors = torch.linalg.eigh(T)
    return float(values[-1]), vectors[:, -1]


def _lanczos(apply: Callable[[Tensor], Tensor], q: Tensor, rtol: float, max_products: int) -> _Run:
    """Lanczos from the unit vector ``q`` with full reorthogonalization (twice: "twice is enough", Parlett),
    until the top Ritz pair's residual β·|c_last| is within ``rtol·|θ|`` (looked at from the second step on: one
    step's Rayleigh quotient says nothing of the rest of the spectrum), the space is invariant, or the budget ends."""
    p = q.shape[0]
    steps = min(max_products, p)
    Q = q.new_zeros((steps, p))
    Q[0] = q
    alphas: list[float] = []
    betas: list[float] = []
    norm = 0.0
    eps = torch.finfo(q.dtype).eps
    for j in range(steps):
        w = apply(Q[j])
        alphas.append(float(Q[j] @ w))
        w = w - alphas[-1] * Q[j] - (betas[-1] * Q[j - 1] if j else 0.0)
        basis = Q[: j + 1]
        for _ in range(2):
            w = w - basis.T @ (basis @ w)
        beta = float(torch.linalg.vector_norm(w))
        norm = max(norm, abs(alphas[-1]) + beta + (betas[-1] if betas else 0.0))
        value, c = _top_ritz(alphas, betas)
        residual = beta * abs(float(c[-1]))
        invariant = beta <= _BREAKDOWN_ULPS * eps * norm or j + 1 == p
        converged = invariant or (j >= 1 and residual <= rtol * abs(value))
        if converged or j + 1 == steps:
            break
        Q[j + 1] = w / beta
        betas.append(beta)
    vector = basis.T @ c.to(device=q.device, dtype=q.dtype)
    vector = vector / torch.linalg.vector_norm(vector)
    return _Run(value, vector, residual, j + 1, converged, invariant and j + 1 < p)


def _relative(residual: float, value: float) -> float:
    if residual == 0.0:
        return 0.0
    return residual / abs(value) if value != 0.0 else math.inf


def sharpness(
    problem: Problem,
    *,
    preconditioner: Tensor | None = None,
    start: Tensor | None = None,
    rtol: float = 1e-3,
    max_products: int = 100,
    seed: int = 0,
) -> Sharpness:
    """λ_max(H), the largest algebraic eigenvalue of the Hessian H = ∇²L(θ) of the problem's L at ``problem.theta``
    (the true Hessian, in the problem's own loss convention); with ``preconditioner`` P (a positive diagonal)
    λ_max(P^{-1/2} H P^{-1/2}) = λ_max(P⁻¹H), the preconditioned sharpness. Lanczos (module docstring).

    Args:
        problem: the problem at θ.
        preconditioner: the diagonal of P as a flat tensor of shape (p,), strictly positive and finite (e.g.
            :func:`sgdstab.tracking.optimizers.preconditioner` of an Adam); None for H itself.
        start: a warm start of shape (p,), e.g. the ``.vector`` of the previous call (normalized here; a zero
            vector falls back to the seeded random start). If its Krylov space closes before dimension p (it spans
            an invariant subspace, which need not hold the top eigenvector), Lanczos restarts from the random start.
            A start that is *nearly* an eigenvector passes the residual test on that eigenvalue, top or not: after
            θ moved, add a random part to the last vector (as :class:`sgdstab.Tracker` does).
        rtol: stop once the top Ritz pair's residual ||Av − λv|| is within ``rtol·|λ|``.
        max_products: the most Hessian-vector products (Lanczos steps) to spend; the basis holds as many vectors.
        seed: seed of the random start (a Gaussian vector).

    Returns:
        A :class:`Sharpness` (``converged=False`` with a note when ``max_products`` came first).

    Raises:
        MethodError: ``start`` or ``preconditioner`` of the wrong shape, non-finite, or P not strictly positive;
            a bad ``rtol``, ``max_products`` or ``seed``.
        MemoryBudgetError: the Lanczos basis (min(max_products, p) vectors) does not fit in memory.

    Example:
        >>> import torch, sgdstab
        >>> from sgdstab.measure.top_eigen import sharpness
        >>> X = torch.randn(8, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> problem = sgdstab.Problem(sgdstab.mlp(3, 2, widths=(16,)).double(), X, torch.zeros(8, 2))
        >>> cold = sharpness(problem, rtol=1e-8)
        >>> H = torch.func.hessian(problem.loss_function())(problem.theta)
        >>> round(cold.value / float(torch.linalg.eigvalsh(H)[-1]), 8)
        1.0
        >>> warm = sharpness(problem, start=cold.vector, rtol=1e-8)  # at the same θ: a few products
        >>> warm.products < cold.products
        True
    """
    began = time.perf_counter()
    rtol, seed = check_rtol(rtol), check_seed(seed)
    max_products = check_int(max_products, "max_products", minimum=1, error=MethodError)
    scale = _scale(problem, preconditioner)
    notes: list[str] = []
    q = None if start is None else _flat(problem, start, "start")
    if q is not None and float(torch.linalg.vector_norm(q)) == 0.0:
        notes.append("the start vector is zero: started from the seeded random vector instead")
        q = None
    warm = q is not None
    q = _random_start(problem, seed) if q is None else q / torch.linalg.vector_norm(q)
    itemsize = torch.empty((), dtype=problem.dtype).element_size()
    check_allocation(min(max_products, problem.p) * problem.p * itemsize, "the Lanczos basis", "lower max_products")
    H = hessian_operator(problem)
    apply = H.matvec_torch if scale is None else (lambda v: scale * H.matvec_torch(scale * v))
    run = _lanczos(apply, q, rtol, max_products)
    products = run.products
    if warm and run.invariant:
        notes.append(
            f"the start spans an invariant subspace of dimension {run.products} (which need not hold the top "
            "eigenvector): restarted from the seeded random vector"
        )
        run = _lanczos(apply, _random_start(problem, seed), rtol, max_products)
        products += run.products
    residual = _relative(run.residual, run.value)
    if not run.converged:
        notes.append(
            f"Lanczos stopped at max_products={max_products} with a relative residual of {residual:.2g} "
            f"(rtol {rtol:g} not met)"
        )
    return Sharpness(
        value=run.value,
        residual=residual,
        products=products,
        converged=run.converged,
        preconditioned=scale is not None,
        seconds=time.perf_counter() - began,
        vector=run.vector,
        notes=tuple(notes),
    )


def step_sharpness(problem: Problem, direction: Tensor) -> float:
    """``dᵀHd / ||d||²``: the curvature of L (H = ∇²L(θ) at ``problem.theta``, the problem's own convention) along
    the direction d — for d = Δθ, the update an optimizer took, the step sharpness of THEORY.md §9.2 (for GD,
    Δθ ∝ ∇L and it is ∇LᵀH∇L/||∇L||²). Invariant to the scale and sign of d; one Hessian-vector product.

    Args:
        problem: the problem at θ.
        direction: a flat tensor of shape (p,), finite and not zero.

    Returns:
        The Rayleigh quotient as a float (between λ_min(H) and λ_max(H)).

    Raises:
        MethodError: ``direction`` is not a tensor of shape (p,), has non-finite entries, or is zero.

    Example:
        >>> import torch, sgdstab
        >>> from sgdstab.measure.top_eigen import step_sharpness
        >>> X = torch.randn(6, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> problem = sgdstab.Problem(sgdstab.mlp(3, 1, widths=(4,)).double(), X, X.sum(1))
        >>> g = problem.gradient()
        >>> H = torch.func.hessian(problem.loss_function())(problem.theta)
        >>> round(step_sharpness(problem, -0.1 * g) / float(g @ H @ g / (g @ g)), 10)
        1.0
    """
    d = _flat(problem, direction, "direction")
    norm = torch.linalg.vector_norm(d)
    if float(norm) == 0.0:
        raise MethodError("direction is zero: a zero update has no direction (skip steps that did not move θ)")
    u = d / norm  # unit first: dᵀHd itself can overflow or underflow for a tiny or huge step
    return float((u.double() * hessian_vector_product(problem, u).double()).sum())
