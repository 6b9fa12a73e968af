"""The routes of :func:`sgdstab.curvature` and the typed figures each returns.

A route takes a :class:`RouteRequest` (the problem at θ, its loss and residuals, the caller's settings) and returns
:class:`RouteFigures`: the Hessian's figures (:class:`HessianFigures`), the Gauss–Newton figures
(:class:`GaussNewtonFigures`), ||∇L|| and the NTK when the route built it. :data:`ROUTES` maps each method name to
its route; :func:`sgdstab.curvature` assembles the public :class:`sgdstab.Curvature` from what the route returns, so
a new route is one function and one entry there (and its cost in :mod:`sgdstab.measure.plan`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sgdstab.conventions import global_minimum_threshold, is_global_minimum
from sgdstab.errors import MethodError
from sgdstab.estimators.matrix_free import hutchpp, top_eigenpairs
from sgdstab.kernel import figures as kf
from sgdstab.kernel.kernel import Kernel
from sgdstab.kernel.ntk import ggn_kernel
from sgdstab.measure import lanczos
from sgdstab.measure.plan import DENSE_MAX_P, RESIDUAL_PROBES, estimated_probes, expects_near_minimum
from sgdstab.measure.traces import layerwise_route, layerwise_trace_cost, layerwise_traces
from sgdstab.operators.products import (
    gauss_newton_operator,
    hessian_operator,
    kernel_coordinates,
    residual_curvature_matmat,
)
from sgdstab.problem.problem import Problem
from sgdstab.utils.memory import check_allocation

# ||Rv||² for v ~ N(0, I) is a λ²-weighted sum of χ²₁ variables with mean ||R||_F²; with weights summing to one its
# lower tail is heaviest when R has rank one (Székely & Bakirov 2003), so the mean of m probes over the 1% quantile
# of χ²_m/m bounds ||R||_F² at 99% whatever R's spectrum. One probe first (at an exact minimum it settles the
# matter), four when one is not enough: χ²₁'s and χ²₄'s 1% quantiles are 1.571e-4 and 0.2971.
_RESIDUAL_QUANTILES = {1: 1.571e-4, RESIDUAL_PROBES: 0.2971 / RESIDUAL_PROBES}
_LANCZOS_RESTARTS = 20  # ARPACK restarts; a cap keeps degenerate ends of the spectrum from running forever


@dataclass(frozen=True)
class SpectralFigures:
    """Tr, ||·||_F and the extreme eigenvalues of a symmetric p×p operator (H, or G on the matrix-free route).

    ``*_stderr``: standard errors of stochastic estimates; ``*_error_bound``: Lanczos residual norms (an eigenvalue
    lies within it); all 0 when exact. ``products``: operator-vector products used; ``route``: how, in words."""

    frobenius: float
    frobenius_stderr: float
    trace: float
    trace_stderr: float
    sharpness: float
    sharpness_error_bound: float
    min_eigenvalue: float
    top_eigenvalues: tuple[float, ...]
    exact: bool
    converged: bool
    products: int
    route: str
    min_eigenvalue_error_bound: float = 0.0
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResidualBound:
    """||R||_F (estimate and 99% bound) and Tr R (estimate, standard error) from Gaussian products of R = H − G."""

    frobenius: float
    bound: float
    trace: float
    trace_stderr: float
    products: int


@dataclass(frozen=True)
class HessianFigures(SpectralFigures):
    """The Hessian's figures from one route. ``residual``: set where the route decided that θ is near a minimum and
    took H's figures from G's, with R = H − G bounded from its products (None elsewhere)."""

    residual: ResidualBound | None = None

    @classmethod
    def of(cls, figures: SpectralFigures, **changes: Any) -> HessianFigures:
        """``figures`` (of H) as Hessian figures, with ``changes`` applied."""
        return cls(**{f.name: getattr(figures, f.name) for f in dataclasses.fields(figures)} | changes)


@dataclass(frozen=True)
class GaussNewtonFigures:
    """The Gauss–Newton G = JᵀJ/n's figures from one route (``*_stderr`` 0 when exact) and the non-uniformity s
    (NaN where the route cannot give it)."""

    frobenius: float
    frobenius_stderr: float
    trace: float
    trace_stderr: float
    sharpness: float
    nonuniformity: float
    exact: bool = True
    converged: bool = True
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RouteRequest:
    """What :func:`sgdstab.curvature` asks of a route: the problem at θ with its loss and residuals, and the
    caller's settings (see :func:`sgdstab.curvature`); ``kernel``: the caller's NTK at θ, if any. ``residuals`` are
    the weights e_i = ∇_f ℓ_i of R; ``kernel_residuals`` the u_i that go with K_A (docs/THEORY.md §9), the same
    tensor for the square loss (None: take ``residuals``)."""

    problem: Problem
    loss: float
    residuals: Tensor
    top: int
    rtol: float
    seed: int
    at_minimum: bool | None
    max_matvecs: int
    kernel: Kernel | Tensor | None = None
    kernel_residuals: Tensor | None = None


@dataclass(frozen=True)
class RouteFigures:
    """A route's result: H's and G's figures, ||∇L||, and K (as built) when the route built or took it."""

    hessian: HessianFigures
    gauss_newton: GaussNewtonFigures
    grad_norm: float
    kernel: Tensor | None = None


