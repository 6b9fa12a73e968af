"""The mean-square proxy λ_max(E_B[(I − ηH_B)²]) of Andreyev & Beneventano (2024), beside the exact ρ(T).

At a minimum H_B = (1/B) Jᵀ D_ξ J and E[D_ξ K D_ξ]/B² = ((1 − c)/n²) K + (c/n) bdiag(K) (both schemes, c of §1),
so on range(Jᵀ) — in the basis where J = U Λ^{1/2} Vᵀ, K = U Λ Uᵀ —

    E_B[(I − ηH_B)²] = I − 2ηΛ/n + η² [((1 − c)/n²) Λ² + (c/n) Λ^{1/2} Uᵀ bdiag(K) U Λ^{1/2}],

an r × r matrix. For any PSD X, Tr T(X) = Tr(E[A_B²] X) ≤ λ_max(E[A_B²]) Tr X, and T's top eigenmatrix is PSD, so
ρ(T) ≤ the proxy: it is a sufficient condition for stability only (docs/THEORY.md §9). Outside range(Jᵀ) the
matrix is I (those directions never move) and is left out.
"""

from __future__ import annotations

import math

import torch

from sgdstab.kernel.figures import block_diagonal
from sgdstab.kernel.kernel import Kernel

__all__ = ["PROXY_MAX_RANK", "mean_square_proxy"]

PROXY_MAX_RANK = 2000  # an r × r symmetric eigenvalue problem: about a second here at this rank


def mean_square_proxy(ker: Kernel, lr: float, c: float) -> float:
    """λ_max(E_B[(I − ηH_B)²]) on range(Jᵀ) at this kernel, for step ``lr`` and noise scale ``c``; NaN above
    :data:`PROXY_MAX_RANK` and 0 for K = 0 (nothing moves). ``lr`` and ``c`` are checked by the caller."""
    lam, U = ker.range_basis()
    r, n, k = int(lam.shape[0]), ker.n, ker.k
    if r == 0:
        return 0.0
    if r > PROXY_MAX_RANK:
        return math.nan
    lam, U = lam.to(torch.float64), U.to(torch.float64)
    diagonal = block_diagonal(ker.K, n, k)  # (n, k, k): the blocks K_ii
    U3 = U.reshape(n, k, r)
    inner = torch.einsum("iar,iab,ibs->rs", U3, diagonal, U3)  # Uᵀ bdiag(K) U
    root = lam.sqrt()
    noise = (1 - c) / n**2 * torch.diag(lam * lam) + (c / n) * root[:, None] * inner * root[None, :]
    M = torch.diag(1 - 2 * lr * lam / n) + lr * lr * noise
    return float(torch.linalg.eigvalsh((M + M.T) / 2)[-1])
