"""Tests for sgdstab.operators.products: matrix-free H, G and Σ products against dense float64 references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sgdstab.errors import OperatorError
from sgdstab.operators import products as ops
from sgdstab.operators.products import (
    JacobianOperators,
    TorchLinearOperator,
    gauss_newton_matmat,
    gauss_newton_operator,
    gauss_newton_vector_product,
    hessian_matmat,
    hessian_operator,
    hessian_vector_product,
    noise_covariance_matmat,
    noise_covariance_operator,
    noise_covariance_vector_product,
    vmap_supported,
)
from sgdstab.problem.problem import Problem

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

F64 = torch.float64
N = 7


def _mlp_problem(k: int, chunk_size: int | None = 3, seed: int = 0) -> Problem:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, k)).to(F64)
    X = torch.randn(N, 4, dtype=F64)
    Y = torch.randn(N, k, dtype=F64)
    return Problem(model, X, Y, chunk_size=chunk_size)


def _cnn_problem(k: int = 2, chunk_size: int | None = 3, seed: int = 1) -> Problem:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 3 * 3, k)).to(F64)
    X = torch.randn(N, 1, 5, 5, dtype=F64)
    Y = torch.randn(N, k, dtype=F64)
    return Problem(model, X, Y, chunk_size=chunk_size)


PROBLEMS = {
    "mlp_k1": lambda: _mlp_problem(1),
    "mlp_k3": lambda: _mlp_problem(3),
    "mlp_k3_one_chunk": lambda: _mlp_problem(3, chunk_size=N),
    "mlp_k1_chunk1": lambda: _mlp_problem(1, chunk_size=1),
    "cnn_k2": lambda: _cnn_problem(2),
}


def _dense(problem: Problem) -> dict[str, torch.Tensor]:
    """Dense float64 references: H by torch.func.hessian, G = JᵀJ/n, Σ = (1/n) GsᵀGs − ggᵀ."""
    theta = problem.theta
    H = torch.func.hessian(problem.loss_function())(theta)
    J = problem.jacobian()
    G = J.T @ J / problem.n
    Gs = problem.per_sample_gradients()
    g = Gs.mean(0)
    S = Gs.T @ Gs / problem.n - torch.outer(g, g)
    return {"H": H, "G": G, "S": S, "J": J}


@pytest.fixture(scope="module", params=list(PROBLEMS))
def case(request):
    problem = PROBLEMS[request.param]()
    return problem, _dense(problem)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


# ------------------------------------------------------------------ the dense references themselves
def test_dense_jacobian_matches_autograd_loop() -> None:
    problem = _mlp_problem(3)
    J = problem.jacobian()
    theta = problem.theta.clone().requires_grad_(True)
    rows = []
    for i in range(problem.n):
        out = problem.output_function()(theta, problem.X[i])
        for c in range(problem.k):
            (g,) = torch.autograd.grad(out[c], theta, retain_graph=True)
            rows.append(g)
    assert torch.allclose(J, torch.stack(rows), rtol=1e-12, atol=1e-14)


def test_dense_references_are_consistent() -> None:
    problem = _mlp_problem(3)
    d = _dense(problem)
    # Σ from per-sample gradients equals the Jacobian form (1/n) Σ_i J_iᵀ r_i r_iᵀ J_i − ∇L∇Lᵀ
    r = problem.residuals()
    Jb = d["J"].reshape(problem.n, problem.k, problem.p)
    grads = torch.einsum("nkp,nk->np", Jb, r)
    g = grads.mean(0)
    S = grads.T @ grads / problem.n - torch.outer(g, g)
    assert _rel(S, d["S"]) < 1e-12
    assert torch.allclose(g, problem.gradient(), rtol=1e-12, atol=1e-14)
    # H − G is the residual-weighted second-order term: non-zero away from a minimum, so the tests separate them
    assert _rel(d["H"], d["G"]) > 1e-3


# ------------------------------------------------------------------ products vs dense
@pytest.mark.parametrize(
    "name,single,block",
    [
        ("H", hessian_vector_product, hessian_matmat),
        ("G", gauss_newton_vector_product, gauss_newton_matmat),
        ("S", noise_covariance_vector_product, noise_covariance_matmat),
    ],
)
def test_products_match_dense(case, name, single, block) -> None:
    problem, dense = case
    M = dense[name]
    gen = torch.Generator().manual_seed(5)
    V = torch.randn(problem.p, 5, dtype=F64, generator=gen)
    for j in range(V.shape[1]):
        assert _rel(single(problem, V[:, j]), M @ V[:, j]) < 1e-10
    out = block(problem, V)
    assert out.shape == V.shape
    assert _rel(out, M @ V) < 1e-10
    # the block equals the columns of single products
    cols = torch.stack([single(problem, V[:, j]) for j in range(V.shape[1])], dim=1)
    assert torch.allclose(out, cols, rtol=1e-12, atol=1e-14)


def test_noise_product_with_given_gradient(case) -> None:
    problem, dense = case
    v = torch.randn(problem.p, dtype=F64, generator=torch.Generator().manual_seed(2))
    g = problem.gradient()
    out = noise_covariance_vector_product(problem, v, gradient=g)
    assert _rel(out, dense["S"] @ v) < 1e-10


def test_chunking_does_not_change_products() -> None:
    """Chunk sizes 1, 3 (unequal last chunk of 1) and 7 give the same products."""
    v = torch.randn(_mlp_problem(3).p, dtype=F64, generator=torch.Generator().manual_seed(3))
    for fn in (hessian_vector_product, gauss_newton_vector_product, noise_covariance_vector_product):
        outs = [fn(_mlp_problem(3, chunk_size=c), v) for c in (1, 3, 7)]
        for o in outs[1:]:
            assert torch.allclose(o, outs[0], rtol=1e-12, atol=1e-14)


def test_products_at_another_theta() -> None:
    problem = _mlp_problem(2)
    theta = problem.theta + 0.3 * torch.randn(problem.p, dtype=F64, generator=torch.Generator().manual_seed(4))
    theta0 = problem.theta.clone()
    H = torch.func.hessian(problem.loss_function())(theta)
    v = torch.randn(problem.p, dtype=F64)
    assert _rel(hessian_vector_product(problem, v, theta), H @ v) < 1e-10
    op = hessian_operator(problem, theta)
    assert np.allclose(op.to_dense(), H.numpy(), rtol=1e-10, atol=1e-12)
    assert torch.equal(problem.theta, theta0)  # the problem itself did not move


def test_float32_products_follow_problem_dtype() -> None:
    p64 = _mlp_problem(2)
    p32 = Problem(p64.model, p64.X, p64.Y, dtype=torch.float32, chunk_size=3)
    v = torch.randn(p64.p, dtype=F64, generator=torch.Generator().manual_seed(6))
    for fn in (hessian_vector_product, gauss_newton_vector_product, noise_covariance_vector_product):
        out32 = fn(p32, v)  # v is cast to the problem's dtype
        assert out32.dtype == torch.float32
        assert _rel(out32.double(), fn(p64, v)) < 1e-4


# ------------------------------------------------------------------ LinearOperators
@pytest.mark.parametrize(
    "name,factory", [("H", hessian_operator), ("G", gauss_newton_operator), ("S", noise_covariance_operator)]
)
def test_linear_operators_equal_dense(case, name, factory) -> None:
    problem, dense = case
    op = factory(problem, block_size=16)  # several blocks per identity
    assert isinstance(op, TorchLinearOperator)
    assert op.shape == (problem.p, problem.p) and op.dtype == np.float64
    D = op @ np.eye(problem.p)
    assert op.matvecs == problem.p
    assert np.allclose(D, dense[name].numpy(), rtol=1e-10, atol=1e-12)
    x = np.random.default_rng(0).standard_normal(problem.p)
    y = op.matvec(x)
    assert y.shape == (problem.p,) and y.dtype == np.float64
    assert op.matvecs == problem.p + 1
    assert np.allclose(y, dense[name].numpy() @ x, rtol=1e-10, atol=1e-12)
    assert np.allclose(op.rmatvec(x), y)  # symmetric
    assert np.allclose(op.H.matvec(x), y)
    assert op.matvec(x.reshape(-1, 1)).shape == (problem.p, 1)
    # torch side counts too
    t = op.matmat_torch(torch.as_tensor(np.stack([x, 2 * x], axis=1)))
    assert op.matvecs == problem.p + 6  # matvec, rmatvec, H.matvec, (p,1) matvec, 2 columns
    assert torch.allclose(t[:, 1], 2 * t[:, 0])


def test_jacobian_operators_fast_route(case) -> None:
    problem, dense = case
    J = dense["J"]
    jo = JacobianOperators.from_problem(problem)
    assert torch.allclose(jo.J, J)
    V = torch.randn(problem.p, 3, dtype=F64, generator=torch.Generator().manual_seed(7))
    assert _rel(jo.gauss_newton_matmat(V), dense["G"] @ V) < 1e-12
    assert _rel(jo.gauss_newton_matmat(V[:, 0]), dense["G"] @ V[:, 0]) < 1e-12
    assert _rel(jo.noise_covariance_matmat(V), dense["S"] @ V) < 1e-10
    K = J @ J.T
    U = torch.randn(problem.n * problem.k, 2, dtype=F64)
    assert _rel(jo.kernel_matmat(U), K @ U) < 1e-12
    assert np.allclose(jo.kernel().to_dense(), K.numpy(), rtol=1e-12, atol=1e-12)
    # the operator factories take the dense J as the fast route
    G_op = gauss_newton_operator(problem, jacobian=J)
    assert "dense J" in G_op.name
    assert np.allclose(G_op.to_dense(), dense["G"].numpy(), rtol=1e-12, atol=1e-13)
    S_op = noise_covariance_operator(problem, jacobian=J)
    assert np.allclose(S_op.to_dense(), dense["S"].numpy(), rtol=1e-10, atol=1e-12)
    # THEORY §2: the nonzero spectra of G and K agree up to 1/n
    eg = np.sort(np.linalg.eigvalsh(dense["G"].numpy()))[::-1][: problem.n * problem.k]
    ek = np.sort(np.linalg.eigvalsh(K.numpy()))[::-1] / problem.n
    assert np.allclose(eg[:3], ek[:3], rtol=1e-9)


def test_noise_covariance_zero_when_residuals_vanish() -> None:
    """At an interpolating point r = 0 Σ = 0, while G does not vanish."""
    problem = _mlp_problem(2)
    Y = problem.outputs()
    zero = Problem(problem.model, problem.X, Y, chunk_size=3)
    v = torch.randn(zero.p, dtype=F64)
    assert noise_covariance_vector_product(zero, v).abs().max() < 1e-14
    assert gauss_newton_vector_product(zero, v).abs().max() > 1e-3
    # and there H = G (THEORY §1)
    assert _rel(hessian_vector_product(zero, v), gauss_newton_vector_product(zero, v)) < 1e-12


# ------------------------------------------------------------------ vmap fallback
class _TanhNoVmap(torch.autograd.Function):
    """tanh with forward and backward derivatives but no vmap rule: vmap over probes must fail."""

    @staticmethod
    def forward(x):
        return torch.tanh(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output)
        ctx.save_for_forward(output)

    @staticmethod
    def backward(ctx, g):
        (y,) = ctx.saved_tensors
        return g * (1 - y * y)

    @staticmethod
    def jvp(ctx, t):
        (y,) = ctx.saved_tensors
        return t * (1 - y * y)


class _NoVmapMLP(nn.Module):
    def __init__(self, k: int) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, k)

    def forward(self, x):
        return self.b(_TanhNoVmap.apply(self.a(x)))


def test_loop_fallback_when_vmap_fails() -> None:
    ref = _mlp_problem(2)
    model = _NoVmapMLP(2).to(F64)
    model.a.load_state_dict(ref.model[0].state_dict())
    model.b.load_state_dict(ref.model[2].state_dict())
    problem = Problem(model, ref.X, ref.Y, chunk_size=3)
    V = torch.randn(ref.p, 3, dtype=F64, generator=torch.Generator().manual_seed(8))
    for fn in (hessian_matmat, gauss_newton_matmat, noise_covariance_matmat):
        assert torch.allclose(fn(problem, V), fn(ref, V), rtol=1e-12, atol=1e-14)
    support = vmap_supported(problem)
    assert not support["hvp"] and not support["ggn"] and not support["noise_jvp"]
    assert all(vmap_supported(ref).values())


def test_vmap_path_is_taken_for_plain_models(monkeypatch) -> None:
    """The batched products really are vmapped for an ordinary MLP and CNN (no silent loop)."""

    def strict(problem, kind, batched, single, W):
        return batched(W) if W.shape[0] > 1 else single(W[0])[None]

    monkeypatch.setattr(ops, "_with_vmap_fallback", strict)
    for problem in (_mlp_problem(3), _cnn_problem(2)):
        V = torch.randn(problem.p, 3, dtype=F64)
        for fn in (hessian_matmat, gauss_newton_matmat, noise_covariance_matmat):
            assert fn(problem, V).shape == V.shape


# ------------------------------------------------------------------ errors
def test_bad_shapes_are_refused() -> None:
    problem = _mlp_problem(1)
    with pytest.raises(OperatorError, match="shape"):
        hessian_vector_product(problem, torch.zeros(problem.p + 1, dtype=F64))
    with pytest.raises(OperatorError, match="shape"):
        gauss_newton_matmat(problem, torch.zeros(problem.p, dtype=F64))
    with pytest.raises(OperatorError):
        noise_covariance_vector_product(problem, np.zeros(problem.p))  # type: ignore[arg-type]
    with pytest.raises(OperatorError, match="rows"):
        JacobianOperators(torch.zeros(5, 3), n=7, k=1)
    with pytest.raises(OperatorError, match="residuals"):
        JacobianOperators(torch.zeros(7, 3), n=7, k=1).noise_covariance()
    op = hessian_operator(problem)
    with pytest.raises(OperatorError):
        op.matvec_torch(torch.zeros(3, dtype=F64))
    assert hessian_matmat(problem, torch.zeros(problem.p, 0, dtype=F64)).shape == (problem.p, 0)


def test_jacobian_products_match_dense(case) -> None:
    problem, d = case
    gen = torch.Generator().manual_seed(5)
    v = torch.randn(problem.p, dtype=F64, generator=gen).to(problem.theta)
    c = torch.randn(problem.n, problem.k, dtype=F64, generator=gen).to(problem.theta)
    Jv = ops.jacobian_vector_product(problem, v)
    assert Jv.shape == (problem.n, problem.k)
    assert _rel(Jv.reshape(-1), d["J"] @ v) < 1e-10
    assert _rel(ops.jacobian_transpose_vector_product(problem, c), d["J"].T @ c.reshape(-1)) < 1e-10
    assert _rel(ops.jacobian_transpose_vector_product(problem, c.reshape(-1)), d["J"].T @ c.reshape(-1)) < 1e-10


def test_jacobian_products_refuse_bad_shapes() -> None:
    problem = _mlp_problem(3)
    with pytest.raises(OperatorError, match=r"c must be a tensor of shape \(7, 3\) or \(21,\) .*got \(7, 2\)"):
        ops.jacobian_transpose_vector_product(problem, torch.zeros(7, 2, dtype=F64))
    with pytest.raises(OperatorError, match="got list"):
        ops.jacobian_transpose_vector_product(problem, [0.0] * 21)  # type: ignore[arg-type]
    with pytest.raises(OperatorError, match="shape"):
        ops.jacobian_vector_product(problem, torch.zeros(problem.p + 1, dtype=F64))
