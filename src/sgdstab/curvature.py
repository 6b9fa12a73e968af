"""Curvature of the loss at θ: ||H||_F, Tr H, λ_max(H) and the Gauss–Newton and non-uniformity figures.

Three routes (THEORY.md §2, §8), chosen by :func:`plan_method` or forced with ``method=``:

- ``"dense"``: the full p×p Hessian by ``torch.func.hessian`` and its eigen-decomposition; every figure exact,
  on or off a minimum. For small p only.
- ``"kernel"``: the NTK Gram matrix ``K = JJᵀ`` (:func:`sgdstab.ntk`); the Gauss–Newton figures and the
  non-uniformity exact, with no eigendecomposition of K (Lanczos on K for its top eigenvalues, Arnoldi for the
  non-uniformity). The true Hessian is ``H = G + R``, ``R = (1/n) Σ_i Σ_c r_ic ∇²f_ic``, and the route decides the
  regime itself (``at_minimum=None``): near a minimum R is small, so a few products of R alone
  (:func:`sgdstab.operators.residual_curvature_matmat`) bound ``||R||_F`` at 99%; when that bound is within
  ``rtol`` of λ_max(G), H's figures are G's with that bound as their error (Weyl: |λ_i(H) − λ_i(G)| ≤ ||R||_F;
  |‖H‖_F − ‖G‖_F| ≤ ‖R‖_F) and Tr H = Tr G + Tr R (Tr R estimated from the same products). Otherwise (R too large,
  or ``at_minimum=False``) the Hessian figures come from Hessian-vector products (Lanczos, Hutch++ with G as a
  control variate) with standard errors. ``at_minimum=True`` asserts H = G without probing R; a loss above the
  rounding level of a global minimum is then noted and the result is not called exact.
- ``"matrix_free"``: everything from Hessian-, Gauss–Newton-vector products: Lanczos (``eigsh``) for the top
  eigenvalues, Hutch++ deflated by the Lanczos vectors for Tr and ||·||_F², stopped at the requested relative
  standard error ``rtol``.

Models that are not twice differentiable everywhere (ReLU) are measured as torch differentiates them: the
second derivative of a kink is taken as zero, so the Hessian is the Gauss–Newton part plus the smooth terms.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from sgdstab import kernel_figures as kf
from sgdstab.conventions import global_minimum_threshold, is_global_minimum, zero_predictor_loss
from sgdstab.errors import SgdstabError
from sgdstab.estimators import hutchpp, top_eigenpairs
from sgdstab.layerwise import layerwise_route, layerwise_trace_cost, layerwise_traces
from sgdstab.layerwise_ntk import layerwise_ntk_gemm_width
from sgdstab.memory import available_memory_bytes, check_allocation
from sgdstab.ntk import ntk
from sgdstab.operators import gauss_newton_operator, hessian_operator, residual_curvature_matmat
from sgdstab.precision import float64_check
from sgdstab.problem import Problem
from sgdstab.results import ResultMixin

METHODS = ("auto", "dense", "kernel", "matrix_free")

# Rates measured on the 2-core reference machine (THEORY.md §8 and the benchmarks), used only to rank the routes.
_SECONDS_PER_HVP = 5e-4  # fixed cost of one Hessian-vector product (dispatch, small GEMMs)
_SECONDS_PER_HVP_UNIT = 1e-10  # plus ≈ 1e-10 s · n · p
_SECONDS_PER_JAC_UNIT = 2.4e-9  # the Jacobian by vmap ≈ 2.4e-9 s · n · k · p
_GEMM_FLOPS = 5.0e10  # float64-ish sustained GEMM rate
_EIGH_UNIT = 1.0e-10  # eigh ≈ 1e-10 s · m³
_DENSE_MAX_P = 4000
_NEAR_MINIMUM_LOSS = 1e-4  # L / L(f ≡ 0) below which the cost model expects the near-minimum split H = G + R
_RESIDUAL_PROBES = 4  # Gaussian probes of R = H − G near a minimum, at most
# ||Rv||² for v ~ N(0, I) is a λ²-weighted sum of χ²₁ variables with mean ||R||_F²; with weights summing to one its
# lower tail is heaviest when R has rank one (Székely & Bakirov 2003), so the mean of m probes over the 1% quantile
# of χ²_m/m bounds ||R||_F² at 99% whatever R's spectrum. One probe first (at an exact minimum it settles the
# matter), four when one is not enough: χ²₁'s and χ²₄'s 1% quantiles are 1.571e-4 and 0.2971.
_RESIDUAL_QUANTILES = {1: 1.571e-4, _RESIDUAL_PROBES: 0.2971 / _RESIDUAL_PROBES}


class MethodError(SgdstabError, ValueError):
    """An unknown or unusable measurement method."""


@dataclass(frozen=True)
class MethodPlan(ResultMixin):
    """The route ``auto`` chose, with the estimated seconds of each feasible route."""

    method: str
    estimated_seconds: dict[str, float]
    reason: str


def _estimated_probes(rtol: float, exact_trace: bool = False) -> int:
    # Hutchinson needs ≈ 2||H||_F²/(ε Tr H)² probes for relative error ε on Tr H: 0.03/ε² on THEORY.md §8's
    # reference MLP near a minimum, ≈ 0.2/ε² measured on trained Fashion-MNIST MLPs off a minimum (indefinite H).
    # With Tr H exact (layer by layer) only ||H||_F is probed: 0.006–0.02/ε² measured there (benchmarks/).
    # The larger count ranks the routes; Lanczos adds about 100 products.
    factor = 0.03 if exact_trace else 0.2
    return int(min(10_000, math.ceil(factor / rtol**2)) + 100)


def _has_exact_trace(problem: Problem) -> bool:
    return layerwise_route(problem) == "structured"


def _near_minimum(problem: Problem, at_minimum: bool | None, loss: float | None = None) -> bool:
    """Whether the Hessian figures can be expected to come from G plus a small residual part (for the cost model;
    the route itself checks it): asserted, or a loss below 1e-4 of the zero predictor's (residuals ≲ 1%)."""
    if at_minimum is not None:
        return bool(at_minimum)
    loss = float(problem.loss()) if loss is None else loss
    return loss <= _NEAR_MINIMUM_LOSS * max(zero_predictor_loss(problem.Y), 1e-300)


