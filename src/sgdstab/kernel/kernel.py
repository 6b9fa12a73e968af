"""The NTK Gram matrix as one validated type, :class:`Kernel`, with its eigendecomposition computed once.

Every consumer of K (the stability solvers, the certificates, the precision check, the curvature figures at a
minimum) takes a :class:`Kernel`; :func:`as_kernel` turns a problem, a tensor or an array into one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from sgdstab.errors import StabilityError
from sgdstab.kernel import figures as kf
from sgdstab.utils.validation import check_int

T = TypeVar("T")


class Kernel:
    """The NTK Gram matrix ``K = J Jᵀ`` (nk × nk, row ``i·k + c``) of n samples with k outputs: the one kernel type.

    :func:`sgdstab.ntk` returns one; ``Kernel(K, n, k)`` wraps a matrix you have. Either way:

    - :attr:`matrix` is K as built or given (the problem's dtype and device for :func:`sgdstab.ntk`);
    - :attr:`K` is K symmetrized in float64 on the CPU, what the exact solvers work in;
    - :attr:`eigen` is its float64 eigendecomposition (range cutoff as in :func:`sgdstab.kernel.figures.kernel_eigen`,
      float32's when K came in float32), computed once, on first use, and reused;
    - :meth:`memo` keeps what a consumer derives from K (the stability forms, the certificates' curvature) with it.

    ``Kernel(K, n, k)`` checks K at once: it raises :class:`~sgdstab.errors.StabilityError` unless K is square,
    finite, symmetric within rounding, PSD within rounding and ``n·k`` equals its size. A kernel from
    :func:`sgdstab.ntk` is J Jᵀ by construction, so nothing is computed until asked for (its eigendecomposition
    costs O((nk)³)).

    Example:
        >>> import torch, sgdstab
        >>> ker = sgdstab.Kernel(torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64), n=2)
        >>> ker.rank, round(float(ker.eigen.values[-1]), 12)
        (2, 3.0)
    """

    __slots__ = ("_K64", "_eigen", "_matrix", "_memo", "k", "n", "notes", "route")

    def __init__(self, K: Tensor | np.ndarray, n: int, k: int = 1) -> None:
        if isinstance(K, np.ndarray):
            K = torch.from_numpy(K)
        if not isinstance(K, Tensor):
            raise StabilityError(f"K must be a torch tensor or numpy array, got {type(K).__name__}")
        n, k = _check_sizes(K, n, k)
        in_dtype = K.dtype if K.dtype in (torch.float32, torch.float64) else torch.float64
        Kc = K.detach().to("cpu", in_dtype)
        if not bool(torch.isfinite(Kc).all()):
            raise StabilityError(f"K contains {int((~torch.isfinite(Kc)).sum())} non-finite value(s) (NaN or inf)")
        scale = float(Kc.abs().max())
        asym = float((Kc - Kc.T).abs().max())
        sym_tol = (1e-4 if in_dtype == torch.float32 else 1e-8) * scale
        if asym > sym_tol:
            raise StabilityError(
                f"K is not symmetric: max |K − Kᵀ| = {asym:.3g} exceeds {sym_tol:.3g} (relative to max |K|)"
            )
        Ks = (Kc + Kc.T) / 2
        eig = kf.kernel_eigen(Ks)
        lam_max = max(float(eig.values[-1]), 0.0)
        psd_tol = 100 * Kc.shape[0] * torch.finfo(in_dtype).eps * lam_max
        if float(eig.values[0]) < -psd_tol:
            raise StabilityError(
                f"K is not positive semi-definite: λ_min = {float(eig.values[0]):.3g} < −{psd_tol:.3g} "
                f"(λ_max = {lam_max:.3g}); an NTK Gram matrix J Jᵀ always is"
            )
        self._init(K.detach(), n, k, Ks.to(torch.float64), eig)

    def _init(self, matrix: Tensor, n: int, k: int, K64: Tensor | None, eig: kf.KernelEigen | None) -> None:
        self._matrix, self.n, self.k, self._K64, self._eigen = matrix, n, k, K64, eig
        self._memo: dict[str, Any] = {}
        self.route = "given"  # how K was built: "given", or sgdstab.ntk's "layerwise" / "modules" / "jacobian"
        self.notes: tuple[str, ...] = ()  # what a reader of K should know about how it was built

    @classmethod
    def from_gram(cls, K: Tensor, n: int, k: int, route: str = "given", notes: tuple[str, ...] = ()) -> Kernel:
        """Wrap ``K = J Jᵀ`` as built by :func:`sgdstab.ntk` (symmetric and PSD by construction): no check, no copy,
        the eigendecomposition deferred to first use; ``route`` and ``notes`` say how it was built."""
        _check_sizes(K, n, k)
        obj = cls.__new__(cls)
        obj._init(K, int(n), int(k), None, None)
        obj.route, obj.notes = route, tuple(notes)
        return obj

    @property
    def matrix(self) -> Tensor:
        """K as built or given: for :func:`sgdstab.ntk`, in the problem's dtype and on its device."""
        return self._matrix

    @property
    def K(self) -> Tensor:
        """K symmetrized, in float64, on the CPU."""
        if self._K64 is None:
            self._K64 = self._symmetrized().to(torch.float64)
        return self._K64

    def _symmetrized(self) -> Tensor:
        m = self._matrix.detach()
        m = m.to("cpu", m.dtype if m.dtype in (torch.float32, torch.float64) else torch.float64)
        if not bool(torch.isfinite(m).all()):
            raise StabilityError(f"K contains {int((~torch.isfinite(m)).sum())} non-finite value(s) (NaN or inf)")
        return (m + m.T) / 2

    @property
    def nk(self) -> int:
        return self.n * self.k

    @property
    def dtype(self) -> torch.dtype:
        return self._matrix.dtype

    @property
    def eigen(self) -> kf.KernelEigen:
        """Float64 eigendecomposition of K (eigenvalues ascending), computed on first use."""
        if self._eigen is None:
            self._eigen = kf.kernel_eigen(self._symmetrized())
        return self._eigen

    @property
    def has_eigen(self) -> bool:
        """Whether :attr:`eigen` is already computed (so asking for it costs nothing)."""
        return self._eigen is not None

    @property
    def rank(self) -> int:
        """Number of eigenvalues above the range cutoff."""
        return self.eigen.rank

    def range_basis(self, top: int | None = None) -> tuple[Tensor, Tensor]:
        """``(λ, U)`` spanning range(K), eigenvalues ascending; ``top`` keeps only the largest ``top``.

        Views, not copies: the eigenvalues above the cutoff are the last ``rank`` ones (a boolean-mask selection
        would copy all of U, 800 MB at n·k = 10⁴, on every call)."""
        m = self.rank if top is None else max(0, min(top, self.rank))
        values, vectors = self.eigen.values, self.eigen.vectors
        return values[values.shape[0] - m :], vectors[:, vectors.shape[1] - m :]

    def memo(self, key: str, build: Callable[[], T]) -> T:
        """``build()`` once per kernel and ``key``: what a consumer derives from K lives as long as K does."""
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]

    def has_memo(self, key: str) -> bool:
        """Whether :meth:`memo` already holds ``key`` (what was derived from this K so far)."""
        return key in self._memo

    def __repr__(self) -> str:
        if self._eigen is None:
            return f"Kernel(n={self.n}, k={self.k}, dtype={self.dtype}, eigendecomposition not yet computed)"
        return f"Kernel(n={self.n}, k={self.k}, rank={self.rank}, λ_max={float(self._eigen.values[-1]):.4g})"


def _check_sizes(K: Tensor, n: int, k: int) -> tuple[int, int]:
    if K.ndim != 2 or K.shape[0] != K.shape[1] or K.shape[0] == 0:
        raise StabilityError(f"K must be a non-empty square matrix, got shape {tuple(K.shape)}")
    n, k = _positive_int(n, "n"), _positive_int(k, "k")
    if n * k != K.shape[0]:
        raise StabilityError(f"K is {K.shape[0]} × {K.shape[0]} but n·k = {n}·{k} = {n * k}")
    return n, k


def _positive_int(value: int, name: str) -> int:
    try:
        return check_int(value, name, minimum=1, error=StabilityError)
    except StabilityError:
        raise StabilityError(f"{name} must be a positive integer, got {value!r}") from None
