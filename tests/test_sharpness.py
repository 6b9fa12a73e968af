"""Batch sharpness and the gradient–noise interaction (sgdstab.measure.sharpness) against dense float64 references:
per-sample Hessians and gradients by plain autograd, every batch enumerated."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

import sgdstab
from sgdstab.errors import ConventionError, MethodError


def _problem(loss: str = "half_mse", n: int = 5) -> sgdstab.Problem:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    X = torch.randn(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    if loss == "cross_entropy":
        Y = torch.tensor([0, 1, 1, 0, 1, 0, 1][:n])
    else:
        Y = torch.randn(n, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    return sgdstab.Problem(model, X, Y, loss=loss)


def _reference(problem: sgdstab.Problem, b: int, sampling: str) -> tuple[float, float]:
    """(batch sharpness, interaction) by enumeration with dense per-sample Hessians and gradients."""
    n = problem.n
    theta = problem.theta.clone()

    def sample_loss(t: torch.Tensor, i: int) -> torch.Tensor:
        return problem.batch_loss_sum(t, problem.X[i : i + 1], problem.Y[i : i + 1])

    Hs = [torch.autograd.functional.hessian(lambda t, i=i: sample_loss(t, i), theta) for i in range(n)]
    gs = [torch.autograd.functional.jacobian(lambda t, i=i: sample_loss(t, i), theta) for i in range(n)]
    H = sum(Hs) / n
    grad = sum(gs) / n
    batches = (
        list(itertools.product(range(n), repeat=b))
        if sampling == "with_replacement"
        else list(itertools.combinations(range(n), b))
    )
    sharp, inter = [], []
    for batch in batches:
        g = sum(gs[i] for i in batch) / b
        HB = sum(Hs[i] for i in batch) / b
        sharp.append(float(g @ HB @ g / (g @ g)))
        inter.append(float(g @ H @ g))
    return sum(sharp) / len(sharp), sum(inter) / len(inter) / float(grad @ grad)


@pytest.mark.parametrize("loss", ["half_mse", "cross_entropy"])
@pytest.mark.parametrize("sampling", ["with_replacement", "without_replacement"])
def test_exact_batch_sharpness_matches_the_enumerated_dense_reference(loss, sampling):
    problem = _problem(loss)
    bs = sgdstab.batch_sharpness(problem, 2, sampling)
    value, interaction = _reference(problem, 2, sampling)
    assert bs.exact and bs.stderr == 0.0
    assert bs.value == pytest.approx(value, rel=1e-10)
    assert bs.interaction == pytest.approx(interaction, rel=1e-10)


def test_monte_carlo_agrees_within_its_standard_error():
    problem = _problem(n=7)
    exact = _reference(problem, 3, "with_replacement")[0]
    mc = sgdstab.batch_sharpness(problem, 3, "with_replacement", max_exact=0, rtol=0.01, seed=3)
    assert not mc.exact and mc.batches >= 32 and mc.stderr > 0
    assert abs(mc.value - exact) <= 4 * mc.stderr
    # B = n without replacement is the full batch: the batch sharpness is the Rayleigh quotient of H at ∇L
    full = sgdstab.batch_sharpness(problem, problem.n, "without_replacement", interaction=False)
    g = problem.gradient()
    from sgdstab.operators.products import hessian_vector_product

    assert full.value == pytest.approx(float(g @ hessian_vector_product(problem, g) / (g @ g)), rel=1e-10)
    assert math.isnan(full.interaction)


def test_at_a_global_minimum_batch_sharpness_is_undefined_and_bad_arguments_are_refused():
    problem = _problem()
    with torch.no_grad():
        Y = problem.model(problem.X)
    at_min = sgdstab.Problem(problem.model, problem.X, Y)
    bs = sgdstab.batch_sharpness(at_min, 2, "without_replacement")
    assert math.isnan(bs.value) and any("undefined" in note for note in bs.notes)
    with pytest.raises(ConventionError):
        sgdstab.batch_sharpness(problem, 0)
    for kwargs, match in (({"rtol": 0}, "rtol"), ({"max_batches": 0}, "max_batches"), ({"seed": -1}, "seed")):
        with pytest.raises(MethodError, match=match):
            sgdstab.batch_sharpness(problem, 2, **kwargs)


@pytest.mark.parametrize("sampling", ["with_replacement", "without_replacement"])
def test_the_interaction_is_the_gradient_term_plus_c_times_tr_sigma_h(sampling):
    """E_B[g_Bᵀ H g_B] = ∇LᵀH∇L + c·Tr(ΣH) (docs/THEORY.md §9.0), Σ and H dense."""
    problem = _problem(n=6)
    H = torch.func.hessian(problem.loss_function())(problem.theta)
    grads = problem.per_sample_gradients()
    g = grads.mean(0)
    Sigma = grads.T @ grads / problem.n - torch.outer(g, g)
    c = sgdstab.noise_scale(3, problem.n, sampling)
    bs = sgdstab.batch_sharpness(problem, 3, sampling)
    expected = (float(g @ H @ g) + c * float(torch.trace(Sigma @ H))) / float(g @ g)
    assert bs.interaction == pytest.approx(expected, rel=1e-10)
