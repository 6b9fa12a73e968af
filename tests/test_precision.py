"""The float32-vs-float64 subsample check carried by float32 results."""

from __future__ import annotations

import torch

import sgdstab
from references import tiny_problem
from sgdstab.precision import WARN_ABOVE, float64_check


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
    K32, K64 = sgdstab.ntk(P32).double(), sgdstab.ntk(P64)
    ntk_error = float(torch.linalg.matrix_norm(K32 - K64) / torch.linalg.matrix_norm(K64))
    assert ntk_error / 100 < check.gauss_newton_frobenius < 100 * ntk_error
    c = sgdstab.curvature(P32, method="kernel", top=2)
    a = sgdstab.alignment(P32, hessian=False)
    assert c.float64_check_difference == check.worst == a.float64_check_difference
    # with μ_H the curvature's check is reused, not repeated
    with_h = sgdstab.alignment(P32, curvature_result=c)
    assert with_h.float64_check_difference == c.float64_check_difference
    assert not any("float32 rounding" in note for note in c.notes)


def test_float32_near_a_minimum_is_flagged():
    # at a minimum the residuals are rounding noise in float32: μ is then meaningless and the check says so
    P = tiny_problem("mlp", 2, "minimum", n=20, width=8)
    P32 = sgdstab.Problem(P.model, P.X, P.Y + 1e-6, dtype=torch.float32)
    check = float64_check(P32)
    assert check is not None and check.worst > WARN_ABOVE
    c = sgdstab.curvature(P32, method="kernel", top=2)
    assert any("float32 rounding" in note and "float64" in note for note in c.notes)


def test_alignment_reports_convergence():
    P = tiny_problem("mlp", 2, "off", n=12, width=20)
    assert sgdstab.alignment(P, method="kernel", hessian=False).converged
    mf = sgdstab.alignment(P, method="matrix_free", hessian=False, rtol=0.05)
    assert isinstance(mf.converged, bool)
