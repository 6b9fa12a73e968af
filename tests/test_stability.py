"""The linear stability engine (THEORY.md §4) against exhaustive enumeration of mini-batches and dense references."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch

from sgdstab.conventions import noise_scale
from sgdstab.errors import ConventionError, SgdstabError, StabilityError
from sgdstab.kernel import figures as kf
from sgdstab.kernel.kernel import Kernel
from sgdstab.kernel.ntk import as_kernel
from sgdstab.linear_stability.solver import Stability, critical_learning_rate, stability, stability_operator

SCHEMES = ("with_replacement", "without_replacement")


def random_kernel(n: int, k: int, p: int, seed: int, spread: float = 1.0) -> torch.Tensor:
    """K = A Aᵀ with A (nk × p) random and per-sample row scales exp(spread·N(0,1)): heterogeneous rows; singular
    when p < nk."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n * k, p, dtype=torch.float64, generator=g)
    scale = torch.exp(spread * torch.randn(n, 1, 1, dtype=torch.float64, generator=g)).expand(n, k, 1)
    A = A * scale.reshape(n * k, 1)
    return A @ A.T


def power_law_kernel(n: int, k: int, seed: int, alpha: float = 1.5) -> torch.Tensor:
    """A kernel with a decaying spectrum (λ_j ~ j^{-alpha}) and heterogeneous rows, like a real NTK."""
    g = torch.Generator().manual_seed(seed)
    p = 2 * n * k
    cols = torch.arange(1, p + 1, dtype=torch.float64) ** (-alpha / 2)
    A = torch.randn(n * k, p, dtype=torch.float64, generator=g) * cols
    A = A * torch.exp(0.5 * torch.randn(n, 1, 1, dtype=torch.float64, generator=g)).expand(n, k, 1).reshape(-1, 1)
    return A @ A.T


def batches(n: int, B: int, sampling: str) -> list[tuple[int, ...]]:
    if sampling == "with_replacement":
        return list(itertools.product(range(n), repeat=B))  # all n^B ordered index tuples, equally likely
    return list(itertools.combinations(range(n), B))  # all B-subsets, equally likely


def step_matrix(K: torch.Tensor, n: int, k: int, eta: float, batch: tuple[int, ...]) -> torch.Tensor:
    """I − (η/B) K D_ξ, D_ξ = diag(ξ) ⊗ I_k with ξ_i the multiplicity of sample i in the batch."""
    xi = torch.zeros(n, dtype=torch.float64)
    for i in batch:
        xi[i] += 1
    D = torch.diag(xi.repeat_interleave(k))
    return torch.eye(n * k, dtype=torch.float64) - (eta / len(batch)) * K @ D


def enumerated_T(K: torch.Tensor, n: int, k: int, eta: float, B: int, sampling: str, M: torch.Tensor) -> torch.Tensor:
    """E[(I − (η/B) K D_ξ) M (I − (η/B) K D_ξ)ᵀ] over every possible batch."""
    all_batches = batches(n, B, sampling)
    out = torch.zeros_like(M)
    for batch in all_batches:
        P = step_matrix(K, n, k, eta, batch)
        out += P @ M @ P.T
    return out / len(all_batches)


def sym_basis(U: torch.Tensor) -> list[torch.Tensor]:
    """Orthonormal basis of symmetric matrices on span(U) (U with orthonormal columns)."""
    r = U.shape[1]
    out = []
    for a in range(r):
        for b in range(a, r):
            E = torch.zeros(r, r, dtype=torch.float64)
            E[a, b] = E[b, a] = 1.0 if a == b else 2**-0.5
            out.append(U @ E @ U.T)
    return out


def materialized_rho(apply, basis: list[torch.Tensor]) -> float:
    """Spectral radius of M ↦ apply(M) on span(basis), via numpy.linalg.eigvals of the (non-symmetric) matrix."""
    cols = [apply(Bj) for Bj in basis]
    T = np.array([[float((Bi * c).sum()) for c in cols] for Bi in basis])
    return float(np.abs(np.linalg.eigvals(T)).max())


