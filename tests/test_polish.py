"""sgdstab.polish_to_minimum: Gauss–Newton polishing to the global minimum next to a trained point, checked against
dense float64 references (the Hessian and J from torch.func), closed-form least-squares minima where it cannot reach
L = 0, and one-line refusals of bad arguments."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

import sgdstab
from sgdstab.conventions import global_minimum_threshold
from sgdstab.errors import PolishError
from sgdstab.training.polish import PolishResult, polish_to_minimum


def _data(n: int, k: int, d: int = 5, seed: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, dtype=torch.float64, generator=g), torch.randn(n, k, dtype=torch.float64, generator=g)


def _trained(n: int = 10, k: int = 2, steps: int = 400) -> sgdstab.Problem:
    """A tanh MLP (p = 5·24 + 24 + 24·k + k ≫ nk) after a few hundred SGD steps: small but non-zero loss."""
    X, Y = _data(n, k)
    model = sgdstab.mlp((5,), k, widths=(24,), activation="tanh", seed=1)
    problem = sgdstab.Problem(model, X, Y, dtype=torch.float64)
    sgdstab.train(problem, 0.1, 2, steps=steps, progress=False, seed=0)
    return problem


def test_a_trained_mlp_is_polished_to_a_global_minimum_where_h_equals_g():
    problem = _trained()
    theta0 = problem.theta.clone()
    before = float(problem.loss())
    assert 1e-6 < before < 0.1  # trained, not at a minimum

    result = polish_to_minimum(problem)

    assert isinstance(result, PolishResult) and result.loss_before == before
    assert result.loss_after == float(problem.loss()) <= 1e-25
    assert result.global_minimum and result.stopped == "target" and result.dtype == "float64"
    assert result.threshold == global_minimum_threshold(problem.Y, torch.float64)
    assert result.loss_after <= result.target == result.threshold
    assert result.kernel_builds >= 1 and result.steps >= result.kernel_builds
    moved = float(torch.linalg.vector_norm(problem.theta - theta0))
    assert result.distance == pytest.approx(moved, rel=1e-12)
    assert result.relative_distance == pytest.approx(moved / float(theta0.norm()), rel=1e-12)
    assert 0 < result.relative_distance < 0.1  # the minimum next to the trained point, not another one
    # the model itself was moved: its outputs are the targets
    with torch.no_grad():
        torch.testing.assert_close(problem.model(problem.X), problem.Y, rtol=0, atol=1e-12)
    # dense references at the polished θ: the gradient vanishes and H = G = JᵀJ/n (the theorem's setting)
    H = torch.func.hessian(problem.loss_function())(problem.theta)
    J = problem.jacobian()
    G = J.T @ J / problem.n
    assert float(torch.linalg.matrix_norm(H - G)) <= 1e-10 * float(torch.linalg.matrix_norm(G))
    assert float(torch.linalg.vector_norm(problem.gradient())) < 1e-12


def test_duplicate_inputs_with_different_targets_stop_at_the_least_squares_minimum():
    # samples 0 and 1 share an input but not a target: no θ interpolates both, the best f there is their mean, so
    # the smallest loss is ½·((y0 − y1)/2)²·2/n = (y0 − y1)²/(4n) (every other sample is interpolated: p ≫ n)
    n = 8
    X, Y = _data(n, 1)
    X[1] = X[0]
    model = sgdstab.mlp((5,), 1, widths=(40,), activation="tanh", seed=1)
    problem = sgdstab.Problem(model, X, Y, dtype=torch.float64)
    sgdstab.train(problem, 0.1, 2, steps=600, progress=False, seed=0)
    result = polish_to_minimum(problem, max_kernel_builds=20)
    floor = float((Y[0, 0] - Y[1, 0]) ** 2) / (4 * n)
    # Cholesky "succeeds" on this K (its smallest eigenvalue is 1e-15, rounding): the polish must not stop there
    assert result.loss_after == pytest.approx(floor, rel=1e-9)
    residuals = problem.residuals()[:, 0]
    assert float(residuals[0] + residuals[1]) == pytest.approx(0, abs=1e-12)  # f there is the mean of y0 and y1
    assert float(residuals[2:].abs().max()) < 1e-10  # every other sample interpolated
    assert not result.global_minimum and result.stopped in ("no_descent", "max_kernel_builds")
    assert result.loss_after == float(problem.loss())


def test_a_linear_model_with_fewer_parameters_than_targets_reaches_its_least_squares_loss():
    # p = 6 < n·k = 20: Gauss–Newton is exact on a linear model and lands on lstsq's minimum, which is not zero
    X, Y = _data(20, 1)
    model = nn.Linear(5, 1).double()
    problem = sgdstab.Problem(model, X, Y)
    A = torch.cat([X, torch.ones(20, 1, dtype=torch.float64)], dim=1)
    best = torch.linalg.lstsq(A, Y).solution
    floor = float(((A @ best - Y) ** 2).sum()) / (2 * 20)
    result = polish_to_minimum(problem, max_kernel_builds=3)
    assert result.loss_after == pytest.approx(floor, rel=1e-10) and floor > 0.05
    assert not result.global_minimum and result.loss_before > result.loss_after
    assert result.kernel_builds <= 3
    torch.testing.assert_close(model.weight.detach().reshape(-1), best[:5, 0], rtol=1e-8, atol=1e-10)


def test_a_point_already_at_the_target_is_left_alone():
    problem = _trained()
    polish_to_minimum(problem)
    theta = problem.theta.clone()
    again = polish_to_minimum(problem)
    assert (again.kernel_builds, again.steps, again.distance, again.stopped) == (0, 0, 0.0, "target")
    assert again.global_minimum and torch.equal(problem.theta, theta)


def test_target_zero_goes_on_while_steps_lower_the_loss():
    problem = _trained()
    first = polish_to_minimum(problem)
    deeper = polish_to_minimum(problem, target=0.0, max_kernel_builds=3)
    assert deeper.target == 0.0 and deeper.loss_after <= first.loss_after
    assert deeper.stopped in ("no_descent", "max_kernel_builds")


def test_the_result_is_a_frozen_result_table():
    result = polish_to_minimum(_trained())
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.loss_after = 0.0  # type: ignore[misc]
    assert result.to_dict()["global_minimum"] is True and "relative_distance" in str(result)


def test_the_experiments_keep_their_import_path():
    from sgdstab.experiments import minimum
    from sgdstab.training import polish

    assert minimum.polish is polish.polish and minimum.gauss_newton_step is polish.gauss_newton_step
    assert sgdstab.polish_to_minimum is polish_to_minimum and sgdstab.PolishResult is PolishResult


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"max_kernel_builds": 0}, "max_kernel_builds"),
        ({"max_kernel_builds": -2}, "max_kernel_builds"),
        ({"max_kernel_builds": 2.5}, "max_kernel_builds"),
        ({"max_kernel_builds": True}, "max_kernel_builds"),
        ({"max_kernel_builds": "3"}, "max_kernel_builds"),
        ({"max_kernel_builds": 10**6}, "max_kernel_builds"),
        ({"target": -1e-30}, "target"),
        ({"target": math.nan}, "target"),
        ({"target": math.inf}, "target"),
        ({"target": "small"}, "target"),
        ({"target": True}, "target"),
    ],
)
def test_bad_arguments_are_refused_in_one_line(kwargs, words):
    problem = _trained(steps=20)
    theta = problem.theta.clone()
    with pytest.raises(PolishError) as info:
        polish_to_minimum(problem, **kwargs)
    message = str(info.value)
    assert words in message and "\n" not in message and isinstance(info.value, sgdstab.SgdstabError)
    assert torch.equal(problem.theta, theta)


def test_arguments_of_any_numeric_kind_are_taken():
    import numpy as np

    problem = _trained(steps=20)
    result = polish_to_minimum(problem, max_kernel_builds=np.int64(2), target=np.float64(0.0))
    assert result.kernel_builds <= 2 and result.target == 0.0 and type(result.target) is float
    with pytest.raises(PolishError, match=r"max_kernel_builds must be an integer ≥ 1 and ≤ 1000, got 1001"):
        polish_to_minimum(problem, max_kernel_builds=1001)
    with pytest.raises(PolishError, match=r"target \(a loss, or None for the rounding level of a minimum\)"):
        polish_to_minimum(problem, target=-1.0)


def test_not_a_problem_and_a_diverged_point_are_refused():
    with pytest.raises(PolishError, match=r"sgdstab\.Problem"):
        polish_to_minimum(nn.Linear(2, 1))  # type: ignore[arg-type]
    # finite θ whose outputs overflow: the loss is infinite, as after a diverged run
    X = torch.full((3, 1), 1e100, dtype=torch.float64)
    problem = sgdstab.Problem(nn.Linear(1, 1).double(), X, torch.zeros(3, 1, dtype=torch.float64))
    problem.set_parameters(torch.tensor([1e200, 0.0], dtype=torch.float64))
    assert float(problem.loss()) == math.inf
    with pytest.raises(PolishError, match="diverged") as info:
        polish_to_minimum(problem)
    assert "\n" not in str(info.value)