def given_kernel(
    problem: Problem, kernel: Kernel | Tensor | None, eigen: bool = True
) -> tuple[Tensor, kf.KernelEigen | None, tuple[str, ...]]:
    """K (as built, in the problem's dtype) and, with ``eigen``, its eigendecomposition: ``kernel`` when given (a
    :class:`sgdstab.Kernel`, whose decomposition is reused whenever it has one, or a tensor), else
    :func:`sgdstab.ntk` now. A given K is checked against the problem: its shape, and its first diagonal block
    against J_1 J_1ᵀ computed here (a K from other parameters fails). The third item: what the kernel's builder
    noted (a route that fell back to J's rows, and why)."""
    if kernel is None:
        # decomposed as built, not through Kernel.eigen: that refuses a non-finite K, where an overflowing problem's
        # figures are NaN with a note (tests/test_fuzz.py), and this Kernel is not kept for any reuse
        built = ggn_kernel(problem)
        K = built.matrix
        return K, kf.kernel_eigen(K) if eigen else None, built.notes
    K = kernel.matrix if isinstance(kernel, Kernel) else kernel
    nk = problem.n * problem.k
    if not isinstance(K, Tensor) or K.shape != (nk, nk):
        shape = tuple(K.shape) if isinstance(K, Tensor) else type(K).__name__
        raise MethodError(f"kernel must be the problem's NTK, an {nk} × {nk} tensor (or a sgdstab.Kernel); got {shape}")
    _, J1 = next(problem.jacobian_blocks(chunk_size=1))
    if not problem.square_loss:  # the GGN kernel's first block: A_1^{1/2} J_1 J_1ᵀ A_1^{1/2}
        J1 = problem.output_hessian_roots()[0].to(J1.dtype) @ J1
    block = (J1 @ J1.T).to(torch.float64).cpu()
    given = K[: problem.k, : problem.k].to(torch.float64).cpu()
    tol = (1e-4 if min(K.dtype.itemsize, problem.itemsize) == 4 else 1e-9) * max(float(block.abs().max()), 1e-30)
    if float((given - block).abs().max()) > tol:
        what = "J₁J₁ᵀ" if problem.square_loss else "A₁^½J₁J₁ᵀA₁^½ (pass the GGN kernel, sgdstab.ggn_kernel)"
        raise MethodError(f"kernel does not match the problem at its current θ (its first block differs from {what})")
    notes = kernel.notes if isinstance(kernel, Kernel) else ()
    if isinstance(kernel, Kernel) and (eigen or kernel.has_eigen):
        return K, kernel.eigen, notes
    return K, kf.kernel_eigen(K) if eigen else None, notes


# ---------------------------------------------------------------------------------------------------- dense route


def dense_route(req: RouteRequest) -> RouteFigures:
    """Every figure exact: the p×p Hessian by ``torch.func.hessian`` and its eigendecomposition, G from J."""
    problem = req.problem
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
    J_A, _ = kernel_coordinates(problem, problem.jacobian())  # rows A_i^{1/2} J_i: J itself for the square loss
    gn = _gauss_newton_from_jacobian(J_A, problem.n, problem.k)
    hessian = HessianFigures.of(_dense_figures(H, req.top, 0, "dense Hessian (torch.func.hessian) and eigh"))
    return RouteFigures(hessian, gn, _gradient_norm(problem))


