"""The float32-vs-float64 subsample check carried by float32 results."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import sgdstab
from references import tiny_problem
from sgdstab.measure.precision import WARN_ABOVE, float64_check


def _problem(dtype: torch.dtype, scale: float = 1.0) -> sgdstab.Problem:
    g = torch.Generator().manual_seed(0)
    X = scale * torch.randn(40, 6, generator=g, dtype=torch.float64)
    Y = torch.randn(40, 2, generator=g, dtype=torch.float64)
    model = sgdstab.mlp((6,), 2, widths=(16,), activation="tanh", seed=1)
    return sgdstab.Problem(model, X, Y, dtype=dtype)


def test_float64_problems_need_no_check():
    assert float64_check(_problem(torch.float64)) is None
    c = sgdstab.curvature(_problem(torch.float64), method="kernel", top=2)
    assert c.float64_check_difference is None


def test_float32_check_measures_real_rounding_error():
    P32 = _problem(torch.float32)
    check = float64_check(P32)
    assert check is not None and check.samples == 40
    # float32 rounding is real but small on a well-scaled problem
    assert 0 < check.worst < 1e-4
    # the same order as the float32 NTK's own distance from the float64 one
    P64 = _problem(torch.float64)
    K32, K64 = sgdstab.ntk(P32).matrix.double(), sgdstab.ntk(P64).matrix
    ntk_error = float(torch.linalg.matrix_norm(K32 - K64) / torch.linalg.matrix_norm(K64))
    # (a norm moves less than its matrix: ⟨K, ΔK⟩/‖K‖² averages the rounding of the entries)
    assert ntk_error / 1000 < check.gauss_newton_frobenius < 100 * ntk_error
    c = sgdstab.curvature(P32, method="kernel", top=2)
    a = sgdstab.alignment(P32, hessian=False)
    # curvature's check covers what its figures rest on (||G||_F and the loss); alignment's every figure
    assert c.float64_check_difference == max(check.gauss_newton_frobenius, check.loss)
    assert a.float64_check_difference == check.worst
    with_h = sgdstab.alignment(P32, curvature_result=c)
    assert with_h.float64_check_difference == check.worst
    assert not any("float32 rounding" in note for note in c.notes)


def test_float32_near_a_minimum_is_flagged():
    # at a minimum the residuals are rounding noise in float32: μ is then meaningless and the check says so
    P = tiny_problem("mlp", 2, "minimum", n=20, width=8)
    P32 = sgdstab.Problem(P.model, P.X, P.Y + 1e-6, dtype=torch.float32)
    check = float64_check(P32)
    assert check is not None and check.worst > WARN_ABOVE
    # the results then call θ a global minimum to float32 rounding: μ is not reported (0/0), nothing is flagged
    a = sgdstab.alignment(P32, method="kernel", hessian=False)
    assert np.isnan(a.mu) and any("global minimum to float32 rounding" in note for note in a.notes)
    assert a.float64_check_difference is not None and a.float64_check_difference < 1e-5
    # a residual of 1e-3 is no rounding: μ is reported, and float32 keeps it
    P32b = sgdstab.Problem(P.model, P.X, P.Y + 1e-3, dtype=torch.float32)
    b = sgdstab.alignment(P32b, method="kernel", hessian=False)
    assert np.isfinite(b.mu) and not any("global minimum" in note for note in b.notes)
    # the curvature figures rest on ||G||_F and the loss, which float32 keeps (the loss against its natural scale)
    c = sgdstab.curvature(P32, method="kernel", top=2)
    assert c.float64_check_difference is not None and 0 <= c.float64_check_difference < 1e-5
    assert not any("float32 rounding" in note for note in c.notes)


def test_float64_check_is_finite_at_an_exact_minimum():
    # the loss is 0 to rounding in both precisions: compared against ½·mean||y||², never 0/0 (it was inf)
    P = tiny_problem("mlp", 1, "minimum", n=30, width=16)
    P32 = sgdstab.Problem(P.model, P.X, P.Y, dtype=torch.float32)
    P32.Y.copy_(P32.outputs())  # the float32 net's own outputs: L = 0 in float32
    check = float64_check(P32)
    assert check is not None
    for name in ("gauss_newton_frobenius", "loss", "tr_sigma_g", "mu", "worst"):
        value = getattr(check, name)
        assert np.isfinite(value) and 0 <= value <= 1, (name, value)
    assert check.loss < 1e-6 and check.gauss_newton_frobenius < 1e-5


def test_alignment_reports_convergence():
    P = tiny_problem("mlp", 2, "off", n=12, width=20)
    assert sgdstab.alignment(P, method="kernel", hessian=False).converged
    mf = sgdstab.alignment(P, method="matrix_free", hessian=False, rtol=0.05)
    assert isinstance(mf.converged, bool)


def test_a_kernel_serves_the_check_as_its_matrix_does():
    P32 = _problem(torch.float32)
    ker, r = sgdstab.ntk(P32), P32.residuals()
    from_kernel = float64_check(P32, kernel=ker, residuals=r)
    from_matrix = float64_check(P32, kernel=ker.matrix, residuals=r)
    assert from_kernel is not None and from_kernel == from_matrix
    # its rows stand in for a second float32 problem built on the subsample
    rebuilt = float64_check(P32)
    assert rebuilt is not None and from_kernel.worst == pytest.approx(rebuilt.worst, rel=1e-3, abs=1e-9)
