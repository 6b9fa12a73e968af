"""The square-loss Problem: values against hand computation, derivatives against autograd loops, refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sgdstab import Problem, ProblemError
from sgdstab.errors import MemoryBudgetError


def _linear(w=(1.0, 2.0), b=0.5) -> nn.Linear:
    m = nn.Linear(2, 1).double()
    with torch.no_grad():
        m.weight.copy_(torch.tensor([w], dtype=torch.float64))
        m.bias.fill_(b)
    return m


X3 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], dtype=torch.float64)
Y3 = torch.tensor([[1.0], [2.0], [0.0]], dtype=torch.float64)


def test_loss_and_gradient_match_hand_computation():
    # outputs 1.5, 2.5, 3.5; residuals 0.5, 0.5, 3.5; L = (0.25 + 0.25 + 12.25)/(2·3)
    P = Problem(_linear(), X3, Y3)
    assert P.loss().item() == pytest.approx(12.75 / 6, rel=1e-15)
    torch.testing.assert_close(P.residuals(), torch.tensor([[0.5], [0.5], [3.5]], dtype=torch.float64))
    # ∇_w = (1/n) Σ r_i x_i = [4, 4]/3, ∇_b = (1/n) Σ r_i = 1.5; θ = (w, b) in named_parameters order
    expected = torch.tensor([4 / 3, 4 / 3, 1.5], dtype=torch.float64)
    torch.testing.assert_close(P.gradient(), expected, rtol=1e-14, atol=0)


def _mlp(k: int, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, k)).double()


def _loop_jacobian(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(X.shape[0]):
        out = model(X[i : i + 1])[0]
        for c in range(out.shape[0]):
            g = torch.autograd.grad(out[c], params, retain_graph=True)
            rows.append(torch.cat([t.reshape(-1) for t in g]))
    return torch.stack(rows)


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("chunk_size", [None, 3])
def test_jacobian_and_per_sample_gradients_match_autograd_loop(k, chunk_size):
    model = _mlp(k)
    X = torch.randn(7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    Y = torch.randn(7, k, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    P = Problem(model, X, Y, chunk_size=chunk_size)
    J_ref = _loop_jacobian(model, X)
    torch.testing.assert_close(P.jacobian(), J_ref, rtol=1e-12, atol=1e-14)
    params = list(model.parameters())
    for i in range(7):
        loss_i = 0.5 * ((model(X[i : i + 1]) - Y[i : i + 1]) ** 2).sum()
        g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(loss_i, params)])
        torch.testing.assert_close(P.per_sample_gradients()[i], g, rtol=1e-12, atol=1e-14)
    # ∇L = mean of per-sample gradients
    torch.testing.assert_close(P.gradient(), P.per_sample_gradients().mean(0), rtol=1e-12, atol=1e-14)


def test_float32_problem_from_float64_model_leaves_model_untouched():
    model = _mlp(2)
    before = [p.clone() for p in model.parameters()]
    P = Problem(model, torch.randn(5, 4), torch.randn(5, 2), dtype=torch.float32)
    assert P.dtype == torch.float32 and P.theta.dtype == torch.float32
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_frozen_parameters_are_constants():
    model = _mlp(1)
    model[0].weight.requires_grad_(False)
    P = Problem(model, torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64))
    assert P.p == 6 + 6 + 1
    J_ref = _loop_jacobian(model, P.X)
    torch.testing.assert_close(P.jacobian(), J_ref)


def test_torch_mse_convention_converts_learning_rates():
    P = Problem(
        _mlp(4), torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64), loss="torch_mse"
    )
    assert P.half_mse_lr(0.1) == pytest.approx(2 * 0.1 / 4)
    # MSELoss = (2/k)·L
    mse = nn.MSELoss()(P.outputs(), P.Y)
    assert mse.item() == pytest.approx(P.loss_scale * P.loss().item(), rel=1e-13)


def test_set_parameters_moves_problem_and_model():
    model = _mlp(1)
    P = Problem(model, torch.randn(5, 4, dtype=torch.float64), torch.randn(5, 1, dtype=torch.float64))
    theta = torch.zeros(P.p, dtype=torch.float64)
    P.set_parameters(theta)
    assert torch.equal(P.outputs(), torch.zeros(5, 1, dtype=torch.float64))
    assert all(bool((p == 0).all()) for p in model.parameters())


# ------------------------------------------------------------------------------------------------ refusals
def _data(n=4, k=1):
    return torch.randn(n, 4, dtype=torch.float64), torch.randn(n, k, dtype=torch.float64)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (
            lambda: (nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 1)).double(), *_data()),
            "BatchNorm in training mode",
        ),
        (lambda: (nn.Sequential(nn.Linear(4, 3), nn.Dropout(0.5), nn.Linear(3, 1)).double(), *_data()), "dropout"),
        (lambda: (_mlp(1), torch.full((4, 4), float("nan"), dtype=torch.float64), _data()[1]), "X contains"),
        (lambda: (_mlp(1), _data()[0], torch.tensor([[1.0], [float("inf")], [0.0], [0.0]])), "Y contains"),
        (lambda: (_mlp(2), *_data(k=3)), "outputs 2 value"),
        (lambda: (_mlp(1), torch.empty(0, 4, dtype=torch.float64), torch.empty(0, 1, dtype=torch.float64)), "empty"),
        (lambda: (_mlp(1), _data(n=4)[0], _data(n=5)[1]), "4 samples but Y has 5"),
        (lambda: (_mlp(1), torch.randn(4, 5, dtype=torch.float64), _data()[1]), "model failed on X"),
        (lambda: ("not a model", *_data()), "torch.nn.Module"),
        (lambda: (_mlp(1), _data()[0].numpy(), _data()[1]), "torch tensors"),
        (lambda: (_mlp(1), *_data(), "hinge"), "unknown loss convention"),
    ],
)
def test_refusals_name_the_problem(make, match):
    args = make()
    kwargs = {"loss": args[3]} if len(args) > 3 else {}
    with pytest.raises((ProblemError, ValueError), match=match):
        Problem(*args[:3], **kwargs)


def test_non_finite_parameters_refused():
    model = _mlp(1)
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(ProblemError, match="parameters contains 1 non-finite"):
        Problem(model, *_data())


def test_batch_coupled_model_refused():
    class Centering(nn.Module):
        def forward(self, x):
            return (x - x.mean(0, keepdim=True)).sum(1, keepdim=True)

    model = nn.Sequential(nn.Linear(4, 4), Centering()).double()
    with pytest.raises(ProblemError, match="depends on the other samples"):
        Problem(model, *_data())


def test_eval_mode_batchnorm_accepted():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 1)).double().eval()
    P = Problem(model, *_data())
    assert P.p == 4 * 3 + 3 + 3 + 3 + 3 + 1


def test_jacobian_too_large_is_refused_before_allocating(monkeypatch):
    monkeypatch.setenv("SGDSTAB_MEMORY_LIMIT", "1K")
    P = Problem(_mlp(3), *_data(n=50, k=3))
    with pytest.raises(MemoryBudgetError, match=r"the Jacobian .* needs about"):
        P.jacobian()


def test_wrong_theta_shape_refused():
    P = Problem(_mlp(1), *_data())
    with pytest.raises(ProblemError, match="flat vector of"):
        P.loss(torch.zeros(3, dtype=torch.float64))


def test_public_seams_agree_with_the_values_they_build():
    # forward / batch_outputs / batch_loss_sum / parameters_or are what operators and chain build on
    P = Problem(_linear(), X3, Y3)
    theta = P.theta + 0.25
    params = P.layout.unflatten(theta)
    assert torch.equal(P.forward(params, X3), P.batch_outputs(theta, X3))
    assert torch.equal(P.batch_outputs(theta, X3), P.outputs(theta))
    assert P.batch_loss_sum(theta, X3, Y3).item() == pytest.approx(P.loss(theta).item() * P.n, rel=1e-15)
    assert P.parameters_or(None) is P.theta
    assert torch.equal(P.parameters_or(theta.float()), theta)  # moved to the problem's dtype
    with pytest.raises(ProblemError, match="flat vector of 3 parameters"):
        P.parameters_or(torch.zeros(2, dtype=torch.float64))
