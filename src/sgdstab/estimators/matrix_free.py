"""Spectral and trace estimators for symmetric operators: Lanczos top eigenpairs, Hutch++ and Hutchinson.

The estimators live in :mod:`sgdstab.estimators.eigen` (:func:`top_eigenpairs`, :class:`EigenResult`) and
:mod:`sgdstab.estimators.trace` (:func:`hutchpp`, :func:`hutchinson`, :class:`TraceFrobResult`), on the shared
plumbing of :mod:`sgdstab.estimators.common`; this module gathers them under their first address.

Every estimator takes a symmetric square operator as anything ``scipy.sparse.linalg.aslinearoperator`` accepts: a
``LinearOperator`` (such as those of :mod:`sgdstab.operators.products`, which convert to torch themselves), a dense
numpy array or a scipy sparse matrix. It works in float64 numpy and applies the operator in blocks (``matmat``)
where it can. Symmetry is assumed, not checked. Every product is counted: ``matvecs`` in a result is the number of
vectors the estimator applied the operator to (a matmat counts its columns), everything included.

Randomness comes from ``numpy.random.default_rng(seed)`` only, so a result is a deterministic function of the
operator and the arguments.

- :func:`top_eigenpairs`: ARPACK Lanczos (``eigsh``) from a seeded start vector, with the residual norms
  ``||A v − λ v||`` of what it returns; dense ``eigh`` for tiny operators (k ≥ p − 1).
- :func:`hutchpp`: Tr A and ||A||_F² = Tr A² together, with standard errors. Exact on a subspace Q (a given
  ``basis``, or a Gaussian sketch ``Q = orth(A S)``): ``Tr(QᵀAQ)`` and ``||AQ||_F² = Tr(QᵀA²Q)``; the rest
  ``Tr(PAP)`` and ``Tr(PA²P)`` (P = I − QQᵀ) by Gaussian probes g, h = Pg, w = Ah: ``hᵀw`` and ``||w||²`` — one
  product per probe serves both. Adaptive: stops once both standard errors are ≤ rtol·|estimate|.
- :func:`hutchinson`: the same without deflation and with Rademacher probes (for comparison).

A standard error is the sample standard deviation over √(probes): the estimate is within about 2 standard errors
of the truth 95% of the time (the sampling distribution is close to normal once there are tens of probes). An
operator whose trace is 0 (or whose residual variance is huge) cannot meet a relative tolerance: the estimator
then stops at ``max_matvecs`` and reports ``converged=False``; it never raises for that.
"""

from __future__ import annotations

from sgdstab.errors import EstimatorError
from sgdstab.estimators.eigen import DENSE_FALLBACK_MAX, EigenResult, top_eigenpairs
from sgdstab.estimators.trace import DEFAULT_SKETCH, DEFAULT_TARGETS, TraceFrobResult, hutchinson, hutchpp

__all__ = [
    "DEFAULT_SKETCH",
    "DEFAULT_TARGETS",
    "DENSE_FALLBACK_MAX",
    "EigenResult",
    "EstimatorError",
    "TraceFrobResult",
    "hutchinson",
    "hutchpp",
    "top_eigenpairs",
]