def plan_method(problem: Problem, rtol: float = 1e-3, at_minimum: bool | None = None) -> MethodPlan:
    """Rank the routes by a cost model in seconds and memory (THEORY.md §8) and pick the cheapest feasible.

    ``at_minimum``: as in :func:`curvature`; ``None`` guesses the regime from the loss (a forward pass)."""
    return _plan(problem, check_rtol(rtol), _near_minimum(problem, at_minimum))


def _plan(problem: Problem, rtol: float, near: bool) -> MethodPlan:
    n, k, p = problem.n, problem.k, problem.p
    nk = n * k
    budget = available_memory_bytes() * 0.5
    hvp = _SECONDS_PER_HVP + _SECONDS_PER_HVP_UNIT * n * p
    probes = _estimated_probes(rtol, _has_exact_trace(problem))
    # matrix-free estimates both H and G by probes; a Gauss–Newton product costs about 0.6 of an HVP
    costs: dict[str, float] = {"matrix_free": 1.6 * probes * hvp}
    if p <= _DENSE_MAX_P and p * p * 8 * 3 < budget:
        costs["dense"] = p * hvp + _EIGH_UNIT * p**3 + _SECONDS_PER_JAC_UNIT * nk * p
    # a chain of Linear layers builds K layer by layer: GEMMs of inner size Σ w_l instead of p, and no J held
    inner = layerwise_ntk_gemm_width(problem)
    held = nk * (p if inner is None else inner) * problem.itemsize
    if nk * nk * 8 * 3 + held < budget:
        gemm = nk * nk * (p if inner is None else inner) / _GEMM_FLOPS
        # Lanczos on K (top eigenvalues) and Arnoldi on S·K (non-uniformity): ~150 products of O((nk)²) each
        kernel = _SECONDS_PER_JAC_UNIT * nk * p + gemm + 150 * 2 * nk * nk / _GEMM_FLOPS
        if near:
            kernel += _RESIDUAL_PROBES * hvp  # the residual part R = H − G, bounded from a few products
        else:
            kernel += 1.6 * probes * hvp  # the true Hessian's figures still need HVPs (with G as control variate)
        costs["kernel"] = kernel
    # Routes within 25% of the cheapest count as tied; then the more exact one wins (dense, kernel, matrix-free).
    cheapest = min(costs.values())
    method = next(m for m in ("dense", "kernel", "matrix_free") if costs.get(m, math.inf) <= 1.25 * cheapest)
    reason = f"most exact route within 25% of the cheapest estimate for n={n}, k={k}, p={p}, rtol={rtol:g}"
    return MethodPlan(method, costs, reason)


