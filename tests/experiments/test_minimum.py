"""The experiments' minimum machinery without J: the Gauss–Newton step, the perturbation and a flatness run, against
dense float64 references (the pseudo-inverse of J, J itself, the Hessian from torch.func)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import sgdstab
from sgdstab.experiments.flatness import FlatnessConfig, solve
from sgdstab.experiments.minimum import (
    NetConfig,
    build_problem,
    describe_network,
    gauss_newton_step,
    perturbation,
    polish,
)


def _problem(n: int = 6, k: int = 2, duplicate: bool = False) -> sgdstab.Problem:
    g = torch.Generator().manual_seed(4)
    X = torch.randn(n, 5, dtype=torch.float64, generator=g)
    if duplicate:
        X[1] = X[0]  # two equal inputs: K is singular (rank nk − k)
    Y = torch.randn(n, k, dtype=torch.float64, generator=g)
    return sgdstab.Problem(sgdstab.mlp((5,), k, widths=(16,), activation="tanh", seed=1), X, Y, dtype=torch.float64)


@pytest.mark.parametrize("duplicate", [False, True])
def test_gauss_newton_step_is_the_minimum_norm_solution(duplicate):
    P = _problem(duplicate=duplicate)
    J = P.jacobian()
    r = P.residuals().reshape(-1)
    # against the pseudo-inverse of J itself (a different algorithm: SVD of the nk × p matrix)
    wanted = torch.linalg.pinv(J) @ r if not duplicate else None
    got = gauss_newton_step(P)
    if duplicate:
        # a singular K goes the least-squares way: the step is J⁺ r for the consistent part of r
        Y = P.Y.clone()
        Y[1] = Y[0]
        P2 = sgdstab.Problem(P.model, P.X, Y, dtype=torch.float64)
        r = P2.residuals().reshape(-1)
        wanted = torch.linalg.pinv(J) @ r
        got = gauss_newton_step(P2)
    torch.testing.assert_close(got, wanted, rtol=1e-8, atol=1e-10 * float(wanted.abs().max()))


def test_polish_reaches_an_interpolating_minimum_without_j(monkeypatch):
    P = _problem(n=8)
    sgdstab.train(P, 0.05, P.n, "without_replacement", steps=3000, until_loss=1e-4, progress=False)
    before = float(P.loss())
    monkeypatch.setattr(sgdstab.Problem, "jacobian", lambda *a, **kw: pytest.fail("J was formed"))
    taken, moved = polish(P, 8)
    assert taken >= 1 and float(P.loss()) < 1e-25 < before
    assert 0 < moved < 0.1 * float(P.theta.norm())


def test_perturbation_scales_to_the_linearized_loss():
    P = _problem()
    delta, u0 = perturbation(P, 1e-6, seed=3)
    J = P.jacobian()
    torch.testing.assert_close(u0, J @ delta, rtol=1e-10, atol=1e-14)
    assert float(u0 @ u0) / (2 * P.n) == pytest.approx(1e-6, rel=1e-10)


def test_flatness_run_without_j_matches_the_dense_hessian(monkeypatch):
    cfg = FlatnessConfig(dataset="digits", n=12, widths=(24,), lrs=(0.02,), batch_sizes=(2,), gd=False)  # p = 1,585
    P, _ = build_problem(cfg)
    # every route that forms J is off: K layer by layer, Jᵀα by a backward pass
    monkeypatch.setattr(sgdstab.Problem, "jacobian", lambda *a, **kw: pytest.fail("J was formed"))
    monkeypatch.setattr(sgdstab.Problem, "jacobian_blocks", lambda *a, **kw: pytest.fail("J was formed"))
    row = solve(P, 0.02, 2, "with_replacement", max_steps=20000, until_loss=1e-5, polish_steps=6, seed=0)
    monkeypatch.undo()
    assert row["status"] == "ok", row["status"]
    H = torch.func.hessian(P.loss_function())(P.theta)
    eig = torch.linalg.eigvalsh(H)
    assert row["hessian_frobenius"] == pytest.approx(float(torch.linalg.matrix_norm(H)), rel=1e-8)
    assert row["lambda_max"] == pytest.approx(float(eig[-1]), rel=1e-8)
    assert row["trace"] == pytest.approx(float(eig.sum()), rel=1e-8)


def test_cnn_network_from_the_config():
    cfg = NetConfig(n=8, network="cnn", channels=(2, 3), widths=(5,), classes=(0, 6, 9))
    P, data = build_problem(cfg)
    assert type(P.model).__name__ == "CNN" and P.k == 3
    # conv 1→2 (3×3), conv 2→3, head 3·7·7 → 5 → 3
    assert P.p == (2 * 9 + 2) + (3 * 2 * 9 + 3) + (3 * 7 * 7 * 5 + 5) + (5 * 3 + 3)
    assert describe_network(cfg, data, P) == "CNN 1×28×28 → conv2 → conv3 (3×3, avg-pool 2) → 5 → 3 (tanh)"
    mlp_cfg = dataclasses.replace(cfg, network="mlp")
    P2, _ = build_problem(mlp_cfg)
    assert describe_network(mlp_cfg, data, P2) == "MLP 784 → 5 → 3 (tanh)"


def test_flatness_with_no_solution_fails_its_claims_and_still_writes_the_report(tmp_path):
    from sgdstab.experiments.flatness import run

    summary = run(FlatnessConfig(n=12, widths=(8,), lrs=(0.02,), batch_sizes=(2,), max_steps=1), tmp_path)
    assert summary["numbers"]["solutions"] == 0 and len(summary["numbers"]["excluded"]) == 2
    assert summary["claims"] and not any(c["passed"] for c in summary["claims"])  # nothing checked is not a pass
    assert all("nothing to check" in c["detail"] for c in summary["claims"])
    assert (tmp_path / "batch_size.png").stat().st_size > 0 and (tmp_path / "flatness.png").stat().st_size > 0
    assert "FAILED" in (tmp_path / "report.md").read_text()


def test_polish_halves_steps_that_overshoot(monkeypatch):
    import sgdstab.training.polish as polishing

    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(10, 5, dtype=torch.float64, generator=g), torch.randn(10, 2, dtype=torch.float64, generator=g)
    model = sgdstab.mlp((5,), 2, widths=(40,), activation="tanh", seed=0)
    P = sgdstab.Problem(model, X, Y, dtype=torch.float64)
    theta0 = P.theta.clone()
    # from the initialization (L ≈ 0.9) the full Gauss–Newton step overshoots: undamped, the polish cannot start
    monkeypatch.setattr(polishing, "_BACKTRACK", (1.0,))
    assert polish(P, 10) == (0, 0.0) and torch.equal(P.theta, theta0)
    monkeypatch.undo()
    taken, _ = polish(P, 10)
    assert taken > 0 and float(P.loss()) < 1e-28
