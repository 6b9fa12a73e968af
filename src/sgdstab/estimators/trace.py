"""Tr A and ||A||_F² (= Tr A² for symmetric A) with standard errors: adaptive Hutch++ and plain Hutchinson.

:func:`hutchpp` is exact on a subspace Q (a given ``basis``, or a Gaussian sketch ``Q = orth(A S)``): ``Tr(QᵀAQ)``
and ``||AQ||_F² = Tr(QᵀA²Q)``; the rest ``Tr(PAP)`` and ``Tr(PA²P)`` (P = I − QQᵀ) by Gaussian probes g, h = Pg,
w = Ah: ``hᵀw`` and ``||w||²`` — one product per probe serves both. It stops once the standard errors are ≤
rtol·|estimate|. :func:`hutchinson` is the same without deflation and with Rademacher probes (for comparison).

Example:
    >>> import numpy as np
    >>> from sgdstab.estimators.trace import hutchpp
    >>> res = hutchpp(np.diag(np.arange(1.0, 6.0)), sketch=5)  # the sketch spans the whole space: exact
    >>> round(res.trace, 8), round(res.frobenius_squared, 8), res.probes, res.converged
    (15.0, 55.0, 0, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from sgdstab.errors import EstimatorError
from sgdstab.estimators.common import CountedOperator, as_operator, orthonormal_columns, seeded_rng, single_blas_thread
from sgdstab.utils.validation import check_float, check_int

__all__ = ["DEFAULT_SKETCH", "DEFAULT_TARGETS", "TraceFrobResult", "hutchinson", "hutchpp"]

DEFAULT_SKETCH = 20
"""Columns of the Gaussian sketch of :func:`hutchpp` when neither ``sketch`` nor ``basis`` is given."""
DEFAULT_TARGETS = ("trace", "frobenius_squared")  # the figures whose standard error rtol bounds
_TARGETS = ("trace", "frobenius_squared", "frobenius")


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


@dataclass(frozen=True)
class _ProbeEstimates:
    """What the probes gave: estimates, standard errors, probes used and whether rtol was met."""

    trace: float
    trace_stderr: float
    frobenius_squared: float
    frob2_stderr: float
    probes: int
    converged: bool


@dataclass(frozen=True)
class _ProbeRule:
    """How the probes are drawn and when they stop: the validated arguments of :func:`hutchpp` and
    :func:`hutchinson`."""

    rtol: float
    max_matvecs: int
    min_probes: int
    block_size: int
    targets: tuple[str, ...]
    rademacher: bool


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


def _probe_samples(A: CountedOperator, H: np.ndarray, control: CountedOperator | None) -> tuple[np.ndarray, np.ndarray]:
    """Samples of hᵀAh and hᵀA²h for each probe column h (differences from the control when there is one)."""
    W = A.matmat(H)
    if control is None:
        return np.einsum("ij,ij->j", H, W), np.einsum("ij,ij->j", W, W)
    # samples of hᵀ(A − C)h and hᵀ(A² − C²)h: small variance when A ≈ C
    V = control.matmat(H)
    return np.einsum("ij,ij->j", H, W - V), np.einsum("ij,ij->j", W, W) - np.einsum("ij,ij->j", V, V)


def _products(A: CountedOperator, control: CountedOperator | None) -> int:
    return A.count + (control.count if control is not None else 0)


def _run_probes(
    A: CountedOperator,
    Q: np.ndarray,
    exact_trace: float,
    exact_frob2: float,
    rule: _ProbeRule,
    rng: np.random.Generator,
    control: CountedOperator | None,
) -> _ProbeEstimates:
    """Probe in blocks until every target meets rtol (after min_probes) or the budget is spent."""
    p = A.shape[0]
    tr: list[np.ndarray] = []
    fr: list[np.ndarray] = []
    m = 0
    t_est, f_est = exact_trace, exact_frob2
    t_se = f_se = math.inf
    while True:
        if m >= rule.min_probes:
            t_est, f_est, t_se, f_se = _sample_estimates(tr, fr, exact_trace, exact_frob2, m)
            checks = _tolerance_checks(t_est, f_est, t_se, f_se, rule.rtol, rule.targets)
            if all(se <= tl for se, tl in checks):
                return _ProbeEstimates(t_est, t_se, f_est, f_se, m, True)
            want = _probes_to_add(checks, m, rule.block_size)
        else:
            want = rule.min_probes - m
        remaining = rule.max_matvecs - _products(A, control)
        if remaining <= 0:
            break
        b = min(max(want, min(8, rule.block_size)), rule.block_size, remaining)
        t_samples, f_samples = _probe_samples(A, _draw_probes(rng, p, b, Q, rule.rademacher), control)
        tr.append(t_samples)
        fr.append(f_samples)
        m += b
    if 0 < m < rule.min_probes:  # budget ran out before min_probes: report what there is
        t_est, f_est, t_se, f_se = _sample_estimates(tr, fr, exact_trace, exact_frob2, m)
    return _ProbeEstimates(t_est, t_se, f_est, f_se, m, False)


def _frobenius_with_stderr(f_est: float, f_se: float) -> tuple[float, float]:
    """||A||_F from its square, standard error by the delta method."""
    frob = math.sqrt(max(f_est, 0.0))
    if frob > 0:
        return frob, f_se / (2.0 * frob)
    return frob, 0.0 if f_se == 0 else math.inf


def _adaptive_probes(
    A: CountedOperator,
    Q: np.ndarray,
    exact: tuple[float, float],
    rule: _ProbeRule,
    rng: np.random.Generator,
    method: str,
    control: CountedOperator | None = None,
) -> TraceFrobResult:
    """The result: the exact part ``exact`` = (trace, ||·||_F²) on Q plus the probed rest off Q."""
    exact_trace, exact_frob2 = exact
    q = Q.shape[1]
    if q >= A.shape[0]:  # the exact part is the whole space
        est = _ProbeEstimates(exact_trace, 0.0, exact_frob2, 0.0, 0, True)
    else:
        est = _run_probes(A, Q, exact_trace, exact_frob2, rule, rng, control)
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
        rtol=rule.rtol,
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
        check_float(rtol, "rtol", minimum=0, include_minimum=False, error=EstimatorError),
        check_int(max_matvecs, "max_matvecs", minimum=1, error=EstimatorError),
        check_int(min_probes, "min_probes", minimum=2, error=EstimatorError),
        check_int(block_size, "block_size", minimum=1, error=EstimatorError),
    )


def _checked_control(
    A: CountedOperator, control: Any, control_trace: float | None, control_frobenius_squared: float | None
) -> CountedOperator | None:
    """The control operator C (None without one), checked against A and its known figures."""
    if control is None:
        return None
    C = as_operator(control)
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
    return orthonormal_columns(B)


def _sketch_columns(sketch: Any, has_basis: bool, p: int, max_matvecs: int, min_probes: int) -> int:
    """Gaussian sketch columns: the given count capped by p, or the default (none with a basis)."""
    if sketch is None:
        return 0 if has_basis else min(p, DEFAULT_SKETCH, max(0, (max_matvecs - min_probes) // 2))
    return min(check_int(sketch, "sketch", minimum=0, error=EstimatorError), p)


def _deflation_basis(A: CountedOperator, B: np.ndarray, s: int, rng: np.random.Generator) -> np.ndarray:
    """The exact subspace Q: B joined with orth(A S) of an s-column Gaussian sketch S."""
    if s == 0:
        return B
    p = A.shape[0]
    S = rng.standard_normal((p, s))
    Y = A.matmat(S)
    norms = np.linalg.norm(Y, axis=0)
    Y = Y[:, norms > 0] / norms[norms > 0]  # unit columns, so that the union below is scale-free
    return orthonormal_columns(np.hstack([B, Y]))


def _exact_part(
    A: CountedOperator,
    Q: np.ndarray,
    C: CountedOperator | None,
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


@single_blas_thread
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
        control, control_trace, control_frobenius_squared: the control variate C and its exact figures (above).

    Returns:
        :class:`TraceFrobResult`: the estimates with their standard errors, probes, products and convergence.

    Raises:
        EstimatorError: a bad argument, operator, basis or control, or an exact part beyond ``max_matvecs``.
    """
    rtol, max_matvecs, min_probes, block_size = _check_common(rtol, max_matvecs, min_probes, block_size)
    A = as_operator(op)
    p = A.shape[0]
    rng = seeded_rng(seed)
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
    exact = _exact_part(A, Q, C, control_trace, control_frobenius_squared)
    rule = _ProbeRule(rtol, max_matvecs, min_probes, block_size, _check_targets(targets), rademacher=False)
    method = "hutch++" if C is None else "hutch++ with control variate"
    return _adaptive_probes(A, Q, exact, rule, rng, method, control=C)


@single_blas_thread
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
    A = as_operator(op)
    rng = seeded_rng(seed)
    rule = _ProbeRule(rtol, max_matvecs, min_probes, block_size, _check_targets(targets), rademacher=True)
    return _adaptive_probes(A, np.zeros((A.shape[0], 0)), (0.0, 0.0), rule, rng, "hutchinson")
