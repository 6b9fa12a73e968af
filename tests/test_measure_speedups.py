"""The kernel route's shortcuts at a minimum give the same figures as the general computations they replace.

- R = (1/n) Σ r_ic ∇²f_ic over the samples with a non-zero residual only (the others add exactly nothing);
- Lanczos without restarts (measure/lanczos.py) for K's top eigenvalues and the non-uniformity, against dense
  float64 references, in float32 and float64, above the size where kernel.figures would decompose K densely.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sgdstab import Problem, mlp
from sgdstab.kernel import figures as kf
from sgdstab.measure import lanczos
from sgdstab.measure.routes import _residual_product
from sgdstab.operators.products import residual_curvature_matmat


def _problem_with_some_zero_residuals(dtype: torch.dtype) -> Problem:
    model = mlp((3,), 2, widths=(6,), activation="tanh", seed=0).to(dtype)
    X = torch.randn(12, 3, generator=torch.Generator().manual_seed(0), dtype=dtype)
    with torch.no_grad():
        Y = model(X).clone()
    Y[[2, 7]] += torch.tensor([[0.3, -0.1], [0.0, 0.2]], dtype=dtype)  # samples 2 and 7 off their outputs
    return Problem(model, X, Y)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_residual_products_over_the_non_zero_residuals_equal_the_full_product(dtype):
    P = _problem_with_some_zero_residuals(dtype)
    r = P.residuals()
    assert int((r != 0).any(1).sum()) == 2  # the other samples' residuals are exactly zero
    V = torch.randn(P.p, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    full = residual_curvature_matmat(P, V.to(dtype)).to(torch.float64)
    fast = _residual_product(P, r)(V)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    np.testing.assert_allclose(fast.numpy(), full.numpy(), rtol=tol, atol=tol * float(full.abs().max()))
    # every residual zero: R = 0 exactly, no product needed
    assert float(_residual_product(P, torch.zeros_like(r))(V).abs().max()) == 0.0


def _kernel(nk: int, rank: int, dtype: torch.dtype) -> torch.Tensor:
    A = torch.randn(nk, rank, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    A = A * torch.linspace(2.0, 0.2, rank, dtype=torch.float64)  # a spread spectrum, top eigenvalues separated
    return (A @ A.T).to(dtype)


@pytest.mark.parametrize("rank", [900, 300])  # K of full rank, and singular (nk > p)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lanczos_matches_dense_references_above_the_dense_size(dtype, rank):
    K = _kernel(700, rank, dtype)
    K64 = K.to(torch.float64)
    ref = torch.linalg.eigvalsh(K64).flip(0)[:5]
    top = lanczos.top_eigenvalues(K, 5)
    rtol = 1e-10 if dtype == torch.float64 else 1e-6
    np.testing.assert_allclose(top.numpy(), ref.numpy(), rtol=rtol)
    s_ref = kf.nonuniformity(K64, 350, 2, kf.kernel_eigen(K64))
    s = lanczos.nonuniformity(K, 350, 2)
    # None means "not converged": the kernel route then falls back to kernel.figures (seen in float32 on a singular
    # K with multi-threaded BLAS); a value it does return must be right, and float64 must converge
    if dtype == torch.float64 or s is not None:
        assert s == pytest.approx(s_ref, rel=rtol)
    assert lanczos.nonuniformity(torch.zeros(700, 700, dtype=dtype), 700, 1) == 0.0
