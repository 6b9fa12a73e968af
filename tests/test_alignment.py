"""Alignment figures against dense Σ, G and H; the identities of THEORY.md §3; analytic behaviour."""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch

from references import dense, tiny_problem
from sgdstab import Problem, alignment, linear_net, load_dataset, random_features
from sgdstab.errors import MethodError
from sgdstab.kernel import figures as kf
from sgdstab.kernel.ntk import ntk

CASES = [(kind, k) for kind in ("mlp", "cnn") for k in (1, 3)]


@pytest.mark.parametrize(("kind", "k"), CASES)
@pytest.mark.parametrize("state", ["off", "near"])
def test_kernel_route_matches_dense_noise_and_curvature(kind, k, state):
    P = tiny_problem(kind, k, state)
    D = dense(P)
    a = alignment(P, method="kernel", top=3)
    tr_sg = float(torch.trace(D.Sigma @ D.G))
    tr_sh = float(torch.trace(D.Sigma @ D.H))
    g_frob2 = float(torch.linalg.matrix_norm(D.G) ** 2)
    h_frob2 = float(torch.linalg.matrix_norm(D.H) ** 2)
    assert a.exact
    assert a.tr_sigma_g == pytest.approx(tr_sg, rel=1e-8)
    assert a.two_loss_gn_frob2 == pytest.approx(2 * D.loss * g_frob2, rel=1e-8)
    assert a.mu == pytest.approx(tr_sg / (2 * D.loss * g_frob2), rel=1e-8)
    assert a.tr_sigma_h == pytest.approx(tr_sh, rel=1e-8, abs=1e-12 * abs(tr_sg))
    assert a.mu_hessian == pytest.approx(tr_sh / (2 * D.loss * h_frob2), rel=1e-8, abs=1e-10)
    assert a.trace_sigma == pytest.approx(float(torch.trace(D.Sigma)), rel=1e-8)
    assert a.grad_norm == pytest.approx(float(D.grads.mean(0).norm()), rel=1e-8)
    # directional alignment along G's top eigenvectors, computed densely in parameter space
    evals, evecs = torch.linalg.eigh(D.G)
    for j in range(3):
        v = evecs[:, -1 - j]
        g_ref = float(v @ D.Sigma @ v / (2 * D.loss * (v @ D.G @ v)))
        assert a.directional[j] == pytest.approx(g_ref, rel=1e-6)
        assert a.directional_eigenvalues[j] == pytest.approx(float(evals[-1 - j]), rel=1e-8)


@pytest.mark.parametrize(("kind", "k"), CASES)
def test_mu_is_the_lambda_squared_weighted_mean_of_directional_alignments(kind, k):
    P = tiny_problem(kind, k, "off")
    a = alignment(P, method="kernel", top=P.n * P.k, hessian=False)
    lam = np.array(a.directional_eigenvalues)
    g = np.array(a.directional)
    assert len(g) == min(P.n * P.k, P.p)
    assert float((lam**2 * g).sum() / (lam**2).sum()) == pytest.approx(a.mu, rel=1e-9)


def test_mu_inf_is_the_worst_alignment_over_reachable_residuals():
    P = tiny_problem("mlp", 3, "minimum")
    D = dense(P)
    K = D.J @ D.J.T
    n, k = P.n, P.k
    a = alignment(P, method="kernel", hessian=False)
    assert math.isnan(a.mu)  # zero loss: μ undefined
    assert a.mu_inf > 0

    def mu_star(u: torch.Tensor) -> float:
        # alignment of the linearized problem with residual u, computed densely from Σ_u and G
        g_i = torch.stack([D.J[i * k : (i + 1) * k].T @ u[i * k : (i + 1) * k] for i in range(n)])
        gbar = g_i.mean(0)
        sigma_u = g_i.T @ g_i / n - torch.outer(gbar, gbar)
        loss_u = float(u @ u) / (2 * n)
        return float(torch.trace(sigma_u @ D.G)) / (2 * loss_u * float(torch.linalg.matrix_norm(D.G) ** 2))

    gen = torch.Generator().manual_seed(0)
    samples = [mu_star(D.J @ torch.randn(P.p, dtype=torch.float64, generator=gen)) for _ in range(200)]
    assert min(samples) >= a.mu_inf - 1e-10
    # the minimizing direction attains it
    eig = kf.kernel_eigen(K)
    _, U = eig.range_basis()
    A = kf.alignment_matrix(K, n, k)
    w = torch.linalg.eigh(U.T @ A @ U).eigenvectors[:, 0]
    assert mu_star(U @ w) == pytest.approx(a.mu_inf, rel=1e-8)


def test_matrix_free_route_agrees_within_standard_errors():
    P = tiny_problem("mlp", 3, "off", n=9, width=40)
    exact = alignment(P, method="kernel", top=3)
    a = alignment(P, method="matrix_free", top=3, rtol=0.02, seed=2)
    assert a.method == "matrix_free" and not a.exact and math.isnan(a.mu_inf)
    assert a.tr_sigma_g == pytest.approx(exact.tr_sigma_g, rel=1e-9)  # exact: n GGN products
    assert a.trace_sigma == pytest.approx(exact.trace_sigma, rel=1e-9)
    assert abs(a.mu - exact.mu) <= 4 * a.mu_stderr + 1e-12
    np.testing.assert_allclose(a.directional, exact.directional, rtol=1e-6)


