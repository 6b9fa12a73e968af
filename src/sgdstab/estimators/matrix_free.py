"""Spectral and trace estimators for symmetric operators: Lanczos top eigenpairs, Hutch++ and Hutchinson.

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

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import scipy.linalg
from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, LinearOperator, aslinearoperator, eigsh
from threadpoolctl import threadpool_limits

from sgdstab.errors import EstimatorError

__all__ = [
    "EigenResult",
    "EstimatorError",
    "TraceFrobResult",
    "hutchinson",
    "hutchpp",
    "top_eigenpairs",
]

DEFAULT_SKETCH = 20
"""Columns of the Gaussian sketch of :func:`hutchpp` when neither ``sketch`` nor ``basis`` is given."""
DEFAULT_TARGETS = ("trace", "frobenius_squared")  # the figures whose standard error rtol bounds
_TARGETS = ("trace", "frobenius_squared", "frobenius")


DENSE_FALLBACK_MAX = 2000
"""Largest p for which :func:`top_eigenpairs` materializes the operator when ARPACK itself fails."""


T = TypeVar("T")


def _numpy_blas_single_thread(fn: Callable[..., T]) -> Callable[..., T]:
    """Run ``fn`` with numpy/scipy's BLAS on one thread.

    The estimators interleave small float64 BLAS calls with torch products; OpenBLAS's idle threads spin and take
    the cores from torch. One BLAS thread made Hutch++ plus Lanczos 3.3× faster on an MLP (n = 500, p = 8970:
    1.06 s → 0.29 s). torch's own thread pool is not affected.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        with threadpool_limits(limits=1, user_api="blas"):
            return fn(*args, **kwargs)

    return wrapper


# ---------------------------------------------------------------------------------------------------- results
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


@dataclass(frozen=True)
class TraceFrobResult:
    """Estimates of Tr A and ||A||_F² (= Tr A² for symmetric A) with their standard errors.

    Attributes:
        trace, trace_stderr: Tr A and its standard error.
        frobenius_squared, frob2_stderr: ||A||_F² and its standard error.
        frobenius, frobenius_stderr: ||A||_F = sqrt(max(frobenius_squared, 0)), standard error by the delta
            method (frob2_stderr / (2 ||A||_F)).
        probes: random probes used for the residual part (0 when the exact part is the whole space).
        matvecs: all products applied (sketch, exact part and probes).
        converged: both standard errors ≤ rtol·|estimate| (after at least min_probes probes), or exact.
        rtol: the requested relative tolerance.
        deflation_rank: columns of the exact subspace Q (0 for plain Hutchinson).
        method: ``"hutch++"`` or ``"hutchinson"``.
    """

    trace: float
    trace_stderr: float
    frobenius_squared: float
    frob2_stderr: float
    frobenius: float
    frobenius_stderr: float
    probes: int
    matvecs: int
    converged: bool
    rtol: float
    deflation_rank: int
    method: str


