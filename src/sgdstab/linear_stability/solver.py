"""Linear (mean-square) stability of SGD at a global minimum, from the NTK Gram matrix K (THEORY.md §4).

At a global minimum θ*, SGD linearizes to ``u_{t+1} = (I − (η/B) K D_ξ) u_t`` on the residual ``u = Jδ``, and the
second moment ``M_t = E[u_t u_tᵀ]`` follows

    T(M) = (I − ηK/n) M (I − ηK/n) + η² c [ (1/n) K bdiag(M) K − (1/n²) K M K ],

``c`` = :func:`sgdstab.noise_scale`. θ* is mean-square stable iff ``ρ(T) ≤ 1``; ``E L̃_t`` grows like
``ρ(T)^t`` otherwise. Writing ``T = I − 2ηC + η²D`` with ``C(M) = (KM + MK)/(2n)`` and
``D(M) = ((1−c)/n²) KMK + (c/n) K bdiag(M) K``, the critical learning rate is ``η* = 2/λ_max(C⁻¹D)``.

**Coordinates** (the forms are built in :mod:`sgdstab.linear_stability.operator`). Everything runs in K's
eigenbasis restricted to range(K) (the null space of K never moves):
``K = U Λ Uᵀ`` with the r eigenvalues above the cutoff of :func:`sgdstab.kernel.figures.kernel_eigen`. With
``V = U Λ^{1/2}`` (so ``K = V Vᵀ``) and the congruence ``M = V N Vᵀ`` (``N_ab = M̃_ab/√(λ_a λ_b)``), the operators
become *self-adjoint* on symmetric r×r matrices with the Frobenius inner product:

    T̂(N) = S ∘ N + (η²c/n) Vᵀ bdiag(V N Vᵀ) V,      S_ab = p_a p_b − (η²c/n²) λ_a λ_b,  p_a = 1 − ηλ_a/n,
    Ĉ(N) = ĉ ∘ N,  ĉ_ab = (λ_a + λ_b)/(2n),      D̂(N) = ((1−c)/n²) λ_a λ_b N_ab + (c/n) Vᵀ bdiag(V N Vᵀ) V.

(The bdiag term ``K bdiag(M) K`` alone is not self-adjoint in M; in N it is ``Ψ* P Ψ`` with ``Ψ(N) = V N Vᵀ`` and
P the block-diagonal projection.) T̂ is similar to T on Sym(range K), so it has the same, real, spectrum; it maps
PSD to PSD, so by Perron–Frobenius for cones ``ρ(T)`` is its largest eigenvalue, attained by a PSD eigenmatrix.
``C⁻¹D`` is similar to the PSD operator ``Ĉ^{-1/2} D̂ Ĉ^{-1/2}``. Both are therefore *symmetric* eigenproblems
(so Lanczos, ``scipy.sparse.linalg.eigsh(which="LA")``, replaces Arnoldi), on symmetric r×r matrices vectorized by
their upper triangle with off-diagonal entries scaled by √2 (an isometry onto R^{r(r+1)/2}; a full r² vectorization
would add a spurious antisymmetric block):

- ``dense``: ``eigh`` of the materialized r(r+1)/2-square matrix, when that is small (``DENSE_MAX_DIM``);
- ``lanczos``: η* always, and ρ above η* (beyond 1.002 η*), where T̂'s top eigenvalue is isolated;
- ``lobpcg``: ρ below and at η* (up to 1.002 η*). There T̂'s top is a cluster just below 1 of slowly contracting
  modes (those of K's smallest eigenvalues), on which Lanczos and the power method crawl (~10³ products). Instead
  ``ρ = 1 − λ_min(Z)``, ``Z = I − T̂ = 2ηĈ − η²D̂``, by LOBPCG preconditioned with Ĉ⁻¹: below η*,
  ``2η(1 − η/η*)Ĉ ⪯ Z ⪯ 2ηĈ``. At η* Lanczos crawls too (ρ = 1 sits on the cluster; 300–1900 products, off by up
  to 7e-9), LOBPCG does not.
- ``power``: power iteration from ``M = I`` (N = Λ⁻¹), the fallback, with a convergence flag (it may crawl on the
  cluster below 1 below η*, and then says so).

``tol`` is the target relative accuracy of the eigenvalues; iterations stop on residuals ~ √tol, since for a
symmetric problem the eigenvalue error is about residual²/gap. LOBPCG, whose Rayleigh quotient is always on the low
side of ρ, tightens its residual until residual²/gap ≤ tol·ρ, the gap read off its block, refining the top vector
alone (at a fixed 10·√tol it was off by up to 3e-6 relative, 1e-8 typically); tests hold every route to 1e-9 of a
dense operator, and the default route at and below η* to 1e-11 (measured ≤ 2e-12 over 480 random cases). At c = 0
(GD) T̂ and Ĉ^{-1/2} D̂ Ĉ^{-1/2} are diagonal and every route returns the closed forms ρ = max_a (1 − ηλ_a/n)²,
η* = 2n/λ_max(K). Near ρ = 1 the relative accuracy of ``escape_rate = log ρ`` is tol·ρ/|log ρ|, not tol.

**Cost.** One application of T̂ (or of ``Ĉ^{-1/2} D̂ Ĉ^{-1/2}``) costs one GEMM of size nk × r × r (``W = V N``)
and one symmetric Gram matrix ``Ṽᵀ diag(e) Ṽ`` (another nk × r × r product, done by blocks at ~0.75 of a GEMM),
about ``3.5·nk·r²`` flops, plus O(n k² r) (k > 1: n small k×k eigendecompositions); a solve takes ~17–35
products for η* and ~17–100 more for ρ. K's eigendecomposition costs O((nk)³) once per :class:`Kernel`. For nk
beyond ~1200, ``method="galerkin"`` restricts both operators to the top r eigen-subspace of K (r = 64, 128, 256, …
until ρ and η* change by less than ``galerkin_rtol`` between successive r, each level warm-started from the last).
That restriction is a compression of a self-adjoint operator, so ρ and ``λ_max(C⁻¹D)`` grow with r towards their
exact values: the Galerkin ρ is a lower bound and its η* an upper bound. It converges fast when K's spectrum
decays fast (λ_j ~ j^-2.5: r = 128 of 3000 for 1e-3) and slowly when it does not (j^-1.5: r = 2048 of 3000),
because the noise term couples the top modes to all others. Levels of rank ≥ 2048 multiply in float32 (twice the
speed; the eigenvalues move by ~1e-7 relative there, stated in the notes and tested against float64), and beyond
that rank a level above half the rank is skipped (it would cost most of the exact solve). At the paper's
Fashion-MNIST minimum (n·k = 10⁴, K of full rank, whose λ_max(C⁻¹D) still moves 1.3% from r = 2048 to 4096) the
levels reach the full rank: η*(B = 4) in about 4 minutes on 2 cores after K's eigendecomposition (80 s), 15 GB at
the peak, with a progress line and an ETA on stderr (``benchmarks/bench_paper_stability.py``).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse.linalg as spla
import torch
from torch import Tensor

from sgdstab.conventions import check_batch_size, check_learning_rate, check_sampling, is_global_minimum, noise_scale
from sgdstab.errors import StabilityError
from sgdstab.kernel.kernel import Kernel
from sgdstab.kernel.ntk import KernelSource, as_kernel
from sgdstab.linear_stability.certificates import Certificates, certificates
from sgdstab.linear_stability.checks import check_galerkin_rtol, check_method, check_tol
from sgdstab.linear_stability.momentum import check_momentum, momentum_critical_lr, momentum_rho
from sgdstab.linear_stability.operator import (
    BATCHED_PRODUCTS_MAX_RANK,
    SymmetricForm,
    dense_ok_for,
    embed,
    form_memory_bytes,
    stability_operator,
    symmetric_form,
)
from sgdstab.linear_stability.proxy import mean_square_proxy
from sgdstab.problem.problem import Problem
from sgdstab.utils.memory import available_memory_bytes, check_allocation
from sgdstab.utils.results import ResultMixin

__all__ = ["EXACT_MAX_RANK", "METHODS", "Stability", "critical_learning_rate", "stability", "stability_operator"]

METHODS: tuple[str, ...] = ("auto", "exact", "dense", "lanczos", "power", "galerkin")

EXACT_MAX_RANK = 1200  # method="auto": exact up to this rank of K, Galerkin beyond
GALERKIN_START = 64
FLOAT32_PRODUCTS_RANK = 2048  # Galerkin levels of at least this rank multiply in float32 (see _solve_galerkin)
FLOAT32_PRODUCTS_TOL = 1e-8  # the eigen-solver's tolerance there: float32 products cannot resolve finer residuals
_POWER_MAX_MATVECS = 5_000
_NCV = 16  # Lanczos basis size: one restart usually suffices
# residual tolerances = factor·√tol (symmetric problems: eigenvalue error ≲ residual²/gap); set from measurements
_RESIDUAL = 0.1  # Lanczos (ARPACK, relative to the eigenvalue)
_RESIDUAL_LOBPCG = 10.0  # LOBPCG on Z: first residual target, relative to max |diag Z| (then tightened to the gap)
_LOBPCG_REFINEMENTS = 4
# ρ by LOBPCG on Z = I − T̂ up to this multiple of η*, by Lanczos beyond. At η* itself (ρ = 1 on top of the cluster)
# Lanczos took 300–1900 products and was off by up to 7e-9 relative, LOBPCG 42–73 products and 1e-14; at 1.002 η*
# they cost about the same (rank 36–40 kernels)
_LOBPCG_MAX_RATIO = 1 + 2e-3


# --------------------------------------------------------------------------------------------------- eigen routes
@dataclass
class _Eig:
    value: float
    vector: Tensor | None
    converged: bool
    matvecs: int
    route: str


def _top_eigen(
    matvec: Callable[[Tensor], Tensor],
    dense: Callable[[], Tensor] | None,
    m: int,
    route: str,
    tol: float,
    v0: Tensor | None,
) -> _Eig:
    """Largest (algebraic) eigenvalue of a symmetric operator of dimension m, with its eigenvector."""
    if m == 0:
        return _Eig(0.0, None, True, 0, route)
    if route == "dense" or m < 3:
        assert dense is not None
        A = dense()
        values, vectors = torch.linalg.eigh((A + A.T) / 2)
        # the largest |eigenvalue|; for T̂ Perron–Frobenius makes it the largest one, so this is a check
        if float(-values[0]) > float(values[-1]):
            return _Eig(float(-values[0]), vectors[:, 0], True, 0, "dense")
        return _Eig(float(values[-1]), vectors[:, -1], True, 0, "dense")
    if route == "lanczos":
        return _lanczos(matvec, m, tol, v0)
    if route == "power":
        return _power(matvec, m, tol, v0)
    raise StabilityError(f"unknown eigen route {route!r}")


def _lanczos(matvec: Callable[[Tensor], Tensor], m: int, tol: float, v0: Tensor | None) -> _Eig:
    """Top eigenpair by ARPACK's Lanczos (``eigsh``, which="LA"); the power method goes on where it fails."""
    count = [0]

    def mv(x: np.ndarray) -> np.ndarray:
        count[0] += 1
        return matvec(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64).reshape(-1))).numpy()

    op = spla.LinearOperator((m, m), matvec=mv, dtype=np.float64)
    start = None if v0 is None else v0.numpy()
    try:
        vals, vecs = spla.eigsh(
            op, k=1, which="LA", v0=start, tol=_RESIDUAL * math.sqrt(tol), ncv=_ncv(m), maxiter=2000
        )
        return _Eig(float(vals[0]), torch.from_numpy(vecs[:, 0].copy()), True, count[0], "lanczos")
    except spla.ArpackNoConvergence as exc:
        start_t = torch.from_numpy(exc.eigenvectors[:, 0].copy()) if exc.eigenvectors.size else v0
        res = _power(matvec, m, tol, start_t)
        res.matvecs += count[0]
        res.route = "lanczos+power"
        return res


