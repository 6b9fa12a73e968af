"""Lanczos without restarts for the top of K's spectrum and of S·K, as the kernel route needs them at a minimum.

The kernel route needs K's top eigenvalues (G's, times n) and the non-uniformity ``s² = λ_max(S K)``,
``S = bdiag(K)/n − K/n²`` (THEORY.md §2). ARPACK (:mod:`sgdstab.kernel.figures`) restarts its basis, and reaches
λ_max(S K) by non-symmetric Arnoldi. Here both run as plain Lanczos with full reorthogonalization, one product with
K per step for K and two for S K, which is self-adjoint in the K-inner product ``⟨x, y⟩_K = xᵀKy``
(``K(SK) = KSK``): its Ritz values are real and rise to λ_max(S K) from below, and the residual of a Ritz pair
(θ, Q c) is ``β·|c_last|`` in that inner product with no further product. They stop on ARPACK's own criterion,
every wanted residual within ``tol·|θ|`` (1e-6 for a float32 K, its rounding; 1e-12 for float64), and return None
when the step cap comes first (the caller then runs ARPACK).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from sgdstab.kernel import figures as kf

MAX_STEPS = 300  # Krylov dimension cap: beyond it ARPACK's restarts hold less memory


def _precision(K: Tensor) -> tuple[type, float]:
    # products in K's own precision, to ARPACK's tolerance for it (as sgdstab.kernel.figures does)
    return (np.float32, 1e-6) if K.dtype == torch.float32 else (np.float64, 1e-12)


def _symmetric_product(K_np: np.ndarray, alpha: float = 1.0) -> Callable[[np.ndarray], np.ndarray]:
    """x ↦ α K x by BLAS ``symv`` (one triangle of K): a memory-bound product that reads half of K runs in 0.55 of a
    GEMV's time (0.094 ms vs 0.169 ms at nk = 1000, float32), and α scales K without a copy of it. K is symmetric;
    its triangles differ by rounding at most (ntk's K is symmetric bit for bit), below the Lanczos tolerance."""
    from scipy.linalg.blas import get_blas_funcs

    Kt = np.ascontiguousarray(K_np).T  # Fortran order, no copy: the symv's matrix argument as BLAS reads it
    (symv,) = get_blas_funcs(("symv",), (Kt,))
    return lambda x: symv(alpha, Kt, x)


def top_eigenvalues(K: Tensor, m: int) -> Tensor | None:
    """The ``m`` largest eigenvalues of symmetric K, descending (float64 tensor, CPU), by Lanczos on products in K's
    precision (seeded start); None when not converged within :data:`MAX_STEPS` steps.

    Example:
        >>> import torch
        >>> from sgdstab.measure.lanczos import top_eigenvalues
        >>> A = torch.randn(300, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> K = A @ A.T
        >>> bool(torch.allclose(top_eigenvalues(K, 3), torch.linalg.eigvalsh(K).flip(0)[:3], rtol=1e-10))
        True
    """
    dtype, tol = _precision(K)
    K_np = K.detach().cpu().numpy().astype(dtype, copy=False)
    values = _lanczos(_symmetric_product(K_np), None, K.shape[0], m, tol, dtype, every=4)
    return None if values is None else torch.from_numpy(values)


def nonuniformity(K: Tensor, n: int, k: int) -> float | None:
    """``s = λ_max(S K)^{1/2}`` (:func:`sgdstab.kernel.figures.nonuniformity`) by Lanczos on ``x ↦ S(Kx)`` in the
    K-inner product; None when not converged within :data:`MAX_STEPS` steps.

    Example:
        >>> import torch
        >>> from sgdstab.kernel import figures as kf
        >>> from sgdstab.measure.lanczos import nonuniformity
        >>> A = torch.randn(300, 400, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> K = A @ A.T / 400
        >>> round(nonuniformity(K, 150, 2) / kf.nonuniformity(K, 150, 2, kf.kernel_eigen(K)), 9)
        1.0
    """
    low, high = torch.aminmax(K.detach())
    scale = max(-float(low), float(high))
    if scale == 0:
        return 0.0
    dtype, tol = _precision(K)
    info = np.finfo(dtype)
    if not 1e3 * float(info.tiny) < 1.0 / scale < float(info.max) / 1e3:
        return None  # 1/max|K| not a normal number in K's precision: ARPACK on a scaled copy instead
    # s is homogeneous of degree 1 in K: work on K/max|K| so that K² neither overflows nor underflows (symv's α
    # scales each product; K itself is not copied)
    K_np = K.detach().cpu().numpy().astype(dtype, copy=False)
    blocks = (kf.block_diagonal(K.detach().cpu(), n, k).to(torch.float64) / (scale * n)).numpy().astype(dtype)
    product = _symmetric_product(K_np, 1.0 / scale)

    def s_times(y: np.ndarray) -> np.ndarray:
        by = np.einsum("iab,ib->ia", blocks, y.reshape(n, k)).reshape(-1)
        return by - product(y) / n**2

    values = _lanczos(product, s_times, n * k, 1, tol, dtype, every=2)
    return None if values is None else scale * max(float(values[0]), 0.0) ** 0.5


def _lanczos(
    product: Callable[[np.ndarray], np.ndarray],
    outer: Callable[[np.ndarray], np.ndarray] | None,
    size: int,
    m: int,
    tol: float,
    dtype: type,
    every: int = 1,
) -> np.ndarray | None:
    """Top ``m`` Ritz values (descending, float64) of ``A = product`` (symmetric; Euclidean inner product) or, with
    ``outer``, of ``A = outer ∘ product`` = S K in the K-inner product (``product`` = K), once every residual is
    within ``tol·|θ|``, checked every ``every`` steps (the projected eigenproblem costs more than a product late on);
    None at the step cap. Full reorthogonalization (twice) against the stored basis."""
    steps = min(MAX_STEPS, size)
    k_inner = outer is not None
    Q = np.zeros((steps + 1, size))
    KQ = np.zeros((steps + 1, size)) if k_inner else Q  # K q_i: the K-inner product needs no product per pair
    T = np.zeros((steps, steps))
    q = np.random.default_rng(0).standard_normal(size)
    Kq = product(q.astype(dtype)).astype(np.float64) if k_inner else q
    beta = _norm(q, Kq)
    if beta == 0.0:  # the start lies in K's null space (or K = 0): ARPACK decides
        return None
    Q[0], KQ[0] = q / beta, Kq / beta
    for j in range(steps):
        Kqj = KQ[j] if k_inner else product(Q[j].astype(dtype)).astype(np.float64)
        w = outer(Kqj.astype(dtype)).astype(np.float64) if k_inner else Kqj
        h = np.zeros(j + 1)
        for _ in range(2):
            c = KQ[: j + 1] @ w
            w = w - c @ Q[: j + 1]
            h += c
        T[: j + 1, j] = h
        T[j, : j + 1] = h
        Kw = product(w.astype(dtype)).astype(np.float64) if k_inner else w
        beta = _norm(w, Kw)
        if j + 1 >= m and (j % every == every - 1 or beta == 0.0):
            values, C = np.linalg.eigh(T[: j + 1, : j + 1])
            top, last = values[::-1][:m], np.abs(C[j, ::-1][:m])
            # residual of each Ritz pair: β·|last component| (an invariant subspace when β vanishes)
            if bool(np.all(beta * last <= tol * np.abs(top))):
                return top.copy()
        if beta == 0.0:
            return None
        Q[j + 1], KQ[j + 1] = w / beta, Kw / beta
    return None


def _norm(w: np.ndarray, Kw: np.ndarray) -> float:
    return float(max(float(w @ Kw), 0.0) ** 0.5)
