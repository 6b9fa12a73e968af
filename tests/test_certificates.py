"""Certificates of THEORY.md §5: kernel forms against dense Hessians, and necessity against the exact ρ."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from references import tiny_problem
from sgdstab.conventions import noise_scale
from sgdstab.errors import ConventionError, StabilityError
from sgdstab.kernel import figures as kf
from sgdstab.kernel.kernel import Kernel
from sgdstab.linear_stability.certificates import (
    NAMES,
    Certificates,
    KernelCurvature,
    certificate_grid,
    certificates,
    kernel_curvature,
)
from sgdstab.linear_stability.solver import critical_learning_rate, stability

NECESSARY = ("frobenius_mu_inf", "gd", "mulayoff_michaeli", "trace")


def random_kernel(n: int, k: int, p: int, seed: int, spread: float = 1.0) -> torch.Tensor:
    """K = A Aᵀ, A (nk × p) random with per-sample row scales exp(spread·N(0,1)); singular when p < nk."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n * k, p, dtype=torch.float64, generator=g)
    scale = torch.exp(spread * torch.randn(n, 1, 1, dtype=torch.float64, generator=g)).expand(n, k, 1)
    return (A * scale.reshape(n * k, 1)) @ (A * scale.reshape(n * k, 1)).T


# ------------------------------------------------------------------------------------------------ kernel forms
@pytest.mark.parametrize("k", [1, 2, 3])
def test_curvature_figures_match_the_dense_hessian_at_a_global_minimum(k):
    P = tiny_problem("mlp", k, "minimum")  # Linear(4, 6), Tanh, Linear(6, k), float64, n = 7, targets = outputs
    assert float(P.loss()) == 0.0
    n = P.n
    H = torch.func.hessian(P.loss_function())(P.theta)
    f = P.output_function()

    def sample_loss(theta, x, y):
        r = f(theta, x) - y
        return 0.5 * (r * r).sum()

    H_i = [torch.func.hessian(sample_loss)(P.theta, P.X[i], P.Y[i]) for i in range(n)]
    torch.testing.assert_close(sum(H_i) / n, H, rtol=1e-10, atol=1e-12)
    eig_H = torch.linalg.eigvalsh(H)
    S = sum(h @ h for h in H_i) / n - H @ H
    cv = kernel_curvature(P)
    assert (cv.n, cv.k) == (n, k)
    assert cv.frobenius == pytest.approx(float(torch.linalg.matrix_norm(H)), rel=1e-10)
    assert cv.lambda_max == pytest.approx(float(eig_H[-1]), rel=1e-10)
    assert cv.trace == pytest.approx(float(torch.trace(H)), rel=1e-10)
    assert cv.per_sample_frob2 == pytest.approx(sum(float(torch.linalg.matrix_norm(h) ** 2) for h in H_i), rel=1e-10)
    assert cv.nonuniformity == pytest.approx(float(torch.linalg.eigvalsh(S)[-1]) ** 0.5, rel=1e-8)
    K = P.jacobian() @ P.jacobian().T
    assert cv.mu_inf == pytest.approx(kf.uniform_alignment(K, n, k), rel=1e-8)

    lr, B = 0.05, 3
    for sampling in ("with_replacement", "without_replacement"):
        c = noise_scale(B, n, sampling)
        cert = certificates(P, lr, B, sampling)
        F2 = float(torch.linalg.matrix_norm(H) ** 2)
        assert cert["gd"].bound_lr == pytest.approx(2 / float(eig_H[-1]), rel=1e-10)
        assert cert["frobenius_mu_inf"].bound_lr == pytest.approx(1 / math.sqrt(c * cv.mu_inf * F2), rel=1e-8)
        mm = 2 * float(torch.trace(H)) / ((1 - c) * F2 + (c / n) * cv.per_sample_frob2)
        assert cert["mulayoff_michaeli"].bound_lr == pytest.approx(mm, rel=1e-10)
        assert cert["trace"].bound_lr == pytest.approx(2 * k / (c * float(torch.trace(H))), rel=1e-10)
        s_bound = 1 / (cv.nonuniformity * math.sqrt(c))
        assert cert["wu_ma_e"].bound_lr == pytest.approx(min(2 / float(eig_H[-1]), s_bound), rel=1e-8)
        assert cert.psi == pytest.approx(lr * math.sqrt(F2 * c), rel=1e-10)
        # every necessary certificate allows the exact threshold
        eta_star = critical_learning_rate(P, B, sampling)
        for entry in cert.necessary:
            assert entry.bound_lr >= eta_star * (1 - 1e-9), entry.name


# ------------------------------------------------------------------------------------------------ necessity
@st.composite
def cases(draw):
    n = draw(st.integers(2, 6))
    k = draw(st.sampled_from([1, 2]))
    p = draw(st.integers(1, n * k + 3))
    seed = draw(st.integers(0, 10_000))
    spread = draw(st.sampled_from([0.0, 0.5, 1.5]))
    sampling = draw(st.sampled_from(["with_replacement", "without_replacement"]))
    B = draw(st.integers(1, n))
    log_factor = draw(st.floats(-1.0, 2.5))
    return n, k, p, seed, spread, sampling, B, log_factor


