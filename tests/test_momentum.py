"""SGD with momentum (heavy ball and Nesterov, as torch.optim.SGD) at a minimum: the lifted second moment of
sgdstab.linear_stability.momentum against the dense operator E_B[A_B ⊗ A_B] over every batch in parameter space,
the closed-form GD thresholds, and plain SGD at β = 0."""

from __future__ import annotations

import itertools

import pytest
import torch

import sgdstab
from sgdstab.errors import StabilityError


def _jacobians(n: int = 5, k: int = 2, p: int = 5, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, p, dtype=torch.float64, generator=g)


def _dense_rho(J: torch.Tensor, eta: float, B: int, sampling: str, beta: float, nesterov: bool) -> float:
    """ρ(E_B[A_B ⊗ A_B]) for the state (δ_t, δ_{t−1}) (heavy ball) or (δ, v) (Nesterov), on range(Jᵀ)."""
    n, k, p = J.shape
    Jf = J.reshape(n * k, p)
    _, s, Vh = torch.linalg.svd(Jf, full_matrices=False)
    Q = Vh[s > 1e-10 * s[0]].T  # basis of range(Jᵀ)
    H = [Q.T @ J[i].T @ J[i] @ Q for i in range(n)]
    r = Q.shape[1]
    I, Z = torch.eye(r, dtype=torch.float64), torch.zeros(r, r, dtype=torch.float64)
    batches = (
        list(itertools.product(range(n), repeat=B))
        if sampling == "with_replacement"
        else list(itertools.combinations(range(n), B))
    )
    T = torch.zeros(4 * r * r, 4 * r * r, dtype=torch.float64)
    for batch in batches:
        HB = sum(H[i] for i in batch) / B
        if nesterov:  # v' = βv + g, δ' = δ − η(g + βv')
            A = torch.cat([torch.cat([I - eta * (1 + beta) * HB, -eta * beta**2 * I], 1), torch.cat([HB, beta * I], 1)])
        else:  # δ' = (1 + β)δ − βδ_prev − η g
            A = torch.cat([torch.cat([(1 + beta) * I - eta * HB, -beta * I], 1), torch.cat([I, Z], 1)])
        T += torch.kron(A, A)
    T /= len(batches)
    return float(torch.linalg.eigvals(T).abs().max())


def _kernel(J: torch.Tensor) -> sgdstab.Kernel:
    n, k, p = J.shape
    Jf = J.reshape(n * k, p)
    return sgdstab.Kernel(Jf @ Jf.T, n, k)


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("sampling", ["with_replacement", "without_replacement"])
def test_momentum_rho_matches_the_enumerated_lifted_operator(sampling, nesterov):
    J = _jacobians()
    ker = _kernel(J)
    beta = 0.6
    eta_star = sgdstab.critical_learning_rate(ker, 2, sampling, momentum=beta, nesterov=nesterov)
    for eta in (0.5 * eta_star, 1.3 * eta_star):
        st = sgdstab.stability(ker, eta, 2, sampling, momentum=beta, nesterov=nesterov)
        assert st.rho == pytest.approx(_dense_rho(J, eta, 2, sampling, beta, nesterov), rel=1e-9)
        assert st.stable == (eta < eta_star) and st.momentum == beta and st.nesterov == nesterov
    below = _dense_rho(J, eta_star * (1 - 1e-6), 2, sampling, beta, nesterov)
    above = _dense_rho(J, eta_star * (1 + 1e-6), 2, sampling, beta, nesterov)
    assert below < 1 < above


def test_a_larger_kernel_goes_through_arpack_and_agrees_with_dense():
    J = _jacobians(n=8, k=2, p=30, seed=3)  # rank 16 > the dense limit: ARPACK on the 4r² map
    ker = _kernel(J)
    st = sgdstab.stability(ker, 0.02, 3, "with_replacement", momentum=0.9)
    assert st.rho == pytest.approx(_dense_rho(J, 0.02, 3, "with_replacement", 0.9, False), rel=1e-8)