def _dense_figures(A: Tensor, top: int, products: int, route: str) -> SpectralFigures:
    """The exact figures of a symmetric matrix ``A`` (symmetrized in float64 first)."""
    A = A.to(torch.float64)
    A = (A + A.T) / 2
    eig = torch.linalg.eigvalsh(A)
    return SpectralFigures(
        frobenius=float(torch.linalg.matrix_norm(A)),
        frobenius_stderr=0.0,
        trace=float(torch.trace(A)),
        trace_stderr=0.0,
        sharpness=float(eig[-1]),
        sharpness_error_bound=0.0,
        min_eigenvalue=float(eig[0]),
        top_eigenvalues=tuple(float(x) for x in eig.flip(0)[:top]),
        exact=True,
        converged=True,
        products=products,
        route=route,
    )


def _gauss_newton_from_jacobian(J: Tensor, n: int, k: int) -> GaussNewtonFigures:
    """G = JᵀJ/n's exact figures and s, formed in parameter space (small p)."""
    J64 = J.to(torch.float64)
    G = J64.T @ J64 / n
    blocks = torch.einsum("iap,ibp->iab", J64.reshape(n, k, -1), J64.reshape(n, k, -1))
    # (1/n) Σ_i H_i² = Jᵀ bdiag(K) J / n with H_i = J_iᵀ J_i.
    BJ = torch.einsum("iab,ibp->iap", blocks, J64.reshape(n, k, -1)).reshape(n * k, -1)
    M = J64.T @ BJ / n - G @ G
    eig_g = torch.linalg.eigvalsh(G)
    s2 = float(torch.linalg.eigvalsh((M + M.T) / 2)[-1])
    return GaussNewtonFigures(
        frobenius=float(torch.linalg.matrix_norm(G)),
        frobenius_stderr=0.0,
        trace=float(torch.trace(G)),
        trace_stderr=0.0,
        sharpness=float(eig_g[-1]),
        nonuniformity=max(s2, 0.0) ** 0.5,
    )


def _gradient_norm(problem: Problem) -> float:
    return float(torch.linalg.vector_norm(problem.gradient()))


# ------------------------------------------------------------------------------------------- products of operators


def _first(values: np.ndarray) -> float:
    """The first converged Ritz value, NaN when Lanczos converged none (the result then says so)."""
    return float(values[0]) if len(values) else float("nan")


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


@dataclass(frozen=True)
class _Probing:
    """How :func:`_spectral_figures` probes an operator: its name, the caller's settings, a control variate
    ``control`` = (operator C, Tr C, ||C||_F²), ``psd`` (no Lanczos on the bottom end, known to be 0) and a trace
    known otherwise (``exact_trace``)."""

    name: str
    top: int
    rtol: float
    seed: int
    max_matvecs: int
    control: tuple[Any, float, float] | None = None
    psd: bool = False
    exact_trace: float | None = None


