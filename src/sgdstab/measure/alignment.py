"""Alignment of the SGD noise with the curvature (THEORY.md §3).

- loss alignment ``μ = Tr(ΣG)/(2L||G||_F²)`` (invariant to rescaling the loss; ≈ 1 when Σ ≈ 2L·G);
- ``μ_H = Tr(ΣH)/(2L||H||_F²)``, the same with the true Hessian (differs from μ away from a minimum);
- uniform alignment ``μ_inf = λ_min(A on range K)/||K||_F²``, ``A = n·bdiag(K²) − K²``, the worst alignment of
  any residual direction the linearized dynamics can reach (the μ a certificate may use at a minimum);
- directional alignment ``g(v_j) = v_jᵀΣv_j/(2L·v_jᵀGv_j)`` along the top eigenvectors of G; μ is their
  λ²-weighted mean over all eigenvectors.

For a loss of THEORY.md §9 (cross-entropy, ``bce_with_logits``) 2L is replaced by the mean output noise scale
``s = (1/n) Σ_i e_iᵀ A_i^+ e_i`` (e_i = ∇_f ℓ_i; for softmax the χ² divergence Σ_c y_ic²/p_ic − 1 of the label from
the prediction): ``μ = Tr(ΣG)/(s||G||_F²)`` with G the GGN, exactly ``uᵀ(n·bdiag(K_A²) − K_A²)u/(||u||²||K_A||_F²)``
through the GGN kernel K_A and the kernel residuals u — the square loss's μ when A = I. With labels drawn from the
model's own predictions, E Σ = (1 − 1/n)·G and E s = rank A_i (k − 1 for softmax), so μ ≈ (1 − 1/n)/(k − 1).
``two_loss_gn_frob2`` then holds s·||G||_F² and ``loss`` the loss L itself.

Routes: ``"kernel"`` (exact from K), ``"matrix_free"`` (Gauss–Newton- and noise-vector products; Tr(ΣG) exactly
from n GGN products, ||G||_F² by Hutch++ with a standard error, μ_inf not available). ``μ_H`` needs n Hessian-
vector products for Tr(ΣH) and the Hessian's ||H||_F² from :func:`sgdstab.curvature`.
At a global minimum (L at the rounding level of the problem's dtype, :func:`sgdstab.conventions.is_global_minimum`)
μ, μ_H and the directional figures are undefined (0/0: the residuals are rounding noise) and reported as NaN with a
note — measure them where SGD stopped, before polishing; μ_inf is defined there. Near a minimum, where
:func:`sgdstab.curvature` takes H's figures from G's with a bound ρ on ||H − G||_F, μ_H comes without the n
Hessian-vector products: Tr(ΣH) = Tr(ΣG) + Tr(ΣR) with |Tr(ΣR)| ≤ ρ·Tr Σ, and the bound propagates to its error.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor

from sgdstab.conventions import is_global_minimum
from sgdstab.errors import MethodError
from sgdstab.estimators.matrix_free import hutchpp, top_eigenpairs
from sgdstab.kernel import figures as kf
from sgdstab.kernel.kernel import Kernel
from sgdstab.measure.curvature import Curvature, curvature
from sgdstab.measure.plan import check_method, check_rtol, check_seed, plan_method
from sgdstab.measure.precision import CURVATURE_CHECKED, precision_check
from sgdstab.measure.routes import given_kernel
from sgdstab.operators.products import (
    gauss_newton_matmat,
    gauss_newton_operator,
    hessian_matmat,
    noise_covariance_operator,
)
from sgdstab.problem.problem import Problem
from sgdstab.utils.results import ResultMixin
from sgdstab.utils.validation import check_int

ALIGNMENT_METHODS = ("auto", "kernel", "matrix_free")
_BLOCK = 64


@dataclass(frozen=True)
class Alignment(ResultMixin):
    """Noise–curvature alignment at θ. ``*_stderr`` are standard errors (0 for exact figures); ``converged``: every
    iterative solver used reached its tolerance; ``float64_check_difference``: see :class:`sgdstab.Curvature`.

    Example:
        >>> import torch, sgdstab
        >>> model = sgdstab.mlp((3,), 1, widths=(8,), seed=0).double()
        >>> X = torch.randn(20, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> a = sgdstab.alignment(sgdstab.Problem(model, X, model(X).detach()), hessian=False)  # a global minimum
        >>> a.mu, round(a.mu_inf, 3), a.notes[0].split(":")[0]  # μ is 0/0 there, μ_inf is not
        (nan, 0.282, 'the loss is exactly zero')
    """

    mu: float
    mu_stderr: float
    mu_hessian: float
    mu_hessian_stderr: float
    mu_inf: float
    tr_sigma_g: float
    two_loss_gn_frob2: float
    two_loss_gn_frob2_stderr: float
    tr_sigma_h: float
    two_loss_hess_frob2: float
    two_loss_hess_frob2_stderr: float
    trace_sigma: float
    directional: tuple[float, ...]
    directional_eigenvalues: tuple[float, ...]
    loss: float
    grad_norm: float
    method: str
    exact: bool
    seconds: float
    notes: tuple[str, ...] = field(default=())
    converged: bool = True
    float64_check_difference: float | None = None


def _noise_traces(problem: Problem, matmat, centre: Tensor) -> tuple[float, float]:
    """(Tr Σ, Tr(ΣM)) with Σ = (1/n) Σ_i (g_i − ḡ)(g_i − ḡ)ᵀ and M given by the product ``matmat``.

    Runs over per-sample gradients in blocks: n products of M in all, never all gradients at once.
    """
    trace, quadratic = 0.0, 0.0
    for _, grads in problem.per_sample_gradient_blocks(_BLOCK):
        centred = (grads - centre).T.contiguous()  # (p, m)
        trace += float((centred.to(torch.float64) ** 2).sum())
        product = matmat(centred)
        quadratic += float((centred.to(torch.float64) * product.to(torch.float64)).sum())
    return trace / problem.n, quadratic / problem.n


@dataclass(frozen=True)
class NoiseFigures:
    """The alignment of the SGD noise with G from one route (``*_stderr`` 0 when exact); ``notes`` say what the
    route could not give or did not converge."""

    mu: float
    mu_stderr: float
    mu_inf: float
    tr_sigma_g: float
    two_loss_gn_frob2: float
    two_loss_gn_frob2_stderr: float
    trace_sigma: float
    directional: tuple[float, ...]
    directional_eigenvalues: tuple[float, ...]
    grad_norm: float
    exact: bool
    converged: bool
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class HessianNoiseFigures:
    """μ_H = Tr(ΣH)/(2L||H||_F²) with its parts and errors (NaN where not measured or undefined)."""

    tr_sigma_h: float
    two_loss_hess_frob2: float
    two_loss_hess_frob2_stderr: float
    mu_hessian: float
    mu_hessian_stderr: float
    exact: bool = True
    converged: bool = True
    notes: tuple[str, ...] = ()


_NOT_MEASURED = HessianNoiseFigures(math.nan, math.nan, 0.0, math.nan, 0.0)


def alignment(
    problem: Problem,
    top: int = 10,
    method: str = "auto",
    hessian: bool = True,
    rtol: float = 1e-3,
    seed: int = 0,
    curvature_result: Curvature | None = None,
    kernel: Kernel | Tensor | None = None,
) -> Alignment:
    """Alignment figures of ``problem`` at its current parameters (see the module docstring for each figure).

    Args:
        problem: the problem at θ.
        top: number of top eigenvectors of G along which the directional alignment is reported.
        method: ``"auto"`` (kernel when K fits in memory), ``"kernel"`` or ``"matrix_free"``.
        hessian: also compute ``μ_H`` (n Hessian-vector products and the Hessian's ||H||_F).
        rtol: relative standard error for the stochastic figures (||·||_F² by Hutch++).
        seed: seed of the stochastic estimators.
        curvature_result: a :func:`sgdstab.curvature` result at the same θ, whose ||H||_F μ_H then uses instead
            of measuring it again.
        kernel: the NTK at this θ when already built (a tensor or a :class:`sgdstab.Kernel`), used by the kernel
            route instead of building K again (and passed on to :func:`sgdstab.curvature` for μ_H).

    Returns:
        An :class:`Alignment`. At a global minimum (loss at the dtype's rounding level) μ, μ_H and the
        directional figures are NaN with a note; μ_inf is defined there.

    Raises:
        MethodError: an unknown method, a bad ``top``/``rtol``/``seed``, a ``kernel`` that is not this problem's
            NTK at θ, or a ``curvature_result`` measured at other parameters.

    Example:
        >>> import torch, sgdstab
        >>> model = sgdstab.mlp((3,), 1, widths=(8,), seed=0).double()
        >>> X = torch.randn(20, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> problem = sgdstab.Problem(model, X, torch.zeros(20, 1, dtype=torch.float64))
        >>> a = sgdstab.alignment(problem, top=2, hessian=False)  # hessian=True adds μ_H (n Hessian products)
        >>> a.method, a.exact, round(a.mu, 3), round(a.mu_inf, 3), len(a.directional)
        ('kernel', True, 0.923, 0.282, 2)
    """
    rtol, seed = _check_alignment_args(method, top, rtol, seed)
    start = time.perf_counter()
    if method == "auto":  # the kernel route whenever K fits in memory (plan_method only offers it then)
        feasible = plan_method(problem, rtol, at_minimum=True).estimated_seconds
        method = "kernel" if "kernel" in feasible else "matrix_free"
    r, half_scale, loss = _residuals_and_scales(problem)
    K = None
    if method == "kernel":
        K, eig, _ = given_kernel(problem, kernel)
        figures = _kernel(problem, top, r, half_scale, K, eig)
    else:
        figures = _matrix_free(problem, top, rtol, seed, half_scale)
    at_minimum = problem.square_loss and is_global_minimum(loss, problem.Y, problem.dtype)
    figures = _undefined_at_zero_loss(problem, figures, half_scale, at_minimum)
    if hessian:
        curv = curvature_result or curvature(problem, method="auto", rtol=rtol, seed=seed, kernel=kernel)
        h = _mu_hessian(problem, figures, curv, (loss, half_scale), at_minimum)
    else:
        h = _NOT_MEASURED
    check, precision_notes = precision_check(
        problem,
        kernel=K if method == "kernel" else None,
        residuals=r,
        figures=CURVATURE_CHECKED if at_minimum else None,  # μ and Tr(ΣG) are not reported at a minimum
    )
    return Alignment(
        mu=figures.mu,
        mu_stderr=figures.mu_stderr,
        mu_hessian=h.mu_hessian,
        mu_hessian_stderr=h.mu_hessian_stderr,
        mu_inf=figures.mu_inf,
        tr_sigma_g=figures.tr_sigma_g,
        two_loss_gn_frob2=figures.two_loss_gn_frob2,
        two_loss_gn_frob2_stderr=figures.two_loss_gn_frob2_stderr,
        tr_sigma_h=h.tr_sigma_h,
        two_loss_hess_frob2=h.two_loss_hess_frob2,
        two_loss_hess_frob2_stderr=h.two_loss_hess_frob2_stderr,
        trace_sigma=figures.trace_sigma,
        directional=figures.directional,
        directional_eigenvalues=figures.directional_eigenvalues,
        loss=loss,
        grad_norm=figures.grad_norm,
        method=method,
        exact=bool(figures.exact and h.exact),
        seconds=time.perf_counter() - start,
        notes=(*figures.notes, *h.notes, *precision_notes),
        converged=bool(figures.converged and h.converged),
        float64_check_difference=check,
    )


def _residuals_and_scales(problem: Problem) -> tuple[Tensor, float, float]:
    """(u, s/2, L): the kernel residuals (r for the square loss), half the mean output noise scale s = mean ||u_i||²
    — which takes 2L's place in μ for a loss of THEORY.md §9 — and the loss (s/2 itself for the square loss)."""
    u = problem.kernel_residuals()
    half_scale = float((u.to(torch.float64) ** 2).sum()) / (2 * problem.n)
    return u, half_scale, half_scale if problem.square_loss else float(problem.loss())


def _check_alignment_args(method: str, top: int, rtol: float, seed: int) -> tuple[float, int]:
    check_method(method, ALIGNMENT_METHODS, "alignment method")
    check_int(top, "top", minimum=1, error=MethodError)
    return check_rtol(rtol), check_seed(seed)


def _kernel(problem: Problem, top: int, r: Tensor, loss: float, K: Tensor, eig: kf.KernelEigen | None) -> NoiseFigures:
    """Every figure exact from K and its eigendecomposition."""
    n, k = problem.n, problem.k
    assert eig is not None  # given_kernel(eigen=True) always decomposes
    nf = kf.noise_figures(K, r, n, k)
    lam, W = eig.range_basis()
    m = min(top, W.shape[1])
    W_top, lam_top = W[:, -m:].flip(1), lam[-m:].flip(0)
    directional = kf.directional_alignment(r, W_top, n, k) if loss > 0 else torch.full((m,), math.nan)
    return NoiseFigures(
        mu=nf.mu,
        mu_stderr=0.0,
        mu_inf=kf.uniform_alignment(K, n, k, eig),
        tr_sigma_g=nf.tr_sigma_g,
        two_loss_gn_frob2=nf.two_loss_gn_frob2,
        two_loss_gn_frob2_stderr=0.0,
        trace_sigma=nf.trace_sigma,
        directional=tuple(float(x) for x in directional),
        directional_eigenvalues=tuple(float(x) / n for x in lam_top),
        grad_norm=nf.grad_norm,
        exact=True,
        converged=True,
    )


def _matrix_free(problem: Problem, top: int, rtol: float, seed: int, loss: float) -> NoiseFigures:
    """Tr(ΣG) exactly from n Gauss–Newton products, ||G||_F² by Hutch++ deflated by G's top eigenvectors (Lanczos),
    the directional figures along those; no μ_inf."""
    gradient = problem.gradient()
    trace_sigma, tr_sigma_g = _noise_traces(problem, lambda V: gauss_newton_matmat(problem, V), gradient)
    gop = gauss_newton_operator(problem)
    k_top = max(1, min(top, problem.p - 2))
    eig = top_eigenpairs(gop, k=k_top, which="LA", seed=seed, maxiter=50)
    tf = hutchpp(gop, rtol=rtol, basis=eig.eigenvectors, seed=seed + 1)
    two_l = 2 * loss * tf.frobenius_squared
    two_l_se = 2 * loss * tf.frob2_stderr
    mu = tr_sigma_g / two_l if two_l > 0 else math.nan
    sop = noise_covariance_operator(problem)
    V = eig.eigenvectors
    vsv = (V * sop.matmat(V)).sum(0)
    vgv = (V * gop.matmat(V)).sum(0)
    directional = vsv / (2 * loss * vgv) if loss > 0 else vsv * math.nan
    notes = []
    if not tf.converged:
        notes.append("Hutch++ on G stopped at its budget before reaching rtol")
    if not eig.converged:
        notes.append("Lanczos on G did not converge: the directional figures are along its last Ritz vectors")
    notes.append("μ_inf needs the kernel route (method='kernel')")
    return NoiseFigures(
        mu=mu,
        mu_stderr=abs(mu) * two_l_se / two_l if two_l > 0 else 0.0,
        mu_inf=math.nan,
        tr_sigma_g=tr_sigma_g,
        two_loss_gn_frob2=two_l,
        two_loss_gn_frob2_stderr=two_l_se,
        trace_sigma=trace_sigma,
        directional=tuple(float(x) for x in directional),
        directional_eigenvalues=tuple(float(x) for x in eig.eigenvalues),
        grad_norm=float(torch.linalg.vector_norm(gradient)),
        exact=False,
        converged=bool(eig.converged and tf.converged),
        notes=tuple(notes),
    )


def _undefined_at_zero_loss(problem: Problem, figures: NoiseFigures, loss: float, at_minimum: bool) -> NoiseFigures:
    """At a global minimum μ and the directional figures are 0/0 (the residuals are rounding noise): NaN, noted."""
    if loss == 0:
        return dataclasses.replace(
            figures, notes=(*figures.notes, "the loss is exactly zero: μ and μ_H are undefined (0/0)")
        )
    if not at_minimum:
        return figures
    note = (
        f"θ is a global minimum to {str(problem.dtype).removeprefix('torch.')} rounding (L = {loss:.3g}): μ, μ_H "
        "and the directional alignments are 0/0 here (the residuals are rounding noise); measure them where SGD "
        "stopped, before polishing. μ_inf is defined"
    )
    return dataclasses.replace(
        figures,
        mu=math.nan,
        mu_stderr=math.nan,
        directional=tuple(math.nan for _ in figures.directional),
        notes=(*figures.notes, note),
    )


def _mu_hessian(
    problem: Problem, figures: NoiseFigures, curv: Curvature, losses: tuple[float, float], at_minimum: bool
) -> HessianNoiseFigures:
    """μ_H with the Hessian's ||H||_F from ``curv``: undefined at a global minimum; near one, from Tr(ΣG) with
    curvature's bound on ||H − G||_F; elsewhere from n Hessian-vector products. ``losses``: (L, half the mean output
    noise scale), equal for the square loss."""
    real_loss, loss = losses
    if not math.isclose(curv.loss, real_loss, rel_tol=1e-5, abs_tol=1e-12):
        raise MethodError("curvature_result was measured at other parameters (its loss differs)")
    two_l_h = 2 * loss * curv.hessian_frobenius**2
    notes: list[str] = []
    if at_minimum:
        tr_sigma_h = mu_h = math.nan
        two_l_h_se = mu_h_se = 0.0
    elif curv.at_minimum and curv.residual_frobenius_bound is not None:
        # H = G + R with ||R||_F ≤ ρ (curvature's near-minimum route): Tr(ΣH) = Tr(ΣG) + Tr(ΣR), |Tr(ΣR)| ≤ ρ·Tr Σ
        rho = curv.residual_frobenius_bound
        tr_sigma_h = figures.tr_sigma_g
        two_l_h_se = 2 * loss * 2 * curv.hessian_frobenius * rho
        mu_h = tr_sigma_h / two_l_h if two_l_h > 0 else math.nan
        mu_h_se = (rho * figures.trace_sigma + abs(tr_sigma_h) * two_l_h_se / two_l_h) / two_l_h
        notes.append(f"μ_H from μ's Tr(ΣG) near a minimum: |Tr(Σ(H − G))| ≤ ||H − G||_F·Tr Σ, ||H − G||_F ≤ {rho:.2g}")
    else:
        centre = problem.gradient()
        _, tr_sigma_h = _noise_traces(problem, lambda V: hessian_matmat(problem, V), centre)
        two_l_h_se = 2 * loss * 2 * curv.hessian_frobenius * curv.hessian_frobenius_stderr
        mu_h = tr_sigma_h / two_l_h if two_l_h > 0 else math.nan
        mu_h_se = abs(mu_h) * two_l_h_se / two_l_h if two_l_h > 0 else 0.0
    notes.append(f"μ_H uses ||H||_F from the {curv.method} route")
    return HessianNoiseFigures(
        tr_sigma_h, two_l_h, two_l_h_se, mu_h, mu_h_se, bool(curv.exact), bool(curv.converged), tuple(notes)
    )
