"""The NTK layer by layer (J never formed) against J Jᵀ from the dense float64 Jacobian."""

from __future__ import annotations

import pytest
import torch

import sgdstab
from references import tiny_problem
from sgdstab.errors import LayerChainError, MemoryBudgetError, NtkError
from sgdstab.kernel.layerwise import layerwise_ntk, layerwise_ntk_gemm_width, layerwise_ntk_memory
from sgdstab.kernel.ntk import ntk
from test_layerwise import _data, _models


def _dense_kernel(problem: sgdstab.Problem) -> torch.Tensor:
    J = problem.jacobian()
    return J @ J.T


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("name", list(_models(1)))
def test_layerwise_ntk_equals_the_dense_jacobian_gram(name, k):
    X, Y = _data(9, 5, k, seed=k + 10)
    P = sgdstab.Problem(_models(k)[name], X, Y, dtype=torch.float64)
    K = _dense_kernel(P)
    for chunk in (None, 2):
        got = layerwise_ntk(P, chunk_size=chunk)
        torch.testing.assert_close(got, K, rtol=1e-12, atol=1e-12 * float(K.abs().max()))
        assert torch.equal(got, got.T)
    torch.testing.assert_close(ntk(P).matrix, K, rtol=1e-12, atol=1e-12 * float(K.abs().max()))  # auto takes this route


def test_many_row_blocks_and_an_uneven_last_one(monkeypatch):
    # blocks of 4 samples × k = 3 rows over n = 23: the upper-triangle assembly and its mirror across blocks
    monkeypatch.setattr("sgdstab.kernel.layerwise._GEMM_ROWS", 12)
    X, Y = _data(23, 5, 3, seed=1)
    P = sgdstab.Problem(_models(3)["mlp-deep"], X, Y, dtype=torch.float64)
    torch.testing.assert_close(layerwise_ntk(P), _dense_kernel(P), rtol=1e-12, atol=1e-12)


def test_frozen_layers_and_theta_argument():
    X, Y = _data(6, 5, 2, seed=3)
    model = sgdstab.mlp((5,), 2, widths=(4, 3), activation="tanh", seed=1)
    model.net[0].weight.requires_grad_(False)  # bias of the first layer still trains: S = 1 there
    model.net[2].bias.requires_grad_(False)
    P = sgdstab.Problem(model, X, Y, dtype=torch.float64)
    torch.testing.assert_close(layerwise_ntk(P), _dense_kernel(P), rtol=1e-12, atol=1e-12)
    theta0 = P.theta.clone()
    other = theta0 + 0.5 * torch.randn(P.p, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    elsewhere = ntk(P, theta=other).matrix
    assert torch.equal(P.theta, theta0)
    P.set_parameters(other)
    torch.testing.assert_close(elsewhere, _dense_kernel(P), rtol=1e-12, atol=1e-12)


def test_float32_problem_is_close_to_float64():
    X, Y = _data(12, 5, 3, seed=4)
    model = sgdstab.mlp((5,), 3, widths=(16, 16), activation="tanh", seed=6)
    k32 = layerwise_ntk(sgdstab.Problem(model, X.float(), Y.float()))
    k64 = layerwise_ntk(sgdstab.Problem(model, X, Y, dtype=torch.float64))
    assert k32.dtype == torch.float32
    torch.testing.assert_close(k32.double(), k64, rtol=1e-5, atol=1e-5 * float(k64.abs().max()))


def test_needs_no_jacobian_where_j_would_not_fit(monkeypatch):
    X, Y = _data(30, 5, 3, seed=5)
    P = sgdstab.Problem(sgdstab.mlp((5,), 3, widths=(64, 64), seed=2), X, Y, dtype=torch.float64)
    K = _dense_kernel(P)
    # room for the layerwise route (K, the factors), not for J (90 × 4,803 numbers)
    limit = int(layerwise_ntk_memory(P) / 0.8) + 1
    assert limit < 90 * P.p * 8
    monkeypatch.setenv("SGDSTAB_MEMORY_LIMIT", str(limit))
    monkeypatch.setattr(sgdstab.Problem, "jacobian", lambda *a, **kw: pytest.fail("J was formed"))
    monkeypatch.setattr(sgdstab.Problem, "jacobian_blocks", lambda *a, **kw: pytest.fail("J was formed"))
    torch.testing.assert_close(ntk(P).matrix, K, rtol=1e-12, atol=1e-12)
    assert layerwise_ntk_gemm_width(P) == 64 + 64 + 3  # the GEMMs' inner size, where the Jacobian route has p


def test_refusals():
    cnn = tiny_problem("cnn", 2, "off")
    with pytest.raises(LayerChainError, match="not a chain"):
        layerwise_ntk(cnn)
    with pytest.raises(NtkError, match="method='layerwise' needs a chain"):
        ntk(cnn, method="layerwise")
    with pytest.raises(NtkError, match="unknown NTK method 'fast'"):
        ntk(cnn, method="fast")
    assert layerwise_ntk_gemm_width(cnn) is None
    mlp = tiny_problem("mlp", 3, "off", n=40)
    # the Jacobian route still exists for a chain, and agrees
    torch.testing.assert_close(
        ntk(mlp, method="jacobian").matrix, ntk(mlp, method="layerwise").matrix, rtol=1e-12, atol=1e-12
    )


def test_refuses_when_k_cannot_fit(monkeypatch):
    P = tiny_problem("mlp", 3, "off", n=40)
    monkeypatch.setenv("SGDSTAB_MEMORY_LIMIT", "20K")
    with pytest.raises(MemoryBudgetError, match=r"layerwise NTK \(n·k = 120\).*method='matrix_free'"):
        layerwise_ntk(P)