def _spectral_figures(op: Any, p: int, how: _Probing) -> SpectralFigures:
    """Tr, ||·||_F (± standard errors), top and bottom eigenvalues of a symmetric p×p operator.

    Exact from p products when that is cheaper than the probes a stochastic estimate would need; otherwise
    Lanczos (``eigsh``) for the extreme eigenvalues and Hutch++ deflated by their eigenvectors, with ``how.control``
    as a control variate when given. With ``how.exact_trace`` (known otherwise), the probes only need to reach
    ``rtol`` on the Frobenius norm.
    """
    if p <= min(how.max_matvecs, DENSE_MAX_P, estimated_probes(how.rtol, how.exact_trace is not None)):
        A = torch.as_tensor(op.matmat(np.eye(p)))
        return _dense_figures(A, how.top, int(op.matvecs), f"dense {how.name} from p products")
    k_top = max(1, min(how.top, p - 2))
    tol = _lanczos_tol(how.rtol)
    seed = how.seed
    upper = top_eigenpairs(op, k=k_top, which="LA", tol=tol, seed=seed, maxiter=_LANCZOS_RESTARTS, ncv=_ncv(k_top, p))
    if how.psd:  # the bottom of a PSD operator with a null space is 0: no Lanczos on a degenerate end
        lower = None
        basis = upper.eigenvectors
    else:
        lower = top_eigenpairs(op, k=1, which="SA", tol=tol, seed=seed + 1, maxiter=_LANCZOS_RESTARTS)
        basis = np.concatenate([upper.eigenvectors, lower.eigenvectors], axis=1)
    cv = {}
    if how.control is not None:
        cv = {"control": how.control[0], "control_trace": how.control[1], "control_frobenius_squared": how.control[2]}
    targets = ("frobenius",) if how.exact_trace is not None else ("trace", "frobenius")
    budget = max(how.max_matvecs - op.matvecs, basis.shape[1] + 2)
    tf = hutchpp(op, rtol=how.rtol, basis=basis, max_matvecs=budget, seed=seed + 2, targets=targets, **cv)
    lanczos_converged = upper.converged and (lower is None or lower.converged)
    trace, trace_se = (tf.trace, tf.trace_stderr) if how.exact_trace is None else (how.exact_trace, 0.0)
    route = f"Lanczos and {tf.method} on {how.name}-vector products"
    if how.exact_trace is not None:
        route += f"; Tr {how.name[0]} exact, layer by layer"
    return SpectralFigures(
        frobenius=tf.frobenius,
        frobenius_stderr=tf.frobenius_stderr,
        trace=trace,
        trace_stderr=trace_se,
        sharpness=_first(upper.eigenvalues),
        sharpness_error_bound=_first(upper.residual_norms),
        min_eigenvalue=0.0 if lower is None else _first(lower.eigenvalues),
        min_eigenvalue_error_bound=0.0 if lower is None else _first(lower.residual_norms),
        top_eigenvalues=tuple(float(x) for x in upper.eigenvalues[: how.top]),
        exact=False,
        converged=bool(tf.converged and lanczos_converged),
        products=int(op.matvecs),
        route=route,
        notes=_probing_notes(how, bool(tf.converged), bool(lanczos_converged)),
    )


def _probing_notes(how: _Probing, hutchpp_converged: bool, lanczos_converged: bool) -> tuple[str, ...]:
    notes = []
    if not hutchpp_converged:
        notes.append(
            f"Hutch++ on {how.name} stopped at its budget of {how.max_matvecs} products before rtol={how.rtol:g}"
        )
    if not lanczos_converged:
        notes.append(f"Lanczos on {how.name} did not converge within {_LANCZOS_RESTARTS} restarts; see the error bound")
    return tuple(notes)


def _hessian_from_products(
    req: RouteRequest,
    control: tuple[Any, float, float] | None = None,
    exact_trace: float | None = None,
    bottom_at_zero: bool = False,
) -> HessianFigures:
    """H's figures from its products. ``bottom_at_zero``: near a minimum with nk < p, where λ_min(G) = 0 and
    λ_min(H) lies within ||R||_F of it: no Lanczos on the cluster at zero (it does not converge there); the caller
    supplies the bound."""
    how = _Probing("Hessian", req.top, req.rtol, req.seed, req.max_matvecs, control, bottom_at_zero, exact_trace)
    return HessianFigures.of(_spectral_figures(hessian_operator(req.problem), req.problem.p, how))


def _exact_traces(problem: Problem, rtol: float) -> tuple[float, float] | None:
    """(Tr H, Tr G) layer by layer (:mod:`sgdstab.measure.traces`) when the model is a chain of Linear layers and that
    costs less than the probes a 1-in-rtol Hutchinson estimate would need; else ``None``."""
    route = None if not problem.square_loss else layerwise_route(problem)  # the layer-by-layer Tr H is the square
    if route is None:  # loss's
        return None
    if route == "generic":
        cost = layerwise_trace_cost(problem) or math.inf
        if cost > estimated_probes(rtol) * 6.0 * problem.n * problem.p:
            return None
    return layerwise_traces(problem)


