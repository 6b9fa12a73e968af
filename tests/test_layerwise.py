"""Exact Tr H and Tr G layer by layer, against the dense float64 Hessian and Jacobian."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import sgdstab
from references import tiny_problem
from sgdstab.errors import LayerChainError
from sgdstab.measure.traces import hessian_trace, layerwise_route, layerwise_trace_cost, layerwise_traces
from sgdstab.problem.chain import layer_chain


def _dense_traces(problem: sgdstab.Problem) -> tuple[float, float]:
    H = torch.func.hessian(problem.loss_function())(problem.theta)
    J = problem.jacobian()
    return float(torch.trace(H)), float((J * J).sum()) / problem.n


def _data(n: int, d: int, k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, dtype=torch.float64, generator=g), torch.randn(n, k, dtype=torch.float64, generator=g)


def _models(k: int) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    return {
        "mlp-deep": sgdstab.mlp((5,), k, widths=(4, 6, 5, 3), activation="tanh", seed=2),
        "mlp-relu": sgdstab.mlp((5,), k, widths=(7, 6), activation="relu", seed=3),
        "linear-net": sgdstab.linear_net((5,), k, widths=(4, 3), seed=4),
        "random-features": sgdstab.random_features((5,), k, width=9, activation="tanh", seed=5),
        "sequential": nn.Sequential(
            nn.Flatten(),
            nn.Linear(5, 6),
            nn.GELU(),
            nn.Tanh(),
            nn.Sequential(nn.Linear(6, 4, bias=False), nn.Softplus()),
            nn.Linear(4, k),
            nn.Sigmoid(),
        ),
        "generic": nn.Sequential(nn.Linear(5, 6), nn.Softmax(dim=-1), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, k)),
    }


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("name", list(_models(1)))
def test_traces_equal_the_dense_hessian_and_jacobian(name, k):
    X, Y = _data(7, 5, k, seed=k)
    P = sgdstab.Problem(_models(k)[name], X, Y, dtype=torch.float64)
    trace_h, trace_g = _dense_traces(P)
    # off a minimum H ≠ G: mixing them up would fail
    # (except where f is linear in θ or φ'' = 0: there the diagonal blocks of H and G coincide)
    assert abs(trace_h - trace_g) > 1e-3 * abs(trace_g) or name in ("linear-net", "mlp-relu", "random-features")
    for chunk in (None, 3):
        h, g = layerwise_traces(P, chunk_size=chunk)
        assert h == pytest.approx(trace_h, rel=1e-10, abs=1e-12)
        assert g == pytest.approx(trace_g, rel=1e-10)
    assert layerwise_route(P) == ("generic" if name == "generic" else "structured")
    assert hessian_trace(P) == pytest.approx(trace_h, rel=1e-10, abs=1e-12)


def test_at_a_minimum_hessian_and_gauss_newton_traces_agree():
    P = tiny_problem("mlp", 3, "minimum", n=9, width=8)
    h, g = layerwise_traces(P)
    assert h == pytest.approx(g, rel=1e-12)
    assert h == pytest.approx(_dense_traces(P)[0], rel=1e-10)


def test_theta_argument_measures_elsewhere_without_moving_the_problem():
    X, Y = _data(6, 5, 2, seed=9)
    P = sgdstab.Problem(_models(2)["mlp-deep"], X, Y, dtype=torch.float64)
    theta0 = P.theta.clone()
    other = theta0 + 0.3 * torch.randn(P.p, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    at_other = hessian_trace(P, theta=other)
    assert torch.equal(P.theta, theta0)
    P.set_parameters(other)
    assert at_other == pytest.approx(_dense_traces(P)[0], rel=1e-10)


def test_frozen_parameters_are_left_out():
    X, Y = _data(6, 5, 2, seed=3)
    model = sgdstab.mlp((5,), 2, widths=(4,), activation="tanh", seed=1)
    model.net[0].weight.requires_grad_(False)  # the first layer's bias still trains
    P = sgdstab.Problem(model, X, Y, dtype=torch.float64)
    assert P.p == 4 + 4 * 2 + 2
    assert layerwise_traces(P)[0] == pytest.approx(_dense_traces(P)[0], rel=1e-10)


class _ScaledMLP(sgdstab.models.architectures.MLP):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * super().forward(x)


def test_models_that_are_not_chains_are_refused():
    cnn = tiny_problem("cnn", 2, "off")
    assert layer_chain(cnn) is None and layerwise_route(cnn) is None and layerwise_trace_cost(cnn) is None
    with pytest.raises(LayerChainError, match="not a chain"):
        hessian_trace(cnn)
    # an MLP subclass whose forward is not its layers: caught by comparing outputs, not trusted by type
    spec = sgdstab.models.architectures.ModelSpec(kind="mlp", input_shape=(5,), outputs=2, widths=(4,))
    scaled = _ScaledMLP(spec).double()
    X, Y = _data(6, 5, 2, seed=2)
    assert layer_chain(sgdstab.Problem(scaled, X, Y)) is None


def test_float32_problem_is_close_to_float64():
    X, Y = _data(20, 5, 3, seed=4)
    model = sgdstab.mlp((5,), 3, widths=(16, 16), activation="tanh", seed=6)
    h32 = hessian_trace(sgdstab.Problem(model, X.float(), Y.float()))
    h64 = hessian_trace(sgdstab.Problem(model, X, Y, dtype=torch.float64))
    assert h32 == pytest.approx(h64, rel=1e-5)


def test_cost_estimate_is_positive_and_grows_with_depth():
    X, Y = _data(8, 5, 1, seed=0)
    shallow = sgdstab.Problem(sgdstab.mlp((5,), 1, widths=(8,)), X, Y)
    deep = sgdstab.Problem(sgdstab.mlp((5,), 1, widths=(8, 8, 8, 8)), X, Y)
    assert 0 < layerwise_trace_cost(shallow) < layerwise_trace_cost(deep)
