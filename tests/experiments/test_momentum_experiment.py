"""The momentum experiment (docs/THEORY.md §9.1): its quick run, its claims against its own tables, and its η*(B, β)
and log ρ against a second-moment operator built here from first principles at the minimum rebuilt from the config."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from scipy.sparse.linalg import LinearOperator, eigs

from sgdstab.experiments.minimum import build_problem, find_minimum
from sgdstab.experiments.momentum import quick_config
from sgdstab.experiments.registry import run_experiment

CLAIMS = ["global_minimum", "momentum_lowers_threshold", "below_stayed", "above_escaped", "momentum_decides"]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("momentum")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report, summary = run_experiment("momentum", out, quick=True, quiet=True)
    finally:
        torch.set_num_threads(old)
    return out, report, summary


def _csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_quick_run_passes_its_claims_and_writes_report_and_figure(quick):
    out, report, summary = quick
    assert [c["name"] for c in summary["claims"]] == CLAIMS
    assert summary["passed"], [c["detail"] for c in summary["claims"] if not c["passed"]]
    assert (out / "momentum.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = report.read_text()
    assert "](momentum.png)" in text and "## Thresholds at the minimum" in text
    assert json.loads((out / "summary.json").read_text())["files"]["tables"] == ["trajectories.csv"]


def test_claims_follow_the_tables(quick):
    out, _, summary = quick
    cfg, numbers = quick_config(), summary["numbers"]
    rows = _csv(out / "results.csv")
    losses: dict[str, list[float]] = {}
    for r in _csv(out / "trajectories.csv"):
        losses.setdefault(r["run"], []).append(float(r["loss"]))
    cap = cfg.linear_cap * 0.5  # ½ mean ||y||² = ½ for ±1 targets
    plain = numbers["thresholds"]["SGD"]["critical_lr"]
    for r in rows:
        ls = np.array(losses[r["run"]])
        assert ls[0] == pytest.approx(cfg.start_loss, rel=1e-3)  # δ was scaled on the linearization
        lr, eta_star = float(r["lr"]), float(r["critical_lr"])
        assert float(r["torch_mse_lr"]) == pytest.approx(lr / 2)  # k = 1: MSELoss = 2L
        if r["side"] == "above":
            assert lr == pytest.approx(cfg.above * eta_star) and ls.max() > cap and len(ls) <= cfg.steps + 1
        elif r["side"] == "below":
            assert lr == pytest.approx(cfg.below * eta_star) and len(ls) == cfg.steps + 1
            assert ls.max() <= cfg.stay_factor * ls[0] and ls[-1] < ls[0]
        else:  # a control: plain SGD at a momentum run's escaping η, below plain SGD's η*
            assert eta_star == plain and lr < plain and ls.max() <= cfg.stay_factor * ls[0]
    assert sum(r["side"] == "control" for r in rows) == 2
    # the momentum thresholds sit below plain SGD's, heavy ball's GD threshold above 2/λ_max
    thresholds = numbers["thresholds"]
    assert thresholds["heavy ball β = 0.9"]["critical_lr"] < plain
    assert thresholds["Nesterov β = 0.9"]["critical_lr"] < plain
    assert thresholds["heavy ball β = 0.9"]["gd_threshold"] == pytest.approx(2 * 1.9 / numbers["lambda_max"])


def _second_moment(K: np.ndarray, B: int, eta: float, beta: float, nesterov: bool) -> LinearOperator:
    """Z ↦ E_ξ[A_ξ Z A_ξᵀ] for z = (u, u_prev) (heavy ball) or (u, Jv) (torch's Nesterov) with B samples drawn with
    replacement: A_ξ = P ⊗ I + Q ⊗ G_ξ, G_ξ = (1/B) Σ_j K e_{i_j} e_{i_j}ᵀ, so E G_ξ = K/n and
    E[G_ξ X G_ξᵀ] = K diag(X) K/(Bn) + (B − 1) K X K/(B n²) (the pairs j = l and j ≠ l)."""
    n = K.shape[0]
    if nesterov:  # v' = βv + g, u' = u − η(g + βv')
        P, Q = np.array([[1, -eta * beta**2], [0, beta]]), np.array([[-eta * (1 + beta), 0], [1, 0]])
    else:  # u' = (1 + β)u − βu_prev − ηg
        P, Q = np.array([[1 + beta, -beta], [1, 0]]), np.array([[-eta, 0], [0, 0]])
    G = K / n

    def matvec(v: np.ndarray) -> np.ndarray:
        Z = v.reshape(2, 2, n, n)
        pp, pq = np.einsum("ab,cd,bdij->acij", P, P, Z), np.einsum("ab,cd,bdij->acij", P, Q, Z)
        qp, qq = np.einsum("ab,cd,bdij->acij", Q, P, Z), np.einsum("ab,cd,bdij->acij", Q, Q, Z)
        diag = np.einsum("acii->aci", qq)[..., None] * np.eye(n)
        noise = K @ diag @ K / (B * n) + (B - 1) / (B * n * n) * (K @ qq @ K)
        return (pp + pq @ G.T + G @ qp + noise).reshape(-1)

    return LinearOperator((4 * n * n, 4 * n * n), matvec=matvec, dtype=float)


def _rho(K: np.ndarray, B: int, eta: float, beta: float, nesterov: bool) -> float:
    """ρ of the second moment: the map is positive (PSD to PSD), so ρ is its eigenvalue of largest modulus."""
    vals = eigs(_second_moment(K, B, eta, beta, nesterov), k=1, which="LM", tol=1e-12, return_eigenvectors=False)
    return float(np.abs(vals).max())


def test_thresholds_and_rates_match_a_second_moment_built_from_first_principles(quick):
    _, _, summary = quick
    cfg, numbers = quick_config(), summary["numbers"]
    assert (cfg.sampling, cfg.classes) == ("with_replacement", (0, 6))  # what _second_moment assumes (k = 1)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # the same minimum again, from the config: GD and polishing are deterministic
        problem, _ = build_problem(cfg)
        found, _ = find_minimum(problem, cfg.gd_lr, cfg.gd_max_steps, cfg.gd_until_loss, cfg.polish_steps, cfg.seed)
    finally:
        torch.set_num_threads(old)
    assert found.gd_steps == numbers["gd_steps"] and found.loss <= summary["claims"][0]["numbers"]["threshold"]
    J = problem.jacobian()
    K = (J @ J.T).numpy()  # the NTK through the explicit Jacobian, not the experiment's route
    assert np.linalg.eigvalsh(K)[-1] / problem.n == pytest.approx(numbers["lambda_max"], rel=1e-9)
    for t in numbers["thresholds"].values():  # ρ(T) crosses 1 at the recorded η*(B, β), for each optimizer
        eta = t["critical_lr"]
        assert _rho(K, cfg.batch_size, 0.98 * eta, t["beta"], t["nesterov"]) < 1
        assert _rho(K, cfg.batch_size, 1.02 * eta, t["beta"], t["nesterov"]) > 1
    for r in (r for r in numbers["runs"] if r["side"] == "above"):  # the predicted slopes of the figure
        rho = _rho(K, cfg.batch_size, r["lr"], r["momentum"], r["nesterov"])
        assert np.log(rho) == pytest.approx(r["log_rho"], rel=1e-6)