@dataclass(frozen=True)
class Curvature(ResultMixin):
    """Curvature figures of L at θ. Hessian figures are the true Hessian's; ``*_stderr`` fields are standard
    errors of stochastic estimates (0 for exact ones); ``sharpness_error_bound`` is the Lanczos residual norm
    (an eigenvalue of H lies within it; 0 when exact). ``float64_check_difference``: for a float32 problem, the
    largest relative change of exact figures when recomputed in float64 on a subsample
    (:mod:`sgdstab.precision`); ``None`` for float64 problems, or unchecked (then a note says so).

    Near a minimum (``hessian_route`` says so) H's figures are G's exact figures and their uncertainty is the
    residual part R = H − G: ``residual_frobenius`` estimates ||R||_F from a few products of R and
    ``residual_frobenius_bound`` bounds it at 99%; ``hessian_frobenius_stderr``, ``sharpness_error_bound`` and
    ``min_eigenvalue_error_bound`` then hold that bound (|‖H‖_F − ‖G‖_F| ≤ ‖R‖_F; Weyl: |λ_i(H) − λ_i(G)| ≤ ‖R‖_F).
    ``min_eigenvalue_error_bound`` elsewhere is the Lanczos residual of the bottom eigenvalue (0 when exact).
    ``residual_frobenius`` and its bound are None where R was not probed on its own."""

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


# below this no estimate is more accurate than float64's rounding of the figures, and 1/rtol² (the probe count)
# underflowed: --rtol 1e-300 divided by zero
MIN_RTOL = 1e-12


def check_rtol(rtol: float) -> float:
    if isinstance(rtol, bool) or not (isinstance(rtol, int | float) and math.isfinite(rtol) and 0 < rtol < 1):
        raise MethodError(f"rtol must be a number in (0, 1), got {rtol!r}")
    if rtol < MIN_RTOL:
        raise MethodError(f"rtol must be at least {MIN_RTOL:g} (float64 rounding), got {rtol!r}")
    return float(rtol)


def check_seed(seed: int) -> int:
    # torch and numpy take 64-bit seeds; the offsets added here (seed + 7 at most) stay below 2**64
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
        raise MethodError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    return seed


def _check_args(method: str, rtol: float, top: int, seed: int = 0, max_matvecs: int = 1) -> None:
    if method not in METHODS:
        raise MethodError(f"unknown method {method!r}; use one of {', '.join(METHODS)}")
    check_rtol(rtol)
    check_seed(seed)
    if isinstance(max_matvecs, bool) or not isinstance(max_matvecs, int) or max_matvecs < 1:
        raise MethodError(f"max_matvecs must be a positive integer, got {max_matvecs!r}")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise MethodError(f"top must be a positive integer, got {top!r}")


def given_kernel(problem: Problem, kernel: object | None, eigen: bool = True) -> tuple[Tensor, kf.KernelEigen | None]:
    """K and, with ``eigen``, its eigendecomposition: ``kernel`` when given (a tensor, or an object with ``.K`` and
    ``.eigen`` such as :class:`sgdstab.Kernel`, whose decomposition is then reused even without ``eigen``), else
    :func:`sgdstab.ntk` now. A given K is checked against the problem: its shape, and its first diagonal block
    against J_1 J_1ᵀ computed here (a K from other parameters fails)."""
    if kernel is None:
        K = ntk(problem)
        return K, kf.kernel_eigen(K) if eigen else None
    K = getattr(kernel, "K", kernel)
    nk = problem.n * problem.k
    if not isinstance(K, Tensor) or K.shape != (nk, nk):
        shape = tuple(K.shape) if isinstance(K, Tensor) else type(K).__name__
        raise MethodError(f"kernel must be the problem's NTK, an {nk} × {nk} tensor (or a sgdstab.Kernel); got {shape}")
    _, J1 = next(problem.jacobian_blocks(chunk_size=1))
    block = (J1 @ J1.T).to(torch.float64).cpu()
    given = K[: problem.k, : problem.k].to(torch.float64).cpu()
    tol = (1e-4 if min(K.dtype.itemsize, problem.itemsize) == 4 else 1e-9) * max(float(block.abs().max()), 1e-30)
    if float((given - block).abs().max()) > tol:
        raise MethodError("kernel does not match the problem at its current θ (its first block differs from J₁J₁ᵀ)")
    eig = getattr(kernel, "eigen", None)
    if isinstance(eig, kf.KernelEigen):
        return K, eig
    return K, kf.kernel_eigen(K) if eigen else None