# ------------------------------------------------------------------------------------------------ T by enumeration
@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 6])
def test_operator_equals_enumerated_expectation(n, k):
    worst = 0.0
    for p in sorted({1, 2, n * k + 2}):  # p < nk: K singular; p > nk: K invertible
        K = random_kernel(n, k, p, seed=10 * n + k + p)
        lam_max = float(torch.linalg.eigvalsh(K)[-1])
        g = torch.Generator().manual_seed(n + 7 * k + p)
        for B in range(1, min(n, 3) + 1):
            for sampling in SCHEMES:
                X = torch.randn(n * k, n * k, dtype=torch.float64, generator=g)
                M = X + X.T  # symmetric, indefinite, with components in null(K)
                eta = 1.3 * n / lam_max
                got = stability_operator(Kernel(K, n, k), eta, B, sampling)(M)
                ref = enumerated_T(K, n, k, eta, B, sampling, M)
                worst = max(worst, float((got - ref).norm() / ref.norm()))
    assert worst < 1e-12


def test_operator_formula_noise_scale_and_gd_limit():
    n, k = 5, 2
    K = random_kernel(n, k, 4, seed=3)
    M = torch.eye(n * k, dtype=torch.float64)
    eta = 0.3
    # B = n without replacement: c = 0, exactly GD
    A = torch.eye(n * k, dtype=torch.float64) - eta * K / n
    got = stability_operator(K.numpy(), eta, 1, "with_replacement")  # plain array: k = 1, n = 10
    assert got(M).shape == (n * k, n * k)
    gd = stability_operator(Kernel(K, n, k), eta, n, "without_replacement")(M)
    torch.testing.assert_close(gd, A @ M @ A, rtol=1e-12, atol=1e-12)


def test_one_step_identity_of_theory_section_5():
    """E||u_{t+1}||² = ||(I − ηK/n)u||² + η² c μ*(u) ||G||_F² ||u||² (enumerated expectation)."""
    for n, k, B, sampling in [
        (5, 1, 2, "with_replacement"),
        (4, 2, 3, "without_replacement"),
        (6, 1, 1, "with_replacement"),
    ]:
        K = random_kernel(n, k, 3, seed=n + k)
        c = noise_scale(B, n, sampling)
        A = kf.alignment_matrix(K, n, k)
        g = torch.Generator().manual_seed(0)
        for _ in range(3):
            u = torch.randn(n * k, dtype=torch.float64, generator=g)
            eta = 0.7
            lhs = sum(float((step_matrix(K, n, k, eta, b) @ u).norm() ** 2) for b in batches(n, B, sampling))
            lhs /= len(batches(n, B, sampling))
            K_frob2 = float(torch.linalg.matrix_norm(K) ** 2)
            mu_star = float(u @ A @ u) / (float(u @ u) * K_frob2)
            G_frob2 = K_frob2 / n**2
            gd = float(((torch.eye(n * k, dtype=torch.float64) - eta * K / n) @ u).norm() ** 2)
            rhs = gd + eta**2 * c * mu_star * G_frob2 * float(u @ u)
            assert lhs == pytest.approx(rhs, rel=1e-12)
            # and the same number is tr T(uuᵀ)
            T = stability_operator(Kernel(K, n, k), eta, B, sampling)
            assert float(torch.trace(T(torch.outer(u, u)))) == pytest.approx(rhs, rel=1e-12)


# ------------------------------------------------------------------------------------------------ ρ and η*
KERNELS = [(6, 1, 20, 0), (5, 2, 4, 1), (4, 3, 30, 2), (6, 2, 5, 3)]  # (n, k, p, seed); p < nk: singular K


@pytest.mark.parametrize(("n", "k", "p", "seed"), KERNELS)
def test_critical_learning_rate_is_where_rho_crosses_one(n, k, p, seed):
    ker = Kernel(random_kernel(n, k, p, seed), n, k)
    for sampling in SCHEMES:
        for B in sorted({1, 2, n}):
            eta_star = critical_learning_rate(ker, B, sampling)
            below = stability(ker, 0.999 * eta_star, B, sampling, with_certificates=False)
            above = stability(ker, 1.001 * eta_star, B, sampling, with_certificates=False)
            assert below.rho < 1 < above.rho
            assert below.stable and not above.stable
            assert below.critical_lr == pytest.approx(eta_star, rel=1e-12)
            assert above.escape_rate == pytest.approx(math.log(above.rho))


