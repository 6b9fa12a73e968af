"""Curvature and noise figures from the NTK Gram matrix ``K`` and the residuals ``r`` (THEORY.md §2–3).

Plain tensor functions. ``K`` is (nk × nk) with row ``i·k + c``; ``r`` is (n, k) or flat (nk,). Everything
here is exact linear algebra on K; eigen-problems run in float64 (THEORY.md §7: K can be ill-conditioned).

With ``G = JᵀJ/n`` the Gauss–Newton matrix (= the Hessian at a global minimum) and ``H_i = J_iᵀJ_i`` the
per-sample Gauss–Newton matrices:

- ``||G||_F = ||K||_F / n``, ``Tr G = Tr K / n``, ``λ_j(G) = λ_j(K) / n``;
- non-uniformity ``s² = λ_max((1/n) Σ_i H_i² − G²) = λ_max(K^{1/2} S K^{1/2})``, ``S = bdiag(K)/n − K/n²``;
- ``||∇L||² = rᵀKr/n²``, ``Tr Σ = (1/n) Σ_i r_iᵀK_ii r_i − rᵀKr/n²``;
- ``Tr(ΣG) = (1/n²) Σ_i r_iᵀ(K²)_ii r_i − rᵀK²r/n³``;
- ``μ = Tr(ΣG)/(2L||G||_F²) = rᵀAr/(||r||²||K||_F²)``, ``A = n·bdiag(K²) − K²``;
- ``μ_inf = λ_min(A on range K)/||K||_F²``;
- directional ``g(v_j) = [n Σ_i (r_iᵀ w_{j,i})² − (rᵀw_j)²]/||r||²`` along ``v_j = Jᵀw_j/√λ_j``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class KernelEigen:
    """Eigen-decomposition of K in float64, eigenvalues ascending; ``rank`` counts those above ``cutoff``."""

    values: Tensor
    vectors: Tensor
    cutoff: float

    @property
    def rank(self) -> int:
        return int((self.values > self.cutoff).sum())

    def range_basis(self) -> tuple[Tensor, Tensor]:
        """Eigenpairs spanning range(K): (values, vectors) with values above the cutoff."""
        keep = self.values > self.cutoff
        return self.values[keep], self.vectors[:, keep]


def kernel_eigen(K: Tensor) -> KernelEigen:
    """Full eigen-decomposition of symmetric K in float64; the range cutoff is ``nk·eps·λ_max``."""
    K64 = K.to(torch.float64)
    values, vectors = torch.linalg.eigh(K64)
    lam_max = float(values[-1].clamp(min=0))
    cutoff = K.shape[0] * torch.finfo(torch.float64).eps * max(lam_max, 1e-300)
    if K.dtype == torch.float32:
        cutoff = max(cutoff, K.shape[0] * torch.finfo(torch.float32).eps * lam_max)
    return KernelEigen(values, vectors, cutoff)


def block_diagonal(M: Tensor, n: int, k: int) -> Tensor:
    """The n diagonal k×k blocks of an (nk × nk) matrix, shape (n, k, k)."""
    M4 = M.reshape(n, k, n, k)
    idx = torch.arange(n, device=M.device)
    return M4[idx, :, idx, :]


def gauss_newton_frobenius(K: Tensor, n: int) -> float:
    """``||G||_F = ||K||_F / n``: row norms in K's precision, combined in float64 (a float32 sum over all (nk)²
    entries drifts by 0.2% at nk = 5000; converting K to float64 first costs 10× more)."""
    return float(torch.linalg.vector_norm(torch.linalg.vector_norm(K, dim=-1).to(torch.float64)) / n)


def gauss_newton_trace(K: Tensor, n: int) -> float:
    """``Tr G = Tr K / n``."""
    return float(torch.diagonal(K).to(torch.float64).sum() / n)


_DENSE_NONUNIFORMITY_MAX = 600  # above this rank, Lanczos on matrix-vector products beats forming K^{1/2} S K^{1/2}


def nonuniformity(K: Tensor, n: int, k: int, eigen: KernelEigen | None = None) -> float:
    """Wu–Ma–E (2018) non-uniformity ``s = λ_max((1/n) Σ_i H_i² − G²)^{1/2}`` with ``H_i = J_iᵀJ_i``.

    Computed as ``λ_max(K^{1/2} S K^{1/2})``, ``S = bdiag(K)/n − K/n²`` (same non-zero spectrum): with K's
    eigendecomposition, densely for rank ≤ 600 and otherwise by Lanczos (``eigsh``, tol 1e-12) on products that cost
    O(nk·rank) each. Without it (``eigen=None``, nk above 600) no eigendecomposition is formed: ``S K`` has the same
    non-zero spectrum, real and ≥ 0, and is self-adjoint in the K-inner product, so Arnoldi (``eigs``) on
    ``x ↦ S(Kx)`` — two products with K each — finds its top eigenvalue in O((nk)²) per step instead of eigh's
    O((nk)³).
    """
    if eigen is None and K.shape[0] > _DENSE_NONUNIFORMITY_MAX:
        return _nonuniformity_arnoldi(K, n, k)
    eig = eigen or kernel_eigen(K)
    lam, U = eig.range_basis()
    if U.shape[1] == 0:
        return 0.0
    # s is homogeneous of degree 1 in K: work on K/λ_max so that K² neither overflows nor underflows (K ~ 1e±200)
    unit = float(lam[-1])
    lam = lam / unit
    K64 = K.to(torch.float64) / unit
    blocks = block_diagonal(K64, n, k) / n
    half = U * lam.sqrt()  # K^{1/2} restricted to range K, in U's coordinates: K^{1/2} = U diag(√λ) Uᵀ
    if half.shape[1] <= _DENSE_NONUNIFORMITY_MAX:
        S = -K64 / n**2
        S4 = S.reshape(n, k, n, k)
        idx = torch.arange(n, device=K.device)
        S4[idx, :, idx, :] += blocks
        M = half.T @ S @ half
        top = float(torch.linalg.eigvalsh((M + M.T) / 2)[-1])
        return unit * max(top, 0.0) ** 0.5
    from scipy.sparse.linalg import LinearOperator, eigsh

    half_np, U_np, lam_np = half.cpu().numpy(), U.cpu().numpy(), lam.cpu().numpy()
    blocks_np = blocks.cpu().numpy()

    def matvec(z):
        y = half_np @ z.reshape(-1)
        by = np.einsum("iab,ib->ia", blocks_np, y.reshape(n, k)).reshape(-1)
        ky = U_np @ (lam_np * (U_np.T @ y))
        return half_np.T @ (by - ky / n**2)

    r = half_np.shape[1]
    op = LinearOperator((r, r), matvec=matvec, dtype=np.float64)
    v0 = np.random.default_rng(0).standard_normal(r)
    top = float(eigsh(op, k=1, which="LA", tol=1e-12, v0=v0, return_eigenvectors=False)[0])
    return unit * max(top, 0.0) ** 0.5


def _nonuniformity_arnoldi(K: Tensor, n: int, k: int) -> float:
    """``s`` from the top eigenvalue of ``S K`` by Arnoldi, no eigendecomposition (see :func:`nonuniformity`)."""
    from scipy.sparse.linalg import LinearOperator, eigs

    scale = float(K.abs().max())
    if scale == 0:
        return 0.0
    dtype, tol = _lanczos_precision(K)
    K_np = (K / scale).cpu().numpy().astype(dtype, copy=False)
    blocks = block_diagonal(torch.from_numpy(K_np), n, k).numpy() / n

    def matvec(x: np.ndarray) -> np.ndarray:
        y = K_np @ x.reshape(-1)
        by = np.einsum("iab,ib->ia", blocks, y.reshape(n, k)).reshape(-1)
        return by - (K_np @ y) / n**2

    nk = n * k
    op = LinearOperator((nk, nk), matvec=matvec, dtype=dtype)
    v0 = np.random.default_rng(0).standard_normal(nk).astype(dtype)
    top = eigs(op, k=1, which="LR", tol=tol, v0=v0, return_eigenvectors=False)[0]
    return scale * max(float(top.real), 0.0) ** 0.5


def _lanczos_precision(K: Tensor) -> tuple[type, float]:
    """(numpy dtype, ARPACK tolerance) for products with K: K's own precision. A float32 K carries float32
    rounding (~1e-7 relative) already, so float32 products to 1e-6 add nothing one could cite and cost half."""
    if K.dtype == torch.float32:
        return np.float32, 1e-6
    return np.float64, 1e-12


def top_eigenvalues(K: Tensor, m: int = 1) -> Tensor:
    """The ``m`` largest eigenvalues of symmetric K, descending (float64 tensor on the CPU), without its
    eigendecomposition above nk = 600: Lanczos (``eigsh``, seeded start) on O((nk)²) products in K's precision
    (tol 1e-12 for float64, 1e-6 for float32). Dense ``eigvalsh`` in float64 below."""
    nk = K.shape[0]
    m = max(1, min(m, nk))
    if nk <= _DENSE_NONUNIFORMITY_MAX or m >= nk - 1:
        return torch.linalg.eigvalsh(K.to(torch.float64)).flip(0)[:m].cpu()
    from scipy.sparse.linalg import eigsh

    dtype, tol = _lanczos_precision(K)
    K_np = K.detach().cpu().numpy().astype(dtype, copy=False)
    v0 = np.random.default_rng(0).standard_normal(nk).astype(dtype)
    values = eigsh(K_np, k=m, which="LA", tol=tol, v0=v0, return_eigenvectors=False).astype(np.float64)
    return torch.from_numpy(np.sort(values)[::-1].copy())


def largest_eigenvalue(K: Tensor) -> float:
    """λ_max(K) of a symmetric K without its eigendecomposition above nk = 1000: Lanczos (``eigsh``, tol 1e-12,
    seeded start) on float64 products, O((nk)²) each, instead of eigh's O((nk)³) — seconds instead of minutes
    at nk = 10⁴. Dense ``eigvalsh`` below that size."""
    if K.shape[0] <= 1000:
        return float(torch.linalg.eigvalsh(K.to(torch.float64))[-1])
    from scipy.sparse.linalg import eigsh

    K_np = K.to(torch.float64).cpu().numpy()
    v0 = np.random.default_rng(0).standard_normal(K_np.shape[0])
    return float(eigsh(K_np, k=1, which="LA", tol=1e-12, v0=v0, return_eigenvectors=False)[0])


def _flat(r: Tensor) -> Tensor:
    return r.reshape(-1).to(torch.float64)


def alignment_matrix(K: Tensor, n: int, k: int) -> Tensor:
    """``A = n·bdiag(K²) − K²`` (PSD), so that ``μ*(u) = uᵀAu/(||u||²||K||_F²)``."""
    K64 = K.to(torch.float64)
    K2 = K64 @ K64
    A = -K2
    A4 = A.reshape(n, k, n, k)
    idx = torch.arange(n, device=K.device)
    A4[idx, :, idx, :] += n * block_diagonal(K2, n, k)
    return A


@dataclass(frozen=True)
class NoiseFigures:
    """Noise and alignment figures at the current residuals (exact, from K)."""

    loss: float
    grad_norm: float
    trace_sigma: float
    tr_sigma_g: float
    two_loss_gn_frob2: float
    mu: float


def noise_figures(K: Tensor, r: Tensor, n: int, k: int) -> NoiseFigures:
    """``||∇L||``, ``Tr Σ``, ``Tr(ΣG)``, ``2L||G||_F²`` and ``μ`` from K and the residuals (THEORY.md §3).

    ``μ`` is NaN when the loss is exactly zero (the ratio is then undefined).
    """
    K64 = K.to(torch.float64)
    rf = _flat(r)
    Kr = K64 @ rf
    rKr = float(rf @ Kr)
    r_blocks = rf.reshape(n, k)
    diag_blocks = block_diagonal(K64, n, k)
    per_sample = torch.einsum("ia,iab,ib->i", r_blocks, diag_blocks, r_blocks)
    trace_sigma = float(per_sample.sum()) / n - rKr / n**2
    # r_iᵀ(K²)_ii r_i = ||K[:, block i] r_i||²: scale K's columns by r and sum each sample's k columns.
    cols = (K64 * rf[None, :]).reshape(n * k, n, k).sum(-1)
    sum_blocks = float((cols * cols).sum())
    rK2r = float(Kr @ Kr)
    tr_sigma_g = sum_blocks / n**2 - rK2r / n**3
    loss = float(rf @ rf) / (2 * n)
    frob_g2 = float(torch.linalg.matrix_norm(K64) ** 2) / n**2
    two_loss_gn_frob2 = 2 * loss * frob_g2
    mu = tr_sigma_g / two_loss_gn_frob2 if two_loss_gn_frob2 > 0 else float("nan")
    return NoiseFigures(
        loss=loss,
        grad_norm=max(rKr, 0.0) ** 0.5 / n,
        trace_sigma=trace_sigma,
        tr_sigma_g=tr_sigma_g,
        two_loss_gn_frob2=two_loss_gn_frob2,
        mu=mu,
    )


def uniform_alignment(K: Tensor, n: int, k: int, eigen: KernelEigen | None = None) -> float:
    """``μ_inf = λ_min(A restricted to range K) / ||K||_F²``: the worst alignment of any residual direction
    reachable by the linearized dynamics.

    Densely (``Uᵀ A U`` and its eigendecomposition) for rank ≤ 600; above, by Lanczos on products
    ``A_r x = n·Uᵀ bdiag(K²) U x − Λ² x`` (K = UΛUᵀ on its range; O(nk·rank) each): the largest eigenvalue of
    ``σI − A_r`` with σ = n·max_i λ_max((K²)_ii) ≥ λ_max(A_r). Falls back to the dense form if ARPACK does not
    converge.
    """
    eig = eigen or kernel_eigen(K)
    lam, U = eig.range_basis()
    if U.shape[1] == 0:
        return float("nan")
    # μ_inf is scale-free: compute it on K/max|K| so that K² neither overflows nor underflows
    K64 = K.to(torch.float64)
    scale = K64.abs().max()
    K64 = K64 / scale
    frob2 = float(torch.linalg.matrix_norm(K64) ** 2)
    if U.shape[1] > _DENSE_NONUNIFORMITY_MAX:
        lam_min = _alignment_bottom_lanczos(K64, (lam / scale).to(torch.float64), U, n, k)
        if lam_min is not None:
            return max(lam_min, 0.0) / frob2
    A = alignment_matrix(K64, n, k)
    Ar = U.T @ A @ U
    eig = torch.linalg.eigvalsh((Ar + Ar.T) / 2)
    # A is PSD: a λ_min within rounding of zero (seen at −3e-17 and at +2.7e-18 with duplicate samples, by machine)
    # is zero, and μ_inf ≥ 0 by definition
    rounding = Ar.shape[0] * torch.finfo(torch.float64).eps * max(float(eig.abs().max()), 1e-300)
    lam_min = float(eig[0]) if float(eig[0]) > rounding else 0.0
    return lam_min / frob2


def _alignment_bottom_lanczos(K: Tensor, lam: Tensor, U: Tensor, n: int, k: int) -> float | None:
    """λ_min of A restricted to range K by Lanczos (see :func:`uniform_alignment`); None if it did not converge."""
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    nk = n * k
    # the diagonal blocks of K²: (K²)_ii = K[rows i, :] K[:, cols i]
    blocks = torch.bmm(K.reshape(n, k, nk), K.reshape(nk, n, k).permute(1, 0, 2))
    sigma = n * float(torch.linalg.eigvalsh(blocks)[:, -1].max())
    U_np, blocks_np, lam2 = U.cpu().numpy(), blocks.cpu().numpy(), (lam**2).cpu().numpy()

    def matvec(x: np.ndarray) -> np.ndarray:
        x = x.reshape(-1)
        y = U_np @ x
        by = np.einsum("iab,ib->ia", blocks_np, y.reshape(n, k)).reshape(-1)
        return sigma * x - (n * (U_np.T @ by) - lam2 * x)

    r = U_np.shape[1]
    op = LinearOperator((r, r), matvec=matvec, dtype=np.float64)
    v0 = np.random.default_rng(0).standard_normal(r)
    try:
        top = eigsh(op, k=1, which="LA", tol=1e-12, v0=v0, maxiter=10 * r, return_eigenvectors=False)[0]
    except ArpackNoConvergence:
        return None
    return sigma - float(top)


def directional_alignment(r: Tensor, W: Tensor, n: int, k: int) -> Tensor:
    """``g(v_j) = v_jᵀΣv_j/(2L·v_jᵀGv_j)`` along ``v_j = Jᵀw_j/√λ_j`` for the columns ``w_j`` of W (nk × m).

    Closed form through the kernel: ``g(v_j) = [n Σ_i (r_iᵀw_{j,i})² − (rᵀw_j)²] / ||r||²``.
    """
    rf = _flat(r)
    W64 = W.to(torch.float64)
    per_sample = (rf[:, None] * W64).reshape(n, k, -1).sum(1)  # (n, m): r_iᵀ w_{j,i}
    num = n * (per_sample**2).sum(0) - (rf @ W64) ** 2
    return num / (rf @ rf)