def _gauss_newton_from_jacobian(J: Tensor, n: int, k: int) -> tuple[float, float, float, float]:
    """(||G||_F, Tr G, λ_max(G), s) with G = JᵀJ/n formed in parameter space (small p)."""
    J64 = J.to(torch.float64)
    G = J64.T @ J64 / n
    blocks = torch.einsum("iap,ibp->iab", J64.reshape(n, k, -1), J64.reshape(n, k, -1))
    # (1/n) Σ_i H_i² = Jᵀ bdiag(K) J / n with H_i = J_iᵀ J_i.
    BJ = torch.einsum("iab,ibp->iap", blocks, J64.reshape(n, k, -1)).reshape(n * k, -1)
    M = J64.T @ BJ / n - G @ G
    eig_g = torch.linalg.eigvalsh(G)
    s2 = float(torch.linalg.eigvalsh((M + M.T) / 2)[-1])
    return float(torch.linalg.matrix_norm(G)), float(torch.trace(G)), float(eig_g[-1]), max(s2, 0.0) ** 0.5


def curvature(
    problem: Problem,
    method: str = "auto",
    rtol: float = 1e-3,
    seed: int = 0,
    top: int = 5,
    at_minimum: bool | None = None,
    max_matvecs: int = 10_000,
    kernel: object | None = None,
) -> Curvature:
    """Curvature figures of ``problem`` at its current parameters.

    Args:
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
        >>> model = sgdstab.mlp((3,), 1, widths=(8,), seed=0)
        >>> X = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))
        >>> problem = sgdstab.Problem(model, X, model(X).detach(), dtype=torch.float64)  # a global minimum
        >>> c = sgdstab.curvature(problem)
        >>> c.exact, c.converged, abs(c.hessian_frobenius - c.gauss_newton_frobenius) < 1e-12
        (True, True, True)
    """
    _check_args(method, rtol, top, seed, max_matvecs)
    if at_minimum is not None and not isinstance(at_minimum, bool):
        raise MethodError(f"at_minimum must be True, False or None (decide), got {at_minimum!r}")
    start = time.perf_counter()
    r = problem.residuals()
    loss = float((r.to(torch.float64) ** 2).sum()) / (2 * problem.n)
    if method == "auto":
        method = _plan(problem, rtol, _near_minimum(problem, at_minimum, loss)).method
    common = {"loss": loss, "n": problem.n, "k": problem.k, "p": problem.p}
    K = None
    if method == "kernel":
        K, eig = given_kernel(problem, kernel, eigen=False)
        figures = _kernel(problem, K, eig, top, rtol, seed, at_minimum, max_matvecs, loss)
        # ||∇L||² = rᵀKr/n² (THEORY.md §3): no gradient pass
        rf = r.reshape(-1).to(K.dtype)
        figures["grad_norm"] = max(float(rf.double() @ (K @ rf).double()), 0.0) ** 0.5 / problem.n
    else:
        if method == "dense":
            figures = _dense(problem, top)
        else:
            figures = _matrix_free(problem, top, rtol, seed, max_matvecs, at_minimum, loss)
        figures["grad_norm"] = float(torch.linalg.vector_norm(problem.gradient()))
    check, precision_notes = precision_check(problem, kernel=K, residuals=r)
    if precision_notes:
        figures["notes"] = (*figures.get("notes", ()), *precision_notes)
    near = bool(figures.pop("near_minimum", False))  # H's figures taken from G's, R bounded (the decided regime)
    return Curvature(
        **common,
        **figures,
        method=method,
        at_minimum=near if at_minimum is None else at_minimum,
        seconds=time.perf_counter() - start,
        float64_check_difference=check,
    )


# The building blocks of the float64 check that curvature figures rest on (μ and Tr(ΣG) are the alignment's).
CURVATURE_CHECKED = ("gauss_newton_frobenius", "loss")