# ---------------------------------------------------------------------------------------------------- helpers
class _Counted(LinearOperator):
    """Forwards to an operator and counts the vectors it is applied to."""

    def __init__(self, op: LinearOperator) -> None:
        super().__init__(dtype=np.dtype(np.float64), shape=op.shape)
        self.op = op
        self.count = 0

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        self.count += 1
        return np.asarray(self.op.matvec(np.asarray(x, dtype=np.float64).reshape(-1)), dtype=np.float64)

    def _matmat(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        self.count += X.shape[1]
        if X.shape[1] == 0:
            return np.zeros((self.shape[0], 0))
        out = np.asarray(self.op.matmat(X), dtype=np.float64)
        return out.reshape(self.shape[0], X.shape[1])

    _rmatvec = _matvec
    _rmatmat = _matmat

    def _adjoint(self) -> _Counted:
        return self


def _as_operator(op: Any) -> _Counted:
    try:
        lin = aslinearoperator(op)
    except (TypeError, ValueError) as exc:
        raise EstimatorError(
            f"cannot use {type(op).__name__} as an operator: pass a LinearOperator, a numpy array or a sparse "
            f"matrix ({exc})"
        ) from None
    if len(lin.shape) != 2 or lin.shape[0] != lin.shape[1]:
        raise EstimatorError(f"the operator must be square (symmetric), got shape {lin.shape}")
    if lin.shape[0] < 1:
        raise EstimatorError("the operator is empty (shape 0 × 0)")
    if np.issubdtype(lin.dtype, np.complexfloating):
        raise EstimatorError("complex operators are not supported; pass a real symmetric operator")
    return _Counted(lin)


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise EstimatorError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    return int(value)


def _check_rtol(rtol: Any) -> float:
    if isinstance(rtol, str | bytes | bool):  # float() would take "0.1", b"1" and True
        raise EstimatorError(f"rtol must be a positive finite number, got {rtol!r}")
    try:
        r = float(rtol)
    except (TypeError, ValueError):
        raise EstimatorError(f"rtol must be a positive finite number, got {rtol!r}") from None
    if not math.isfinite(r) or r <= 0:
        raise EstimatorError(f"rtol must be a positive finite number, got {rtol!r}")
    return r


def _rng(seed: Any) -> np.random.Generator:
    """A Generator from ``seed`` (a non-negative integer or a Generator, used as is)."""
    if isinstance(seed, np.random.Generator):
        return seed
    # numpy also takes sequences and None (fresh OS entropy: not reproducible), and raises a bare ValueError on
    # negative seeds; keep to the documented integers
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise EstimatorError(f"seed must be a non-negative integer (or a numpy Generator), got {seed!r}")
    return np.random.default_rng(int(seed))


def _orth(M: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the column space of M, dropping numerically dependent directions."""
    if M.shape[1] == 0:
        return M
    U, s, _ = np.linalg.svd(M, full_matrices=False)
    if s.size == 0 or s[0] == 0:
        return M[:, :0]
    keep = s > s[0] * max(M.shape) * np.finfo(np.float64).eps
    return U[:, keep]


# ---------------------------------------------------------------------------------------------------- eigenpairs
def _check_eigen_args(
    p: int, k: Any, which: Any, tol: Any, maxiter: Any, ncv: Any
) -> tuple[int, float, int | None, int | None]:
    """Validated ``(k, tol, maxiter, ncv)`` of :func:`top_eigenpairs` for a p × p operator."""
    k = _check_int(k, "k", 1)
    if k > p:
        raise EstimatorError(f"k = {k} eigenpairs asked of a {p} × {p} operator")
    if which not in ("LA", "SA"):
        raise EstimatorError(f"which must be 'LA' (largest) or 'SA' (smallest), got {which!r}")
    try:
        if isinstance(tol, str | bytes | bool):  # float() would take them
            raise TypeError
        tol = float(tol)
    except (TypeError, ValueError):
        raise EstimatorError(f"tol must be a finite number ≥ 0, got {tol!r}") from None
    if not math.isfinite(tol) or tol < 0:
        raise EstimatorError(f"tol must be a finite number ≥ 0, got {tol!r}")
    if maxiter is not None:
        maxiter = _check_int(maxiter, "maxiter", 1)
    if ncv is not None:
        ncv = _check_int(ncv, "ncv", k + 1)
    return k, tol, maxiter, ncv


def _lanczos_eigenpairs(
    A: _Counted, k: int, which: str, tol: float, maxiter: int | None, ncv: int | None, rng: np.random.Generator
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


def _dense_eigenpairs(A: _Counted, k: int, which: str) -> tuple[np.ndarray, np.ndarray]:
    """The k wanted eigenpairs from ``eigh`` of the materialized (symmetrized) operator: p products."""
    p = A.shape[0]
    D = A.matmat(np.eye(p))
    w, V = scipy.linalg.eigh(0.5 * (D + D.T))
    idx = np.arange(p - 1, p - 1 - k, -1) if which == "LA" else np.arange(k)
    return w[idx], V[:, idx]


def _residual_norms(A: _Counted, vals: np.ndarray, vecs: np.ndarray) -> np.ndarray:
    """``||A v_j − λ_j v_j||`` for each pair (one matmat; none when there are no pairs)."""
    if vals.size:
        return np.linalg.norm(A.matmat(vecs) - vecs * vals[None, :], axis=0)
    return np.zeros(0)


@_numpy_blas_single_thread
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
    """
    A = _as_operator(op)
    p = A.shape[0]
    k, tol, maxiter, ncv = _check_eigen_args(p, k, which, tol, maxiter, ncv)
    rng = _rng(seed)

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


# ---------------------------------------------------------------------------------------------------- trace / Frobenius
@dataclass(frozen=True)
class _ProbeEstimates:
    """What the probes gave: estimates, standard errors, probes used and whether rtol was met."""

    trace: float
    trace_stderr: float
    frobenius_squared: float
    frob2_stderr: float
    probes: int
    converged: bool


def _sample_estimates(
    tr: list[np.ndarray], fr: list[np.ndarray], exact_trace: float, exact_frob2: float, m: int
) -> tuple[float, float, float, float]:
    """``(trace, frob2, trace_stderr, frob2_stderr)`` from the m samples so far (stderr inf for a single one)."""
    t_all, f_all = np.concatenate(tr), np.concatenate(fr)
    t_est = exact_trace + float(t_all.mean())
    f_est = exact_frob2 + float(f_all.mean())
    t_se = float(t_all.std(ddof=1)) / math.sqrt(m) if m > 1 else math.inf
    f_se = float(f_all.std(ddof=1)) / math.sqrt(m) if m > 1 else math.inf
    return t_est, f_est, t_se, f_se


def _tolerance_checks(
    t_est: float, f_est: float, t_se: float, f_se: float, rtol: float, targets: tuple[str, ...]
) -> list[tuple[float, float]]:
    """(standard error, tolerance) of each target figure."""
    # ||A||_F = √(||A||_F²) has half the relative standard error of its square
    tolerances = {
        "trace": (t_se, rtol * abs(t_est)),
        "frobenius_squared": (f_se, rtol * abs(f_est)),
        "frobenius": (f_se, 2 * rtol * abs(f_est)),
    }
    return [tolerances[name] for name in targets]


def _probes_to_add(checks: list[tuple[float, float]], m: int, block_size: int) -> int:
    """Probes still needed, from the current variances (the standard error falls as 1/√m)."""
    ratios = [(se / tl) ** 2 if tl > 0 else math.inf for se, tl in checks]
    need = m * max(ratios)
    return block_size if not math.isfinite(need) else math.ceil(need) - m


def _draw_probes(rng: np.random.Generator, p: int, b: int, Q: np.ndarray, rademacher: bool) -> np.ndarray:
    """b probe columns: Rademacher, or Gaussian projected off the exact subspace Q."""
    if rademacher:
        return rng.integers(0, 2, size=(p, b)).astype(np.float64) * 2.0 - 1.0
    H = rng.standard_normal((p, b))
    if Q.shape[1]:
        H -= Q @ (Q.T @ H)
    return H


def _probe_samples(A: _Counted, H: np.ndarray, control: _Counted | None) -> tuple[np.ndarray, np.ndarray]:
    """Samples of hᵀAh and hᵀA²h for each probe column h (differences from the control when there is one)."""
    W = A.matmat(H)
    if control is None:
        return np.einsum("ij,ij->j", H, W), np.einsum("ij,ij->j", W, W)
    # samples of hᵀ(A − C)h and hᵀ(A² − C²)h: small variance when A ≈ C
    V = control.matmat(H)
    return np.einsum("ij,ij->j", H, W - V), np.einsum("ij,ij->j", W, W) - np.einsum("ij,ij->j", V, V)


def _products(A: _Counted, control: _Counted | None) -> int:
    return A.count + (control.count if control is not None else 0)


def _run_probes(
    A: _Counted,
    Q: np.ndarray,
    exact_trace: float,
    exact_frob2: float,
    *,
    rtol: float,
    max_matvecs: int,
    min_probes: int,
    block_size: int,
    rng: np.random.Generator,
    rademacher: bool,
    control: _Counted | None,
    targets: tuple[str, ...],
) -> _ProbeEstimates:
    """Probe in blocks until every target meets rtol (after min_probes) or the budget is spent."""
    p = A.shape[0]
    tr: list[np.ndarray] = []
    fr: list[np.ndarray] = []
    m = 0
    t_est, f_est = exact_trace, exact_frob2
    t_se = f_se = math.inf
    while True:
        if m >= min_probes:
            t_est, f_est, t_se, f_se = _sample_estimates(tr, fr, exact_trace, exact_frob2, m)
            checks = _tolerance_checks(t_est, f_est, t_se, f_se, rtol, targets)
            if all(se <= tl for se, tl in checks):
                return _ProbeEstimates(t_est, t_se, f_est, f_se, m, True)
            want = _probes_to_add(checks, m, block_size)
        else:
            want = min_probes - m
        remaining = max_matvecs - _products(A, control)
        if remaining <= 0:
            break
        b = min(max(want, min(8, block_size)), block_size, remaining)
        t_samples, f_samples = _probe_samples(A, _draw_probes(rng, p, b, Q, rademacher), control)
        tr.append(t_samples)
        fr.append(f_samples)
        m += b
    if 0 < m < min_probes:  # budget ran out before min_probes: report what there is
        t_est, f_est, t_se, f_se = _sample_estimates(tr, fr, exact_trace, exact_frob2, m)
    return _ProbeEstimates(t_est, t_se, f_est, f_se, m, False)


def _frobenius_with_stderr(f_est: float, f_se: float) -> tuple[float, float]:
    """||A||_F from its square, standard error by the delta method."""
    frob = math.sqrt(max(f_est, 0.0))
    if frob > 0:
        return frob, f_se / (2.0 * frob)
    return frob, 0.0 if f_se == 0 else math.inf


def _adaptive_probes(
    A: _Counted,
    Q: np.ndarray,
    exact_trace: float,
    exact_frob2: float,
    *,
    rtol: float,
    max_matvecs: int,
    min_probes: int,
    block_size: int,
    rng: np.random.Generator,
    rademacher: bool,
    method: str,
    control: _Counted | None = None,
    targets: tuple[str, ...] = DEFAULT_TARGETS,
) -> TraceFrobResult:
    q = Q.shape[1]
    if q >= A.shape[0]:  # the exact part is the whole space
        est = _ProbeEstimates(exact_trace, 0.0, exact_frob2, 0.0, 0, True)
    else:
        est = _run_probes(
            A,
            Q,
            exact_trace,
            exact_frob2,
            rtol=rtol,
            max_matvecs=max_matvecs,
            min_probes=min_probes,
            block_size=block_size,
            rng=rng,
            rademacher=rademacher,
            control=control,
            targets=targets,
        )
    frob, frob_se = _frobenius_with_stderr(est.frobenius_squared, est.frob2_stderr)
    return TraceFrobResult(
        trace=float(est.trace),
        trace_stderr=float(est.trace_stderr),
        frobenius_squared=float(est.frobenius_squared),
        frob2_stderr=float(est.frob2_stderr),
        frobenius=frob,
        frobenius_stderr=float(frob_se),
        probes=est.probes,
        matvecs=_products(A, control),
        converged=est.converged,
        rtol=rtol,
        deflation_rank=q,
        method=method,
    )


def _check_targets(targets: Any) -> tuple[str, ...]:
    if isinstance(targets, str):
        targets = (targets,)
    try:
        out = tuple(targets)
    except TypeError:
        raise EstimatorError(f"targets must be a tuple of figure names, got {targets!r}") from None
    bad = [t for t in out if t not in _TARGETS]
    if bad or not out:
        raise EstimatorError(f"targets must name one or more of {', '.join(_TARGETS)}; got {targets!r}")
    return out


def _check_common(rtol: Any, max_matvecs: Any, min_probes: Any, block_size: Any) -> tuple[float, int, int, int]:
    return (
        _check_rtol(rtol),
        _check_int(max_matvecs, "max_matvecs", 1),
        _check_int(min_probes, "min_probes", 2),
        _check_int(block_size, "block_size", 1),
    )


def _checked_control(
    A: _Counted, control: Any, control_trace: float | None, control_frobenius_squared: float | None
) -> _Counted | None:
    """The control operator C (None without one), checked against A and its known figures."""
    if control is None:
        return None
    C = _as_operator(control)
    if C.shape != A.shape:
        raise EstimatorError(f"control operator has shape {C.shape}, the operator {A.shape}")
    if control_trace is None or control_frobenius_squared is None:
        raise EstimatorError("a control operator needs its exact control_trace and control_frobenius_squared")
    if not (math.isfinite(control_trace) and math.isfinite(control_frobenius_squared)):
        raise EstimatorError("control_trace and control_frobenius_squared must be finite")
    return C


def _checked_basis(basis: np.ndarray | None, p: int) -> np.ndarray:
    """An orthonormal basis of the given columns ((p, 0) without a basis)."""
    if basis is None:
        return np.zeros((p, 0))
    B = np.asarray(basis, dtype=np.float64)
    if B.ndim == 1:
        B = B[:, None]
    if B.ndim != 2 or B.shape[0] != p:
        raise EstimatorError(f"basis must have shape ({p}, q), got {np.shape(basis)}")
    if not np.isfinite(B).all():
        raise EstimatorError("basis contains non-finite values")
    return _orth(B)


def _sketch_columns(sketch: Any, has_basis: bool, p: int, max_matvecs: int, min_probes: int) -> int:
    """Gaussian sketch columns: the given count capped by p, or the default (none with a basis)."""
    if sketch is None:
        return 0 if has_basis else min(p, DEFAULT_SKETCH, max(0, (max_matvecs - min_probes) // 2))
    return min(_check_int(sketch, "sketch", 0), p)


def _deflation_basis(A: _Counted, B: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    """The exact subspace Q: B joined with orth(A S) of an s-column Gaussian sketch S."""
    if s == 0:
        return B
    p = A.shape[0]
    S = rng.standard_normal((p, s))
    Y = A.matmat(S)
    norms = np.linalg.norm(Y, axis=0)
    Y = Y[:, norms > 0] / norms[norms > 0]  # unit columns, so that the union below is scale-free
    return _orth(np.hstack([B, Y]))


def _exact_part(
    A: _Counted,
    Q: np.ndarray,
    C: _Counted | None,
    control_trace: float | None,
    control_frobenius_squared: float | None,
) -> tuple[float, float]:
    """Tr(QᵀAQ) and ||AQ||_F² (with a control: Tr C + Tr(Qᵀ(A − C)Q) and the like for the square)."""
    exact_trace = exact_frob2 = 0.0
    if Q.shape[1]:
        AQ = A.matmat(Q)
        exact_trace = float(np.einsum("ij,ij->", Q, AQ))
        exact_frob2 = float(np.einsum("ij,ij->", AQ, AQ))
    if C is not None:
        # Tr C and ||C||_F² are known; on Q the difference is exact, off Q it is probed.
        exact_trace += float(control_trace)
        exact_frob2 += float(control_frobenius_squared)
        if Q.shape[1]:
            CQ = C.matmat(Q)
            exact_trace -= float(np.einsum("ij,ij->", Q, CQ))
            exact_frob2 -= float(np.einsum("ij,ij->", CQ, CQ))
    return exact_trace, exact_frob2


@_numpy_blas_single_thread
def hutchpp(
    op: Any,
    rtol: float = 1e-3,
    sketch: int | None = None,
    basis: np.ndarray | None = None,
    max_matvecs: int = 10000,
    min_probes: int = 10,
    seed: Any = 0,
    *,
    block_size: int = 32,
    control: Any = None,
    control_trace: float | None = None,
    control_frobenius_squared: float | None = None,
    targets: tuple[str, ...] = DEFAULT_TARGETS,
) -> TraceFrobResult:
    """Tr A and ||A||_F² of a symmetric operator by adaptive Hutch++ (exact on a subspace, Hutchinson on the rest).

    With a ``control`` operator C whose ``control_trace`` Tr C and ``control_frobenius_squared`` ||C||_F² are known
    exactly, the probes estimate only the differences: Tr A = Tr C + Tr(A − C) and ||A||_F² = ||C||_F² +
    Tr(A² − C²), each probe costing one product with A and one with C. The variance falls from ~2||A||_F² to
    ~2||A − C||_F² (trace): for the Hessian near a minimum with C = G, the Gauss–Newton matrix known exactly from the
    kernel, this saves orders of magnitude of probes.

    Args:
        op: symmetric square operator (see the module docstring).
        rtol: stop once the standard error of every figure in ``targets`` is ≤ rtol·|figure| (and at least
            ``min_probes`` probes were used).
        targets: the figures ``rtol`` applies to: any of ``"trace"``, ``"frobenius_squared"`` and ``"frobenius"``
            (||A||_F, whose relative standard error is half that of ||A||_F²). Default: Tr A and ||A||_F². Leave out
            a figure known otherwise (e.g. an exact trace) so that its variance does not drive the probe count.
        sketch: Gaussian sketch columns s; Q gains orth(A S) (2s products). Default: 20 (capped by p and by the
            budget) without ``basis``, 0 with it.
        basis: (p, q) columns spanning a subspace to treat exactly (e.g. top eigenvectors from Lanczos); they need
            not be orthonormal (they are orthonormalized; dependent columns dropped). Costs q products.
        max_matvecs: budget for all products; when spent, the estimate so far is returned with
            ``converged=False``. An explicit ``sketch``/``basis`` that alone exceeds it is an error.
        min_probes: probes before the stopping rule is first checked (≥ 2).
        seed: seed of ``numpy.random.default_rng`` (or a Generator).
        block_size: probes applied per matmat (the adaptive rule draws between min(8, block_size) and
            block_size at a time).
    """
    rtol, max_matvecs, min_probes, block_size = _check_common(rtol, max_matvecs, min_probes, block_size)
    A = _as_operator(op)
    p = A.shape[0]
    rng = _rng(seed)
    C = _checked_control(A, control, control_trace, control_frobenius_squared)
    B = _checked_basis(basis, p)
    s = _sketch_columns(sketch, basis is not None, p, max_matvecs, min_probes)
    exact_cost = 2 * s + B.shape[1]
    if (sketch is not None or basis is not None) and exact_cost > max_matvecs:
        raise EstimatorError(
            f"the exact part needs up to {exact_cost} products (sketch {s}: 2·{s}, basis {B.shape[1]}) but "
            f"max_matvecs = {max_matvecs}; raise max_matvecs or shrink sketch/basis"
        )
    Q = _deflation_basis(A, B, s, rng)
    exact_trace, exact_frob2 = _exact_part(A, Q, C, control_trace, control_frobenius_squared)
    return _adaptive_probes(
        A,
        Q,
        exact_trace,
        exact_frob2,
        rtol=rtol,
        max_matvecs=max_matvecs,
        min_probes=min_probes,
        block_size=block_size,
        rng=rng,
        rademacher=False,
        method="hutch++" if C is None else "hutch++ with control variate",
        control=C,
        targets=_check_targets(targets),
    )


@_numpy_blas_single_thread
def hutchinson(
    op: Any,
    rtol: float = 1e-3,
    max_matvecs: int = 10000,
    min_probes: int = 10,
    seed: Any = 0,
    *,
    block_size: int = 32,
    targets: tuple[str, ...] = DEFAULT_TARGETS,
) -> TraceFrobResult:
    """Tr A and ||A||_F² by plain adaptive Hutchinson with Rademacher probes z: zᵀAz and ||Az||² (no deflation).

    Same stopping rule, budget and result as :func:`hutchpp` (``deflation_rank`` = 0).
    """
    rtol, max_matvecs, min_probes, block_size = _check_common(rtol, max_matvecs, min_probes, block_size)
    A = _as_operator(op)
    return _adaptive_probes(
        A,
        np.zeros((A.shape[0], 0)),
        0.0,
        0.0,
        rtol=rtol,
        max_matvecs=max_matvecs,
        min_probes=min_probes,
        block_size=block_size,
        rng=_rng(seed),
        rademacher=True,
        method="hutchinson",
        targets=_check_targets(targets),
    )
