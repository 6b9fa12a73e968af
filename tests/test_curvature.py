"""Curvature figures against dense float64 references, on and off a minimum, for every route."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from references import dense, tiny_model, tiny_problem
from sgdstab import MemoryBudgetError, Problem, curvature, mlp, plan_method
from sgdstab.errors import MethodError

CASES = [(kind, k) for kind in ("mlp", "cnn") for k in (1, 3)]


def _reference_figures(problem: Problem) -> dict[str, float]:
    D = dense(problem)
    eig_h = torch.linalg.eigvalsh(D.H)
    eig_g = torch.linalg.eigvalsh(D.G)
    n, k = problem.n, problem.k
    Hi = [D.J[i * k : (i + 1) * k].T @ D.J[i * k : (i + 1) * k] for i in range(n)]
    M = sum(h @ h for h in Hi) / n - D.G @ D.G
    return {
        "hessian_frobenius": float(torch.linalg.matrix_norm(D.H)),
        "trace": float(torch.trace(D.H)),
        "sharpness": float(eig_h[-1]),
        "min_eigenvalue": float(eig_h[0]),
        "gauss_newton_frobenius": float(torch.linalg.matrix_norm(D.G)),
        "gauss_newton_trace": float(torch.trace(D.G)),
        "gauss_newton_sharpness": float(eig_g[-1]),
        "nonuniformity": float(torch.linalg.eigvalsh(M)[-1]) ** 0.5,
        "loss": D.loss,
        "grad_norm": float(D.grads.mean(0).norm()),
        "top": eig_h.flip(0)[:3].tolist(),
    }


EXACT_FIELDS = (
    "hessian_frobenius",
    "trace",
    "sharpness",
    "min_eigenvalue",
    "gauss_newton_frobenius",
    "gauss_newton_trace",
    "gauss_newton_sharpness",
    "nonuniformity",
    "loss",
    "grad_norm",
)


def _assert_close(value: float, ref: float, rel: float = 1e-8, scale: float = 1.0) -> None:
    assert abs(value - ref) <= rel * max(abs(ref), scale), (value, ref)


@pytest.mark.parametrize(("kind", "k"), CASES)
@pytest.mark.parametrize("state", ["off", "minimum"])
def test_dense_route_is_exact(kind, k, state):
    P = tiny_problem(kind, k, state)
    ref = _reference_figures(P)
    c = curvature(P, method="dense", top=3)
    assert c.method == "dense" and c.exact and c.converged
    for name in EXACT_FIELDS:
        _assert_close(getattr(c, name), ref[name], scale=ref["hessian_frobenius"])
    np.testing.assert_allclose(c.top_eigenvalues, ref["top"], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize(("kind", "k"), CASES)
def test_kernel_route_at_a_minimum_is_exact(kind, k):
    P = tiny_problem(kind, k, "minimum")
    ref = _reference_figures(P)
    assert ref["loss"] == 0.0
    c = curvature(P, method="kernel", at_minimum=True, top=3)
    assert c.exact and c.hessian_vector_products == 0
    for name in EXACT_FIELDS:
        _assert_close(getattr(c, name), ref[name], scale=ref["hessian_frobenius"])


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_kernel_route_off_a_minimum_uses_the_gauss_newton_control_variate(kind):
    P = tiny_problem(kind, 3, "near", n=9, width=100)
    ref = _reference_figures(P)
    c = curvature(P, method="kernel", rtol=0.05, seed=4, at_minimum=False)
    assert "control variate" in c.hessian_route and not c.exact
    assert abs(c.trace - ref["trace"]) <= 4 * c.trace_stderr + 1e-12
    assert abs(c.hessian_frobenius - ref["hessian_frobenius"]) <= 4 * c.hessian_frobenius_stderr + 1e-12
    plain = curvature(P, method="matrix_free", rtol=0.05, seed=4)
    # near a minimum H ≈ G: the exact G part leaves far less to estimate
    assert c.hessian_frobenius_stderr < plain.hessian_frobenius_stderr / 10
    if kind == "mlp":  # a chain of Linear layers: Tr H exactly, layer by layer, on both routes
        for result in (c, plain):
            assert result.trace_stderr == 0.0 and "layer by layer" in result.hessian_route
            _assert_close(result.trace, ref["trace"], scale=ref["hessian_frobenius"])
        _assert_close(plain.gauss_newton_trace, ref["gauss_newton_trace"], scale=ref["gauss_newton_frobenius"])
    else:  # Hutch++ on the trace too
        assert c.trace_stderr < plain.trace_stderr / 10


@pytest.mark.parametrize(("kind", "k"), CASES)
def test_kernel_route_off_a_minimum_never_reports_gauss_newton_as_hessian(kind, k):
    P = tiny_problem(kind, k, "off")
    ref = _reference_figures(P)
    # the two differ here, so confusing them would fail
    assert abs(ref["hessian_frobenius"] - ref["gauss_newton_frobenius"]) > 1e-3 * ref["hessian_frobenius"]
    c = curvature(P, method="kernel", top=3)
    for name in EXACT_FIELDS:
        _assert_close(getattr(c, name), ref[name], scale=ref["hessian_frobenius"])
    assert c.hessian_vector_products > 0


@pytest.mark.parametrize(("kind", "k"), CASES)
def test_matrix_free_route_within_four_standard_errors(kind, k):
    # rtol = 0.1 makes Hutch++ cheaper than p products, so the estimate really is stochastic
    P = tiny_problem(kind, k, "off", n=9, width=30)
    assert P.p > 150
    ref = _reference_figures(P)
    c = curvature(P, method="matrix_free", rtol=0.1, top=3, seed=3)
    assert not c.exact
    for name, se in (
        ("hessian_frobenius", c.hessian_frobenius_stderr),
        ("trace", c.trace_stderr),
        ("gauss_newton_frobenius", c.gauss_newton_frobenius_stderr),
        ("gauss_newton_trace", c.gauss_newton_trace_stderr),
    ):
        if kind == "mlp" and name.endswith("trace"):  # exact, layer by layer
            assert se == 0.0
            _assert_close(getattr(c, name), ref[name], scale=ref["hessian_frobenius"])
            continue
        assert se > 0
        assert abs(getattr(c, name) - ref[name]) <= 4 * se + 1e-12, (name, getattr(c, name), ref[name], se)
        if c.converged:
            assert se <= 0.1 * abs(getattr(c, name)) + 1e-12
    # Lanczos is deterministic and tight: the extreme eigenvalues are exact to the residual bound
    assert abs(c.sharpness - ref["sharpness"]) <= max(c.sharpness_error_bound, 1e-8 * abs(ref["sharpness"]))
    _assert_close(c.min_eigenvalue, ref["min_eigenvalue"], rel=1e-6, scale=ref["hessian_frobenius"])


def test_stochastic_standard_errors_shrink_with_rtol():
    P = tiny_problem("cnn", 3, "off", n=9, width=100)
    loose = curvature(P, method="matrix_free", rtol=0.1, seed=1)
    tight = curvature(P, method="matrix_free", rtol=0.02, seed=1)
    assert not tight.exact and tight.trace_stderr > 0
    assert tight.trace_stderr < loose.trace_stderr / 2.5
    assert tight.hessian_frobenius_stderr < loose.hessian_frobenius_stderr / 2.5
    assert tight.hessian_vector_products > loose.hessian_vector_products


def test_relu_network_is_measured_as_torch_differentiates_it():
    model = tiny_model("mlp", 1, activation=torch.nn.ReLU)
    X = torch.randn(7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    Y = torch.randn(7, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    P = Problem(model, X, Y)
    ref = _reference_figures(P)
    c = curvature(P, method="dense")
    _assert_close(c.hessian_frobenius, ref["hessian_frobenius"])
    _assert_close(c.sharpness, ref["sharpness"])


def test_auto_picks_dense_for_tiny_models_and_reports_it():
    P = tiny_problem("mlp", 1, "off")
    plan = plan_method(P)
    assert plan.method == "dense" and set(plan.estimated_seconds) >= {"dense", "matrix_free"}
    assert curvature(P).method == "dense"


def test_auto_avoids_dense_for_large_p():
    model = torch.nn.Sequential(torch.nn.Linear(100, 100), torch.nn.Tanh(), torch.nn.Linear(100, 1))
    P = Problem(model, torch.randn(50, 100), torch.randn(50, 1))
    assert P.p > 10_000
    assert plan_method(P).method != "dense"
    assert plan_method(P, at_minimum=True).method == "kernel"


def test_result_prints_and_serializes():
    c = curvature(tiny_problem("mlp", 1, "off"))
    text = str(c)
    assert "hessian_frobenius" in text and "method" in text
    d = c.to_dict()
    assert d["method"] == "dense" and isinstance(d["top_eigenvalues"], list)
    assert '"sharpness"' in c.to_json()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "pyhessian"}, "unknown method"),
        ({"rtol": 0}, "rtol"),
        ({"rtol": float("nan")}, "rtol"),
        ({"top": 0}, "top"),
        ({"seed": "x"}, "seed"),
        ({"seed": -1}, "seed"),
        ({"max_matvecs": 0}, "max_matvecs"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(MethodError, match=match):
        curvature(tiny_problem("mlp", 1, "off"), **kwargs)
    if "rtol" in kwargs or "seed" in kwargs:  # alignment and the route planner refuse them the same way
        from sgdstab import alignment

        with pytest.raises(MethodError, match=match):
            alignment(tiny_problem("mlp", 1, "off"), hessian=False, **kwargs)
    if "rtol" in kwargs:
        with pytest.raises(MethodError, match="rtol"):
            plan_method(tiny_problem("mlp", 1, "off"), kwargs["rtol"])


def test_dense_route_refuses_an_overflowing_hessian():
    # inputs ~3e19 with first-layer weights ~1e-20: finite outputs and loss, but J² ~ 1e39 overflows float32
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(3, 4, generator=g) * 1e-20)
    P = Problem(model, torch.randn(5, 4, generator=g) * 3e19, torch.zeros(5, 1))
    assert torch.isfinite(P.loss())
    with pytest.raises(MethodError, match="non-finite"):
        curvature(P, method="dense")


def test_dense_route_refuses_what_cannot_fit(monkeypatch):
    P = tiny_problem("mlp", 1, "off", width=100)
    monkeypatch.setenv("SGDSTAB_MEMORY_LIMIT", "1M")
    with pytest.raises(MemoryBudgetError, match=r"dense Hessian .* needs about"):
        curvature(P, method="dense")


def test_a_given_kernel_is_used_and_checked():
    from sgdstab import Kernel, alignment, ntk

    P = tiny_problem("mlp", 3, "minimum", n=9, width=8)
    built = curvature(P, method="kernel", at_minimum=True, top=3)
    K = ntk(P).matrix
    for given in (K, Kernel(K, P.n, P.k)):
        reused = curvature(P, method="kernel", at_minimum=True, top=3, kernel=given)
        for name in EXACT_FIELDS:
            _assert_close(getattr(reused, name), getattr(built, name), rel=1e-12, scale=built.hessian_frobenius)
    a = alignment(P, hessian=False, kernel=Kernel(K, P.n, P.k))
    assert a.mu_inf == pytest.approx(alignment(P, hessian=False).mu_inf, rel=1e-12)
    with pytest.raises(MethodError, match="27 × 27"):
        curvature(P, method="kernel", kernel=K[:9, :9])
    moved = tiny_problem("mlp", 3, "minimum", n=9, width=8, seed=1)  # other parameters, same shapes
    with pytest.raises(MethodError, match="does not match"):
        curvature(moved, method="kernel", at_minimum=True, kernel=K)


# ---------------------------------------------------------------------------------------------- the decided regime
@pytest.mark.parametrize(("kind", "k"), CASES)
def test_default_call_at_an_exact_minimum_is_exact_and_converged(kind, k):
    P = tiny_problem(kind, k, "minimum")
    ref = _reference_figures(P)
    c = curvature(P, method="kernel", top=3)  # at_minimum left to the route
    assert c.exact and c.converged and c.at_minimum and "near a minimum" in c.hessian_route
    assert c.hessian_vector_products == 1  # one product of R settles it at a minimum
    assert c.residual_frobenius_bound < 1e-10 * ref["hessian_frobenius"]
    for name in EXACT_FIELDS:
        _assert_close(getattr(c, name), ref[name], scale=ref["hessian_frobenius"])
    assert not any("Lanczos" in note or "did not converge" in note for note in c.notes)


@pytest.mark.parametrize(("kind", "k"), CASES)
def test_near_a_minimum_the_hessian_is_within_the_reported_residual_bound(kind, k):
    P = tiny_problem(kind, k, "near", n=9, width=40)
    ref = _reference_figures(P)
    D = dense(P)
    R = D.H - D.G
    c = curvature(P, method="kernel", rtol=0.05, top=3)
    assert "near a minimum" in c.hessian_route and c.converged and not c.exact
    # the 99% bound holds for the true ||R||_F (seeded probes: deterministic)
    true_r = float(torch.linalg.matrix_norm(R))
    assert true_r <= c.residual_frobenius_bound
    assert c.residual_frobenius_bound <= 0.05 * c.sharpness
    assert abs(c.hessian_frobenius - ref["hessian_frobenius"]) <= c.hessian_frobenius_stderr
    assert abs(c.sharpness - ref["sharpness"]) <= c.sharpness_error_bound
    assert abs(c.min_eigenvalue - ref["min_eigenvalue"]) <= c.min_eigenvalue_error_bound
    assert abs(c.trace - ref["trace"]) <= 4 * c.trace_stderr
    # G's own figures stay exact
    for name in ("gauss_newton_frobenius", "gauss_newton_trace", "gauss_newton_sharpness", "nonuniformity"):
        _assert_close(getattr(c, name), ref[name], scale=ref["gauss_newton_frobenius"])


def test_far_from_a_minimum_the_route_estimates_the_hessian():
    P = tiny_problem("mlp", 2, "off", n=9, width=40)
    c = curvature(P, method="kernel", rtol=0.05, seed=1)
    assert "control variate" in c.hessian_route and not c.at_minimum
    assert c.residual_frobenius is None and c.residual_frobenius_bound is None


def test_asserting_a_minimum_off_one_is_noted_not_called_exact():
    P = tiny_problem("mlp", 1, "off", n=9, width=12)
    assert P.loss() > 0.1
    c = curvature(P, method="kernel", at_minimum=True)
    assert not c.exact and c.at_minimum
    assert any("at_minimum=True but L = " in note and "Gauss–Newton" in note for note in c.notes)
    with pytest.raises(MethodError, match="at_minimum"):
        curvature(P, at_minimum="yes")


def test_default_call_on_a_float32_minimum_never_reports_nan_or_inf():
    # the paper's central case at a small size: an exact minimum in float32, the default call
    torch.manual_seed(0)
    model = mlp((16,), 1, widths=(64, 64), activation="tanh", seed=0)
    X = torch.randn(700, 16)
    with torch.no_grad():
        Y = model(X).clone()
    P = Problem(model, X, Y)
    c = curvature(P)
    assert c.method == "kernel" and c.exact and c.converged and c.at_minimum
    for name in ("hessian_frobenius", "trace", "sharpness", "min_eigenvalue", "nonuniformity"):
        assert np.isfinite(getattr(c, name)), name
    assert c.float64_check_difference is not None and 0 <= c.float64_check_difference < 1e-4
    assert not c.notes
    g = curvature(P, method="kernel", at_minimum=True)
    assert c.hessian_frobenius == g.hessian_frobenius and c.sharpness == pytest.approx(g.sharpness, rel=1e-6)
    # the same minimum in float64 (targets: the float64 net's outputs), exact figures: float32 agrees to its rounding
    P64 = Problem(model, X, Y, dtype=torch.float64)
    P64.Y.copy_(P64.outputs())
    c64 = curvature(P64, method="kernel")
    assert c64.exact
    for name in ("hessian_frobenius", "trace", "sharpness", "nonuniformity"):
        assert getattr(c, name) == pytest.approx(getattr(c64, name), rel=1e-4), name


def test_matrix_free_route_at_a_minimum_bounds_the_bottom_instead_of_lanczos_on_zero():
    P = tiny_problem("mlp", 1, "minimum", n=9, width=60)
    assert P.n * P.k < P.p
    ref = _reference_figures(P)
    c = curvature(P, method="matrix_free", rtol=0.05)
    assert c.converged and c.min_eigenvalue == 0.0
    assert abs(ref["min_eigenvalue"]) <= c.min_eigenvalue_error_bound + 1e-12
    assert any("cluster at zero" in note for note in c.notes)
    assert c.sharpness == pytest.approx(ref["sharpness"], rel=1e-3)


@pytest.mark.parametrize("method", ["dense", "kernel", "matrix_free"])
def test_every_route_returns_typed_figures_that_curvature_assembles(method):
    import dataclasses

    from sgdstab.measure import curvature as curvature_module
    from sgdstab.measure.plan import METHODS
    from sgdstab.measure.routes import ROUTES, GaussNewtonFigures, HessianFigures, RouteFigures, RouteRequest

    assert set(ROUTES) == set(METHODS) - {"auto"}  # one table: a route added there is a method curvature takes
    P = tiny_problem("mlp", 1, "off", n=9)
    r = P.residuals()
    loss = float((r.to(torch.float64) ** 2).sum()) / (2 * P.n)
    figures = ROUTES[method](RouteRequest(P, loss, r, 3, 1e-2, 0, None, 400))
    assert isinstance(figures, RouteFigures)
    assert isinstance(figures.hessian, HessianFigures) and isinstance(figures.gauss_newton, GaussNewtonFigures)
    assert (figures.kernel is not None) == (method == "kernel")
    c = curvature(P, method=method, rtol=1e-2, top=3, max_matvecs=400)
    h, g = figures.hessian, figures.gauss_newton
    assert (c.hessian_frobenius, c.trace, c.sharpness, c.top_eigenvalues) == (
        h.frobenius,
        h.trace,
        h.sharpness,
        h.top_eigenvalues,
    )
    assert (c.gauss_newton_frobenius, c.gauss_newton_trace, c.nonuniformity) == pytest.approx(
        (g.frobenius, g.trace, g.nonuniformity), nan_ok=True, rel=0, abs=0
    )
    assert c.hessian_route == h.route and c.hessian_vector_products == h.products and c.grad_norm == figures.grad_norm
    assert c.exact == (h.exact and g.exact) and c.notes == (*h.notes, *g.notes)
    with pytest.raises(dataclasses.FrozenInstanceError):
        h.trace = 0.0  # type: ignore[misc]
    # the cost model moved to measure.plan and stays importable where it was
    assert curvature_module.plan_method is plan_method and curvature_module.MethodError is MethodError


def test_float32_targets_are_no_float64_minimum():
    # The docstring example's old claim: outputs of the float32 net as targets of a float64 problem. Their float32
    # rounding leaves L ~ 1e-16, far above float64's rounding level: the kernel route decides "near a minimum"
    # (H's figures are G's with R bounded) but does not call the figures exact. Targets from the float64 net do.
    model = mlp((3,), 1, widths=(8,), seed=0)
    X = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))
    c = curvature(Problem(model, X, model(X).detach(), dtype=torch.float64))
    assert c.method == "kernel" and c.at_minimum and not c.exact and 1e-20 < c.loss < 1e-12
    assert c.residual_frobenius_bound is not None and c.residual_frobenius_bound > 0
    X64 = X.double()
    model64 = model.double()
    c64 = curvature(Problem(model64, X64, model64(X64).detach()))
    assert c64.at_minimum and c64.exact and c64.loss == 0.0