def precision_check(
    problem: Problem,
    kernel: Tensor | None = None,
    residuals: Tensor | None = None,
    figures: tuple[str, ...] | None = CURVATURE_CHECKED,
) -> tuple[float | None, list[str]]:
    """(largest relative float32-vs-float64 difference among ``figures`` of :class:`sgdstab.precision.PrecisionCheck`
    — all of them with None — or None for float64, notes) for a result on ``problem``; ``kernel``: its NTK at θ when
    built, and ``residuals`` (their rows serve the float32 side of the subsample)."""
    if problem.dtype == torch.float64:
        return None, []
    check = float64_check(problem, kernel=kernel, residuals=residuals)
    if check is None:
        return None, ["float32 figures unchecked: the float64 subsample check would not fit in memory"]
    note = check.note(figures)
    return check.worst_of(figures), [note] if note else []


def _hessian_dense_figures(H: Tensor, top: int) -> dict:
    H = H.to(torch.float64)
    H = (H + H.T) / 2
    eig = torch.linalg.eigvalsh(H)
    return {
        "hessian_frobenius": float(torch.linalg.matrix_norm(H)),
        "hessian_frobenius_stderr": 0.0,
        "trace": float(torch.trace(H)),
        "trace_stderr": 0.0,
        "sharpness": float(eig[-1]),
        "sharpness_error_bound": 0.0,
        "min_eigenvalue": float(eig[0]),
        "top_eigenvalues": tuple(float(x) for x in eig.flip(0)[:top]),
        "exact": True,
        "converged": True,
    }


def _dense(problem: Problem, top: int) -> dict:
    # H itself, its float64 copy and eigh's workspace
    check_allocation(
        3 * problem.p**2 * 8, f"the dense Hessian (p = {problem.p})", "use method='kernel' or 'matrix_free'"
    )
    H = torch.func.hessian(problem.loss_function())(problem.theta)
    if not bool(torch.isfinite(H).all()):
        raise MethodError(
            f"the Hessian has non-finite entries in {problem.dtype} (overflow at this θ and data scale); "
            "use dtype=torch.float64 or rescale the data"
        )
    J = problem.jacobian()
    gn_frob, gn_trace, gn_sharp, s = _gauss_newton_from_jacobian(J, problem.n, problem.k)
    return _hessian_dense_figures(H, top) | {
        "gauss_newton_frobenius": gn_frob,
        "gauss_newton_frobenius_stderr": 0.0,
        "gauss_newton_trace": gn_trace,
        "gauss_newton_trace_stderr": 0.0,
        "gauss_newton_sharpness": gn_sharp,
        "nonuniformity": s,
        "hessian_route": "dense Hessian (torch.func.hessian) and eigh",
        "hessian_vector_products": 0,
    }


def _first(values: np.ndarray) -> float:
    """The first converged Ritz value, NaN when Lanczos converged none (the result then says so)."""
    return float(values[0]) if len(values) else float("nan")


_LANCZOS_RESTARTS = 20  # ARPACK restarts; a cap keeps degenerate ends of the spectrum from running forever


def _lanczos_tol(rtol: float) -> float:
    # ARPACK's relative residual: at most a tenth of the stochastic figures' relative standard error, and 1e-4
    # (the bottom eigenvalue has no reported bound of its own)
    return min(1e-4, rtol / 10)


def _ncv(k: int, p: int) -> int | None:
    # ARPACK's default basis (20 vectors for k = 1) overshoots a well-separated top eigenvalue; 2k + 8 restarts
    # sooner: 12 products instead of 22 on a trained Fashion-MNIST MLP (benchmarks/). The bottom end of an
    # indefinite H is often clustered and keeps the default.
    ncv = 2 * k + 8
    return ncv if ncv < p else None