def _residual_probes(problem: Problem, residuals: Tensor, seed: int, accept: float) -> ResidualBound:
    """Bound ||R||_F from one Gaussian product of R, then from four when one leaves the bound above ``accept``
    but four could bring it below."""
    gen = torch.Generator().manual_seed(seed + 7)
    V = torch.randn(problem.p, 1, generator=gen, dtype=torch.float64)
    product = _residual_product(problem, residuals)
    RV = product(V)
    m = 1
    # four probes when one leaves the bound too wide but their mean, were it the same, would pass with 2× margin
    wide = math.sqrt(float((RV * RV).sum()) / _RESIDUAL_QUANTILES[1]) > accept
    if wide and float(RV.norm()) / math.sqrt(_RESIDUAL_QUANTILES[RESIDUAL_PROBES]) <= 2 * accept:
        more = torch.randn(problem.p, RESIDUAL_PROBES - 1, generator=gen, dtype=torch.float64)
        V, RV, m = torch.cat([V, more], dim=1), torch.cat([RV, product(more)], dim=1), RESIDUAL_PROBES
    frob2 = float((RV * RV).sum(0).mean())
    bound = math.sqrt(frob2 / _RESIDUAL_QUANTILES[m])
    # vᵀRv has mean Tr R and variance 2||R||_F² for Gaussian v: the bound gives a conservative standard error
    trace = float((V * RV).sum(0).mean())
    return ResidualBound(math.sqrt(frob2), bound, trace, bound * math.sqrt(2.0 / m), m)


def _residual_product(problem: Problem, residuals: Tensor) -> Callable[[Tensor], Tensor]:
    """V ↦ R V (float64, CPU) for R = (1/n) Σ_i Σ_c r_ic ∇²f_ic. A sample whose residuals are all exactly zero adds
    exactly nothing to R: at an exact float32 minimum most are (3 of 1000 were not on benchmarks/bench_minimum.py's
    problem M), so R's products run over the others alone, at a fraction of a full pass; with every residual
    non-zero, over all samples (:func:`sgdstab.operators.products.residual_curvature_matmat`)."""
    support = (residuals != 0).reshape(problem.n, -1).any(dim=1).nonzero().reshape(-1)
    if support.numel() == problem.n:
        return lambda V: _on_cpu(residual_curvature_matmat(problem, V.to(device=problem.device, dtype=problem.dtype)))
    weights = residuals.reshape(problem.n, -1)[support].to(problem.dtype).detach()
    return lambda V: _residual_matmat_on(problem, support, weights, V)


def _on_cpu(A: Tensor) -> Tensor:
    return A.to(torch.float64).cpu()


def _residual_matmat_on(problem: Problem, support: Tensor, weights: Tensor, V: Tensor) -> Tensor:
    """(1/n) Σ_{i ∈ support} Σ_c r_ic ∇²f_ic V, by double backward of φ = Σ r_ic f_ic over the support's chunks."""
    W = V.to(device=problem.device, dtype=problem.dtype)
    out = torch.zeros_like(W)
    th = problem.theta.detach()
    for begin in range(0, support.numel(), problem.chunk_size):
        rows = support[begin : begin + problem.chunk_size].to(problem.X.device)
        with torch.enable_grad():
            t = th.clone().requires_grad_(True)
            f = problem.forward(problem.layout.unflatten(t), problem.X[rows])
            (g,) = torch.autograd.grad((f * weights[begin : begin + problem.chunk_size]).sum(), t, create_graph=True)
            for j in range(W.shape[1]):
                (rw,) = torch.autograd.grad(g @ W[:, j], t, retain_graph=j + 1 < W.shape[1])
                out[:, j] += rw
    return _on_cpu(out / problem.n)


# --------------------------------------------------------------------------------------------------- kernel route


def kernel_route(req: RouteRequest) -> RouteFigures:
    """G's figures exact from the NTK K; H's from G's at (or near) a minimum, else from Hessian-vector products
    with G as control variate (the module docstring of :mod:`sgdstab.measure.curvature` says when)."""
    problem = req.problem
    K, eig, built = given_kernel(problem, req.kernel, eigen=False)
    gn, values = _gauss_newton_from_kernel(K, problem.n, problem.k, req.top, eig)
    if built:  # how K was built, when it had to fall back (a parameter used outside its module's call)
        gn = dataclasses.replace(gn, notes=(*gn.notes, *built))
    at_rounding = is_global_minimum(req.loss, problem.Y, problem.dtype)
    h_is_g = HessianFigures(
        frobenius=gn.frobenius,
        frobenius_stderr=0.0,
        trace=gn.trace,
        trace_stderr=0.0,
        sharpness=float(values[0]),
        sharpness_error_bound=0.0,
        min_eigenvalue=_gauss_newton_bottom(K, problem.p, problem.n, eig),
        top_eigenvalues=tuple(float(x) for x in values[: req.top]),
        exact=at_rounding,
        converged=True,
        products=0,
        route="H = G at the asserted minimum, exact from the NTK kernel",
    )
    if req.at_minimum:
        hessian = dataclasses.replace(h_is_g, notes=_asserted_minimum_notes(req, at_rounding))
    else:
        hessian = _near_minimum_hessian(req, h_is_g) if req.at_minimum is None else None
        if hessian is None:
            hessian = _hessian_off_minimum(req, gn)
    # ||∇L||² = rᵀKr/n² (THEORY.md §3), uᵀK_A u/n² for a GGN loss (§9): no gradient pass
    u = req.residuals if req.kernel_residuals is None else req.kernel_residuals
    rf = u.reshape(-1).to(K.dtype)
    grad_norm = max(float(rf.double() @ (K @ rf).double()), 0.0) ** 0.5 / problem.n
    return RouteFigures(hessian, gn, grad_norm, kernel=K)


