"""The cost model that picks a curvature route (THEORY.md §8), and the argument checks the measurements share.

:func:`plan_method` ranks the routes of :func:`sgdstab.curvature` (``"dense"``, ``"kernel"``, ``"matrix_free"``)
by estimated seconds and memory and returns the most exact one within 25% of the cheapest as a :class:`MethodPlan`.
The rates below were measured on the 2-core reference machine and only rank the routes; they predict no timing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from sgdstab.conventions import zero_predictor_loss
from sgdstab.errors import MethodError, SgdstabError
from sgdstab.kernel.layerwise import layerwise_ntk_gemm_width
from sgdstab.kernel.modules import module_ntk_gemm_width
from sgdstab.measure.traces import layerwise_route
from sgdstab.problem.problem import Problem
from sgdstab.utils.memory import available_memory_bytes
from sgdstab.utils.results import ResultMixin
from sgdstab.utils.validation import check_float, check_int

METHODS = ("auto", "dense", "kernel", "matrix_free")

SECONDS_PER_HVP = 5e-4  # fixed cost of one Hessian-vector product (dispatch, small GEMMs)
SECONDS_PER_HVP_UNIT = 1e-10  # plus ≈ 1e-10 s · n · p
SECONDS_PER_JAC_UNIT = 2.4e-9  # the Jacobian by vmap ≈ 2.4e-9 s · n · k · p
GEMM_FLOPS = 5.0e10  # float64-ish sustained GEMM rate
EIGH_UNIT = 1.0e-10  # eigh ≈ 1e-10 s · m³
DENSE_MAX_P = 4000
NEAR_MINIMUM_LOSS = 1e-4  # L / L(f ≡ 0) below which the cost model expects the near-minimum split H = G + R
RESIDUAL_PROBES = 4  # Gaussian probes of R = H − G near a minimum, at most

# below this no estimate is more accurate than float64's rounding of the figures, and 1/rtol² (the probe count)
# underflowed: --rtol 1e-300 divided by zero
MIN_RTOL = 1e-12


@dataclass(frozen=True)
class MethodPlan(ResultMixin):
    """The route ``auto`` chose, with the estimated seconds of each feasible route.

    Example:
        >>> from sgdstab.measure.plan import MethodPlan
        >>> MethodPlan("dense", {"dense": 0.1, "matrix_free": 2.0}, "cheapest").method
        'dense'
    """

    method: str
    estimated_seconds: dict[str, float]
    reason: str


def check_rtol(rtol: float) -> float:
    """``rtol`` as a float in [:data:`MIN_RTOL`, 1), else :class:`MethodError` (one line, naming the range)."""
    try:
        value = check_float(rtol, "rtol", minimum=0, maximum=1, include_minimum=False, include_maximum=False)
    except SgdstabError:
        raise MethodError(f"rtol must be a number in (0, 1), got {rtol!r}") from None
    if value < MIN_RTOL:
        raise MethodError(f"rtol must be at least {MIN_RTOL:g} (float64 rounding), got {rtol!r}")
    return value


def check_seed(seed: int) -> int:
    """``seed`` as an int in [0, 2**63), else :class:`MethodError`."""
    # torch and numpy take 64-bit seeds; the offsets added to it (seed + 7 at most) stay below 2**64
    try:
        return check_int(seed, "seed", minimum=0, maximum=2**63 - 1)
    except SgdstabError:
        raise MethodError(f"seed must be an integer in [0, 2**63), got {seed!r}") from None


def check_method(method: str, methods: tuple[str, ...] = METHODS, what: str = "method") -> str:
    """``method`` when it is one of ``methods``, else :class:`MethodError` listing them."""
    if not isinstance(method, str) or method not in methods:
        raise MethodError(f"unknown {what} {method!r}; use one of {', '.join(methods)}")
    return method


def check_args(method: str, rtol: float, top: int, seed: int = 0, max_matvecs: int = 1) -> None:
    """The arguments :func:`sgdstab.curvature` shares with its routes, checked in one place."""
    check_method(method)
    check_rtol(rtol)
    check_seed(seed)
    check_int(max_matvecs, "max_matvecs", minimum=1, error=MethodError)
    check_int(top, "top", minimum=1, error=MethodError)


def estimated_probes(rtol: float, exact_trace: bool = False) -> int:
    """Products a stochastic estimate at relative standard error ``rtol`` is expected to need (Lanczos included)."""
    # Hutchinson needs ≈ 2||H||_F²/(ε Tr H)² probes for relative error ε on Tr H: 0.03/ε² on THEORY.md §8's
    # reference MLP near a minimum, ≈ 0.2/ε² measured on trained Fashion-MNIST MLPs off a minimum (indefinite H).
    # With Tr H exact (layer by layer) only ||H||_F is probed: 0.006–0.02/ε² measured there (benchmarks/).
    # The larger count ranks the routes; Lanczos adds about 100 products.
    factor = 0.03 if exact_trace else 0.2
    return int(min(10_000, math.ceil(factor / rtol**2)) + 100)


def expects_near_minimum(problem: Problem, at_minimum: bool | None, loss: float | None = None) -> bool:
    """Whether the Hessian figures can be expected to come from G plus a small residual part (for the cost model;
    the route itself checks it): asserted, or a loss below 1e-4 of the zero predictor's (residuals ≲ 1%)."""
    if at_minimum is not None:
        return bool(at_minimum)
    loss = float(problem.loss()) if loss is None else loss
    return loss <= NEAR_MINIMUM_LOSS * max(zero_predictor_loss(problem.Y), 1e-300)