@settings(max_examples=60, deadline=None)
@given(cases())
def test_necessary_certificates_never_contradict_the_exact_answer(case):
    n, k, p, seed, spread, sampling, B, log_factor = case
    ker = Kernel(random_kernel(n, k, p, seed, spread), n, k)
    eta_star = critical_learning_rate(ker, B, sampling)
    lr = eta_star * math.exp(log_factor)
    res = stability(ker, lr, B, sampling)
    cert = res.certificates
    assert set(e.name for e in cert.necessary) == set(NECESSARY)
    for entry in cert.necessary:
        # a necessary condition allows every stable learning rate: its bound is never below η*
        assert entry.bound_lr >= eta_star * (1 - 1e-9), (entry.name, entry.bound_lr, eta_star)
        if entry.unstable_at_lr:
            assert res.rho > 1 - 1e-9, entry.name
    if cert.unstable:
        assert not res.stable or res.rho > 1 - 1e-9


def test_frobenius_certificate_with_mu_inf_is_a_growth_rate_lower_bound():
    """ρ(T) ≥ η² c μ_inf ||H||_F² (the one-step identity, μ*(u) ≥ μ_inf on range K)."""
    g = torch.Generator().manual_seed(0)
    for trial in range(12):
        n, k = 5, 1 + trial % 2
        ker = Kernel(random_kernel(n, k, 3 + trial, seed=trial, spread=1.0), n, k)
        B = 1 + trial % 3
        lr = float(torch.rand(1, generator=g)) * 3 * critical_learning_rate(ker, B)
        res = stability(ker, lr, B)
        cv = kernel_curvature(ker)
        assert res.rho >= lr**2 * res.c * cv.mu_inf * cv.frobenius**2 * (1 - 1e-9)


def test_wu_ma_e_nonuniformity_bound_is_not_necessary():
    """THEORY.md §5 lists s ≤ 1/(η√c) as necessary; it is not. Three samples, k = 1, p = 2, B = 1 (c = 1)."""
    J = torch.tensor([[-3.0, 2.0], [0.0, -2.0], [-3.0, -2.0]], dtype=torch.float64)
    n = 3
    # independent parameter-space check: δ ← (I − η H_i) δ, i uniform; T_δ(P) = mean_i (I − ηH_i) P (I − ηH_i)
    H_i = [torch.outer(j, j) for j in J]
    H = sum(H_i) / n
    torch.testing.assert_close(H, torch.diag(torch.tensor([6.0, 4.0], dtype=torch.float64)))
    s = float(torch.linalg.eigvalsh(sum(h @ h for h in H_i) / n - H @ H)[-1]) ** 0.5
    assert s == pytest.approx(math.sqrt(42), rel=1e-12)
    eta = 0.16
    basis = [
        torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64),
        torch.tensor([[0.0, 1.0], [1.0, 0.0]], dtype=torch.float64) / math.sqrt(2),
        torch.tensor([[0.0, 0.0], [0.0, 1.0]], dtype=torch.float64),
    ]
    I2 = torch.eye(2, dtype=torch.float64)
    cols = [sum((I2 - eta * h) @ Bj @ (I2 - eta * h) for h in H_i) / n for Bj in basis]
    T = np.array([[float((Bi * c).sum()) for c in cols] for Bi in basis])
    rho_param = float(np.abs(np.linalg.eigvals(T)).max())
    assert rho_param == pytest.approx(0.9325346180688, rel=1e-10)  # stable
    assert eta * s > 1  # …but Wu–Ma–E's s-condition says unstable
    ker = Kernel(J @ J.T, n, 1)
    res = stability(ker, eta, 1)
    assert res.rho == pytest.approx(rho_param, rel=1e-10) and res.stable
    assert res.critical_lr == pytest.approx(1 / 6, rel=1e-12)
    wme = res.certificates["wu_ma_e"]
    assert wme.unstable_at_lr and not wme.necessary and "not necessary" in wme.statement
    assert not res.certificates.unstable and res.certificates.unstable_by == ("wu_ma_e",)


def test_trace_bound_for_several_outputs_carries_the_factor_k():
    """2/(c Tr H) is not necessary for k > 1: two identical samples with J_i = I_2, B = 1, is GD with η* = 2."""
    I2 = torch.eye(2, dtype=torch.float64)
    J = torch.cat([I2, I2])  # n = 2 samples, k = 2 outputs, p = 2
    ker = Kernel(J @ J.T, 2, 2)
    lr = 1.5
    res = stability(ker, lr, 1, "with_replacement")
    assert res.critical_lr == pytest.approx(2.0, rel=1e-12)
    assert res.rho == pytest.approx((1 - lr) ** 2, rel=1e-12) and res.stable
    cert = res.certificates
    assert cert.trace == pytest.approx(2.0) and cert.c == 1.0
    assert 2 / (cert.c * cert.trace) < lr  # THEORY.md §5's form would declare this stable point unstable
    assert cert["trace"].bound_lr == pytest.approx(2.0) and not cert["trace"].unstable_at_lr