@pytest.mark.parametrize(("n", "k", "p", "seed"), KERNELS)
def test_critical_learning_rate_monotone_in_batch_size_and_gd_limit(n, k, p, seed):
    K = random_kernel(n, k, p, seed)
    ker = Kernel(K, n, k)
    lam_max = float(torch.linalg.eigvalsh(K)[-1])
    per_scheme = {s: [critical_learning_rate(ker, B, s) for B in range(1, n + 1)] for s in SCHEMES}
    for values in per_scheme.values():
        assert all(b >= a * (1 - 1e-12) for a, b in itertools.pairwise(values))
    # without replacement at B = n: c = 0, GD, η* = 2/λ_max(H) = 2n/λ_max(K)
    assert per_scheme["without_replacement"][-1] == pytest.approx(2 * n / lam_max, rel=1e-12)
    # with replacement is noisier at the same B (c = 1/B ≥ (n−B)/(B(n−1)))
    for w, wo in zip(per_scheme["with_replacement"], per_scheme["without_replacement"], strict=True):
        assert w <= wo * (1 + 1e-12)
    # B = 1 is the same batch under both schemes
    assert per_scheme["with_replacement"][0] == pytest.approx(per_scheme["without_replacement"][0], rel=1e-12)


def test_critical_learning_rate_from_the_pencil_by_bisection():
    """η* = 2/λ_max(C⁻¹D) agrees with a bisection on the naive ρ (materialized from enumeration)."""
    n, k, B, sampling = 4, 1, 2, "with_replacement"
    K = random_kernel(n, k, 6, seed=5)
    basis = sym_basis(torch.eye(n * k, dtype=torch.float64))

    def rho_naive(eta):
        return materialized_rho(lambda M: enumerated_T(K, n, k, eta, B, sampling, M), basis)

    lo, hi = 1e-6, 2 * n / float(torch.linalg.eigvalsh(K)[-1])  # ρ ≥ 1 at the GD bound
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rho_naive(mid) <= 1 else (lo, mid)
    assert critical_learning_rate(Kernel(K, n, k), B, sampling) == pytest.approx(lo, rel=1e-9)


@pytest.mark.parametrize(("n", "k", "p", "seed"), [(5, 1, 8, 0), (4, 2, 9, 1), (6, 1, 3, 2), (4, 2, 3, 3)])
@pytest.mark.parametrize("factor", [0.4, 1.7])
def test_rho_routes_agree_with_materialized_operator(n, k, p, seed, factor):
    K = random_kernel(n, k, p, seed)
    ker = Kernel(K, n, k)
    B, sampling = 2, "without_replacement" if seed % 2 else "with_replacement"
    eta = factor * critical_learning_rate(ker, B, sampling)
    routes = {m: stability(ker, eta, B, sampling, method=m, with_certificates=False) for m in ("dense", "lanczos")}
    power = stability(ker, eta, B, sampling, method="power", with_certificates=False)
    # independent: numpy.linalg.eigvals of the enumerated operator on Sym(range K)
    _, U = ker.range_basis()
    naive = materialized_rho(lambda M: enumerated_T(K, n, k, eta, B, sampling, M), sym_basis(U))
    for name, res in routes.items():
        assert res.converged, name
        assert res.rho == pytest.approx(naive, rel=1e-9), name
        assert res.eigenmatrix_psd, name
    assert routes["dense"].method == "dense"
    assert routes["lanczos"].method == ("lobpcg" if factor < 1 and ker.rank > 5 else "lanczos")
    assert power.method == "power"
    # Power iteration from M = I converges to the PSD Perron eigenmatrix; above η* the top eigenvalue is isolated.
    # Below η* it sits in a cluster of slowly contracting modes near 1, where the power method may stall: it must
    # then say so, and its Rayleigh quotient is still a lower bound.
    if factor > 1:
        assert power.converged and power.eigenmatrix_psd
    if power.converged:
        assert power.rho == pytest.approx(naive, rel=1e-9)
    else:
        assert power.rho <= naive * (1 + 1e-12) and any("converge" in note for note in power.notes)


