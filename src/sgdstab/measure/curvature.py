"""Curvature of the loss at θ: ||H||_F, Tr H, λ_max(H) and the Gauss–Newton and non-uniformity figures.

Three routes (THEORY.md §2, §8), chosen by :func:`plan_method` or forced with ``method=``:

- ``"dense"``: the full p×p Hessian by ``torch.func.hessian`` and its eigen-decomposition; every figure exact,
  on or off a minimum. For small p only.
- ``"kernel"``: the NTK Gram matrix ``K = JJᵀ`` (:func:`sgdstab.ntk`); the Gauss–Newton figures and the
  non-uniformity exact, with no eigendecomposition of K (Lanczos on K for its top eigenvalues, and on S·K in the
  K-inner product for the non-uniformity: :mod:`sgdstab.measure.lanczos`). The true Hessian is ``H = G + R``,
  ``R = (1/n) Σ_i Σ_c r_ic ∇²f_ic``, and the route decides the regime itself (``at_minimum=None``): near a minimum R
  is small, so a few products of R alone (:func:`sgdstab.operators.products.residual_curvature_matmat`, over the
  samples whose residuals are not exactly zero: the others add nothing to R) bound ``||R||_F`` at 99%; when that
  bound is within ``rtol`` of λ_max(G), H's figures are G's with that bound as their error (Weyl:
  |λ_i(H) − λ_i(G)| ≤ ||R||_F; |‖H‖_F − ‖G‖_F| ≤ ‖R‖_F) and Tr H = Tr G + Tr R (Tr R estimated from the same
  products). Otherwise (R too large,
  or ``at_minimum=False``) the Hessian figures come from Hessian-vector products (Lanczos, Hutch++ with G as a
  control variate) with standard errors. ``at_minimum=True`` asserts H = G without probing R; a loss above the
  rounding level of a global minimum is then noted and the result is not called exact.
- ``"matrix_free"``: everything from Hessian-, Gauss–Newton-vector products: Lanczos (``eigsh``) for the top
  eigenvalues, Hutch++ deflated by the Lanczos vectors for Tr and ||·||_F², stopped at the requested relative
  standard error ``rtol``.

For a loss of docs/THEORY.md §9 (``Problem(..., loss="cross_entropy" | "bce_with_logits")``) the ``gauss_newton_*``
figures are the generalized Gauss–Newton's, G = (1/n) Σ J_iᵀA_iJ_i, exact through the GGN kernel K_A
(:func:`sgdstab.ggn_kernel`), R's weights are e_i = ∇_f ℓ_i, and H's figures come from its products (or dense);
``at_minimum=True`` is refused (these losses have no finite minimum).

Models that are not twice differentiable everywhere (ReLU) are measured as torch differentiates them: the
second derivative of a kink is taken as zero, so the Hessian is the Gauss–Newton part plus the smooth terms.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from sgdstab.errors import MethodError
from sgdstab.kernel.kernel import Kernel
from sgdstab.measure.plan import (
    METHODS,
    MIN_RTOL,
    MethodPlan,
    check_args,
    check_rtol,
    check_seed,
    choose_route,
    expects_near_minimum,
    plan_method,
)
from sgdstab.measure.precision import CURVATURE_CHECKED, precision_check
from sgdstab.measure.routes import ROUTES, RouteFigures, RouteRequest, given_kernel
from sgdstab.problem.problem import Problem
from sgdstab.utils.results import ResultMixin

# the cost model, the argument checks and the kernel check live in measure.plan / measure.routes; importable here
__all__ = [
    "CURVATURE_CHECKED",
    "METHODS",
    "MIN_RTOL",
    "Curvature",
    "MethodError",
    "MethodPlan",
    "check_rtol",
    "check_seed",
    "curvature",
    "given_kernel",
    "plan_method",
    "precision_check",
]


@dataclass(frozen=True)
class Curvature(ResultMixin):
    """Curvature figures of L at θ. Hessian figures are the true Hessian's; ``*_stderr`` fields are standard
    errors of stochastic estimates (0 for exact ones); ``sharpness_error_bound`` is the Lanczos residual norm
    (an eigenvalue of H lies within it; 0 when exact). ``float64_check_difference``: for a float32 problem, the
    largest relative change of exact figures when recomputed in float64 on a subsample
    (:mod:`sgdstab.measure.precision`); ``None`` for float64 problems, or unchecked (then a note says so).

    Near a minimum (``hessian_route`` says so) H's figures are G's exact figures and their uncertainty is the
    residual part R = H − G: ``residual_frobenius`` estimates ||R||_F from a few products of R and
    ``residual_frobenius_bound`` bounds it at 99%; ``hessian_frobenius_stderr``, ``sharpness_error_bound`` and
    ``min_eigenvalue_error_bound`` then hold that bound (|‖H‖_F − ‖G‖_F| ≤ ‖R‖_F; Weyl: |λ_i(H) − λ_i(G)| ≤ ‖R‖_F).
    ``min_eigenvalue_error_bound`` elsewhere is the Lanczos residual of the bottom eigenvalue (0 when exact).
    ``residual_frobenius`` and its bound are None where R was not probed on its own.

    Example:
        >>> import torch, sgdstab
        >>> model = sgdstab.mlp((3,), 1, widths=(8,), seed=0).double()
        >>> X = torch.randn(20, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> c = sgdstab.curvature(sgdstab.Problem(model, X, torch.zeros(20, 1, dtype=torch.float64)), method="dense")
        >>> round(c.trace, 6), round(c.gauss_newton_trace, 6), c.trace_stderr, c.exact  # off a minimum: H ≠ G
        (3.445752, 4.076478, 0.0, True)
    """

    loss: float
    grad_norm: float
    hessian_frobenius: float
    hessian_frobenius_stderr: float
    trace: float
    trace_stderr: float
    sharpness: float
    sharpness_error_bound: float
    min_eigenvalue: float
    top_eigenvalues: tuple[float, ...]
    gauss_newton_frobenius: float
    gauss_newton_frobenius_stderr: float
    gauss_newton_trace: float
    gauss_newton_trace_stderr: float
    gauss_newton_sharpness: float
    nonuniformity: float
    method: str
    hessian_route: str
    exact: bool
    converged: bool
    at_minimum: bool
    hessian_vector_products: int
    seconds: float
    n: int
    k: int
    p: int
    notes: tuple[str, ...] = field(default=())
    float64_check_difference: float | None = None
    min_eigenvalue_error_bound: float = 0.0
    residual_frobenius: float | None = None
    residual_frobenius_bound: float | None = None


def curvature(
    problem: Problem,
    method: str = "auto",
    rtol: float = 1e-3,
    seed: int = 0,
    top: int = 5,
    at_minimum: bool | None = None,
    max_matvecs: int = 10_000,
    kernel: Kernel | Tensor | None = None,
) -> Curvature:
    """Curvature figures of ``problem`` at its current parameters.

    Args:
        problem: the problem at θ (its model, data and dtype).
        method: ``"auto"`` (cost model, :func:`plan_method`), ``"dense"``, ``"kernel"`` or ``"matrix_free"``.
        rtol: target relative standard error of the stochastic figures (matrix-free Tr and ||·||_F); near a
            minimum, the largest ||H − G||_F / λ_max(G) at which H's figures are taken from G's.
        seed: seed of the random probes and Lanczos start vectors.
        top: number of top Hessian eigenvalues to report.
        at_minimum: ``None`` (default): decide — near a minimum the kernel route bounds R = H − G from a few of its
            products and, when the bound is within ``rtol``, reports G's exact figures with it as their error (see
            the module docstring); ``True``: assert that θ is a global minimum (H = G, R not probed; the loss is
            reported and, above the rounding level of a minimum, noted); ``False``: estimate the Hessian's figures
            from its products whatever the loss.
        max_matvecs: budget of Hessian-vector products for Hutch++; ``converged`` is False if it ran out.
        kernel: the NTK at this θ when already built (a tensor or a :class:`sgdstab.Kernel`, whose
            eigendecomposition is then reused); used by the kernel route instead of building K again.

    Returns:
        A :class:`Curvature`.

    Raises:
        MethodError: an unknown method, a bad ``rtol``/``seed``/``top``/``max_matvecs``, or a ``kernel`` that is
            not this problem's NTK at θ.

    Example:
        >>> import torch, sgdstab
        >>> model = sgdstab.mlp((3,), 1, widths=(8,), seed=0).double()
        >>> X = torch.randn(20, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> problem = sgdstab.Problem(model, X, model(X).detach())  # targets = outputs: a float64 global minimum
        >>> c = sgdstab.curvature(problem)
        >>> c.method, c.exact, c.converged, c.at_minimum, c.hessian_frobenius == c.gauss_newton_frobenius
        ('kernel', True, True, True, True)
        >>> c.hessian_route.split(":")[0], c.residual_frobenius_bound  # R = H − G bounded from its products
        ('H = G + R near a minimum', 0.0)
    """
    check_args(method, rtol, top, seed, max_matvecs)
    if at_minimum is not None and not isinstance(at_minimum, bool):
        raise MethodError(f"at_minimum must be True, False or None (decide), got {at_minimum!r}")
    start = time.perf_counter()
    if problem.square_loss:
        r = u = problem.residuals()
        loss = float((r.to(torch.float64) ** 2).sum()) / (2 * problem.n)
    else:  # THEORY.md §9: R's weights are e_i = ∇_f ℓ_i, the kernel identities use u_i with K_A
        if at_minimum:
            raise MethodError(
                f"at_minimum=True asserts H = G at a global minimum, which {problem.loss_convention} does not have "
                "(its loss is never 0); use at_minimum=None"
            )
        f, out = problem.outputs(), problem.output_loss  # one forward pass for e, u and L
        r, u = out.output_gradient(f, problem.Y), out.kernel_residuals(f, problem.Y)
        loss = float(out.per_sample(f, problem.Y).sum()) / problem.n
    if method == "auto":
        method = choose_route(problem, rtol, expects_near_minimum(problem, at_minimum, loss)).method
    request = RouteRequest(problem, loss, r, top, rtol, seed, at_minimum, max_matvecs, kernel, u)
    figures = ROUTES[method](request)
    check, precision_notes = precision_check(problem, kernel=figures.kernel, residuals=u)
    return _assemble(request, method, figures, check, tuple(precision_notes), time.perf_counter() - start)


def _assemble(
    request: RouteRequest,
    method: str,
    figures: RouteFigures,
    check: float | None,
    precision_notes: tuple[str, ...],
    seconds: float,
) -> Curvature:
    """The public :class:`Curvature` from a route's typed figures."""
    h, g, problem = figures.hessian, figures.gauss_newton, request.problem
    residual = h.residual  # set where the route decided θ is near a minimum (H's figures taken from G's)
    return Curvature(
        loss=request.loss,
        grad_norm=figures.grad_norm,
        hessian_frobenius=h.frobenius,
        hessian_frobenius_stderr=h.frobenius_stderr,
        trace=h.trace,
        trace_stderr=h.trace_stderr,
        sharpness=h.sharpness,
        sharpness_error_bound=h.sharpness_error_bound,
        min_eigenvalue=h.min_eigenvalue,
        top_eigenvalues=h.top_eigenvalues,
        gauss_newton_frobenius=g.frobenius,
        gauss_newton_frobenius_stderr=g.frobenius_stderr,
        gauss_newton_trace=g.trace,
        gauss_newton_trace_stderr=g.trace_stderr,
        gauss_newton_sharpness=g.sharpness,
        nonuniformity=g.nonuniformity,
        method=method,
        hessian_route=h.route,
        exact=bool(h.exact and g.exact),
        converged=bool(h.converged and g.converged),
        at_minimum=(residual is not None) if request.at_minimum is None else request.at_minimum,
        hessian_vector_products=h.products,
        seconds=seconds,
        n=problem.n,
        k=problem.k,
        p=problem.p,
        notes=(*h.notes, *g.notes, *precision_notes),
        float64_check_difference=check,
        min_eigenvalue_error_bound=h.min_eigenvalue_error_bound,
        residual_frobenius=None if residual is None else residual.frobenius,
        residual_frobenius_bound=None if residual is None else residual.bound,
    )