def _ncv(m: int) -> int:
    """Lanczos basis size: ``_NCV``, fewer when its m-long vectors would take over a fifth of the free memory (at
    r = 10⁴ each is 400 MB; 16 of them were a third of a 24 GB machine). Fewer means more restarts, not less
    accuracy."""
    fits = int(0.2 * available_memory_bytes() // (8 * max(m, 1)))
    return max(2, min(m - 1, _NCV, max(6, fits)))


def _power(matvec: Callable[[Tensor], Tensor], m: int, tol: float, v0: Tensor | None) -> _Eig:
    """Power iteration with Rayleigh quotients; converged when the residual ‖Ax − θx‖ ≤ tol^0.8·|θ|
    and θ changed by at most tol·|θ|."""
    x = torch.ones(m, dtype=torch.float64) if v0 is None else v0.clone()
    x = x / x.norm()
    theta_old = math.nan
    for it in range(1, _POWER_MAX_MATVECS + 1):
        y = matvec(x)
        theta = float(x @ y)
        res = float((y - theta * x).norm())
        ny = float(y.norm())
        if ny == 0:
            return _Eig(0.0, x, True, it, "power")
        if res <= tol**0.8 * abs(theta) and abs(theta - theta_old) <= tol * abs(theta):
            return _Eig(theta, x, True, it, "power")
        theta_old = theta
        x = y / ny
    return _Eig(theta, x, False, _POWER_MAX_MATVECS, "power")


def _diagonal_top(diag: Tensor, m: int) -> _Eig:
    """The top eigenvalue of a diagonal operator: exact. At c = 0 (GD: B = n without replacement) T̂ = S ∘ N with
    S_ab = p_a p_b is diagonal, and its largest eigenvalue p_a² ≥ |p_a p_b| is ρ = max_a (1 − ηλ_a/n)²; likewise
    Ĉ^{-1/2} D̂ Ĉ^{-1/2} has diagonal 2λ_aλ_b/(n(λ_a + λ_b)), largest λ_max/n, so η* = 2n/λ_max(K) exactly."""
    if m == 0:
        return _Eig(0.0, None, True, 0, "diagonal")
    i = int(torch.argmax(diag))
    vector = torch.zeros(m, dtype=torch.float64)
    vector[i] = 1.0
    return _Eig(float(diag[i]), vector, True, 0, "diagonal")


def _rho(
    form: SymmetricForm, eta: float, c: float, route: str, tol: float, v0: Tensor | None, eta_star: float = math.nan
) -> _Eig:
    """ρ(T) = the largest eigenvalue of T̂. On the Lanczos route, at and below η* (where T̂'s top is a cluster near 1 of
    slowly contracting modes, on which Lanczos crawls) it is computed as 1 − λ_min(Z), Z = I − T̂ = 2ηĈ − η²D̂, by
    LOBPCG preconditioned with Ĉ⁻¹: below η*, 2η(1 − η/η*)Ĉ ⪯ Z ⪯ 2ηĈ, so the preconditioned condition
    number is at most 1/(1 − η/η*)."""
    sdiag = form.t_diag(eta, c)
    coef = eta**2 * c / form.n
    if coef == 0:
        return _diagonal_top(sdiag, form.m)

    def mv(v: Tensor) -> Tensor:
        out = sdiag * v
        if coef:
            out = out + coef * form.bdiag(v)
        return out

    def dense() -> Tensor:
        out = torch.diag(sdiag)
        return out + coef * form.dense_bdiag() if coef else out

    if route == "power":
        # from M = I (N = Λ⁻¹), which meets every PSD matrix, hence the Perron eigenmatrix; never from the η*
        # eigenmatrix, which may itself be an eigenvector of T̂ with a smaller eigenvalue (exactly so at c = 0)
        v0 = form.identity_start()
    if route == "lanczos" and form.m >= 16 and eta < eta_star * _LOBPCG_MAX_RATIO:
        # the η* eigenvector y of Ĉ^{-1/2} D̂ Ĉ^{-1/2} is Ĉ^{1/2} u for the mode u with Z u = 0 at η*: start from u.
        # Started from y itself LOBPCG (preconditioned by Ĉ⁻¹, which favours the cluster) converged to the cluster
        # and returned ρ = 0.99989 at η*, where ρ = 1 (NTK, n·k = 1000), flagged converged
        start = None if v0 is None else v0 * form.c_diag().rsqrt()
        res = _rho_lobpcg(form, eta, c, tol, None if start is None else start / start.norm())
        if res.converged:
            return res
        more = _top_eigen(mv, dense, form.m, route, tol, res.vector)
        more.matvecs += res.matvecs
        return more
    return _top_eigen(mv, dense, form.m, route, tol, v0)


def _rho_lobpcg(form: SymmetricForm, eta: float, c: float, tol: float, v0: Tensor | None) -> _Eig:
    zdiag = form.z_diag(eta, c)
    coef = eta**2 * c / form.n
    prec = 1.0 / (2 * eta * form.c_diag())
    count = [0]

    def z(X: np.ndarray) -> np.ndarray:
        Xt = torch.from_numpy(np.ascontiguousarray(np.asarray(X).reshape(form.m, -1).T))
        count[0] += Xt.shape[0]
        out = zdiag * Xt
        if coef:
            out = out - coef * form.bdiag(Xt)
        return out.T.numpy()

    def p(X: np.ndarray) -> np.ndarray:
        return np.asarray(X).reshape(form.m, -1) * prec.numpy()[:, None]

    # starts: the η* eigenmatrix, the slowest diagonal mode (smallest λ is packed index 0), M = I
    starts = [form.identity_start()]
    if v0 is not None:
        starts.insert(0, v0)
    slow = torch.zeros(form.m, dtype=torch.float64)
    slow[0] = 1.0
    starts.append(slow)
    if form.r >= BATCHED_PRODUCTS_MAX_RANK:  # LOBPCG holds ~7 blocks of m-long vectors (400 MB each at r = 10⁴);
        starts = starts[:2]  # two, not one: the second Ritz value is the gap the accuracy rule needs
    X0 = torch.stack(starts, 1).numpy()
    A = spla.LinearOperator((form.m, form.m), matvec=z, matmat=z, dtype=np.float64)
    M = spla.LinearOperator((form.m, form.m), matvec=p, matmat=p, dtype=np.float64)
    scale = float(zdiag.abs().max())
    # The Rayleigh quotient σ of a vector with residual ‖Zx − σx‖ = res lies above λ_min(Z) by about res²/gap: ρ
    # comes out low by that much (2.6e-8 relative at a fixed residual of 10·√tol·scale). So the residual target is
    # tightened until res²/gap ≤ tol·ρ, with the gap read off the block's next Ritz value.
    target = _RESIDUAL_LOBPCG * math.sqrt(tol) * scale
    x, sigma, res, ok, gap = X0, math.nan, math.inf, False, scale
    for _ in range(_LOBPCG_REFINEMENTS):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vals, vecs = spla.lobpcg(A, x, M=M, largest=False, tol=target, maxiter=400)
        order = np.argsort(vals)
        x = vecs[:, order]
        best = torch.from_numpy(np.ascontiguousarray(x[:, 0]))
        best = best / best.norm()
        zx = torch.from_numpy(z(best.numpy()[:, None])[:, 0])
        sigma = float(best @ zx)
        res = float((zx - sigma * best).norm())
        if len(vals) > 1:
            gap = float(vals[order[1]] - vals[order[0]])
        needed = math.sqrt(tol * max(1.0 - sigma, 1e-300) * max(gap, 1e-300))
        ok = res <= max(needed, 1e-300) or res <= 1e-15 * max(scale, 1e-300)
        if ok:
            break
        if res <= 1.01 * target:
            target = min(target, 0.5 * needed)
            # refine the best vector alone: LOBPCG's tolerance binds every block column, and the others sit in the
            # slowly converging cluster (measured: 44 products instead of 88 for the same ρ to 1e-13, n·k = 1000)
            x = x[:, :1]
    return _Eig(1.0 - sigma, best, ok, count[0], "lobpcg")


def _critical(form: SymmetricForm, c: float, route: str, tol: float, v0: Tensor | None) -> _Eig:
    """Largest eigenvalue of Ĉ^{-1/2} D̂ Ĉ^{-1/2} (= λ_max(C⁻¹D)); η* = 2 / it."""
    s = form.c_diag().rsqrt()
    ddiag = form.d_diag(c) * s * s
    coef = c / form.n
    if coef == 0:
        return _diagonal_top(ddiag, form.m)

    def mv(v: Tensor) -> Tensor:
        out = ddiag * v
        if coef:
            out = out + coef * s * form.bdiag(s * v)
        return out

    def dense() -> Tensor:
        out = torch.diag(ddiag)
        if coef:
            out = out + coef * (s[:, None] * form.dense_bdiag() * s[None, :])
        return out

    if v0 is None:
        v0 = form.pack(torch.eye(form.r, dtype=torch.float64))
        v0 = v0 / v0.norm() if form.m else v0
    return _top_eigen(mv, dense, form.m, route, tol, v0)


def _eta_star(top: float) -> float:
    return 2.0 / top if top > 0 else math.inf


@dataclass(frozen=True)
class _EigenmatrixShape:
    """Whether the top eigenmatrix N (⇔ M̃ = Λ^{1/2} N Λ^{1/2}) is PSD within a tolerance, and its λ_min/λ_max
    (of ±N, the sign that makes its trace non-negative)."""

    psd: bool
    min_ratio: float


def _psd_check(form: SymmetricForm, vector: Tensor | None, rtol: float) -> _EigenmatrixShape:
    """Is the eigenmatrix N PSD within ``rtol``?"""
    if vector is None or form.m == 0:
        return _EigenmatrixShape(True, 0.0)
    N = form.unpack(vector)
    values = torch.linalg.eigvalsh(N)
    if float(values.sum()) < 0:
        values = -values.flip(0)
    top = float(values[-1])
    ratio = float(values[0]) / top if top > 0 else -1.0
    return _EigenmatrixShape(ratio >= -rtol, ratio)


# --------------------------------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Stability(ResultMixin):
    """Mean-square linear stability of SGD at a global minimum (THEORY.md §4).

    ``rho``: spectral radius of the second-moment operator T on Sym(range K); ``stable``: ``rho ≤ 1 + tol``;
    ``escape_rate``: ``log rho`` per step (the growth rate of E L̃_t, not of a typical run); ``critical_lr``: the
    exact η* for this batch size and scheme; ``lr_ratio`` = lr/η*. ``method``: the route that produced ρ
    (``dense``; ``lanczos`` above η*, ``lobpcg`` at or below it; ``power``; ``lanczos+power`` when ARPACK did not
    converge; ``diagonal`` at c = 0, where T̂ is diagonal and ρ its closed form, whichever exact method was asked;
    or ``galerkin``); ``exact`` is False for Galerkin, whose
    ``error`` is the last relative change of ρ and η* between successive subspace ranks (0 when exact), and whose
    ρ is a lower bound and η* an upper bound. ``subspace_rank``: the r used (``rank`` for exact routes).
    ``eigenmatrix_psd``: the top eigenmatrix found is PSD, as Perron–Frobenius says it can be chosen (within
    1e-8 relative for the dense route, 1e-3 for iterative ones, whose eigenvectors are only accurate to about
    √tol over the gap; False also flags a degenerate top eigenvalue); ``eigenmatrix_min_ratio`` its λ_min/λ_max.
    ``matvecs`` counts operator applications for ρ and η* together; ``seconds`` includes the certificates.
    ``kernel_condition``: λ_max/λ_min of K on its range (the dynamics live there); above 1e12 a note says that
    the smallest directions are resolved to only a few digits. ``momentum``, ``nesterov``: the optimizer's β and
    form (:mod:`sgdstab.linear_stability.momentum`; ρ is then the lifted operator's, ``method`` ``"momentum:…"``).
    ``mean_square_proxy``: λ_max(E_B[(I − ηH_B)²]) on range(Jᵀ) (:mod:`sgdstab.linear_stability.proxy`), an upper
    bound on ρ (a sufficient condition only), shown beside it; NaN with momentum and above rank 2000.

    Example:
        >>> import torch, sgdstab
        >>> K = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> st = sgdstab.stability(K, 1.5, 1, with_certificates=False)  # η* = 1: unstable
        >>> st.stable, st.rank, st.method, round(st.lr_ratio, 12), st.escape_rate > 0
        (False, 2, 'dense', 1.5, True)
    """

    rho: float
    stable: bool
    escape_rate: float
    critical_lr: float
    lr_ratio: float
    lr: float
    batch_size: int
    sampling: str
    c: float
    n: int
    k: int
    rank: int
    subspace_rank: int
    method: str
    exact: bool
    error: float
    converged: bool
    matvecs: int
    seconds: float
    eigenmatrix_psd: bool
    eigenmatrix_min_ratio: float
    certificates: Certificates | None
    notes: tuple[str, ...] = ()
    kernel_condition: float = 1.0
    momentum: float = 0.0
    nesterov: bool = False
    mean_square_proxy: float = math.nan

    def __str__(self) -> str:
        text = ResultMixin.__str__(dataclasses.replace(self, certificates=None))
        if self.certificates is None:
            return text
        lines = [line for line in text.splitlines() if not line.lstrip().startswith("certificates ")]
        return "\n".join(lines) + "\n" + "\n".join("  " + line for line in str(self.certificates).splitlines())


ILL_CONDITIONED = 1e12  # λ_max/λ_min on range K beyond which float64 resolves the small end to ≲ 4 digits


def _condition(ker: Kernel) -> float:
    lam, _ = ker.range_basis()
    return float(lam[-1] / lam[0]) if len(lam) else 1.0


def _kernel_notes(ker: Kernel, softmax: bool = False) -> list[str]:
    """Singular and ill-conditioned kernels, said plainly (duplicate samples make K singular; so does softmax's
    A_i, of rank k − 1, in the GGN kernel K_A)."""
    notes = []
    if 0 < ker.rank < ker.nk:
        why = (
            f"softmax's output Hessians have rank k − 1, so rank K_A ≤ n(k − 1) = {ker.n * (ker.k - 1)}"
            if softmax
            else "duplicate samples, or fewer parameters than n·k"
        )
        notes.append(
            f"K is singular: rank {ker.rank} of n·k = {ker.nk} ({why}); the analysis runs on range K, where the "
            "residual dynamics live"
        )
    cond = _condition(ker)
    if cond > ILL_CONDITIONED:
        notes.append(
            f"K is ill-conditioned on its range (λ_max/λ_min = {cond:.2g}): its smallest directions, and any "
            "figure they decide, are resolved to only a few digits"
        )
    return notes


def _route(method: str, rank: int, form_dense_ok: bool) -> str:
    check_method(method, METHODS)
    if method in ("auto", "exact"):
        if method == "auto" and rank > EXACT_MAX_RANK:
            return "galerkin"
        return "dense" if form_dense_ok else "lanczos"
    return method


# --------------------------------------------------------------------------------------------------- solves
@dataclass(frozen=True)
class _Solution:
    """One solve: ρ (None when no learning rate was asked about), λ_max(C⁻¹D) (None when not asked for), the
    subspace rank and form they were found on, and how."""

    rho: _Eig | None
    crit: _Eig | None
    subspace: int
    error: float
    method: str
    matvecs: int
    converged: bool
    form: SymmetricForm
    notes: tuple[str, ...]


def _solve(
    ker: Kernel,
    eta: float | None,
    c: float,
    method: str,
    tol: float,
    galerkin_rtol: float,
    want_critical: bool,
    progress: bool = False,
) -> _Solution:
    """ρ (if ``eta``) and λ_max(C⁻¹D) (if ``want_critical``) on the route ``method`` asks for."""
    rank = ker.rank
    route = _route(method, rank, dense_ok_for(rank, ker.n, ker.k))
    if route != "galerkin":
        return _solve_exact(ker, eta, c, route, tol, want_critical)
    return _solve_galerkin(ker, eta, c, tol, check_galerkin_rtol(galerkin_rtol), want_critical, progress)


def _rho_and_critical(
    form: SymmetricForm,
    eta: float | None,
    c: float,
    route: str,
    tol: float,
    want_critical: bool,
    v0: Tensor | None = None,
) -> tuple[_Eig | None, _Eig | None]:
    """λ_max(C⁻¹D) from ``v0`` (if ``want_critical``), then ρ at ``eta`` (if given), started from its eigenvector."""
    crit = _critical(form, c, route, tol, v0) if want_critical else None
    if eta is None:
        return None, crit
    if crit is None:
        return _rho(form, eta, c, route, tol, None, math.nan), None
    return _rho(form, eta, c, route, tol, crit.vector, _eta_star(crit.value)), crit


def _solve_exact(ker: Kernel, eta: float | None, c: float, route: str, tol: float, want_critical: bool) -> _Solution:
    form = symmetric_form(ker)
    rho, crit = _rho_and_critical(form, eta, c, route, tol, want_critical)
    parts = [e for e in (rho, crit) if e is not None]
    return _Solution(
        rho=rho,
        crit=crit,
        subspace=ker.rank,
        error=0.0,
        method=parts[0].route if parts else route,
        matvecs=sum(e.matvecs for e in parts),
        converged=all(e.converged for e in parts),
        form=form,
        notes=(),
    )


def _galerkin_ranks(rank: int) -> list[int]:
    """The subspace ranks Galerkin tries: GALERKIN_START, doubling, then the full rank. Beyond
    ``FLOAT32_PRODUCTS_RANK`` a level above half the rank is skipped: it would cost most of the exact solve
    (products ∝ r²) and could save at most the rest."""
    sizes = []
    r = GALERKIN_START
    while r < rank:
        if not (rank > FLOAT32_PRODUCTS_RANK and 2 * r > rank):
            sizes.append(r)
        r *= 2
    sizes.append(rank)
    return sizes


def _relative_change(now: tuple[float, float], prev: tuple[float, float]) -> float:
    return max(abs(a - b) / max(abs(a), 1e-300) for a, b in zip(now, prev, strict=True))


def _warm_start(prev_form: SymmetricForm | None, form: SymmetricForm, crit: _Eig | None) -> Tensor | None:
    """The previous level's η* eigenmatrix embedded in this level's subspace (whose top corner it spans)."""
    if prev_form is None or crit is None or crit.vector is None:
        return None
    return embed(prev_form, form, crit.vector)


def _solve_galerkin(
    ker: Kernel,
    eta: float | None,
    c: float,
    tol: float,
    galerkin_rtol: float,
    want_critical: bool,
    progress: bool = False,
) -> _Solution:
    """ρ and λ_max(C⁻¹D) on the top r eigen-directions of K, r doubling until both change by less than
    ``galerkin_rtol`` (or r reaches the rank: exact), each level warm-started from the last. Levels of rank
    ≥ ``FLOAT32_PRODUCTS_RANK`` multiply in float32 (their eigenvalues to ~1e-6 relative: stated in the notes)."""
    rank = ker.rank
    # each level's eigenproblem only needs to be far more accurate than the Galerkin change it is compared with
    level_tol = max(tol, 1e-3 * galerkin_rtol**2)
    prev: tuple[float, float] | None = None
    matvecs, converged, error = 0, True, math.inf
    rho = crit = None
    ranks = _galerkin_ranks(rank)
    shown = _SolveProgress(progress, ranks, ker.n * ker.k)
    # the full-rank form is built only if the levels reach it: its packing arrays alone take ~32·r² bytes
    # (≈ 3 GB at r = 10⁴); it is not kept on the kernel
    form: SymmetricForm | None = None
    for r in ranks:
        prev_form, form = form, _level_form(ker, r, shown)
        sub = "dense" if form.dense_ok() else "lanczos"
        v0 = _warm_start(prev_form, form, crit)
        del prev_form
        single = form.products == torch.float32
        this_tol = max(level_tol if r < rank else tol, FLOAT32_PRODUCTS_TOL if single else 0.0)
        shown.begin(r)
        rho, crit = _rho_and_critical(form, eta, c, sub, this_tol, want_critical, v0)
        parts = [e for e in (rho, crit) if e is not None]
        matvecs += sum(e.matvecs for e in parts)
        converged = all(e.converged for e in parts)
        now = (rho.value if rho else 0.0, crit.value if crit else 0.0)
        if r == rank:
            error = 0.0
            shown.end(r, None)
            break
        if prev is not None:
            error = _relative_change(now, prev)
            if error < galerkin_rtol:
                shown.end(r, error)
                break
        shown.end(r, error if prev is not None else None)
        prev = now
    assert form is not None
    if error == 0.0:
        note = f"Galerkin reached the full rank r = {rank}: exact"
    else:
        note = f"Galerkin on the top {form.r} of {rank} eigen-directions of K; relative change {error:.2g}"
    notes = [note]
    if form.products == torch.float32:
        notes.append(
            f"products in float32 at subspace ranks ≥ {FLOAT32_PRODUCTS_RANK} (twice as fast; ρ and η* to about "
            "1e-6 relative, checked against float64 where both run)"
        )
    return _Solution(rho, crit, form.r, error, "galerkin", matvecs, converged, form, tuple(notes))


def _level_form(ker: Kernel, r: int, shown: _SolveProgress) -> SymmetricForm:
    """The form on the top ``r`` eigen-directions of K, refused first if it cannot fit; float32 products from
    ``FLOAT32_PRODUCTS_RANK`` on."""
    check_allocation(
        form_memory_bytes(r, ker.n * ker.k),
        f"the stability operator on the top {r} eigen-directions of K (rank {ker.rank})",
        "a larger galerkin_rtol stops at a lower rank (an upper bound on η*), or use a machine with more memory",
    )
    products = torch.float32 if r >= FLOAT32_PRODUCTS_RANK else torch.float64
    return SymmetricForm(*ker.range_basis(r), ker.n, ker.k, products, shown.product)


class _SolveProgress:
    """Plain lines on stderr while a long Galerkin solve runs (nothing for one under ``QUIET_SECONDS``): each
    level's result and, within a level, a line every ``INTERVAL`` seconds, with an ETA from the measured seconds
    per product (a product costs ∝ nk·r²) and as many products a level as the most a finished level took (at least
    17: η* needs about that many; a ρ check by LOBPCG needs more, and the estimate learns it from its first level)."""

    QUIET_SECONDS = 20.0
    INTERVAL = 30.0
    PRODUCTS_PER_LEVEL = 17

    def __init__(self, show: bool, ranks: list[int], nk: int) -> None:
        self.show, self.ranks, self.nk = show, ranks, nk
        self.t0 = self.last = time.perf_counter()
        self.r = ranks[0]
        self.count = 0
        self.level_t0 = self.t0
        self.unit: float | None = None  # seconds per product per r²
        self.per_level = self.PRODUCTS_PER_LEVEL  # the most products a finished level took

    def _expected(self) -> int:
        return max(self.per_level, self.count + 1)

    def begin(self, r: int) -> None:
        self.r, self.count, self.level_t0 = r, 0, time.perf_counter()

    def product(self) -> None:
        self.count += 1
        now = time.perf_counter()
        if self.count > 1:
            self.unit = (now - self.level_t0) / ((self.count - 1) * self.r**2)
        if self.show and now - self.last >= self.INTERVAL and now - self.t0 >= self.QUIET_SECONDS:
            self.last = now
            self._line(f"rank {self.r}: product {self.count} (~{self._expected()} a level)")

    def end(self, r: int, change: float | None) -> None:
        self.per_level = max(self.per_level, self.count)
        now = time.perf_counter()
        if not self.show or now - self.t0 < self.QUIET_SECONDS:
            return
        self.last = now
        changed = "" if change is None else f", change {change:.2g}"
        self._line(f"rank {r} done in {now - self.level_t0:.0f} s{changed}")

    def _remaining(self, done: int) -> float:
        if self.unit is None:
            return 0.0
        left = [r for r in self.ranks if r > done]
        return sum(self.unit * self.per_level * r**2 for r in left)

    def _line(self, what: str) -> None:
        elapsed = time.perf_counter() - self.t0
        eta = self._remaining(self.r) + (
            max(0.0, self.unit * self.r**2 * (self._expected() - self.count)) if self.unit else 0.0
        )
        total = self.ranks[-1]
        print(
            f"stability (Galerkin, n·k = {self.nk}, rank {total}): {what}; {_clock(elapsed)} elapsed, "
            f"ETA {_clock(eta)} (if the remaining levels run)",
            file=sys.stderr,
            flush=True,
        )


def _clock(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def critical_learning_rate(
    problem_or_kernel: KernelSource,
    batch_size: int,
    sampling: str = "with_replacement",
    *,
    method: str = "auto",
    tol: float = 1e-10,
    galerkin_rtol: float = 1e-3,
    progress: bool = True,
    momentum: float = 0.0,
    nesterov: bool = False,
) -> float:
    """The exact mean-square critical learning rate ``η* = 2/λ_max(C⁻¹D)`` (THEORY.md §4), no bisection.

    ``ρ(T) ≤ 1`` exactly for ``η ≤ η*``. ``B = n`` without replacement (c = 0) gives ``2n/λ_max(K) = 2/λ_max(H)``;
    ``inf`` when K = 0.

    Args:
        problem_or_kernel: a :class:`~sgdstab.Problem` at a global minimum (K = its NTK), a
            :class:`~sgdstab.Kernel`, or a square symmetric PSD tensor (k = 1).
        batch_size: B, in 1..n.
        sampling: ``"with_replacement"`` or ``"without_replacement"``.
        method: as in :func:`stability` (``"galerkin"`` returns an upper bound on η*).
        tol: the eigen-solver's relative tolerance, in (0, 0.01).
        galerkin_rtol: Galerkin's stopping rule, in (0, 1).
        progress: on the Galerkin route, a line on stderr per level and every 30 s (with an ETA) once the solve
            has run 20 s; nothing for a shorter one.
        momentum, nesterov: ``torch.optim.SGD``'s β and Nesterov flag: with β > 0, η*(B, β) of the lifted
            second moment (:mod:`sgdstab.linear_stability.momentum`), by bisection on ρ = 1 to ``max(tol, 1e-9)``;
            ``method`` is then ignored (rank K ≤ 2000).

    Returns:
        η* on the half-MSE loss L (``inf`` when K = 0).

    Raises:
        ConventionError: a bad batch size or sampling scheme.
        StabilityError: a bad kernel, method, ``tol`` or ``galerkin_rtol``.

    Example:
        >>> import torch, sgdstab
        >>> K = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> round(sgdstab.critical_learning_rate(K, 2, "without_replacement"), 12)  # GD: 2n/λ_max(K)
        1.333333333333
    """
    beta, nesterov = check_momentum(momentum, nesterov)
    ker = as_kernel(problem_or_kernel)
    c = noise_scale(batch_size, ker.n, check_sampling(sampling))
    if beta > 0:
        return momentum_critical_lr(ker, c, beta, nesterov, check_tol(tol))[0]
    sol = _solve(ker, None, c, method, check_tol(tol), galerkin_rtol, want_critical=True, progress=progress)
    assert sol.crit is not None
    return _eta_star(sol.crit.value)


def _checked_request(
    lr: float, sampling: str, tol: float, method: str, momentum: object, nesterov: object
) -> tuple[float, str, float, tuple[float, bool]]:
    """:func:`stability`'s arguments that need no kernel, checked: (η, sampling, tol, (β, nesterov))."""
    eta, scheme, checked_tol = check_learning_rate(lr), check_sampling(sampling), check_tol(tol)
    check_method(method, METHODS)
    return eta, scheme, checked_tol, check_momentum(momentum, nesterov)


def _softmax(source: KernelSource) -> bool:
    return isinstance(source, Problem) and source.loss_convention == "cross_entropy"


def _verdict(
    ker: Kernel, rho: float, eta_star: float, eta: float, b: int, scheme: str, c: float, tol: float
) -> dict[str, object]:
    """The :class:`Stability` fields every route fills alike: ρ's verdict, η*, the request and the kernel's size."""
    return {
        "rho": rho,
        "stable": rho <= 1.0 + tol,
        "escape_rate": math.log(rho) if rho > 0 else -math.inf,
        "critical_lr": eta_star,
        "lr_ratio": eta / eta_star,
        "lr": eta,
        "batch_size": b,
        "sampling": scheme,
        "c": c,
        "n": ker.n,
        "k": ker.k,
        "rank": ker.rank,
        "kernel_condition": _condition(ker),
    }


def _with_momentum(
    ker: Kernel,
    eta: float,
    b: int,
    scheme: str,
    c: float,
    optimizer: tuple[float, bool],
    tol: float,
    notes: list[str],
    start: float,
) -> Stability:
    """:func:`stability` for SGD with momentum: ρ of the lifted operator and η*(B, β) by bisection."""
    beta, nesterov = optimizer
    rho, used = momentum_rho(ker, eta, c, beta, nesterov, tol)
    eta_star, bisected = momentum_critical_lr(ker, c, beta, nesterov, tol)
    form = "nesterov" if nesterov else "heavy ball"
    notes = [*notes, *_kernel_notes(ker), f"SGD with momentum β = {beta:g} ({form}): the lifted second moment"]
    return Stability(
        **_verdict(ker, rho, eta_star, eta, b, scheme, c, tol),
        subspace_rank=ker.rank,
        method=f"momentum:{form.replace(' ', '_')}",
        exact=True,
        error=0.0,
        converged=True,
        matvecs=used + bisected,
        seconds=time.perf_counter() - start,
        eigenmatrix_psd=True,
        eigenmatrix_min_ratio=math.nan,
        certificates=None,
        notes=tuple(notes),
        momentum=beta,
        nesterov=nesterov,
    )


def _minimum_notes(source: KernelSource) -> list[str]:
    """For a Problem: say so when θ is not a global minimum (K is then the Gauss–Newton kernel)."""
    if not isinstance(source, Problem):
        return []
    if not source.square_loss:
        return [
            f"{source.loss_convention} has no finite global minimum: this is the mean-square stability of SGD's "
            "linearization at the current θ, with per-sample curvature H_i = J_iᵀA_iJ_i (the GGN kernel K_A, "
            "THEORY.md §9)"
        ]
    loss = float(source.loss())
    if not is_global_minimum(loss, source.Y, source.dtype):
        return [f"θ is not a global minimum (L = {loss:.3g}): the analysis linearizes with the Gauss–Newton kernel"]
    return []


def _solution_notes(ker: Kernel, sol: _Solution, shape: _EigenmatrixShape, softmax: bool = False) -> list[str]:
    """What a reader of ρ and η* should know: the Galerkin level, a zero, singular or ill-conditioned K, a top
    eigenmatrix that is not PSD, a solver that did not converge."""
    notes = list(sol.notes)
    if ker.rank == 0:
        notes.append("K = 0: nothing moves; ρ is taken as 0")
    notes += _kernel_notes(ker, softmax)
    if not shape.psd:
        notes.append(
            f"top eigenmatrix is not PSD (λ_min/λ_max = {shape.min_ratio:.2g}): the top eigenvalue is (nearly) "
            "degenerate"
        )
    if not sol.converged:
        notes.append("the eigen-solver did not converge: ρ and η* are the last iterates")
    return notes


def stability(
    problem_or_kernel: KernelSource,
    lr: float,
    batch_size: int,
    sampling: str = "with_replacement",
    *,
    method: str = "auto",
    tol: float = 1e-10,
    galerkin_rtol: float = 1e-3,
    mu: float | None = None,
    residual: Tensor | None = None,
    with_certificates: bool = True,
    progress: bool = True,
    momentum: float = 0.0,
    nesterov: bool = False,
) -> Stability:
    """Mean-square linear stability of SGD(lr, batch_size, sampling) at a global minimum (THEORY.md §4).

    Args:
        problem_or_kernel: a :class:`~sgdstab.Problem` at a global minimum (K = its NTK; elsewhere a note says
            K is the Gauss–Newton kernel), a :class:`~sgdstab.Kernel`, or a square symmetric PSD tensor (k = 1).
        lr: the learning rate on the half-MSE loss L (convert with ``Problem.half_mse_lr``).
        batch_size: B, in 1..n.
        sampling: ``"with_replacement"`` or ``"without_replacement"`` (B = n without replacement is GD).
        method: ``"auto"`` (exact when rank K ≤ 1200, Galerkin beyond), ``"exact"`` (dense or Lanczos by size),
            ``"dense"``, ``"lanczos"``, ``"power"`` or ``"galerkin"``.
        tol: the eigen-solver's relative tolerance, in (0, 0.01).
        galerkin_rtol: Galerkin's stopping rule (relative change of ρ and η* between subspace ranks), in (0, 1).
        mu, residual: a measured loss alignment, or the residual to compute it from, for the certificates
            (:func:`sgdstab.certificates`).
        with_certificates: also compute every certificate of THEORY.md §5.
        progress: on the Galerkin route, a line on stderr per level and every 30 s (with an ETA) once the solve
            has run 20 s; nothing for a shorter one.
        momentum, nesterov: ``torch.optim.SGD``'s β (dampening 0) and Nesterov flag: with β > 0 the stability of
            SGD with momentum (:mod:`sgdstab.linear_stability.momentum`, rank K ≤ 2000): ρ of the lifted second
            moment and η*(B, β); ``method``, ``galerkin_rtol`` and the certificates (plain SGD's) do not apply.

    Returns:
        A :class:`Stability`: ρ(T), whether it is ≤ 1, η*, the route taken and (by default) the certificates.

    Raises:
        ConventionError: a bad learning rate, batch size or sampling scheme.
        StabilityError: a bad kernel, method, ``tol``, ``galerkin_rtol``, ``mu`` or ``residual``.

    Example:
        >>> import torch, sgdstab
        >>> K = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> st = sgdstab.stability(K, 1.0, 2, "without_replacement")  # GD: ρ = max (1 − ηλ/n)²
        >>> round(st.rho, 12), st.stable, round(st.critical_lr, 12)
        (0.25, True, 1.333333333333)
    """
    start = time.perf_counter()
    eta, scheme, tol, (beta, nesterov) = _checked_request(lr, sampling, tol, method, momentum, nesterov)
    ker = as_kernel(problem_or_kernel)
    b = check_batch_size(batch_size, ker.n)
    c = noise_scale(b, ker.n, scheme)
    notes = _minimum_notes(problem_or_kernel)
    if beta > 0:
        return _with_momentum(ker, eta, b, scheme, c, (beta, nesterov), tol, notes, start)
    sol = _solve(ker, eta, c, method, tol, galerkin_rtol, want_critical=True, progress=progress)
    assert sol.crit is not None and sol.rho is not None
    rho = sol.rho.value
    # an iterative eigenvector is accurate to about its residual over the gap: judge PSD-ness accordingly
    shape = _psd_check(sol.form, sol.rho.vector, 1e-8 if sol.rho.route == "dense" else 1e-3)
    notes += _solution_notes(ker, sol, shape, _softmax(problem_or_kernel))
    cert = certificates(ker, eta, b, scheme, mu=mu, residual=residual) if with_certificates else None
    eta_star = _eta_star(sol.crit.value)
    return Stability(
        **_verdict(ker, rho, eta_star, eta, b, scheme, c, tol),
        subspace_rank=sol.subspace,
        method=sol.method,
        exact=sol.method != "galerkin" or sol.error == 0.0,
        error=sol.error,
        converged=sol.converged,
        matvecs=sol.matvecs,
        seconds=time.perf_counter() - start,
        eigenmatrix_psd=shape.psd,
        eigenmatrix_min_ratio=shape.min_ratio,
        certificates=cert,
        notes=tuple(notes),
        mean_square_proxy=mean_square_proxy(ker, eta, c),
    )