def test_gd_thresholds_and_beta_zero_reduce_to_the_closed_forms():
    J = _jacobians()
    ker = _kernel(J)
    lam = float(torch.linalg.eigvalsh(ker.K)[-1]) / ker.n
    n = ker.n
    for beta in (0.5, 0.9):
        heavy = sgdstab.critical_learning_rate(ker, n, "without_replacement", momentum=beta)
        nest = sgdstab.critical_learning_rate(ker, n, "without_replacement", momentum=beta, nesterov=True)
        assert heavy == pytest.approx(2 * (1 + beta) / lam, rel=1e-12)
        assert nest == pytest.approx((2 + 2 * beta) / ((1 + 2 * beta) * lam), rel=1e-12)
        # GD's ρ at 0.99 of its threshold is below 1 and at 1.01 above (the 2 × 2 recursion per eigenvalue)
        assert sgdstab.stability(ker, 0.99 * heavy, n, "without_replacement", momentum=beta).rho < 1
        assert sgdstab.stability(ker, 1.01 * heavy, n, "without_replacement", momentum=beta).rho > 1
    # β → 0 approaches plain SGD's η*
    plain = sgdstab.critical_learning_rate(ker, 2)
    assert sgdstab.critical_learning_rate(ker, 2, momentum=1e-7) == pytest.approx(plain, rel=1e-5)


def test_bad_momentum_arguments_are_one_line_errors():
    ker = _kernel(_jacobians())
    for bad, match in ((1.0, r"\[0, 1\)"), (-0.1, r"\[0, 1\)"), ("0.9", "number"), (True, "number")):
        with pytest.raises(StabilityError, match=match):
            sgdstab.stability(ker, 0.1, 2, momentum=bad)
    with pytest.raises(StabilityError, match="requires momentum > 0"):
        sgdstab.critical_learning_rate(ker, 2, nesterov=True)


def test_the_schur_reduction_equals_the_full_lifted_operator():
    """ρ from the r × r Perron root equals the spectral radius of the whole 4r² operator T, formed densely."""
    from sgdstab.linear_stability.momentum import _lifted, momentum_rho

    ker = _kernel(_jacobians(n=6, k=2, p=20, seed=4))  # rank 12
    for beta, nesterov in ((0.5, False), (0.9, True)):
        lifted = _lifted(ker, 0.3, beta, nesterov)
        for eta in (0.01, 0.05):
            apply = lifted.operator(eta)
            r = int(lifted.lam.shape[0])
            basis = torch.eye(4 * r * r, dtype=torch.float64).reshape(-1, 2, 2, r, r)
            T = torch.stack([apply(E).reshape(-1) for E in basis], dim=1)
            full = float(torch.linalg.eigvals(T).abs().max())
            assert momentum_rho(ker, eta, 0.3, beta, nesterov, 1e-12)[0] == pytest.approx(full, rel=1e-9)


@pytest.mark.parametrize("sampling", ["with_replacement", "without_replacement"])
def test_the_mean_square_proxy_is_the_enumerated_matrix_and_bounds_rho(sampling):
    """λ_max(E_B[(I − ηH_B)²]) on range(Jᵀ), every batch enumerated in parameter space; it is ≥ the exact ρ(T)."""
    J = _jacobians(n=5, k=2, p=6, seed=7)
    n, k, p = J.shape
    _, s, Vh = torch.linalg.svd(J.reshape(n * k, p), full_matrices=False)
    Q = Vh[s > 1e-10 * s[0]].T
    H = [Q.T @ J[i].T @ J[i] @ Q for i in range(n)]
    batches = (
        list(itertools.product(range(n), repeat=2))
        if sampling == "with_replacement"
        else list(itertools.combinations(range(n), 2))
    )
    ker = _kernel(J)
    for eta in (0.05, 0.2, 0.5):
        I = torch.eye(Q.shape[1], dtype=torch.float64)
        M = sum((I - eta * sum(H[i] for i in b) / 2) @ (I - eta * sum(H[i] for i in b) / 2) for b in batches)
        expected = float(torch.linalg.eigvalsh(M / len(batches))[-1])
        st = sgdstab.stability(ker, eta, 2, sampling, with_certificates=False)
        assert st.mean_square_proxy == pytest.approx(expected, rel=1e-12)
        assert st.rho <= st.mean_square_proxy * (1 + 1e-12)