# ------------------------------------------------------------------------------------------------ API
def test_measured_mu_from_a_residual_and_the_heuristic_label():
    n, k = 6, 2
    K = random_kernel(n, k, 5, seed=1)
    ker = Kernel(K, n, k)
    r = torch.randn(n, k, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    mu = kf.noise_figures(K, r, n, k).mu
    a = certificates(ker, 0.1, 2, residual=r)
    b = certificates(ker, 0.1, 2, mu=mu)
    assert a.mu == pytest.approx(mu) and b.mu == pytest.approx(mu)
    entry = a["frobenius_mu"]
    assert not entry.necessary and "heuristic" in entry.statement
    assert entry.bound_lr == pytest.approx(1 / math.sqrt(a.c * mu * a.frobenius**2))
    assert a.psi_limit_mu == pytest.approx(1 / math.sqrt(mu))
    assert "frobenius_mu" not in certificates(ker, 0.1, 2).names
    with pytest.raises(StabilityError):
        certificates(ker, 0.1, 2, mu=0.5, residual=r)
    with pytest.raises(StabilityError):
        certificates(ker, 0.1, 2, residual=torch.zeros(n, k, dtype=torch.float64))
    with pytest.raises(StabilityError):
        certificates(ker, 0.1, 2, mu=-1.0)


def test_gd_limit_and_overrides():
    n = 5
    ker = Kernel(random_kernel(n, 1, 8, seed=0), n, 1)
    cert = certificates(ker, 0.1, n, "without_replacement")
    assert cert.c == 0.0 and cert.psi == 0.0
    for name in ("frobenius_mu_inf", "trace"):
        assert cert[name].bound_lr == math.inf and not cert[name].unstable_at_lr
    assert cert["wu_ma_e"].bound_lr == pytest.approx(cert["gd"].bound_lr)
    cv = kernel_curvature(ker)
    assert isinstance(cv, KernelCurvature) and kernel_curvature(ker) is cv  # cached on the Kernel
    other = certificates(cv, 0.1, 2, mu_inf=0.5)
    assert other.mu_inf == 0.5 and kernel_curvature(ker).mu_inf == cv.mu_inf
    with pytest.raises(StabilityError):
        certificates(cv, 0.1, 2, residual=torch.ones(n, dtype=torch.float64))
    with pytest.raises(KeyError):
        cert["nope"]


def test_grid_matches_pointwise_certificates():
    n, k = 6, 2
    ker = Kernel(random_kernel(n, k, 7, seed=3), n, k)
    lrs = [0.01, 0.05, 0.2, 1.0]
    Bs = [1, 2, 4, 6]
    for sampling in ("with_replacement", "without_replacement"):
        grid = certificate_grid(ker, lrs, Bs, sampling, mu=0.8)
        assert set(grid.bound_lr) == set(NAMES)
        for j, B in enumerate(Bs):
            for i, lr in enumerate(lrs):
                cert = certificates(ker, lr, B, sampling, mu=0.8)
                for entry in cert.entries:
                    assert grid.bound_lr[entry.name][j] == entry.bound_lr
                    assert grid.unstable[entry.name][i][j] == entry.unstable_at_lr
                    assert grid.necessary[entry.name] == entry.necessary
        assert grid.bounds("gd").shape == (len(Bs),)
        json.dumps(grid.to_dict())


def test_certificates_result_object_and_bad_input():
    ker = Kernel(random_kernel(4, 1, 6, seed=0), 4, 1)
    cert = certificates(ker, 0.3, 2)
    assert isinstance(cert, Certificates)
    assert cert.bound_lr == min(e.bound_lr for e in cert.necessary)
    assert cert.tightest in NECESSARY
    assert cert.unstable == any(e.unstable_at_lr for e in cert.necessary)
    d = json.loads(cert.to_json())
    assert [e["name"] for e in d["entries"]] == list(cert.names)
    assert "Certificates" in str(cert)
    for bad in ({"lr": 0.0}, {"lr": float("nan")}, {"batch_size": 0}, {"batch_size": 5}, {"sampling": "epochs"}):
        args = {"lr": 0.3, "batch_size": 2, "sampling": "with_replacement"} | bad
        with pytest.raises(ConventionError) as info:
            certificates(ker, **args)
        assert "\n" not in str(info.value)
    with pytest.raises(StabilityError):
        certificates(torch.ones(3, 3, dtype=torch.float64) - 2 * torch.eye(3, dtype=torch.float64), 0.1, 1)
