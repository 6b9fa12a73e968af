"""Kernel figures without K's eigendecomposition (Lanczos on K, Arnoldi on S·K) against parameter-space references."""

from __future__ import annotations

import pytest
import torch

from sgdstab.kernel import figures as kf


def _jacobian(n: int, k: int, p: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(n * k, p, dtype=torch.float64, generator=g)
    J[:, :3] *= 8  # a few dominant directions, as trained nets have
    return J


def _nonuniformity_in_parameter_space(J: torch.Tensor, n: int, k: int) -> float:
    # s² = λ_max((1/n) Σ_i H_i² − G²), H_i = J_iᵀJ_i, G = JᵀJ/n: formed directly, no kernel identity used
    G = J.T @ J / n
    Hs = [J[i * k : (i + 1) * k].T @ J[i * k : (i + 1) * k] for i in range(n)]
    M = sum(h @ h for h in Hs) / n - G @ G
    return float(torch.linalg.eigvalsh((M + M.T) / 2)[-1]) ** 0.5


@pytest.mark.parametrize(("n", "k", "p"), [(700, 1, 40), (330, 2, 60), (250, 3, 900)])
def test_nonuniformity_without_eigendecomposition_equals_the_parameter_space_figure(n, k, p):
    J = _jacobian(n, k, p, seed=n)
    K = J @ J.T
    assert K.shape[0] > kf._DENSE_NONUNIFORMITY_MAX  # the Arnoldi route
    reference = _nonuniformity_in_parameter_space(J, n, k)
    assert kf.nonuniformity(K, n, k) == pytest.approx(reference, rel=1e-10)
    assert kf.nonuniformity(K, n, k, kf.kernel_eigen(K)) == pytest.approx(reference, rel=1e-10)
    # float32 K: products in float32 to 1e-6, within float32's own rounding of K
    assert kf.nonuniformity(K.float(), n, k) == pytest.approx(reference, rel=1e-4)


@pytest.mark.parametrize("m", [1, 5])
def test_top_eigenvalues_by_lanczos_equal_eigvalsh(m):
    J = _jacobian(400, 2, 700, seed=1)
    K = J @ J.T
    reference = torch.linalg.eigvalsh(K).flip(0)[:m]
    torch.testing.assert_close(kf.top_eigenvalues(K, m), reference, rtol=1e-11, atol=0)
    torch.testing.assert_close(kf.top_eigenvalues(K.float(), m), reference, rtol=1e-5, atol=0)
    small = J[:100] @ J[:100].T  # dense below the Lanczos size
    torch.testing.assert_close(kf.top_eigenvalues(small, m), torch.linalg.eigvalsh(small).flip(0)[:m])


def test_gauss_newton_frobenius_of_a_large_float32_kernel_keeps_float32_accuracy():
    # a plain float32 sum over all 25 million entries drifts by ~0.2% here; row norms combined in float64 do not
    g = torch.Generator().manual_seed(3)
    J = torch.randn(5000, 300, generator=g)
    K = J @ J.T / 300
    reference = float(torch.linalg.matrix_norm(K.double())) / 5000
    assert kf.gauss_newton_frobenius(K, 5000) == pytest.approx(reference, rel=1e-6)