def _spectral_figures(
    op,
    p: int,
    top: int,
    rtol: float,
    seed: int,
    max_matvecs: int,
    name: str,
    control: tuple | None = None,
    psd: bool = False,
    exact_trace: float | None = None,
) -> dict:
    """Tr, ||·||_F (± standard errors), top and bottom eigenvalues of a symmetric p×p operator.

    Exact from p products when that is cheaper than the probes a stochastic estimate would need; otherwise
    Lanczos (``eigsh``) for the extreme eigenvalues and Hutch++ deflated by their eigenvectors, with ``control``
    = (operator C, Tr C, ||C||_F²) as a control variate when given. With ``exact_trace`` (known otherwise), the
    probes only need to reach ``rtol`` on the Frobenius norm.
    """
    if p <= min(max_matvecs, _DENSE_MAX_P, _estimated_probes(rtol, exact_trace is not None)):
        A = torch.as_tensor(op.matmat(np.eye(p)))
        return _hessian_dense_figures(A, top) | {
            "products": int(op.matvecs),
            "route": f"dense {name} from p products",
            "notes": [],
        }
    k_top = max(1, min(top, p - 2))
    tol = _lanczos_tol(rtol)
    upper = top_eigenpairs(op, k=k_top, which="LA", tol=tol, seed=seed, maxiter=_LANCZOS_RESTARTS, ncv=_ncv(k_top, p))
    if psd:  # the bottom of a PSD operator with a null space is 0: no Lanczos on a degenerate end
        lower = None
        basis = upper.eigenvectors
    else:
        lower = top_eigenpairs(op, k=1, which="SA", tol=tol, seed=seed + 1, maxiter=_LANCZOS_RESTARTS)
        basis = np.concatenate([upper.eigenvectors, lower.eigenvectors], axis=1)
    cv = {}
    if control is not None:
        cv = {"control": control[0], "control_trace": control[1], "control_frobenius_squared": control[2]}
    targets = ("frobenius",) if exact_trace is not None else ("trace", "frobenius")
    budget = max(max_matvecs - op.matvecs, basis.shape[1] + 2)
    tf = hutchpp(op, rtol=rtol, basis=basis, max_matvecs=budget, seed=seed + 2, targets=targets, **cv)
    notes = []
    if not tf.converged:
        notes.append(f"Hutch++ on {name} stopped at its budget of {max_matvecs} products before rtol={rtol:g}")
    lanczos_converged = upper.converged and (lower is None or lower.converged)
    if not lanczos_converged:
        notes.append(f"Lanczos on {name} did not converge within {_LANCZOS_RESTARTS} restarts; see the error bound")
    trace, trace_se = (tf.trace, tf.trace_stderr) if exact_trace is None else (exact_trace, 0.0)
    route = f"Lanczos and {tf.method} on {name}-vector products"
    if exact_trace is not None:
        route += f"; Tr {name[0]} exact, layer by layer"
    return {
        "hessian_frobenius": tf.frobenius,
        "hessian_frobenius_stderr": tf.frobenius_stderr,
        "trace": trace,
        "trace_stderr": trace_se,
        "sharpness": _first(upper.eigenvalues),
        "sharpness_error_bound": _first(upper.residual_norms),
        "min_eigenvalue": 0.0 if lower is None else _first(lower.eigenvalues),
        "min_eigenvalue_error_bound": 0.0 if lower is None else _first(lower.residual_norms),
        "top_eigenvalues": tuple(float(x) for x in upper.eigenvalues[:top]),
        "exact": False,
        "converged": bool(tf.converged and lanczos_converged),
        "products": int(op.matvecs),
        "route": route,
        "notes": notes,
    }


def _hessian_matrix_free(
    problem: Problem,
    top: int,
    rtol: float,
    seed: int,
    max_matvecs: int,
    control: tuple | None = None,
    exact_trace: float | None = None,
    bottom_at_zero: bool = False,
) -> tuple[dict, list[str]]:
    """H's figures from its products. ``bottom_at_zero``: near a minimum with nk < p, where λ_min(G) = 0 and
    λ_min(H) lies within ||R||_F of it: no Lanczos on the cluster at zero (it does not converge there); the caller
    supplies the bound."""
    op = hessian_operator(problem)
    f = _spectral_figures(
        op, problem.p, top, rtol, seed, max_matvecs, "Hessian", control, psd=bottom_at_zero, exact_trace=exact_trace
    )
    notes = f.pop("notes")
    f["hessian_vector_products"] = f.pop("products")
    f["hessian_route"] = f.pop("route")
    return f, notes


def _exact_traces(problem: Problem, rtol: float) -> tuple[float, float] | None:
    """(Tr H, Tr G) layer by layer (:mod:`sgdstab.layerwise`) when the model is a chain of Linear layers and that
    costs less than the probes a 1-in-rtol Hutchinson estimate would need; else ``None``."""
    route = layerwise_route(problem)
    if route is None:
        return None
    if route == "generic":
        cost = layerwise_trace_cost(problem) or math.inf
        if cost > _estimated_probes(rtol) * 6.0 * problem.n * problem.p:
            return None
    return layerwise_traces(problem)


