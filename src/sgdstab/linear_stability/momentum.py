"""Exact mean-square linear stability of SGD with momentum at a minimum (docs/THEORY.md §9, heavy ball and Nesterov).

PyTorch's ``SGD(momentum=β)``: v ← βv + g, θ ← θ − ηv (heavy ball; with ``nesterov=True``: θ ← θ − η(g + βv)).
Linearized at a minimum with g = (1/B) Σ_{i∈B} H_i δ, everything lives in range(Jᵀ), and in the residual coordinates
u = Jδ, w = Jv the state z = (u, w) (heavy ball: (u_t, u_{t−1})) follows

    z_{t+1} = (P ⊗ I + Q ⊗ G_ξ) z_t,   G_ξ = (1/B) K D_ξ,  E G_ξ = K/n,

    heavy ball: P = [[1 + β, −β], [1, 0]],   Q = [[−η, 0], [0, 0]];
    Nesterov:   P = [[1, −ηβ²], [0, β]],     Q = [[−η(1 + β), 0], [1, 0]].

The second moment Z = E[z zᵀ] (2 × 2 blocks of nk × nk matrices) maps to

    T(Z) = Ā Z Āᵀ + c·(q qᵀ) ⊗ S(Z₁₁),   Ā = P ⊗ I + Q ⊗ K/n,   S(X) = (1/n) K bdiag(X) K − (1/n²) K X K,

with q the first column of Q (the only one that multiplies G_ξ) and c the noise scale of §1. Mean-square stable ⇔
ρ(T) ≤ 1. β = 0 gives §4's T; c = 0 (GD) gives ρ = max_i ρ(A_i)² of the 2 × 2 recursions A_i = P + Qλ_i/n, stable
iff ηλ_max < 2(1 + β) (heavy ball) or ηλ_max < (2 + 2β)/(1 + 2β) (Nesterov).

**Schur reduction** (what makes it cost what plain SGD's η* costs, not 4× the dimension and a clustered spectrum):
in K's eigenbasis Ā acts on each entry (i, j) of the four blocks as the 4 × 4 matrix A_i ⊗ A_j, and the noise enters
only through S(Z₁₁). So T(Z) = sZ with s > ρ(Ā ⊗ Ā) gives, entry by entry, z_ij = c·S(Z₁₁)_ij (s − A_i ⊗ A_j)⁻¹
vec(qqᵀ), and for X = Z₁₁: X = c·g(s) ∘ S(X), g_ij(s) = [(s − A_i ⊗ A_j)⁻¹ vec(qqᵀ)]₁₁. Both maps are positive
(PSD to PSD), so ρ(T) is the s at which the Perron root of X ↦ c·g(s) ∘ S(X) on r × r matrices crosses 1 (it falls as
s grows), or ρ(Ā ⊗ Ā) if it is below 1 there already; and ρ(T) ≤ 1 at a given η below GD's threshold iff that root at
s = 1 is ≤ 1 — η*(B, β) where it crosses 1, by Brent's method (relative ``tol``; ~10 Perron roots, 3.3× faster
than the bisection it replaced, same η* to 4e-10). Each product costs one bdiag, O(nk·r²); checked
against the dense E_B[A_B ⊗ A_B] over every batch in parameter space (tests/test_momentum.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigs
from torch import Tensor

from sgdstab.errors import StabilityError
from sgdstab.kernel.kernel import Kernel

__all__ = ["MOMENTUM_MAX_RANK", "check_momentum", "gd_momentum_threshold", "momentum_critical_lr", "momentum_rho"]

MOMENTUM_MAX_RANK = 2000  # a product is O(nk·r²) on r × r matrices; η* takes ~10 Perron roots
_DENSE_MAX_RANK = 12  # up to here T is formed as a (4r²)² matrix and decomposed


def check_momentum(momentum: object, nesterov: object) -> tuple[float, bool]:
    """(β, nesterov) checked: 0 ≤ β < 1 and a bool, Nesterov only with β > 0 (as ``torch.optim.SGD``)."""
    if isinstance(momentum, bool) or not isinstance(momentum, int | float):
        raise StabilityError(f"momentum must be a number in [0, 1), got {momentum!r}")
    beta = float(momentum)
    if not (0.0 <= beta < 1.0):
        raise StabilityError(f"momentum must be in [0, 1) (β ≥ 1 never converges), got {beta:g}")
    if not isinstance(nesterov, bool):
        raise StabilityError(f"nesterov must be True or False, got {nesterov!r}")
    if nesterov and beta == 0.0:
        raise StabilityError("Nesterov momentum requires momentum > 0 (as torch.optim.SGD)")
    return beta, nesterov


def gd_momentum_threshold(sharpness: float, beta: float, nesterov: bool) -> float:
    """The largest stable η of full-batch GD with momentum: 2(1 + β)/λ_max (heavy ball), (2 + 2β)/((1 + 2β)λ_max)
    (Nesterov as torch implements it); ``inf`` for λ_max = 0."""
    if sharpness <= 0:
        return math.inf
    return (2 + 2 * beta) / ((1 + 2 * beta if nesterov else 1.0) * sharpness)


@dataclass(frozen=True)
class _Lifted:
    """T in K's eigenbasis: the range eigenvalues λ (r), rows U (nk × r), n, k, c, β and the method."""

    lam: Tensor
    U: Tensor
    n: int
    k: int
    c: float
    beta: float
    nesterov: bool

    def coefficients(self, eta: float) -> tuple[np.ndarray, np.ndarray]:
        b = self.beta
        if self.nesterov:
            P, Q = [[1.0, -eta * b * b], [0.0, b]], [[-eta * (1 + b), 0.0], [1.0, 0.0]]
        else:
            P, Q = [[1 + b, -b], [1.0, 0.0]], [[-eta, 0.0], [0.0, 0.0]]
        return np.array(P), np.array(Q)

    def mean_updates(self, eta: float) -> Tensor:
        """A_i = P + Q λ_i/n, the 2 × 2 mean update along each range eigenvector i, shape (r, 2, 2)."""
        P, Q = self.coefficients(eta)
        return torch.tensor(P)[None] + torch.tensor(Q)[None] * (self.lam / self.n)[:, None, None]

    def operator(self, eta: float) -> Callable[[Tensor], Tensor]:
        """Z ↦ T(Z) for Z of shape (2, 2, r, r) (the blocks of the second moment in K's eigenbasis): the whole
        lifted map, which the Schur reduction below replaces (kept as its reference, tests/test_momentum.py)."""
        # Ā's blocks are diagonal in the eigenbasis: Ā_ab = P_ab + Q_ab λ/n
        A = self.mean_updates(eta).permute(1, 2, 0)  # A[a][c] is the (r,) diagonal of block (a, c)
        q = torch.tensor(self.coefficients(eta)[1][:, 0])
        qq = torch.outer(q, q)
        r, n, k = self.lam.shape[0], self.n, self.k
        U3 = self.U.reshape(n, k, r)
        lam = self.lam

        def apply(Z: Tensor) -> Tensor:  # Z: (2, 2, r, r); (Ā Z Āᵀ)_ab = Σ_cd diag(Ā_ac) Z_cd diag(Ā_bd)
            out = torch.einsum("aci,cdij,bdj->abij", A, Z, A)
            if self.c > 0:
                out += self.c * qq[:, :, None, None] * _noise_block(Z[0, 0], lam, U3, n)
            return out

        return apply