def test_kernel_identities_hold_on_a_real_network():
    X, Y = load_dataset("digits", n=60)
    P = Problem(random_features(X.shape[1:], Y.shape[1], width=40, seed=0).double(), X, Y)
    K = ntk(P).matrix
    J = P.jacobian()
    G = J.T @ J / P.n
    assert kf.gauss_newton_frobenius(K, P.n) == pytest.approx(float(torch.linalg.matrix_norm(G)), rel=1e-10)
    assert kf.gauss_newton_trace(K, P.n) == pytest.approx(float(torch.trace(G)), rel=1e-10)


def test_linear_model_on_gaussian_data_has_mu_at_least_one():
    # population level: Σ ⪰ 2L·G for a model linear in Gaussian inputs, hence μ ≥ 1 (THEORY.md §3)
    X, Y = load_dataset("gaussian-linear", n=4000, dim=5, outputs=1, seed=0)
    model = linear_net(X.shape[1:], 1, widths=(), bias=False, seed=3).double()
    P = Problem(model, X, Y)
    mu = alignment(P, method="matrix_free", hessian=False, rtol=1e-3).mu
    assert mu >= 0.95, mu


def test_random_feature_alignment_does_not_shrink_with_width():
    X, Y = load_dataset("teacher", n=150, dim=10, outputs=1, seed=0)
    mus = []
    for width in (40, 400):
        model = random_features(X.shape[1:], 1, width=width, activation="tanh", seed=1).double()
        mus.append(alignment(Problem(model, X, Y), method="kernel", hessian=False).mu)
    assert mus[1] >= 0.5 * mus[0], mus
    assert all(m > 0.1 for m in mus), mus


def test_bad_alignment_arguments():
    P = tiny_problem("mlp", 1, "off")
    with pytest.raises(MethodError, match="unknown alignment method"):
        alignment(P, method="dense")
    with pytest.raises(MethodError, match="top"):
        alignment(P, top=0)


def _kernel_above_the_dense_limit(seed: int, n: int = 350, k: int = 2) -> tuple[torch.Tensor, kf.KernelEigen]:
    """A random kernel with uneven rows whose rank (700) sends the kernel figures to their Lanczos routes."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(n * k, 900, dtype=torch.float64, generator=gen) * torch.rand(
        n * k, 1, generator=gen, dtype=torch.float64
    )
    K = A @ A.T
    eig = kf.kernel_eigen(K)
    assert eig.rank > kf._DENSE_NONUNIFORMITY_MAX
    return K, eig


def test_nonuniformity_lanczos_route_matches_the_dense_form():
    n, k = 350, 2
    K, eig = _kernel_above_the_dense_limit(3, n, k)
    lanczos = kf.nonuniformity(K, n, k, eig)
    lam, U = eig.range_basis()
    half = U * lam.sqrt()
    S = -K / n**2
    for i in range(n):
        S[i * k : (i + 1) * k, i * k : (i + 1) * k] += K[i * k : (i + 1) * k, i * k : (i + 1) * k] / n
    dense = float(torch.linalg.eigvalsh(half.T @ S @ half)[-1]) ** 0.5
    assert lanczos == pytest.approx(dense, rel=1e-9)


def test_uniform_alignment_lanczos_route_matches_the_dense_form(monkeypatch):
    n, k = 350, 2
    K, eig = _kernel_above_the_dense_limit(4, n, k)
    lanczos = kf.uniform_alignment(K, n, k, eig)
    # the dense form: λ_min(Uᵀ (n·bdiag(K²) − K²) U) / ||K||_F², written out here
    _, U = eig.range_basis()
    K2 = K @ K
    M = -K2
    for i in range(n):
        block = slice(i * k, (i + 1) * k)
        M[block, block] += n * K2[block, block]
    dense = float(torch.linalg.eigvalsh(U.T @ M @ U)[0]) / float(torch.linalg.matrix_norm(K) ** 2)
    assert dense > 0 and lanczos == pytest.approx(dense, rel=1e-9)
    # if ARPACK does not converge the dense form answers
    monkeypatch.setattr(kf, "_alignment_bottom_lanczos", lambda *args: None)
    assert kf.uniform_alignment(K, n, k, eig) == pytest.approx(dense, rel=1e-9)


@pytest.mark.parametrize(("kind", "k"), CASES)
def test_near_a_minimum_mu_hessian_is_within_its_bound_without_hessian_products(kind, k, monkeypatch):
    from sgdstab import curvature

    P = tiny_problem(kind, k, "near", n=9, width=40)
    D = dense(P)
    curv = curvature(P, method="kernel", rtol=0.05)
    assert "near a minimum" in curv.hessian_route
    alignment_module = importlib.import_module("sgdstab.measure.alignment")

    def no_products(*args, **kwargs):
        raise AssertionError("μ_H near a minimum needs no Hessian-vector products")

    monkeypatch.setattr(alignment_module, "hessian_matmat", no_products)
    a = alignment(P, method="kernel", curvature_result=curv)
    mu_h = float(torch.trace(D.Sigma @ D.H)) / (2 * D.loss * float(torch.linalg.matrix_norm(D.H) ** 2))
    assert abs(a.mu_hessian - mu_h) <= a.mu_hessian_stderr
    assert a.mu_hessian_stderr < 0.2 * abs(mu_h)


def test_at_a_global_minimum_mu_is_undefined_and_mu_inf_is_not():
    P = tiny_problem("mlp", 2, "minimum", n=9, width=12)
    P.Y.add_(1e-15)  # residuals of a few ulps: zero to float64 rounding, but not exactly zero
    a = alignment(P, method="kernel")
    assert a.loss > 0 and math.isnan(a.mu) and math.isnan(a.mu_hessian)
    assert all(math.isnan(g) for g in a.directional)
    assert a.mu_inf > 0 and a.converged
    assert any("global minimum to float64 rounding" in note for note in a.notes)