def _gauss_newton_from_kernel(K: Tensor, n: int, k: int, top: int, eig: kf.KernelEigen | None) -> tuple[dict, Tensor]:
    """G's exact figures from K, and G's top eigenvalues (descending): from ``eig`` when given, else without
    K's eigendecomposition (Lanczos on K, Arnoldi for the non-uniformity)."""
    values = eig.values.flip(0) if eig is not None else kf.top_eigenvalues(K, top)
    gn = {
        "gauss_newton_frobenius": kf.gauss_newton_frobenius(K, n),
        "gauss_newton_frobenius_stderr": 0.0,
        "gauss_newton_trace": kf.gauss_newton_trace(K, n),
        "gauss_newton_trace_stderr": 0.0,
        "gauss_newton_sharpness": float(values[0]) / n,
        "nonuniformity": kf.nonuniformity(K, n, k, eig),
    }
    return gn, values / n


def _gauss_newton_bottom(K: Tensor, p: int, n: int, eig: kf.KernelEigen | None) -> float:
    """λ_min(G): G = JᵀJ/n has rank ≤ nk, so it is 0 when nk < p; otherwise the p-th largest eigenvalue of K / n."""
    if K.shape[0] < p:
        return 0.0
    values = eig.values if eig is not None else torch.linalg.eigvalsh(K.to(torch.float64))
    return float(values.flip(0)[p - 1]) / n


@dataclass(frozen=True)
class _Residual:
    """||R||_F (estimate and 99% bound) and Tr R (estimate, standard error) from Gaussian products of R = H − G."""

    frobenius: float
    bound: float
    trace: float
    trace_stderr: float
    products: int


def _residual_probes(problem: Problem, seed: int, accept: float) -> _Residual:
    """Bound ||R||_F from one Gaussian product of R, then from four when one leaves the bound above ``accept``
    but four could bring it below."""
    gen = torch.Generator().manual_seed(seed + 7)
    V = torch.randn(problem.p, 1, generator=gen, dtype=torch.float64)
    RV = residual_curvature_matmat(problem, V.to(device=problem.device, dtype=problem.dtype)).to(torch.float64).cpu()
    m = 1
    # four probes when one leaves the bound too wide but their mean, were it the same, would pass with 2× margin
    wide = math.sqrt(float((RV * RV).sum()) / _RESIDUAL_QUANTILES[1]) > accept
    if wide and float(RV.norm()) / math.sqrt(_RESIDUAL_QUANTILES[_RESIDUAL_PROBES]) <= 2 * accept:
        more = torch.randn(problem.p, _RESIDUAL_PROBES - 1, generator=gen, dtype=torch.float64)
        rest = residual_curvature_matmat(problem, more.to(device=problem.device, dtype=problem.dtype))
        V, RV, m = torch.cat([V, more], dim=1), torch.cat([RV, rest.to(torch.float64).cpu()], dim=1), _RESIDUAL_PROBES
    frob2 = float((RV * RV).sum(0).mean())
    bound = math.sqrt(frob2 / _RESIDUAL_QUANTILES[m])
    # vᵀRv has mean Tr R and variance 2||R||_F² for Gaussian v: the bound gives a conservative standard error
    trace = float((V * RV).sum(0).mean())
    return _Residual(math.sqrt(frob2), bound, trace, bound * math.sqrt(2.0 / m), m)