def _noise_block(X: Tensor, lam: Tensor, U3: Tensor, n: int) -> Tensor:
    """S(X) = (1/n) K bdiag(X) K − (1/n²) K X K in K's eigenbasis (K = U Λ Uᵀ, X given there):
    Λ [(1/n) Uᵀ bdiag(U X Uᵀ) U − X/n²] Λ, one pass over the n diagonal k × k blocks."""
    blocks = torch.einsum("iar,rs,ibs->iab", U3, X, U3)
    inner = torch.einsum("iar,iab,ibs->rs", U3, blocks, U3)
    return lam[:, None] * (inner / n - X / n**2) * lam[None, :]


def _lifted(ker: Kernel, c: float, beta: float, nesterov: bool) -> _Lifted:
    lam, U = ker.range_basis()
    if lam.shape[0] > MOMENTUM_MAX_RANK:
        raise StabilityError(
            f"the exact momentum stability runs up to rank K = {MOMENTUM_MAX_RANK} (this kernel has rank "
            f"{lam.shape[0]}); use fewer samples"
        )
    return _Lifted(lam.to(torch.float64), U.to(torch.float64), ker.n, ker.k, c, beta, nesterov)


def _pair_factors(lifted: _Lifted, eta: float, s: float) -> Tensor:
    """g_ij = [(s·I − A_i ⊗ A_j)⁻¹ vec(q qᵀ)]₀ for every pair of range eigenvalues (i, j), with A_i the mean
    updates and q the first column of Q; shape (r, r)."""
    A = lifted.mean_updates(eta)
    kron = torch.einsum("iac,jbd->ijabcd", A, A).reshape(A.shape[0], A.shape[0], 4, 4)
    q = lifted.coefficients(eta)[1][:, 0]
    rhs = torch.tensor(np.outer(q, q).reshape(4), dtype=torch.float64)
    system = s * torch.eye(4, dtype=torch.float64) - kron
    return torch.linalg.solve(system, rhs.expand(system.shape[:-1])).select(-1, 0)


def _gd_radius(lifted: _Lifted, eta: float) -> float:
    """ρ(Ā ⊗ Ā) = max_i ρ(A_i)², the mean dynamics' part of T."""
    return float(torch.linalg.eigvals(lifted.mean_updates(eta)).abs().max()) ** 2


