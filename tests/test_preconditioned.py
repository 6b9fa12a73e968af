"""λ_max of H and of P^{-1/2} H P^{-1/2} by Lanczos, the step sharpness (sgdstab.measure.top_eigen), and what they
are compared with for torch.optim (sgdstab.tracking.optimizers).

References: dense float64 Hessians by ``torch.func.hessian`` of the problem's L; the preconditioner P checked by
behaviour (torch's own next step is θ ← θ − η·P⁻¹·m to 1e-12); the thresholds by closed forms and by running the
optimizers themselves on ½λx² just below and just above them.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import sgdstab
from sgdstab.errors import MethodError
from sgdstab.measure.top_eigen import Sharpness, sharpness, step_sharpness
from sgdstab.tracking.optimizers import OptimizerView, preconditioner, read_optimizer

F64 = torch.float64


def _problem(loss: str = "half_mse", widths: tuple[int, ...] = (12, 12), seed: int = 0) -> sgdstab.Problem:
    model = sgdstab.mlp(4, 3, widths=widths, activation="tanh", seed=seed).double()
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(20, 4, generator=gen, dtype=F64)
    if loss == "cross_entropy":
        Y = torch.randint(0, 3, (20,), generator=gen)
    else:
        Y = torch.randn(20, 3, generator=gen, dtype=F64)
    return sgdstab.Problem(model, X, Y, loss=loss)


def _hessian(problem: sgdstab.Problem) -> torch.Tensor:
    return torch.func.hessian(problem.loss_function())(problem.theta.clone())


def _positive_diagonal(p: int, seed: int = 3) -> torch.Tensor:
    # spread over two decades, as an Adam P is
    return 10 ** (2 * torch.rand(p, generator=torch.Generator().manual_seed(seed), dtype=F64) - 1)


# --------------------------------------------------------------------------------------------- λ_max by Lanczos
@pytest.mark.parametrize("loss", ["half_mse", "cross_entropy"])
def test_sharpness_is_the_top_eigenvalue_of_the_dense_hessian(loss, one_thread):
    problem = _problem(loss)
    H = _hessian(problem)
    top = float(torch.linalg.eigvalsh(H)[-1])
    s = sharpness(problem, rtol=1e-10, max_products=300)
    assert s.converged and not s.preconditioned and s.notes == ()
    assert abs(s.value / top - 1) < 1e-8  # measured: 6e-16 (square loss), 2e-15 (cross-entropy)
    v = s.vector
    assert v.shape == (problem.p,) and abs(float(v.norm()) - 1) < 1e-12
    true_residual = float((H @ v - s.value * v).norm()) / abs(s.value)
    assert s.residual <= 1e-10 and true_residual < 1e-9  # the Lanczos relation's residual is the true one
    assert s.products <= 40 < problem.p


@pytest.mark.parametrize("loss", ["half_mse", "cross_entropy"])
def test_preconditioned_sharpness_is_the_top_eigenvalue_of_p_inverse_h(loss, one_thread):
    problem = _problem(loss)
    H = _hessian(problem)
    P = _positive_diagonal(problem.p)
    S = P.rsqrt()
    A = S[:, None] * H * S[None, :]
    top = float(torch.linalg.eigvalsh(A)[-1])
    top_of_p_inverse_h = float(torch.linalg.eigvals(H / P[:, None]).real.max())  # similar: the same eigenvalues
    s = sharpness(problem, preconditioner=P, rtol=1e-10, max_products=300)
    assert s.converged and s.preconditioned
    assert abs(s.value / top - 1) < 1e-8
    assert abs(top_of_p_inverse_h / top - 1) < 1e-8
    assert float((A @ s.vector - s.value * s.vector).norm()) / abs(s.value) < 1e-9  # the eigenvector of A
    plain = sharpness(problem, preconditioner=torch.ones(problem.p, dtype=F64), rtol=1e-10, max_products=300)
    assert abs(plain.value / float(torch.linalg.eigvalsh(H)[-1]) - 1) < 1e-8  # P = I is H itself


@pytest.mark.parametrize("loss", ["half_mse", "cross_entropy"])
def test_a_warm_start_at_a_nearby_theta_takes_fewer_products(loss, one_thread):
    problem = _problem(loss)
    rtol = 1e-6
    before = sharpness(problem, rtol=rtol, max_products=300)
    step = torch.randn(problem.p, generator=torch.Generator().manual_seed(5), dtype=F64)
    problem.set_parameters(problem.theta + 1e-2 * step / step.norm())
    top = float(torch.linalg.eigvalsh(_hessian(problem))[-1])
    cold = sharpness(problem, rtol=rtol, max_products=300)
    warm = sharpness(problem, rtol=rtol, max_products=300, start=before.vector)
    assert cold.converged and warm.converged
    # measured: 22 → 14 (square loss), 17 → 11 (cross-entropy)
    assert warm.products < cold.products
    assert abs(cold.value / top - 1) < 1e-10 and abs(warm.value / top - 1) < 1e-10
    again = sharpness(problem, rtol=rtol, max_products=300, start=warm.vector)  # at the same θ
    assert again.products <= 3


def test_tiny_problems_exhaust_the_krylov_space_exactly(one_thread):
    X = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.5]], dtype=F64)
    for width in (1, 2):
        model = nn.Linear(width, 1, bias=False).double()
        problem = sgdstab.Problem(model, X[:, :width], torch.zeros(3, dtype=F64))
        H = X[:, :width].T @ X[:, :width] / 3  # the square loss of a linear model: H = XᵀX/n
        s = sharpness(problem, rtol=1e-12)
        assert s.converged and s.products == width and s.residual < 1e-14
        assert abs(s.value / float(torch.linalg.eigvalsh(H)[-1]) - 1) < 1e-13


def test_a_warm_start_in_an_invariant_subspace_restarts_from_random(one_thread):
    # orthogonal columns: H = XᵀX/n is diagonal to the last bit, and H·e₀ ∥ e₀ exactly (β = 0 at the first step)
    X = torch.diag(torch.arange(1.0, 31.0, dtype=F64))
    problem = sgdstab.Problem(nn.Linear(30, 1, bias=False).double(), X, torch.zeros(30, dtype=F64))
    start = torch.zeros(30, dtype=F64)
    start[0] = 1.0  # the *bottom* eigenvector, eigenvalue 1/30: its Krylov space is itself
    s = sharpness(problem, start=start, rtol=1e-10)
    assert s.converged and any("invariant subspace of dimension 1" in n for n in s.notes)
    assert abs(s.value / (30.0**2 / 30) - 1) < 1e-12
    cold = sharpness(problem, rtol=1e-10)
    assert s.products == cold.products + 1


def test_budget_and_zero_start_are_reported(one_thread):
    problem = _problem()
    short = sharpness(problem, rtol=1e-10, max_products=3)
    assert not short.converged and short.products == 3
    assert any("max_products=3" in n for n in short.notes) and short.residual > 1e-10
    cold = sharpness(problem, rtol=1e-6)
    zero = sharpness(problem, rtol=1e-6, start=torch.zeros(problem.p, dtype=F64))
    assert zero.value == cold.value and zero.products == cold.products
    assert any("zero" in n for n in zero.notes)


def test_float32_problem_agrees_with_the_float64_reference(one_thread):
    problem = _problem()
    top = float(torch.linalg.eigvalsh(_hessian(problem))[-1])
    single = sgdstab.Problem(problem.model, problem.X, problem.Y, dtype=torch.float32)
    s = sharpness(single, rtol=1e-4)
    assert s.vector.dtype == torch.float32 and abs(s.value / top - 1) < 1e-4


def test_the_vector_stays_out_of_dicts_and_json(one_thread):
    s = sharpness(_problem(), rtol=1e-4)
    d = s.to_dict()
    assert "vector" not in d and d["products"] == s.products
    assert '"vector"' not in s.to_json() and "vector" not in str(s)
    assert isinstance(s, Sharpness) and s == Sharpness(**{**d, "notes": s.notes, "vector": None})


# ------------------------------------------------------------------------------------------------ step sharpness
@pytest.mark.parametrize("loss", ["half_mse", "cross_entropy"])
def test_step_sharpness_is_the_dense_rayleigh_quotient(loss, one_thread):
    problem = _problem(loss)
    H = _hessian(problem)
    g = problem.gradient()
    d = torch.randn(problem.p, generator=torch.Generator().manual_seed(7), dtype=F64)
    for direction in (d, -0.01 * g, 1e-30 * d, 1e30 * d):  # invariant to scale and sign; no overflow
        u = direction / direction.norm()
        reference = float(u @ H @ u)
        assert abs(step_sharpness(problem, direction) / reference - 1) < 1e-12  # measured: ≤ 1.3e-15


# ----------------------------------------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_method_errors_that_say_what_is_wrong():
    problem = _problem(widths=(3,))
    p = problem.p
    with pytest.raises(MethodError, match=rf"start must be a flat tensor of shape \({p},\).*got \(3,\)"):
        sharpness(problem, start=torch.ones(3))
    with pytest.raises(MethodError, match="start must be a real torch tensor"):
        sharpness(problem, start=[1.0] * p)
    with pytest.raises(MethodError, match="start has 1 non-finite"):
        sharpness(problem, start=torch.tensor([math.nan] + [1.0] * (p - 1)))
    with pytest.raises(MethodError, match=r"preconditioner must be strictly positive.*2 entries are ≤ 0"):
        sharpness(problem, preconditioner=torch.cat([torch.zeros(1), -torch.ones(1), torch.ones(p - 2)]))
    with pytest.raises(MethodError, match="preconditioner has 1 non-finite"):
        sharpness(problem, preconditioner=torch.cat([torch.tensor([math.inf]), torch.ones(p - 1)]))
    with pytest.raises(MethodError, match=rf"preconditioner must be a flat tensor of shape \({p},\)"):
        sharpness(problem, preconditioner=torch.ones(p, 1))
    with pytest.raises(MethodError, match="rtol"):
        sharpness(problem, rtol=0.0)
    with pytest.raises(MethodError, match="max_products"):
        sharpness(problem, max_products=0)
    with pytest.raises(MethodError, match="direction is zero"):
        step_sharpness(problem, torch.zeros(p))
    with pytest.raises(MethodError, match=rf"direction must be a flat tensor of shape \({p},\)"):
        step_sharpness(problem, torch.ones(p + 1))
    with pytest.raises(MethodError, match="direction has 1 non-finite"):
        step_sharpness(problem, torch.cat([torch.tensor([math.nan]), torch.ones(p - 1)]))


# ------------------------------------------------------------------------------------- torch.optim: P by behaviour
def _model_and_loss(seed: int = 0) -> tuple[nn.Module, callable]:
    model = sgdstab.mlp(3, 2, widths=(5,), seed=seed).double()
    gen = torch.Generator().manual_seed(1)
    X, Y = torch.randn(10, 3, generator=gen, dtype=F64), torch.randn(10, 2, generator=gen, dtype=F64)
    return model, lambda: 0.5 * ((model(X) - Y) ** 2).sum(1).mean()


def _flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


def _one_measured_step(opt, model, loss, warmup: int = 6):
    """(θ before, g, state before, Δθ, P after) of the step after ``warmup`` steps."""
    params = list(model.parameters())
    for _ in range(warmup):
        opt.zero_grad()
        loss().backward()
        opt.step()
    opt.zero_grad()
    loss().backward()
    before, g = _flat(params), _flat(p.grad for p in params)
    state = [{k: v.clone() for k, v in opt.state[p].items()} for p in params]
    opt.step()
    return before, g, state, _flat(params) - before, preconditioner(opt, params)


def _error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return float((actual - expected).abs().max() / expected.abs().max())


ADAMS = {
    "adam": dict(betas=(0.9, 0.99)),
    "adam_beta1_0": dict(betas=(0.0, 0.99)),
    "amsgrad": dict(betas=(0.9, 0.9), amsgrad=True),
    "coupled_decay": dict(betas=(0.9, 0.99), weight_decay=0.1),
    "foreach": dict(betas=(0.9, 0.99), amsgrad=True, foreach=True),
}


@pytest.mark.parametrize("name", sorted(ADAMS))
def test_adam_steps_by_minus_lr_m_over_p(name):
    model, loss = _model_and_loss()
    config = ADAMS[name]
    lr, (beta1, _), w = 0.05, config["betas"], config.get("weight_decay", 0.0)
    opt = torch.optim.Adam(model.parameters(), lr=lr, eps=1e-3, **config)
    theta, g, state, delta, P = _one_measured_step(opt, model, loss)
    g = g + w * theta  # coupled decay: torch's m and v see g + wθ
    m = beta1 * _flat(s["exp_avg"] for s in state) + (1 - beta1) * g
    assert _error(delta, -lr * m / P) < 1e-12  # measured: ≤ 1.1e-15
    if name == "adam_beta1_0":
        assert _error(delta, -lr * g / P) < 1e-12  # m = g: the step is −η·P⁻¹∇L
    if config.get("amsgrad"):  # the max really differs from v here, so the test tells them apart
        after = [opt.state[p] for p in model.parameters()]
        assert any(bool((s["max_exp_avg_sq"] > s["exp_avg_sq"]).any()) for s in after)


def test_adamw_decoupled_decay_shrinks_theta_outside_p():
    model, loss = _model_and_loss()
    lr, w = 0.05, 0.1
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.99), eps=1e-3, weight_decay=w)
    theta, g, state, delta, P = _one_measured_step(opt, model, loss)
    m = 0.9 * _flat(s["exp_avg"] for s in state) + 0.1 * g  # decoupled: m and v see g alone
    assert _error(delta, -lr * w * theta - lr * m / P) < 1e-12


RMSPROPS = {
    "plain": dict(),
    "centered": dict(centered=True),
    "momentum": dict(momentum=0.8),
    "centered_momentum_decay": dict(centered=True, momentum=0.5, weight_decay=0.1),
    "foreach": dict(centered=True, foreach=True),
}


@pytest.mark.parametrize("name", sorted(RMSPROPS))
def test_rmsprop_steps_by_minus_lr_g_over_p(name):
    model, loss = _model_and_loss()
    config = RMSPROPS[name]
    lr, beta, w = 0.01, config.get("momentum", 0.0), config.get("weight_decay", 0.0)
    opt = torch.optim.RMSprop(model.parameters(), lr=lr, alpha=0.9, eps=1e-3, **config)
    theta, g, state, delta, P = _one_measured_step(opt, model, loss)
    g = g + w * theta
    buffer = beta * _flat(s["momentum_buffer"] for s in state) if beta else 0.0
    # torch's buffer: b ← βb + P⁻¹g, θ ← θ − ηb (measured: ≤ 2.4e-15)
    assert _error(delta, -lr * (buffer + g / P)) < 1e-12
    if config.get("centered"):
        v = _flat(opt.state[p]["square_avg"] for p in model.parameters())
        assert _error(P, v.sqrt() + 1e-3) > 1e-6  # v − ḡ² matters here


def test_preconditioned_sharpness_of_a_real_adam_matches_the_dense_reference(one_thread):
    model, loss = _model_and_loss()
    opt = torch.optim.Adam(model.parameters(), lr=0.05, betas=(0.9, 0.99), eps=1e-8)
    _one_measured_step(opt, model, loss)
    P = preconditioner(opt, list(model.parameters()))
    gen = torch.Generator().manual_seed(1)
    X, Y = torch.randn(10, 3, generator=gen, dtype=F64), torch.randn(10, 2, generator=gen, dtype=F64)
    problem = sgdstab.Problem(model, X, Y)  # θ in model.parameters() order, as P
    H = _hessian(problem)
    reference = float(torch.linalg.eigvalsh(H / P.sqrt()[:, None] / P.sqrt()[None, :])[-1])
    s = sharpness(problem, preconditioner=P, rtol=1e-10)
    assert abs(s.value / reference - 1) < 1e-8


def test_preconditioner_covers_the_given_parameters_in_order_or_says_none():
    model, loss = _model_and_loss()
    params = list(model.parameters())
    assert preconditioner(torch.optim.Adam(params), params) is None  # no step yet
    assert preconditioner(torch.optim.SGD(params, lr=0.1), params) is None  # not adaptive
    opt = torch.optim.RMSprop(params, lr=0.01)
    _one_measured_step(opt, model, loss, warmup=1)
    forward, backward = preconditioner(opt, params), preconditioner(opt, params[::-1])
    sizes = [p.numel() for p in params]
    assert torch.equal(torch.cat(forward.split(sizes)[::-1]), backward)
    assert bool((forward > 0).all()) and forward.shape == (sum(sizes),)
    with pytest.raises(MethodError, match=r"parameters\[1\] \(shape \(4,\)\) is in none of the optimizer's"):
        preconditioner(opt, [params[0], nn.Parameter(torch.zeros(4))])
    with pytest.raises(MethodError, match=r"must be a torch\.optim\.Optimizer"):
        preconditioner(object(), params)


# ----------------------------------------------------------------------------------------- torch.optim: thresholds
def _one() -> list[nn.Parameter]:
    return [nn.Parameter(torch.zeros(1, dtype=F64))]


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: torch.optim.SGD(p, lr=0.1), 2 / 0.1),
        (lambda p: torch.optim.SGD(p, lr=0.1, dampening=0.5), 2 / 0.1),  # no momentum: torch ignores dampening
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9), 2 * 1.9 / 0.1),
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True), 3.8 / (2.8 * 0.1)),
        (lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.5, dampening=0.3), 3.0 / (0.1 * 0.7)),
        (lambda p: torch.optim.Adam(p, lr=1e-3, betas=(0.9, 0.999)), 3.8 / (0.1 * 1e-3)),
        (lambda p: torch.optim.AdamW(p, lr=1e-3, betas=(0.5, 0.999)), 3.0 / (0.5 * 1e-3)),
        (lambda p: torch.optim.RMSprop(p, lr=0.01), 2 / 0.01),
        (lambda p: torch.optim.RMSprop(p, lr=0.01, momentum=0.8), 3.6 / 0.01),
    ],
)
def test_thresholds_are_the_closed_forms(make, expected):
    view = read_optimizer(make(_one()))
    assert view.threshold == pytest.approx(expected, rel=1e-14)


def _growth(make, curvature: float, steps: int = 1000, x0: float = 1e-150) -> float:
    """|x_T|/|x_0| after ``steps`` of the optimizer on ½λx²; x0 so small that Adam's and RMSprop's v stays far
    below ε², which freezes P at ε (after the bias correction's first steps) — the frozen-P threshold's setting."""
    x = nn.Parameter(torch.tensor([x0], dtype=F64))
    opt = make([x])
    for _ in range(steps):
        opt.zero_grad()
        (0.5 * curvature * x**2).sum().backward()
        opt.step()
    return abs(float(x.detach())) / x0


GROWTH = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "heavy_ball": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9),
    "nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True),
    "dampening": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.5, dampening=0.3),
    "adam": lambda p: torch.optim.Adam(p, lr=0.1, betas=(0.9, 0.999), eps=1.0),
    "adamw": lambda p: torch.optim.AdamW(p, lr=0.1, betas=(0.5, 0.99), eps=1.0, weight_decay=0.0),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=0.1, alpha=0.99, eps=1.0),
    "rmsprop_momentum": lambda p: torch.optim.RMSprop(p, lr=0.1, alpha=0.99, eps=1.0, momentum=0.8),
}


@pytest.mark.parametrize("name", sorted(GROWTH))
def test_the_optimizer_itself_is_stable_just_below_its_threshold_and_not_above(name):
    make = GROWTH[name]
    threshold = read_optimizer(make(_one())).threshold  # on λ/P = λ/ε = λ for ε = 1
    # measured: below it decays by 1e-7 (Adam, β₁ = 0.9) to 1e-149; above it grows by 1e25 to 1e142
    assert _growth(make, 0.97 * threshold) < 1e-3
    assert _growth(make, 1.03 * threshold) > 1e3


def test_views_carry_the_hyperparameters_and_notes():
    sgd = read_optimizer(torch.optim.SGD(_one(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01))
    assert (sgd.kind, sgd.momentum, sgd.nesterov, sgd.preconditioned) == ("sgd", 0.9, True, False)
    assert math.isnan(sgd.beta2) and sgd.notes == (
        "coupled weight decay w = 0.01 adds w·I to H: the threshold on λ_max(H) itself is threshold − w",
    )
    adam = read_optimizer(torch.optim.Adam(_one(), lr=1e-3, betas=(0.8, 0.9), eps=1e-6, amsgrad=True))
    assert (adam.kind, adam.momentum, adam.beta2, adam.eps, adam.decoupled_weight_decay) == (
        "adam",
        0.8,
        0.9,
        1e-6,
        False,
    )
    assert adam.notes == ("amsgrad: P from max_exp_avg_sq",)
    adamw = read_optimizer(torch.optim.AdamW(_one(), lr=torch.tensor(1e-3)))  # a tensor lr, as torch allows
    assert adamw.decoupled_weight_decay and adamw.lr == pytest.approx(1e-3) and adamw.name == "AdamW"
    assert any("decoupled decay" in n and "not in the preconditioned sharpness" in n for n in adamw.notes)
    rms = read_optimizer(torch.optim.RMSprop(_one(), lr=0.01, alpha=0.95, centered=True, weight_decay=0.1))
    assert (rms.kind, rms.beta2, rms.preconditioned) == ("rmsprop", 0.95, True)
    assert any("centered RMSprop: P from v − m²" in n for n in rms.notes)
    assert any("λ_max(P⁻¹(H + w·I))" in n for n in rms.notes)
    assert isinstance(rms, OptimizerView) and rms.to_dict()["kind"] == "rmsprop"


def test_subclasses_unknown_optimizers_and_disagreeing_groups():
    class MyAdam(torch.optim.AdamW):
        pass

    mine = read_optimizer(MyAdam(_one(), lr=1e-3))
    assert (mine.name, mine.kind, mine.decoupled_weight_decay) == ("MyAdam", "adam", True)
    unknown = read_optimizer(torch.optim.Adagrad(_one(), lr=0.1))
    assert (unknown.kind, unknown.lr, unknown.preconditioned) == ("unknown", 0.1, False)
    assert math.isnan(unknown.threshold)
    assert unknown.notes == (
        "unknown optimizer Adagrad: λ_max(H) and batch sharpness can still be measured, against no threshold",
    )
    two = torch.optim.SGD([{"params": _one()}, {"params": _one(), "lr": 0.2}], lr=0.1, momentum=0.9)
    view = read_optimizer(two)
    assert math.isnan(view.lr) and math.isnan(view.threshold) and view.momentum == 0.9
    assert "param groups have different learning rates: no single threshold" in view.notes
    mixed = read_optimizer(torch.optim.Adam([{"params": _one(), "betas": (0.5, 0.9)}, {"params": _one()}]))
    assert math.isnan(mixed.momentum) and math.isnan(mixed.threshold)
    assert any("different betas" in n for n in mixed.notes)
    ascent = read_optimizer(torch.optim.SGD(_one(), lr=0.1, maximize=True))
    assert math.isnan(ascent.threshold) and any("maximize" in n for n in ascent.notes)
    with pytest.raises(MethodError, match=r"optimizer must be a torch\.optim\.Optimizer, got dict"):
        read_optimizer({"lr": 0.1})