def test_rho_on_the_whole_space_when_k_is_invertible():
    """For invertible K the range is everything: ρ equals the spectral radius of T on all of Sym(nk)."""
    n, k = 3, 2
    K = random_kernel(n, k, 9, seed=4)
    ker = Kernel(K, n, k)
    assert ker.rank == n * k
    eta = 1.2 * critical_learning_rate(ker, 2, "with_replacement")
    T = stability_operator(ker, eta, 2, "with_replacement")
    naive = materialized_rho(T, sym_basis(torch.eye(n * k, dtype=torch.float64)))
    assert stability(ker, eta, 2, method="lanczos").rho == pytest.approx(naive, rel=1e-10)


def test_lanczos_below_and_above_critical_on_a_mid_sized_kernel():
    n, k = 15, 2  # r = 30: 465-dimensional, Lanczos below η* goes through LOBPCG on Z
    ker = Kernel(random_kernel(n, k, 60, seed=8), n, k)
    eta_star = critical_learning_rate(ker, 4, method="lanczos")
    assert eta_star == pytest.approx(critical_learning_rate(ker, 4, method="dense"), rel=1e-9)
    for factor in (0.3, 0.95, 1.05, 3.0):
        lan = stability(ker, factor * eta_star, 4, method="lanczos", with_certificates=False)
        dense = stability(ker, factor * eta_star, 4, method="dense", with_certificates=False)
        assert lan.converged and lan.method == ("lobpcg" if factor < 1 else "lanczos") and dense.method == "dense"
        assert lan.rho == pytest.approx(dense.rho, rel=1e-9), factor
        assert lan.stable == (factor < 1)
        assert lan.eigenmatrix_psd
        if factor > 1:
            pw = stability(ker, factor * eta_star, 4, method="power", with_certificates=False)
            assert pw.converged and pw.rho == pytest.approx(dense.rho, rel=1e-9)


# ------------------------------------------------------------------------------------------------ Galerkin
def test_galerkin_at_full_rank_is_exact():
    n, k = 50, 2  # rank 100: levels 64, then the full 100
    ker = Kernel(random_kernel(n, k, 150, seed=9), n, k)
    eta_star = critical_learning_rate(ker, 3)
    for factor in (0.5, 2.0):
        exact = stability(ker, factor * eta_star, 3, method="exact", with_certificates=False)
        gal = stability(ker, factor * eta_star, 3, method="galerkin", galerkin_rtol=1e-12, with_certificates=False)
        assert gal.subspace_rank == ker.rank and gal.error == 0.0 and gal.exact
        assert gal.method == "galerkin"
        assert gal.rho == pytest.approx(exact.rho, rel=1e-9)
        assert gal.critical_lr == pytest.approx(exact.critical_lr, rel=1e-9)


def test_galerkin_converges_within_its_stated_error():
    n, k = 300, 2  # nk = 600
    ker = Kernel(power_law_kernel(n, k, seed=1, alpha=2.5), n, k)
    B = 8
    exact_star = critical_learning_rate(ker, B, method="exact")
    eta = 1.5 * exact_star
    exact = stability(ker, eta, B, method="exact", with_certificates=False)
    gal = stability(ker, eta, B, method="galerkin", with_certificates=False)
    assert gal.method == "galerkin" and not gal.exact
    assert gal.subspace_rank < ker.rank
    assert 0 < gal.error < 1e-3
    # Galerkin is a compression of a self-adjoint operator: ρ from below, η* from above
    assert gal.rho <= exact.rho * (1 + 1e-10)
    assert gal.critical_lr >= exact_star * (1 - 1e-10)
    assert abs(gal.rho - exact.rho) / exact.rho <= gal.error
    assert abs(gal.critical_lr - exact_star) / exact_star <= gal.error
    # and a smaller subspace is worse
    coarse = critical_learning_rate(ker, B, method="galerkin", galerkin_rtol=0.5)
    assert coarse >= gal.critical_lr * (1 - 1e-10)