def _kernel(
    problem: Problem,
    K: Tensor,
    eig: kf.KernelEigen | None,
    top: int,
    rtol: float,
    seed: int,
    at_minimum: bool | None,
    max_matvecs: int,
    loss: float,
) -> dict:
    n, k = problem.n, problem.k
    gn, values = _gauss_newton_from_kernel(K, n, k, top, eig)
    at_rounding = is_global_minimum(loss, problem.Y, problem.dtype)
    g_figures = {
        "hessian_frobenius": gn["gauss_newton_frobenius"],
        "trace": gn["gauss_newton_trace"],
        "sharpness": float(values[0]),
        "min_eigenvalue": _gauss_newton_bottom(K, problem.p, n, eig),
        "top_eigenvalues": tuple(float(x) for x in values[:top]),
    }
    if at_minimum:
        notes = []
        if not at_rounding:
            notes.append(
                f"at_minimum=True but L = {loss:.3g} is above a global minimum's rounding level "
                f"({global_minimum_threshold(problem.Y, problem.dtype):.2g}): these are the Gauss–Newton G's figures, "
                "and H = G + (1/n) Σ r_ic ∇²f_ic differs from them"
            )
        return (
            gn
            | g_figures
            | {
                "hessian_frobenius_stderr": 0.0,
                "trace_stderr": 0.0,
                "sharpness_error_bound": 0.0,
                "hessian_route": "H = G at the asserted minimum, exact from the NTK kernel",
                "exact": at_rounding,
                "converged": True,
                "hessian_vector_products": 0,
                "notes": tuple(notes),
            }
        )
    if at_minimum is None and _near_minimum(problem, None, loss):
        res = _residual_probes(problem, seed, accept=rtol * g_figures["sharpness"])
        if res.bound <= rtol * g_figures["sharpness"]:
            route = (
                f"H = G + R near a minimum: G exact from the NTK kernel, ||R||_F ≤ {res.bound:.2g} (99%) and Tr R "
                f"from {res.products} products of R = H − G"
            )
            return (
                gn
                | g_figures
                | {
                    "trace": g_figures["trace"] + res.trace,
                    "hessian_frobenius_stderr": res.bound,
                    "trace_stderr": res.trace_stderr,
                    "sharpness_error_bound": res.bound,
                    "min_eigenvalue_error_bound": res.bound,
                    "residual_frobenius": res.frobenius,
                    "residual_frobenius_bound": res.bound,
                    "hessian_route": route,
                    "exact": at_rounding,
                    "converged": True,
                    "hessian_vector_products": res.products,
                    "notes": (),
                    "near_minimum": True,
                }
            )
    # Off a minimum H = G + R: G is known exactly here, so the probes only estimate the residual part R.
    control = (
        gauss_newton_operator(problem),
        gn["gauss_newton_trace"],
        gn["gauss_newton_frobenius"] ** 2,
    )
    traces = _exact_traces(problem, rtol)
    exact_trace = traces[0] if traces is not None else None
    hess, notes = _hessian_matrix_free(problem, top, rtol, seed, max_matvecs, control, exact_trace)
    route = hess.pop("hessian_route")
    return gn | hess | {"hessian_route": route, "exact": hess.get("exact", False), "notes": tuple(notes)}


def _matrix_free(
    problem: Problem, top: int, rtol: float, seed: int, max_matvecs: int, at_minimum: bool | None, loss: float
) -> dict:
    traces = _exact_traces(problem, rtol)
    trace_h, trace_g = traces if traces is not None else (None, None)
    # at a minimum with nk < p, λ_min(H) sits in a cluster at zero where Lanczos does not converge: bound it instead
    near = at_minimum is not False and _near_minimum(problem, at_minimum, loss) and problem.n * problem.k < problem.p
    hess, notes = _hessian_matrix_free(problem, top, rtol, seed, max_matvecs, exact_trace=trace_h, bottom_at_zero=near)
    if near:
        res = None if at_minimum else _residual_probes(problem, seed, accept=0.0)
        bound = 0.0 if res is None else res.bound
        hess["min_eigenvalue_error_bound"] = bound
        hess["hessian_vector_products"] += 0 if res is None else res.products
        notes.append(
            f"λ_min(H) = λ_min(G) = 0 (rank G ≤ nk < p) within ||H − G||_F ≤ {bound:.2g}, bounded from products of "
            "H − G instead of Lanczos on the cluster at zero"
        )
    g = _spectral_figures(
        gauss_newton_operator(problem),
        problem.p,
        1,
        rtol,
        seed + 3,
        max_matvecs,
        "Gauss–Newton",
        psd=True,
        exact_trace=trace_g,
    )
    return hess | {
        "gauss_newton_frobenius": g["hessian_frobenius"],
        "gauss_newton_frobenius_stderr": g["hessian_frobenius_stderr"],
        "gauss_newton_trace": g["trace"],
        "gauss_newton_trace_stderr": g["trace_stderr"],
        "gauss_newton_sharpness": g["sharpness"],
        "nonuniformity": float("nan"),
        "exact": bool(hess["exact"] and g["exact"]),
        "converged": bool(hess["converged"] and g["converged"]),
        "notes": (*notes, *g["notes"], "nonuniformity needs the kernel route (method='kernel')"),
    }