def _gauss_newton_from_kernel(
    K: Tensor, n: int, k: int, top: int, eig: kf.KernelEigen | None
) -> tuple[GaussNewtonFigures, Tensor]:
    """G's exact figures from K, and G's top eigenvalues (descending): from ``eig`` when given, else without
    K's eigendecomposition (Lanczos on K and, for the non-uniformity, on S·K: :mod:`sgdstab.measure.lanczos`)."""
    frobenius = kf.gauss_newton_frobenius(K, n)
    # Lanczos here needs a finite K, which a finite ||K||_F implies (a NaN or inf entry makes it NaN or inf; an
    # overflow only sends a finite K to kernel.figures too): a non-finite K goes there, whose figures then say NaN
    krylov = eig is None and K.shape[0] > _DENSE_MAX_NK and math.isfinite(frobenius)
    values = eig.values.flip(0) if eig is not None else _top_eigenvalues(K, top, krylov)
    gn = GaussNewtonFigures(
        frobenius=frobenius,
        frobenius_stderr=0.0,
        trace=kf.gauss_newton_trace(K, n),
        trace_stderr=0.0,
        sharpness=float(values[0]) / n,
        nonuniformity=_nonuniformity(K, n, k, eig, krylov),
    )
    return gn, values / n


_DENSE_MAX_NK = 600  # up to this size kernel.figures decomposes K densely (exact, and cheaper than any Krylov run)


def _top_eigenvalues(K: Tensor, m: int, krylov: bool) -> Tensor:
    """K's top ``m`` eigenvalues, descending: with ``krylov`` (K finite, nk above 600) by Lanczos without restarts
    (:mod:`sgdstab.measure.lanczos`), else or where it does not converge :func:`sgdstab.kernel.figures.top_eigenvalues`
    (ARPACK; dense below nk = 600)."""
    m = max(1, min(m, K.shape[0]))
    if krylov and m < K.shape[0] - 1:
        values = lanczos.top_eigenvalues(K, m)
        if values is not None:
            return values
    return kf.top_eigenvalues(K, m)


def _nonuniformity(K: Tensor, n: int, k: int, eig: kf.KernelEigen | None, krylov: bool) -> float:
    """s from K: with ``krylov`` (no eigendecomposition, K finite, nk above 600) by Lanczos in the K-inner product
    (:mod:`sgdstab.measure.lanczos`; 30% less time than ARPACK's Arnoldi on problem M of
    benchmarks/bench_minimum.py), else (or where it does not converge) :func:`sgdstab.kernel.figures.nonuniformity`."""
    if krylov:
        s = lanczos.nonuniformity(K, n, k)
        if s is not None:
            return s
    return kf.nonuniformity(K, n, k, eig)


def _gauss_newton_bottom(K: Tensor, p: int, n: int, eig: kf.KernelEigen | None) -> float:
    """λ_min(G): G = JᵀJ/n has rank ≤ nk, so it is 0 when nk < p; otherwise the p-th largest eigenvalue of K / n."""
    if K.shape[0] < p:
        return 0.0
    values = eig.values if eig is not None else torch.linalg.eigvalsh(K.to(torch.float64))
    return float(values.flip(0)[p - 1]) / n


def _asserted_minimum_notes(req: RouteRequest, at_rounding: bool) -> tuple[str, ...]:
    if at_rounding:
        return ()
    threshold = global_minimum_threshold(req.problem.Y, req.problem.dtype)
    return (
        f"at_minimum=True but L = {req.loss:.3g} is above a global minimum's rounding level "
        f"({threshold:.2g}): these are the Gauss–Newton G's figures, "
        "and H = G + (1/n) Σ r_ic ∇²f_ic differs from them",
    )