def test_range_basis_is_the_top_of_the_eigendecomposition_as_views():
    n = 20
    ker = Kernel(random_kernel(n, 1, 8, seed=3), n, 1)  # rank 8 of 20
    keep = ker.eigen.values > ker.eigen.cutoff
    lam, U = ker.range_basis()
    assert ker.rank == 8 == lam.shape[0]
    assert torch.equal(lam, ker.eigen.values[keep]) and torch.equal(U, ker.eigen.vectors[:, keep])
    lam3, U3 = ker.range_basis(3)
    assert torch.equal(lam3, lam[-3:]) and torch.equal(U3, U[:, -3:])
    assert ker.range_basis(50)[0].shape[0] == 8
    # no copy of U (n·k × n·k) per call
    assert U3.untyped_storage().data_ptr() == ker.eigen.vectors.untyped_storage().data_ptr()


def test_galerkin_below_full_rank_never_builds_the_full_form():
    """The full-rank form's packing arrays take ~32·r² bytes (≈ 3 GB at r = 10⁴) and stay cached on the kernel:
    a Galerkin solve that stops at a smaller r must not build it."""
    n, k = 300, 2
    ker = Kernel(power_law_kernel(n, k, seed=1, alpha=2.5), n, k)
    eta = 1.5 * critical_learning_rate(ker, 8, method="galerkin")
    gal = stability(ker, eta, 8, method="galerkin", with_certificates=False)
    assert gal.subspace_rank < ker.rank
    assert not ker.has_memo("stability-form:None")


# ------------------------------------------------------------------------------------------------ edge cases
def test_gd_limit_rho_and_zero_kernel():
    n = 5
    K = random_kernel(n, 1, 8, seed=2)
    lam = torch.linalg.eigvalsh(K)
    eta = 0.9 * 2 * n / float(lam[-1])
    res = stability(K, eta, n, "without_replacement")
    assert res.c == 0.0
    p = 1 - eta * lam / n
    assert res.rho == pytest.approx(float((p**2).max()), rel=1e-12)
    zero = stability(torch.zeros(4, 4, dtype=torch.float64), 1.0, 2)
    assert zero.rho == 0.0 and zero.stable and zero.critical_lr == math.inf and zero.rank == 0


def test_single_sample_has_no_noise():
    K = random_kernel(1, 3, 5, seed=0)
    ker = Kernel(K, 1, 3)
    assert critical_learning_rate(ker, 1) == pytest.approx(2 / float(torch.linalg.eigvalsh(K)[-1]), rel=1e-12)


def test_problem_input_and_result_object():
    from references import tiny_problem

    P = tiny_problem("mlp", 2, "minimum")
    ker = as_kernel(P)
    J = P.jacobian()
    torch.testing.assert_close(ker.K, J @ J.T, rtol=1e-10, atol=1e-12)
    res = stability(P, 0.05, 3)
    assert isinstance(res, Stability) and (res.n, res.k) == (7, 2)
    assert res.rank == min(14, P.p)
    d = json.loads(res.to_json())
    assert d["method"] == "dense" and d["certificates"]["entries"]
    assert "rho" in str(res)
    assert res.seconds >= 0 and res.matvecs >= 0
    assert res.lr_ratio == pytest.approx(0.05 / res.critical_lr)
    assert not any("not a global minimum" in note for note in res.notes)
    near = stability(tiny_problem("mlp", 2, "near"), 0.05, 3, with_certificates=False)
    assert any("not a global minimum" in note for note in near.notes)


