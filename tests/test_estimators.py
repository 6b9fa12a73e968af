"""Tests for sgdstab.estimators.matrix_free: Lanczos eigenpairs, adaptive Hutch++ and Hutchinson on known matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import LinearOperator, aslinearoperator
from torch import nn

from sgdstab.errors import EstimatorError
from sgdstab.estimators.matrix_free import EigenResult, TraceFrobResult, hutchinson, hutchpp, top_eigenpairs
from sgdstab.operators.products import gauss_newton_operator, hessian_operator
from sgdstab.problem.problem import Problem

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

P = 400
SEEDS = [0, 1, 2, 3, 4, 5]


def _orthogonal(p: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((p, p)))
    return q * np.sign(np.diag(r))


def _from_spectrum(lam: np.ndarray, seed: int = 11) -> np.ndarray:
    U = _orthogonal(lam.size, seed)
    A = (U * lam) @ U.T
    return 0.5 * (A + A.T)


# Known spectra: trace = Σλ, ||A||_F² = Σλ².
DECAYING = 1.0 / np.arange(1, P + 1)  # PSD, slowly decaying
_rng = np.random.default_rng(21)
INDEFINITE = _rng.standard_normal(P) * np.exp(-np.arange(P) / 15.0) + 0.02  # mixed signs, trace ≠ 0
MATRICES = {"decaying": _from_spectrum(DECAYING), "indefinite": _from_spectrum(INDEFINITE)}
SPECTRA = {"decaying": DECAYING, "indefinite": INDEFINITE}


class CountingOp(LinearOperator):
    """A dense matrix that counts the vectors it is applied to."""

    def __init__(self, A: np.ndarray) -> None:
        super().__init__(dtype=np.float64, shape=A.shape)
        self.A = A
        self.count = 0

    def _matvec(self, x):
        self.count += 1
        return self.A @ x

    def _matmat(self, X):
        self.count += X.shape[1]
        return self.A @ X

    def _rmatvec(self, x):
        return self._matvec(x)


# ------------------------------------------------------------------ eigenpairs
@pytest.fixture(scope="module")
def sym60() -> np.ndarray:
    M = np.random.default_rng(3).standard_normal((60, 60))
    return M + M.T


@pytest.mark.parametrize("which", ["LA", "SA"])
def test_top_eigenpairs_match_eigh(sym60, which) -> None:
    w = np.linalg.eigvalsh(sym60)
    expected = w[::-1][:4] if which == "LA" else w[:4]
    res = top_eigenpairs(aslinearoperator(sym60), k=4, which=which, tol=1e-10)
    assert isinstance(res, EigenResult)
    assert res.method == "lanczos" and res.which == which and res.converged
    assert np.allclose(res.eigenvalues, expected, rtol=1e-8, atol=1e-8)
    order = np.diff(res.eigenvalues)
    assert (order <= 0).all() if which == "LA" else (order >= 0).all()
    assert res.eigenvectors.shape == (60, 4)
    assert np.allclose(res.eigenvectors.T @ res.eigenvectors, np.eye(4), atol=1e-8)
    direct = np.linalg.norm(sym60 @ res.eigenvectors - res.eigenvectors * res.eigenvalues, axis=0)
    assert np.allclose(res.residual_norms, direct, atol=1e-12)
    assert res.max_residual < 1e-6 * np.abs(w).max()
    assert res.matvecs > 4


def test_top_eigenpairs_is_deterministic_and_counts(sym60) -> None:
    op = CountingOp(sym60)
    a = top_eigenpairs(op, k=2, seed=7)
    assert a.matvecs == op.count  # residual check included
    b = top_eigenpairs(sym60, k=2, seed=7)
    assert np.array_equal(a.eigenvalues, b.eigenvalues) and a.matvecs == b.matvecs


def test_top_eigenpairs_dense_fallback_for_tiny_p() -> None:
    A = np.array([[2.0, 1.0, 0.0], [1.0, -1.0, 0.5], [0.0, 0.5, 3.0]])
    w = np.linalg.eigvalsh(A)
    for k in (2, 3):
        res = top_eigenpairs(A, k=k)
        assert res.method == "dense" and res.converged and res.matvecs == 3 + k
        assert np.allclose(res.eigenvalues, w[::-1][:k])
        res = top_eigenpairs(A, k=k, which="SA")
        assert np.allclose(res.eigenvalues, w[:k])
    zero = top_eigenpairs(np.zeros((30, 30)), k=2)  # ARPACK fails on the zero operator: dense route
    assert zero.method == "dense" and np.allclose(zero.eigenvalues, 0)


def test_top_eigenpairs_no_convergence_is_reported(sym60) -> None:
    res = top_eigenpairs(sym60, k=6, which="SA", maxiter=1, tol=1e-14)
    assert res.converged is False
    assert res.eigenvalues.size <= 6
    assert res.eigenvectors.shape == (60, res.eigenvalues.size)
    assert res.residual_norms.shape == res.eigenvalues.shape


def test_top_eigenpairs_low_rank() -> None:
    lam = np.zeros(50)
    lam[:2] = [3.0, 1.0]
    res = top_eigenpairs(_from_spectrum(lam, 4), k=3)
    assert res.converged
    assert np.allclose(res.eigenvalues, [3.0, 1.0, 0.0], atol=1e-9)


def test_hessian_top_eigenvalue_on_tiny_model() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2)).double()
    problem = Problem(model, torch.randn(7, 4, dtype=torch.float64), torch.randn(7, 2), chunk_size=3)
    H = torch.func.hessian(problem.loss_function())(problem.theta).numpy()
    w = np.linalg.eigvalsh(H)
    op = hessian_operator(problem)
    res = top_eigenpairs(op, k=2, tol=1e-10)
    assert res.converged
    assert np.allclose(res.eigenvalues, w[::-1][:2], rtol=1e-8)
    assert op.matvecs == res.matvecs
    low = top_eigenpairs(hessian_operator(problem), k=1, which="SA", tol=1e-10)
    assert np.isclose(low.eigenvalues[0], w[0], rtol=1e-7, atol=1e-9)
    assert w[0] < 0  # away from a minimum H is indefinite: the SA test is not trivial
    G = gauss_newton_operator(problem)
    assert top_eigenpairs(G, k=1).eigenvalues[0] > 0


def test_top_eigenpairs_errors(sym60) -> None:
    with pytest.raises(EstimatorError, match="square"):
        top_eigenpairs(np.zeros((3, 4)))
    with pytest.raises(EstimatorError, match="which"):
        top_eigenpairs(sym60, which="LM")
    with pytest.raises(EstimatorError, match="k"):
        top_eigenpairs(sym60, k=0)
    with pytest.raises(EstimatorError, match="k = 61"):
        top_eigenpairs(sym60, k=61)
    with pytest.raises(EstimatorError, match="tol"):
        top_eigenpairs(sym60, tol=float("nan"))


# ------------------------------------------------------------------ Hutch++ / Hutchinson
@pytest.mark.parametrize("name", list(MATRICES))
@pytest.mark.parametrize("estimator", [hutchpp, hutchinson])
def test_estimates_within_four_standard_errors(name, estimator) -> None:
    A, lam = MATRICES[name], SPECTRA[name]
    true_t, true_f2 = lam.sum(), (lam**2).sum()
    rtol = 1e-2 if estimator is hutchpp else 3e-2  # plain Hutchinson needs ~10x more probes: keep it quick
    for seed in SEEDS:
        res = estimator(A, rtol=rtol, seed=seed)
        assert isinstance(res, TraceFrobResult)
        assert res.converged, (name, seed, res)
        assert abs(res.trace - true_t) <= 4 * res.trace_stderr, (name, seed, res, true_t)
        assert abs(res.frobenius_squared - true_f2) <= 4 * res.frob2_stderr, (name, seed, res, true_f2)
        assert abs(res.frobenius - math.sqrt(true_f2)) <= 4 * res.frobenius_stderr + 1e-12
        assert res.trace_stderr <= rtol * abs(res.trace)
        assert res.frob2_stderr <= rtol * abs(res.frobenius_squared)
        assert math.isclose(res.frobenius_stderr, res.frob2_stderr / (2 * res.frobenius))
        assert res.probes >= 10 and res.matvecs <= 10000


@pytest.mark.parametrize("name", list(MATRICES))
def test_tighter_rtol_shrinks_the_standard_error(name) -> None:
    A, lam = MATRICES[name], SPECTRA[name]
    loose = hutchpp(A, rtol=1e-2, seed=1, max_matvecs=50_000)
    tight = hutchpp(A, rtol=1e-3, seed=1, max_matvecs=50_000)
    assert loose.converged and tight.converged
    for res, rtol in ((loose, 1e-2), (tight, 1e-3)):
        assert res.rtol == rtol
        assert res.trace_stderr <= rtol * abs(res.trace)
        assert res.frob2_stderr <= rtol * res.frobenius_squared
        assert abs(res.trace - lam.sum()) <= 4 * res.trace_stderr
    assert tight.probes > loose.probes
    # the binding error shrinks about tenfold (the stopping rule overshoots by at most one block)
    rel_loose = max(loose.trace_stderr / abs(loose.trace), loose.frob2_stderr / loose.frobenius_squared)
    rel_tight = max(tight.trace_stderr / abs(tight.trace), tight.frob2_stderr / tight.frobenius_squared)
    assert rel_tight <= 1e-3 < rel_loose * 0.5


@pytest.mark.parametrize("estimator", [hutchpp, hutchinson])
def test_targets_choose_which_figures_the_stopping_rule_watches(estimator) -> None:
    A, lam = MATRICES["indefinite"], SPECTRA["indefinite"]
    both = estimator(A, rtol=2e-2, seed=5, max_matvecs=50_000)
    norm = estimator(A, rtol=2e-2, seed=5, max_matvecs=50_000, targets=("frobenius",))
    assert both.converged and norm.converged
    # ||A||_F has half the relative standard error of ||A||_F², and the trace no longer counts
    assert norm.frobenius_stderr <= 2e-2 * norm.frobenius
    assert norm.probes <= both.probes
    assert abs(norm.frobenius - math.sqrt((lam**2).sum())) <= 4 * norm.frobenius_stderr + 1e-12
    trace_only = estimator(A, rtol=2e-2, seed=5, max_matvecs=50_000, targets="trace")
    assert trace_only.trace_stderr <= 2e-2 * abs(trace_only.trace)
    for bad in (("trace", "spectral"), (), 3):
        with pytest.raises(EstimatorError, match="targets"):
            estimator(A, rtol=1e-2, targets=bad)


def test_hutchpp_beats_hutchinson_on_decaying_spectrum() -> None:
    A = MATRICES["decaying"]
    plus = hutchpp(A, rtol=1e-2, seed=0)
    plain = hutchinson(A, rtol=1e-2, seed=0)
    assert plus.deflation_rank == 20 and plain.deflation_rank == 0
    assert plus.method == "hutch++" and plain.method == "hutchinson"
    assert plus.matvecs * 10 < plain.matvecs


def test_exact_when_basis_spans_the_range() -> None:
    lam = np.zeros(P)
    lam[:10] = np.linspace(-3.0, 5.0, 10)  # rank 10, indefinite (no zero among them)
    A = _from_spectrum(lam, 5)
    U = _orthogonal(P, 5)[:, :10]
    basis = U @ np.random.default_rng(0).standard_normal((10, 10))  # spans the range, not orthonormal
    res = hutchpp(A, basis=basis)
    assert res.deflation_rank == 10 and res.converged
    assert math.isclose(res.trace, lam.sum(), rel_tol=1e-10, abs_tol=1e-10)
    assert math.isclose(res.frobenius_squared, (lam**2).sum(), rel_tol=1e-10)
    assert res.trace_stderr < 1e-10 and res.frob2_stderr < 1e-10
    assert res.probes == 10 and res.matvecs == 10 + 10  # basis columns + min_probes
    # a default sketch of 20 columns also captures a rank-10 matrix exactly
    sk = hutchpp(A)
    assert sk.deflation_rank == 10 and math.isclose(sk.trace, lam.sum(), rel_tol=1e-10)
    assert sk.trace_stderr < 1e-10


def test_full_basis_needs_no_probes() -> None:
    A = MATRICES["indefinite"][:30, :30]
    res = hutchpp(A, basis=np.eye(30))
    assert res.probes == 0 and res.matvecs == 30 and res.converged
    assert math.isclose(res.trace, np.trace(A), rel_tol=1e-12)
    assert math.isclose(res.frobenius_squared, (A**2).sum(), rel_tol=1e-12)


@pytest.mark.parametrize("estimator", [hutchpp, hutchinson])
def test_budget_is_respected(estimator) -> None:
    op = CountingOp(MATRICES["decaying"])
    res = estimator(op, rtol=1e-6, max_matvecs=60, seed=2)
    assert not res.converged
    assert res.matvecs == op.count <= 60
    assert math.isfinite(res.trace) and math.isfinite(res.trace_stderr)
    tiny = estimator(CountingOp(MATRICES["decaying"]), rtol=1e-2, max_matvecs=5)
    assert not tiny.converged and tiny.matvecs <= 5


def test_zero_trace_cannot_converge_relatively() -> None:
    lam = np.concatenate([np.ones(P // 2), -np.ones(P // 2)])
    res = hutchpp(_from_spectrum(lam), rtol=1e-2, max_matvecs=300)
    assert not res.converged and res.matvecs <= 300
    assert abs(res.trace) <= 4 * res.trace_stderr


def test_deterministic_from_seed() -> None:
    A = MATRICES["indefinite"]
    a, b = hutchpp(A, rtol=1e-2, seed=9), hutchpp(A, rtol=1e-2, seed=9)
    assert a == b
    assert hutchpp(A, rtol=1e-2, seed=10) != a
    assert hutchinson(A, rtol=1e-2, seed=9) == hutchinson(A, rtol=1e-2, seed=9)


def test_hutchpp_on_model_operator_matches_dense() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 1)).double()
    problem = Problem(model, torch.randn(7, 4, dtype=torch.float64), torch.randn(7, 1), chunk_size=3)
    J = problem.jacobian()
    G = (J.T @ J / problem.n).numpy()
    res = hutchpp(gauss_newton_operator(problem), rtol=1e-3)
    # rank G ≤ n·k = 7 < sketch: exact
    assert res.deflation_rank == 7
    assert math.isclose(res.trace, np.trace(G), rel_tol=1e-9)
    assert math.isclose(res.frobenius_squared, (G**2).sum(), rel_tol=1e-9)


def test_estimator_errors() -> None:
    A = MATRICES["decaying"]
    for bad in (0.0, -1e-3, float("nan"), float("inf"), "x"):
        with pytest.raises(EstimatorError, match="rtol"):
            hutchpp(A, rtol=bad)
        with pytest.raises(EstimatorError, match="rtol"):
            hutchinson(A, rtol=bad)
    with pytest.raises(EstimatorError, match="square"):
        hutchpp(np.zeros((4, 5)))
    with pytest.raises(EstimatorError, match="square"):
        hutchinson(np.zeros((4, 5)))
    with pytest.raises(EstimatorError, match="max_matvecs"):
        hutchpp(A, max_matvecs=0)
    with pytest.raises(EstimatorError, match="max_matvecs"):
        hutchinson(A, max_matvecs=0)
    with pytest.raises(EstimatorError, match="min_probes"):
        hutchpp(A, min_probes=1)
    with pytest.raises(EstimatorError, match="basis"):
        hutchpp(A, basis=np.ones((3, 2)))
    with pytest.raises(EstimatorError, match="max_matvecs"):
        hutchpp(A, sketch=30, max_matvecs=40)
    with pytest.raises(EstimatorError, match="operator"):
        hutchpp(object())


def test_matrix_free_gathers_the_split_modules() -> None:
    from sgdstab.estimators import eigen, matrix_free, trace

    assert matrix_free.top_eigenpairs is eigen.top_eigenpairs and matrix_free.EigenResult is eigen.EigenResult
    assert matrix_free.hutchpp is trace.hutchpp and matrix_free.hutchinson is trace.hutchinson
    assert matrix_free.TraceFrobResult is trace.TraceFrobResult
    assert set(matrix_free.__all__) >= {"top_eigenpairs", "hutchpp", "hutchinson", "EigenResult", "TraceFrobResult"}