def _near_minimum_hessian(req: RouteRequest, h_is_g: HessianFigures) -> HessianFigures | None:
    """H's figures as G's with R = H − G bounded from a few of its products, when the loss says θ is near a minimum
    and the bound comes within ``rtol`` of λ_max(G); else None (H then needs its own products)."""
    if not expects_near_minimum(req.problem, None, req.loss):
        return None
    accept = req.rtol * h_is_g.sharpness
    res = _residual_probes(req.problem, req.residuals, req.seed, accept=accept)
    if res.bound > accept:
        return None
    route = (
        f"H = G + R near a minimum: G exact from the NTK kernel, ||R||_F ≤ {res.bound:.2g} (99%) and Tr R "
        f"from {res.products} products of R = H − G"
    )
    return dataclasses.replace(
        h_is_g,
        trace=h_is_g.trace + res.trace,
        frobenius_stderr=res.bound,
        trace_stderr=res.trace_stderr,
        sharpness_error_bound=res.bound,
        min_eigenvalue_error_bound=res.bound,
        products=res.products,
        route=route,
        residual=res,
    )


def _hessian_off_minimum(req: RouteRequest, gn: GaussNewtonFigures) -> HessianFigures:
    # Off a minimum H = G + R: G is known exactly here, so the probes only estimate the residual part R.
    control = (gauss_newton_operator(req.problem), gn.trace, gn.frobenius**2)
    traces = _exact_traces(req.problem, req.rtol)
    exact_trace = traces[0] if traces is not None else None
    return _hessian_from_products(req, control, exact_trace)


# ---------------------------------------------------------------------------------------------- matrix-free route


def matrix_free_route(req: RouteRequest) -> RouteFigures:
    """Everything from Hessian- and Gauss–Newton-vector products (Lanczos, Hutch++); Tr exact layer by layer
    where the model is a chain of Linear layers and that is cheaper. No non-uniformity (NaN, with a note)."""
    problem = req.problem
    traces = _exact_traces(problem, req.rtol)
    trace_h, trace_g = traces if traces is not None else (None, None)
    # at a minimum with nk < p, λ_min(H) sits in a cluster at zero where Lanczos does not converge: bound it instead
    near = (
        req.at_minimum is not False
        and expects_near_minimum(problem, req.at_minimum, req.loss)
        and problem.n * problem.k < problem.p
    )
    hessian = _hessian_from_products(req, exact_trace=trace_h, bottom_at_zero=near)
    if near:
        hessian = _bottom_from_residual(req, hessian)
    how = _Probing("Gauss–Newton", 1, req.rtol, req.seed + 3, req.max_matvecs, psd=True, exact_trace=trace_g)
    g = _spectral_figures(gauss_newton_operator(problem), problem.p, how)
    gn = GaussNewtonFigures(
        frobenius=g.frobenius,
        frobenius_stderr=g.frobenius_stderr,
        trace=g.trace,
        trace_stderr=g.trace_stderr,
        sharpness=g.sharpness,
        nonuniformity=float("nan"),
        exact=g.exact,
        converged=g.converged,
        notes=(*g.notes, "nonuniformity needs the kernel route (method='kernel')"),
    )
    return RouteFigures(hessian, gn, _gradient_norm(problem))


def _bottom_from_residual(req: RouteRequest, hessian: HessianFigures) -> HessianFigures:
    """λ_min(H) = λ_min(G) = 0 within ||R||_F, bounded from products of R (none at an asserted minimum)."""
    res = None if req.at_minimum else _residual_probes(req.problem, req.residuals, req.seed, accept=0.0)
    bound = 0.0 if res is None else res.bound
    note = (
        f"λ_min(H) = λ_min(G) = 0 (rank G ≤ nk < p) within ||H − G||_F ≤ {bound:.2g}, bounded from products of "
        "H − G instead of Lanczos on the cluster at zero"
    )
    return dataclasses.replace(
        hessian,
        min_eigenvalue_error_bound=bound,
        products=hessian.products + (0 if res is None else res.products),
        notes=(*hessian.notes, note),
    )


ROUTES: dict[str, Callable[[RouteRequest], RouteFigures]] = {
    "dense": dense_route,
    "kernel": kernel_route,
    "matrix_free": matrix_free_route,
}