def test_an_ntk_kernel_decomposes_lazily_and_agrees_with_a_checked_kernel_of_its_matrix():
    """ntk() returns a Kernel whose eigendecomposition is deferred to first use (Kernel.from_gram): every consumer
    must reach it through the Kernel and get what a checked Kernel of the same matrix gives."""
    from references import tiny_problem
    from sgdstab.kernel.ntk import ntk
    from sgdstab.linear_stability.certificates import kernel_curvature

    P = tiny_problem("mlp", 2, "minimum")
    assert P.dtype == torch.float64
    lazy = ntk(P)
    assert not lazy.has_eigen and "not yet computed" in repr(lazy)
    checked = Kernel(ntk(P).matrix.double(), P.n, P.k)
    assert checked.has_eigen
    for lr, B in [(0.05, 3), (0.5, 1)]:
        a, b = stability(lazy, lr, B), stability(checked, lr, B)
        assert (a.rho, a.critical_lr, a.rank, a.method) == (b.rho, b.critical_lr, b.rank, b.method)
        assert a.certificates.to_dict() == b.certificates.to_dict()
    assert lazy.has_eigen and lazy.has_memo("stability-form:None")
    assert critical_learning_rate(ntk(P), 2) == critical_learning_rate(checked, 2)
    assert kernel_curvature(ntk(P)) == kernel_curvature(checked)
    T_lazy, T_checked = stability_operator(ntk(P), 0.1, 2), stability_operator(checked, 0.1, 2)
    M = torch.eye(P.n * P.k, dtype=torch.float64)
    assert torch.equal(T_lazy(M), T_checked(M))


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"lr": 0.0}, ConventionError),
        ({"lr": -1.0}, ConventionError),
        ({"lr": float("nan")}, ConventionError),
        ({"lr": float("inf")}, ConventionError),
        ({"batch_size": 0}, ConventionError),
        ({"batch_size": 7}, ConventionError),
        ({"batch_size": 2.5}, ConventionError),
        ({"sampling": "reshuffle"}, ConventionError),
        ({"method": "arnoldi-ish"}, StabilityError),
        ({"tol": 0.5}, StabilityError),
        ({"galerkin_rtol": 2.0, "method": "galerkin"}, StabilityError),
    ],
)
def test_bad_requests_raise_typed_one_line_errors(kwargs, error):
    K = random_kernel(6, 1, 3, seed=0)
    args = {"lr": 0.1, "batch_size": 2, "sampling": "with_replacement"} | kwargs
    with pytest.raises(error) as info:
        stability(K, **args)
    assert isinstance(info.value, SgdstabError) and isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)


def test_bad_kernels_raise_typed_one_line_errors():
    good = random_kernel(4, 1, 6, seed=0)
    bad = {
        "non-square": torch.ones(3, 4, dtype=torch.float64),
        "vector": torch.ones(4, dtype=torch.float64),
        "asymmetric": good + torch.triu(torch.ones(4, 4, dtype=torch.float64), 1),
        "nan": good.clone().fill_diagonal_(float("nan")),
        "inf": good.clone().fill_diagonal_(float("inf")),
        "not psd": good - 2 * float(torch.linalg.eigvalsh(good)[-1]) * torch.eye(4, dtype=torch.float64),
        "not a tensor": [[1.0, 0.0], [0.0, 1.0]],
    }
    for name, K in bad.items():
        with pytest.raises(StabilityError) as info:
            stability(K, 0.1, 1)
        assert "\n" not in str(info.value), name
    for n, k in [(3, 1), (2, 3), (0, 4), (4, 0)]:
        with pytest.raises(StabilityError):
            Kernel(good, n, k)
    with pytest.raises(StabilityError):
        stability_operator(good, 0.1, 1)(torch.eye(3, dtype=torch.float64))
    # rounding-level asymmetry and negative eigenvalues are accepted
    K = random_kernel(6, 1, 3, seed=1)  # rank 3: zero eigenvalues at rounding level
    Kernel(K + 1e-14 * torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0)), 6, 1)
    Kernel(K.float(), 3, 2)


def test_singular_and_ill_conditioned_kernels_are_reported():
    g = torch.Generator().manual_seed(3)
    J = torch.randn(6, 20, dtype=torch.float64, generator=g)
    J = torch.cat([J, J[:2]])  # samples 7 and 8 duplicate samples 1 and 2
    K = J @ J.T
    s = stability(Kernel(K, 8, 1), lr=0.01, batch_size=2)
    assert s.rank == 6 and any("singular: rank 6 of n·k = 8" in note for note in s.notes)
    assert math.isfinite(s.rho) and math.isfinite(s.critical_lr)
    assert 1 <= s.kernel_condition < 1e6
    U, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64, generator=g))
    bad = U @ torch.diag(torch.tensor([1.0, 1e-3, 1e-6, 1e-9, 1e-13], dtype=torch.float64)) @ U.T
    t = stability(Kernel(bad, 5, 1), lr=0.1, batch_size=2)
    assert t.kernel_condition > 1e12 and any("ill-conditioned" in note for note in t.notes)
    assert not any("ill-conditioned" in note for note in s.notes)
