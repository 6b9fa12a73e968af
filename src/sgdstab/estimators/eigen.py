"""The k largest or smallest eigenpairs of a symmetric operator: ARPACK Lanczos (``eigsh``) from a seeded start
vector, with the residual norms ``||A v − λ v||`` of what it returns; dense ``eigh`` for tiny operators (k ≥ p − 1)
and when ARPACK fails outright on a small one.

Example:
    >>> import numpy as np
    >>> from sgdstab.estimators.eigen import top_eigenpairs
    >>> res = top_eigenpairs(np.diag(np.arange(1.0, 11.0)), k=2)
    >>> np.round(res.eigenvalues, 8).tolist(), res.method, res.converged
    ([10.0, 9.0], 'lanczos', True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, eigsh

from sgdstab.errors import EstimatorError
from sgdstab.estimators.common import CountedOperator, as_operator, seeded_rng, single_blas_thread
from sgdstab.utils.validation import check_float, check_int

__all__ = ["DENSE_FALLBACK_MAX", "EigenResult", "top_eigenpairs"]

DENSE_FALLBACK_MAX = 2000
"""Largest p for which :func:`top_eigenpairs` materializes the operator when ARPACK itself fails."""


@dataclass(frozen=True, eq=False)
class EigenResult:
    """Eigenpairs of a symmetric operator.

    Attributes:
        eigenvalues: shape (k',), descending for ``which="LA"``, ascending for ``"SA"``. k' < k only when ARPACK
            did not converge (then only the converged pairs are returned).
        eigenvectors: shape (p, k'), orthonormal columns matching ``eigenvalues``.
        residual_norms: ``||A v_j − λ_j v_j||`` for each pair (one extra matmat).
        converged: ARPACK reported convergence of all k pairs (always True on the dense route).
        matvecs: products applied, the residual check included.
        which: ``"LA"`` or ``"SA"``.
        method: ``"lanczos"`` (ARPACK) or ``"dense"`` (``eigh`` of the materialized operator).
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    residual_norms: np.ndarray
    converged: bool
    matvecs: int
    which: str
    method: str

    @property
    def max_residual(self) -> float:
        return float(self.residual_norms.max()) if self.residual_norms.size else math.nan


def _check_eigen_args(
    p: int, k: Any, which: Any, tol: Any, maxiter: Any, ncv: Any
) -> tuple[int, float, int | None, int | None]:
    """Validated ``(k, tol, maxiter, ncv)`` of :func:`top_eigenpairs` for a p × p operator."""
    k = check_int(k, "k", minimum=1, error=EstimatorError)
    if k > p:
        raise EstimatorError(f"k = {k} eigenpairs asked of a {p} × {p} operator")
    if which not in ("LA", "SA"):
        raise EstimatorError(f"which must be 'LA' (largest) or 'SA' (smallest), got {which!r}")
    tol = check_float(tol, "tol", minimum=0, error=EstimatorError)
    if maxiter is not None:
        maxiter = check_int(maxiter, "maxiter", minimum=1, error=EstimatorError)
    if ncv is not None:
        ncv = check_int(ncv, "ncv", minimum=k + 1, error=EstimatorError)
    return k, tol, maxiter, ncv


def _lanczos_eigenpairs(
    A: CountedOperator, k: int, which: str, tol: float, maxiter: int | None, ncv: int | None, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, bool] | None:
    """ARPACK's ``(eigenvalues, eigenvectors, converged)`` in ``which`` order, or None to fall back to dense."""
    p = A.shape[0]
    converged = True
    v0 = rng.standard_normal(p)
    try:
        vals, vecs = eigsh(A, k=k, which=which, tol=tol, maxiter=maxiter, v0=v0, ncv=ncv)
    except ArpackNoConvergence as exc:
        converged = False
        vals = np.asarray(exc.eigenvalues, dtype=np.float64).reshape(-1)
        vecs = np.asarray(exc.eigenvectors, dtype=np.float64).reshape(p, -1)
    except ArpackError as exc:  # e.g. the zero operator ("starting vector is zero")
        if p > DENSE_FALLBACK_MAX:
            raise EstimatorError(f"ARPACK failed on this {p} × {p} operator: {exc}") from None
        return None
    order = np.argsort(vals)
    if which == "LA":
        order = order[::-1]
    return vals[order], vecs[:, order], converged


def _dense_eigenpairs(A: CountedOperator, k: int, which: str) -> tuple[np.ndarray, np.ndarray]:
    """The k wanted eigenpairs from ``eigh`` of the materialized (symmetrized) operator: p products."""
    p = A.shape[0]
    D = A.matmat(np.eye(p))
    w, V = scipy.linalg.eigh(0.5 * (D + D.T))
    idx = np.arange(p - 1, p - 1 - k, -1) if which == "LA" else np.arange(k)
    return w[idx], V[:, idx]


def _residual_norms(A: CountedOperator, vals: np.ndarray, vecs: np.ndarray) -> np.ndarray:
    """``||A v_j − λ_j v_j||`` for each pair (one matmat; none when there are no pairs)."""
    if vals.size:
        return np.linalg.norm(A.matmat(vecs) - vecs * vals[None, :], axis=0)
    return np.zeros(0)


@single_blas_thread
def top_eigenpairs(
    op: Any,
    k: int = 1,
    which: str = "LA",
    tol: float = 1e-6,
    maxiter: int | None = None,
    seed: Any = 0,
    *,
    ncv: int | None = None,
) -> EigenResult:
    """The k algebraically largest (``"LA"``) or smallest (``"SA"``) eigenpairs of a symmetric operator.

    Lanczos (``scipy.sparse.linalg.eigsh``) from a Gaussian start vector drawn from ``seed``; ``tol`` is ARPACK's
    relative accuracy of the eigenvalues (0 = machine precision). If ARPACK does not converge within ``maxiter``
    restarts, the pairs that did converge are returned with ``converged=False``. When k ≥ p − 1 (ARPACK's limit)
    the operator is materialized (p products) and ``scipy.linalg.eigh`` is used; so it is when ARPACK fails
    outright (the zero operator) and p ≤ ``DENSE_FALLBACK_MAX`` (otherwise :class:`EstimatorError`).

    Args:
        op: symmetric square operator (a ``LinearOperator``, numpy array or scipy sparse matrix).
        k: eigenpairs wanted (1 ≤ k ≤ p).
        which: ``"LA"`` (largest, descending) or ``"SA"`` (smallest, ascending).
        tol: ARPACK's relative accuracy (≥ 0; 0 = machine precision).
        maxiter: ARPACK restarts (default ARPACK's, 10·p).
        seed: seed of the start vector (a non-negative integer or a numpy Generator).
        ncv: Lanczos vectors (> k; default ARPACK's).

    Returns:
        :class:`EigenResult`: the pairs, their residual norms, convergence and the products applied.

    Raises:
        EstimatorError: a bad argument or operator, or ARPACK failing on an operator too large to materialize.
    """
    A = as_operator(op)
    p = A.shape[0]
    k, tol, maxiter, ncv = _check_eigen_args(p, k, which, tol, maxiter, ncv)
    rng = seeded_rng(seed)

    converged = True
    method = "dense" if k >= p - 1 else "lanczos"
    if method == "lanczos":
        lanczos = _lanczos_eigenpairs(A, k, which, tol, maxiter, ncv, rng)
        if lanczos is None:
            method = "dense"
        else:
            vals, vecs, converged = lanczos
    if method == "dense":
        vals, vecs = _dense_eigenpairs(A, k, which)

    vals = np.ascontiguousarray(vals, dtype=np.float64)
    vecs = np.ascontiguousarray(vecs, dtype=np.float64)
    return EigenResult(
        eigenvalues=vals,
        eigenvectors=vecs,
        residual_norms=_residual_norms(A, vals, vecs),
        converged=converged and vals.size == k,
        matvecs=A.count,
        which=which,
        method=method,
    )
