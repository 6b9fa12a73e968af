"""The second-moment operator T of linearized SGD at a global minimum (THEORY.md §4) and its self-adjoint forms.

:func:`stability_operator` applies T itself on symmetric nk × nk matrices (a reference, O((nk)²·r) per call).
:class:`SymmetricForm` holds what the solvers of :mod:`sgdstab.linear_stability.solver` apply instead: T̂ and
Ĉ^{-1/2} D̂ Ĉ^{-1/2} in K's range eigenbasis with the congruence ``M = V N Vᵀ`` (``K = V Vᵀ``, ``V = U Λ^{1/2}``),
self-adjoint on symmetric r×r matrices, vectorized by their upper triangle with off-diagonal entries scaled by √2
(an isometry onto R^{r(r+1)/2}). One application costs one nk × r × r GEMM and one symmetric Gram matrix
(:func:`upper_gram`). :func:`symmetric_form` keeps the form on its :class:`~sgdstab.Kernel` (``Kernel.memo``), so
repeated solves on one kernel build it once.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from sgdstab.conventions import check_learning_rate, check_sampling, noise_scale
from sgdstab.errors import StabilityError
from sgdstab.kernel import figures as kf
from sgdstab.kernel.kernel import Kernel
from sgdstab.kernel.ntk import KernelSource, as_kernel

__all__ = [
    "DENSE_MAX_DIM",
    "DENSE_MAX_ENTRIES",
    "SymmetricForm",
    "dense_ok_for",
    "embed",
    "form_memory_bytes",
    "stability_operator",
    "symmetric_form",
    "upper_gram",
]

DENSE_MAX_DIM = 300  # dense eigh of the materialized operator when r(r+1)/2 is at most this (≈ 0.03 s; Lanczos
# is ~100× faster at r(r+1)/2 = 1500) ...
DENSE_MAX_ENTRIES = 4_000_000  # ... and its n·k²·r(r+1)/2 building block fits comfortably
BATCHED_PRODUCTS_MAX_RANK = 2048  # from this rank on, a block of vectors is multiplied one vector at a time
_GRAM_BLOCK = 512  # below this many columns the upper-triangular Gram matrix is one GEMM


def stability_operator(
    kernel: KernelSource, lr: float, batch_size: int, sampling: str = "with_replacement"
) -> Callable[[Tensor], Tensor]:
    """The second-moment map ``M ↦ T(M)`` on symmetric nk × nk matrices (THEORY.md §4), exact on the whole space.

    Implemented through K's range eigenbasis (K is replaced by its truncation to eigenvalues above the cutoff,
    a change below rounding): ``(I − ηK/n)`` and ``K X K`` are applied as rank-r updates, so one call costs
    O((nk)²·r). Components of M in null(K) are carried exactly (``I − ηK/n`` is the identity there).

    Args:
        kernel: a :class:`~sgdstab.Problem` at a global minimum (K = its NTK), a :class:`~sgdstab.Kernel` or a
            square symmetric PSD tensor (k = 1).
        lr: the learning rate η on the half-MSE loss L.
        batch_size: B, in 1..n.
        sampling: ``"with_replacement"`` or ``"without_replacement"``.

    Returns:
        A function taking a symmetric nk × nk matrix M to the symmetric matrix T(M), in float64.

    Raises:
        ConventionError: a bad learning rate, batch size or sampling scheme.
        StabilityError: a bad kernel; the returned function raises it for an M of the wrong shape.

    Example:
        >>> import torch, sgdstab
        >>> T = sgdstab.stability_operator(torch.eye(2, dtype=torch.float64), 0.5, 2, "without_replacement")
        >>> [round(x, 12) for x in T(torch.eye(2, dtype=torch.float64)).diagonal().tolist()]  # GD: (1 − η/2)² M
        [0.5625, 0.5625]
    """
    ker = as_kernel(kernel)
    eta = check_learning_rate(lr)
    c = noise_scale(batch_size, ker.n, check_sampling(sampling))
    n, k = ker.n, ker.k
    lam, U = ker.range_basis()
    q = eta * lam / n

    def apply(M: Tensor) -> Tensor:
        M64 = torch.as_tensor(M, dtype=torch.float64)
        if M64.shape != (ker.nk, ker.nk):
            raise StabilityError(f"M must be {ker.nk} × {ker.nk}, got shape {tuple(M64.shape)}")
        AM = M64 - U @ (q[:, None] * (U.T @ M64))  # (I − ηK/n) M
        AMA = AM - ((AM @ U) * q[None, :]) @ U.T  # … (I − ηK/n)
        Bd = torch.zeros_like(M64)
        blocks = kf.block_diagonal(M64, n, k)
        B4 = Bd.reshape(n, k, n, k)
        idx = torch.arange(n)
        B4[idx, :, idx, :] = blocks
        X = Bd / n - M64 / n**2
        KXK = U @ (lam[:, None] * (U.T @ X @ U) * lam[None, :]) @ U.T
        out = AMA + eta**2 * c * KXK
        return (out + out.T) / 2

    return apply


class SymmetricForm:
    """The self-adjoint forms T̂, Ĉ^{-1/2} D̂ Ĉ^{-1/2} on Sym(r), vectorized by the √2-scaled upper triangle.

    Built from the top r range eigenpairs ``(λ, U)`` of K (all of them for the exact routes). Vectors may carry
    leading batch dimensions (``(..., m)``, ``m = r(r+1)/2``); packing and unpacking are gathers.
    """

    def __init__(
        self,
        lam: Tensor,
        U: Tensor,
        n: int,
        k: int,
        products: torch.dtype = torch.float64,
        on_product: Callable[[], None] | None = None,
    ) -> None:
        self.lam = lam
        self.n, self.k = n, k
        self.r = r = int(lam.shape[0])
        self.V = U * lam.sqrt()[None, :]
        self.V3 = self.V.reshape(n, k, r)
        # the two nk × r × r products of bdiag run in ``products`` (float32: twice the speed, ~1e-6 relative error
        # in each product; the result and everything else stay float64); ``on_product`` is told of each one
        self.products = products
        self.on_product = on_product
        self._Vp = self.V if products == torch.float64 else self.V.to(products)
        self._V3p = self._Vp.reshape(n, k, r)
        # int32 indices: at r = 10⁴ there are m = 5·10⁷ packed entries, and int64 index arrays alone took 2.4 GB
        index = torch.int32 if r * r < 2**31 else torch.int64
        ia, ib = torch.triu_indices(r, r, dtype=index)
        self.ia, self.ib = ia, ib
        self.m = m = int(ia.shape[0])
        self.w = torch.full((m,), math.sqrt(2.0), dtype=torch.float64)
        self.w[ia == ib] = 1.0
        self.upper = ia * r + ib  # flat position of each packed entry
        full_to_packed = torch.empty(r * r, dtype=index)
        positions = torch.arange(m, dtype=index)
        full_to_packed[(ia * r + ib).long()] = positions
        full_to_packed[(ib * r + ia).long()] = positions
        del positions
        self.full_to_packed = full_to_packed
        self.lam_a, self.lam_b = lam[ia.long()], lam[ib.long()]
        self._dense_bdiag: Tensor | None = None

    # vectorization (an isometry Sym(r) → R^m)
    def pack(self, N: Tensor) -> Tensor:
        lead = N.shape[:-2]
        return N.reshape(*lead, self.r * self.r).index_select(-1, self.upper) * self.w

    def unpack(self, v: Tensor) -> Tensor:
        return (v / self.w).index_select(-1, self.full_to_packed).reshape(*v.shape[:-1], self.r, self.r)

    def bdiag(self, v: Tensor) -> Tensor:
        """Packed ``Vᵀ bdiag(V N Vᵀ) V``: one nk × r × r GEMM (``V N``) and one symmetric Gram matrix (≈ 0.75 of a
        GEMM, :func:`upper_gram`) per vector. For k > 1 each diagonal k×k block is diagonalized first,
        ``B_i = Q_i diag(e_i) Q_iᵀ``, so that ``Vᵀ bdiag(B) V = Ṽᵀ diag(e) Ṽ`` with ``Ṽ_i = Q_iᵀ V_i``."""
        if v.dim() > 1 and self.r >= BATCHED_PRODUCTS_MAX_RANK:
            # one vector at a time: a batch multiplies every temporary (≈ 4 GB a vector at r = 10⁴)
            return torch.stack([self.bdiag(row) for row in v.reshape(-1, v.shape[-1])]).reshape(v.shape)
        if self.on_product is not None:
            self.on_product()
        N = self.unpack(v).to(self.products)
        W = torch.matmul(self._Vp, N)  # (..., nk, r)
        lead = W.shape[:-2]
        if self.k == 1:
            e = (W * self._Vp).sum(-1)
            Vt = self._Vp.expand(*lead, *self._Vp.shape)
        else:
            W4 = W.reshape(*lead, self.n, self.k, self.r)
            blocks = torch.matmul(W4, self._V3p.transpose(1, 2))  # (..., n, k, k): diagonal blocks of V N Vᵀ
            blocks = blocks.to(torch.float64)
            e, Q = torch.linalg.eigh((blocks + blocks.transpose(-1, -2)) / 2)
            Vt = torch.matmul(Q.transpose(-1, -2).to(self.products), self._V3p)
            Vt = Vt.reshape(*lead, self.n * self.k, self.r)
            e = e.reshape(*lead, self.n * self.k).to(self.products)
        return self.pack(upper_gram(Vt, e[..., None] * Vt).to(torch.float64))

    def dense_bdiag(self) -> Tensor:
        """The m × m matrix of :meth:`bdiag`: ``Gᵀ G`` with ``G[(i,x,y), (a,b)] = (V_i Q_ab V_iᵀ)_xy``."""
        if self._dense_bdiag is None:
            Xa, Xb = self.V3[:, :, self.ia.long()], self.V3[:, :, self.ib.long()]  # (n, k, m)
            G = (Xa[:, :, None, :] * Xb[:, None, :, :] + Xb[:, :, None, :] * Xa[:, None, :, :]) * (self.w / 2)
            G = G.reshape(-1, self.m)
            self._dense_bdiag = G.T @ G
        return self._dense_bdiag

    def dense_ok(self) -> bool:
        return self.m <= DENSE_MAX_DIM and self.n * self.k**2 * self.m <= DENSE_MAX_ENTRIES

    # the operators' diagonal (entrywise) parts, packed
    def t_diag(self, eta: float, c: float) -> Tensor:
        n = self.n
        pa, pb = 1 - eta * self.lam_a / n, 1 - eta * self.lam_b / n
        return pa * pb - eta**2 * c * self.lam_a * self.lam_b / n**2

    def z_diag(self, eta: float, c: float) -> Tensor:
        """Diagonal part of Z = I − T̂ = 2ηĈ − η²D̂ (computed without cancellation)."""
        n = self.n
        return eta * (self.lam_a + self.lam_b) / n - eta**2 * (1 - c) * self.lam_a * self.lam_b / n**2

    def c_diag(self) -> Tensor:
        return (self.lam_a + self.lam_b) / (2 * self.n)

    def d_diag(self, c: float) -> Tensor:
        return (1 - c) * self.lam_a * self.lam_b / self.n**2

    def identity_start(self) -> Tensor:
        """Packed N for M = P_range (M̃ = I): N = Λ^{-1}, normalized."""
        v = self.pack(torch.diag(1 / self.lam))
        return v / v.norm()


def upper_gram(X: Tensor, Y: Tensor) -> Tensor:
    """The upper triangle (diagonal blocks included) of ``Xᵀ Y`` for ``Y = diag(e) X``, i.e. of a symmetric
    matrix, by recursive halving: 1.5× (one split) to 1× instead of 2× ``nk·r²`` flops. The strictly
    lower part of the result is zero or garbage; callers read the upper triangle only. Leading batch dimensions
    are allowed. (BLAS ``syrk`` would do the same, but mixing SciPy's BLAS threads with torch's thread pool
    measured 1.5× slower than this on a busy 2-core machine.)"""
    r = X.shape[-1]
    if r <= _GRAM_BLOCK:
        return torch.matmul(X.transpose(-1, -2), Y)
    h = r // 2
    out = torch.zeros(*X.shape[:-2], r, r, dtype=X.dtype)
    out[..., :h, :h] = upper_gram(X[..., :h], Y[..., :h])
    out[..., h:, h:] = upper_gram(X[..., h:], Y[..., h:])
    out[..., :h, h:] = torch.matmul(X[..., :h].transpose(-1, -2), Y[..., h:])
    return out


def form_memory_bytes(r: int, nk: int, basis: int = 6) -> int:
    """Bytes a solve on the rank-``r`` form holds at its peak, measured on the paper-scale kernel: the packing
    arrays (~22 r² bytes), one product's temporaries (~30 r² + 12·nk·r) and a Lanczos basis of ``basis`` packed
    vectors (4 r² each)."""
    return (22 + 30 + 4 * basis) * r * r + 12 * nk * r


def dense_ok_for(rank: int, n: int, k: int) -> bool:
    """Whether the form of a rank-``rank`` kernel is small enough to materialize (the ``dense`` route)."""
    m = rank * (rank + 1) // 2
    return m <= DENSE_MAX_DIM and n * k * k * m <= DENSE_MAX_ENTRIES


def embed(small: SymmetricForm, big: SymmetricForm, v: Tensor) -> Tensor:
    """A packed eigenmatrix of the top-``small.r`` subspace as a packed matrix of the top-``big.r`` one (λ ascending,
    so the small subspace is the last ``small.r`` indices)."""
    N = torch.zeros(big.r, big.r, dtype=torch.float64)
    N[big.r - small.r :, big.r - small.r :] = small.unpack(v)
    out = big.pack(N)
    return out / out.norm()


def symmetric_form(ker: Kernel, top: int | None = None) -> SymmetricForm:
    """The form on the top ``top`` range eigenpairs of K (all of them when None), kept on the kernel."""
    return ker.memo(f"stability-form:{top}", lambda: SymmetricForm(*ker.range_basis(top), ker.n, ker.k))