def plan_method(problem: Problem, rtol: float = 1e-3, at_minimum: bool | None = None) -> MethodPlan:
    """Rank the routes of :func:`sgdstab.curvature` by a cost model in seconds and memory (THEORY.md §8) and pick
    the most exact one within 25% of the cheapest feasible.

    Args:
        problem: the problem to be measured (its sizes n, k, p; its loss when ``at_minimum`` is None).
        rtol: the target relative standard error the stochastic routes would be run at.
        at_minimum: as in :func:`sgdstab.curvature`; ``None`` guesses the regime from the loss (a forward pass).

    Returns:
        A :class:`MethodPlan`: the chosen method, the estimated seconds of every route that fits in memory (the
        dense route only for p ≤ 4000), and the reason.

    Raises:
        MethodError: ``rtol`` not in [1e-12, 1).

    Example:
        >>> import torch, sgdstab
        >>> model = sgdstab.mlp((3,), 1, widths=(8,), seed=0)
        >>> X = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))
        >>> plan = sgdstab.plan_method(sgdstab.Problem(model, X, torch.zeros(20, 1)))
        >>> plan.method, sorted(plan.estimated_seconds)  # p = 41: the dense Hessian is cheapest
        ('dense', ['dense', 'kernel', 'matrix_free'])
    """
    return choose_route(problem, check_rtol(rtol), expects_near_minimum(problem, at_minimum))


def choose_route(problem: Problem, rtol: float, near: bool) -> MethodPlan:
    """:func:`plan_method` with ``rtol`` checked and the regime decided (``near``: H ≈ G expected)."""
    n, k, p = problem.n, problem.k, problem.p
    nk = n * k
    budget = available_memory_bytes() * 0.5
    hvp = SECONDS_PER_HVP + SECONDS_PER_HVP_UNIT * n * p
    probes = estimated_probes(rtol, layerwise_route(problem) == "structured")
    # matrix-free estimates both H and G by probes; a Gauss–Newton product costs about 0.6 of an HVP
    costs: dict[str, float] = {"matrix_free": 1.6 * probes * hvp}
    if p <= DENSE_MAX_P and p * p * 8 * 3 < budget:
        costs["dense"] = p * hvp + EIGH_UNIT * p**3 + SECONDS_PER_JAC_UNIT * nk * p
    kernel = _kernel_route_seconds(problem, budget, hvp, probes, near)
    if kernel is not None:
        costs["kernel"] = kernel
    # Routes within 25% of the cheapest count as tied; then the more exact one wins (dense, kernel, matrix-free).
    cheapest = min(costs.values())
    method = next(m for m in ("dense", "kernel", "matrix_free") if costs.get(m, math.inf) <= 1.25 * cheapest)
    reason = f"most exact route within 25% of the cheapest estimate for n={n}, k={k}, p={p}, rtol={rtol:g}"
    return MethodPlan(method, costs, reason)


def _kernel_route_seconds(problem: Problem, budget: float, hvp: float, probes: int, near: bool) -> float | None:
    """Estimated seconds of the kernel route, ``None`` when K and what builds it do not fit in ``budget`` bytes."""
    n, k, p = problem.n, problem.k, problem.p
    nk = n * k
    # a chain of Linear layers builds K layer by layer (GEMMs of inner size Σ w_l instead of p, no J held), any
    # other model module by module (the Linear layers so, the other modules from their own rows)
    inner = layerwise_ntk_gemm_width(problem)
    if inner is None:
        try:
            inner = module_ntk_gemm_width(problem)
        except Exception:  # a model the hooks cannot plan on: the Jacobian route's cost
            inner = None
    held = nk * (p if inner is None else inner) * problem.itemsize
    if not nk * nk * 8 * 3 + held < budget:
        return None
    gemm = nk * nk * (p if inner is None else inner) / GEMM_FLOPS
    # Lanczos on K (top eigenvalues) and on S·K (non-uniformity): ~150 products of O((nk)²) each (a rank, not a count)
    kernel = SECONDS_PER_JAC_UNIT * nk * p + gemm + 150 * 2 * nk * nk / GEMM_FLOPS
    if near:
        kernel += RESIDUAL_PROBES * hvp  # the residual part R = H − G, bounded from a few products
    else:
        kernel += 1.6 * probes * hvp  # the true Hessian's figures still need HVPs (with G as control variate)
    return kernel