def _reduced_radius(lifted: _Lifted, g: Tensor, tol: float, v0: np.ndarray | None) -> tuple[float, np.ndarray, int]:
    """ρ of F: X ↦ c·g ∘ S(X) on r × r matrices (a positive map: its Perron root), by ARPACK (dense for tiny r)."""
    r, n, k = int(lifted.lam.shape[0]), lifted.n, lifted.k
    U3 = lifted.U.reshape(n, k, r)
    scale = lifted.c * g

    def apply(X: Tensor) -> Tensor:
        return scale * _noise_block(X, lifted.lam, U3, n)

    if r <= _DENSE_MAX_RANK:
        basis = torch.eye(r * r, dtype=torch.float64).reshape(r * r, r, r)
        M = torch.stack([apply(E).reshape(-1) for E in basis], dim=1)
        values, vectors = torch.linalg.eig(M)
        top = int(values.abs().argmax())
        return float(values.abs()[top]), vectors[:, top].real.numpy(), r * r
    count = [0]

    def matvec(x: np.ndarray) -> np.ndarray:
        count[0] += 1
        return apply(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)).reshape(r, r)).reshape(-1).numpy()

    op = LinearOperator((r * r, r * r), matvec=matvec, dtype=np.float64)
    start = np.eye(r).reshape(-1) if v0 is None else v0  # the identity: a PSD start for a positive map
    try:
        values, vectors = eigs(op, k=1, which="LM", tol=tol, v0=start, maxiter=5000)
    except ArpackNoConvergence as exc:  # pragma: no cover - ARPACK's own failure
        if len(exc.eigenvalues) == 0:
            raise StabilityError("ARPACK did not converge on the momentum stability operator") from None
        values, vectors = exc.eigenvalues, exc.eigenvectors
    return float(np.abs(values[0])), np.real(vectors[:, 0]), count[0]


class _PerronRoots:
    """The Perron root of X ↦ c·g(η, s) ∘ S(X) at any (η, s), each ARPACK run started from the last eigenvector;
    ``products`` counts the operator applications of all of them."""

    def __init__(self, lifted: _Lifted, tol: float) -> None:
        self.lifted, self.tol = lifted, min(tol, 1e-10)
        self.v0: np.ndarray | None = None
        self.products = 0

    def __call__(self, eta: float, s: float) -> float:
        value, self.v0, used = _reduced_radius(self.lifted, _pair_factors(self.lifted, eta, s), self.tol, self.v0)
        self.products += used
        return value


def _radius(lifted: _Lifted, eta: float, tol: float) -> tuple[float, int]:
    """ρ(T) by the Schur reduction of the module docstring: s > ρ(Ā ⊗ Ā) is an eigenvalue of T with Z₁₁ ≠ 0 iff
    the Perron root of X ↦ c·g(s) ∘ S(X) is 1, and that root falls as s grows; so ρ(T) is the s where it crosses
    1 (Brent's method on a doubling bracket), or ρ(Ā ⊗ Ā) when it is below 1 there already."""
    if lifted.lam.shape[0] == 0:
        return 0.0, 0
    s0 = _gd_radius(lifted, eta)
    if lifted.c == 0:
        return s0, 0
    root = _PerronRoots(lifted, tol)
    lo = s0 * (1 + 1e-12) if s0 > 0 else 1e-300
    if root(eta, lo) <= 1.0:
        return s0, root.products
    hi = max(2 * lo, 1.0)
    while root(eta, hi) > 1.0:
        lo, hi = hi, 2 * hi
    return _crossing(lambda s: root(eta, s), lo, hi, max(tol, 1e-12)), root.products


def momentum_rho(ker: Kernel, eta: float, c: float, beta: float, nesterov: bool, tol: float) -> tuple[float, int]:
    """ρ(T) of SGD with momentum at this kernel (module docstring) and the operator products used."""
    return _radius(_lifted(ker, c, beta, nesterov), eta, tol)


def momentum_critical_lr(ker: Kernel, c: float, beta: float, nesterov: bool, tol: float) -> tuple[float, int]:
    """η*(B, β): the largest η with ρ(T) ≤ 1, below GD's threshold (Brent, relative ``max(tol, 1e-9)``)."""
    lifted = _lifted(ker, c, beta, nesterov)
    if lifted.lam.shape[0] == 0:
        return math.inf, 0
    hi = gd_momentum_threshold(float(lifted.lam[-1]) / ker.n, beta, nesterov)
    if c == 0:
        return hi, 0
    # below GD's threshold ρ(Ā ⊗ Ā) < 1, so ρ(T) ≤ 1 iff the Perron root of X ↦ c·g(1) ∘ S(X) is ≤ 1
    root = _PerronRoots(lifted, tol)
    # at η = 0 nothing moves: the map is zero and its Perron root 0
    return _crossing(lambda eta: root(eta, 1.0) if eta > 0 else 0.0, 0.0, hi, max(tol, 1e-9)), root.products


def _crossing(perron: Callable[[float], float], lo: float, hi: float, rtol: float) -> float:
    """Where the monotone ``perron`` crosses 1 in [lo, hi] (it is on opposite sides there), to ``rtol``: Brent's
    method (about 10 Perron roots where bisection took 30–40), each value clipped so that a root that blows up at an
    end of the bracket (g(s) is singular at GD's threshold) still reads as a side, not as an infinity to
    interpolate on."""

    def side(x: float) -> float:
        value = perron(x) - 1.0
        return value if math.isfinite(value) else 1e300

    return float(brentq(side, lo, hi, xtol=1e-300, rtol=rtol))
