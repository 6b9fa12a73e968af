"""A sweep checks the theorem only where it holds: μ where SGD stopped, ||H||_F at the polished global minimum
(against dense float64 references), "not applicable" where no minimum was reached, diverged runs counted as
diverged in the claims, `runs list` and `runs show`, and stores written before polishing still open."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from rich.console import Console
from sweep_helpers import write_config

from sgdstab.cli import main
from sgdstab.experiments.minimum import build_problem
from sgdstab.sweep import load_sweep, run_sweep
from sgdstab.sweep.artifacts import load_params, run_dir, write_artifacts
from sgdstab.sweep.config import run_from_dict
from sgdstab.sweep.outcome import bound_note, counts_line, status_label
from sgdstab.sweep.report import write_report
from sgdstab.sweep.run import execute_run
from sgdstab.sweep.show import run_text, runs_table
from sgdstab.sweep.store import Store

TINY = {"dataset": "digits", "classes": [0, 1], "n": 40, "widths": [8], "track_every": 10}


def _dense_figures(cfg, theta: np.ndarray) -> dict[str, float]:
    """L, ||H||_F, λ_max(H), Tr H from torch.func's Hessian, and μ = Tr(ΣG)/(2L||G||_F²) from J, at θ."""
    problem, _ = build_problem(cfg)
    problem.set_parameters(torch.from_numpy(theta))
    H = torch.func.hessian(problem.loss_function())(problem.theta)
    eig = torch.linalg.eigvalsh(H)
    J = problem.jacobian()  # (n, p) for k = 1
    r = problem.residuals()[:, 0]
    n = problem.n
    G = J.T @ J / n
    grads = J * r[:, None]  # per-sample gradients g_i = J_iᵀ r_i
    centred = grads - grads.mean(0)
    sigma = centred.T @ centred / n
    loss = float((r * r).sum()) / (2 * n)
    mu = float(torch.trace(sigma @ G)) / (2 * loss * float((G * G).sum())) if loss > 0 else math.nan
    return {
        "loss": loss,
        "frobenius": float(torch.linalg.matrix_norm(H)),
        "lambda_max": float(eig[-1]),
        "trace": float(eig.sum()),
        "mu": mu,
    }


@pytest.mark.usefixtures("one_thread")
def test_mu_at_the_endpoint_and_the_curvature_at_the_polished_minimum_match_dense_references():
    cfg = run_from_dict({**TINY, "lr": 0.1, "batch_size": 4, "steps": 400})
    out = execute_run(cfg)
    res = out.results
    assert res["diverged"] == 0 and res["at_minimum"] == 1 and res["bound_applies"] == 1
    assert out.endpoint_theta is not None and not np.array_equal(out.endpoint_theta, out.theta)
    at_end = _dense_figures(cfg, out.endpoint_theta)
    at_min = _dense_figures(cfg, out.theta)
    # μ is measured where SGD stopped (L > 0) ...
    assert res["final_loss"] == pytest.approx(at_end["loss"], rel=1e-10) and at_end["loss"] > 1e-6
    assert res["mu"] == pytest.approx(at_end["mu"], rel=1e-8)
    # ... the curvature at the global minimum next to it (L at rounding, H = G)
    assert res["minimum_loss"] == pytest.approx(at_min["loss"], rel=1e-6, abs=1e-30) and at_min["loss"] < 1e-25
    assert res["hessian_frobenius"] == pytest.approx(at_min["frobenius"], rel=1e-8)
    assert res["sharpness"] == pytest.approx(at_min["lambda_max"], rel=1e-8)
    assert res["trace"] == pytest.approx(at_min["trace"], rel=1e-8)
    moved = float(np.linalg.norm(out.theta - out.endpoint_theta))
    assert res["polish_distance"] == pytest.approx(moved, rel=1e-10)
    bound = math.sqrt(1 / (res["noise_scale"] * at_end["mu"])) / 0.1
    assert res["frobenius_bound"] == pytest.approx(bound, rel=1e-8)
    assert res["bound_ratio"] == pytest.approx(at_min["frobenius"] / bound, rel=1e-8)


@pytest.mark.usefixtures("one_thread")
def test_a_run_that_cannot_reach_a_global_minimum_is_not_applicable_and_measured_at_its_endpoint():
    # three classes through one hidden unit: p = 71 < nk = 120, no θ interpolates
    cfg = run_from_dict({**TINY, "classes": [0, 1, 2], "widths": [1], "lr": 0.05, "batch_size": 4, "steps": 100})
    out = execute_run(cfg)
    res = out.results
    assert res["at_minimum"] == 0 and res["bound_applies"] == 0 and math.isnan(res["bound_ratio"])
    assert res["minimum_loss"] > 0.1 and out.endpoint_theta is None  # θ was put back where SGD stopped
    problem, _ = build_problem(cfg)
    problem.set_parameters(torch.from_numpy(out.theta))
    assert float(problem.loss()) == pytest.approx(res["final_loss"], rel=1e-12)
    H = torch.func.hessian(problem.loss_function())(problem.theta)
    assert res["hessian_frobenius"] == pytest.approx(float(torch.linalg.matrix_norm(H)), rel=1e-8)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A converged run and a diverged one (η = 50), swept serially."""
    folder = tmp_path_factory.mktemp("mixed")
    body = "[[runs]]\nlr = 0.1\nbatch_size = 4\n[[runs]]\nlr = 50.0\nbatch_size = 4\n"
    config = write_config(folder, body, name="mixed")
    config.write_text(config.read_text().replace("steps = 60", "steps = 300"))
    out = folder / "out"
    summary = run_sweep(load_sweep(config), out, executor="serial", quiet=True)
    with Store.open(out) as store:
        records = store.runs()
    return out, summary, records


def test_a_diverged_run_is_counted_as_diverged_in_the_claims_and_the_report(mixed):
    out, summary, records = mixed
    good, bad = records
    assert summary.done == 2 and bad.results["diverged"] == 1 and good.results["bound_applies"] == 1
    report = (out / "report.md").read_text()
    assert "**FAILED** — every run of the sweep ran to its end without failing or diverging: 1/2 runs converged" in (
        report
    )
    assert f"`{bad.short_id}` (lr=50.0, batch_size=4) done (diverged at step {bad.results['diverged_at']})" in report
    assert "1/1 runs satisfy it" in report and "not checked: 1 diverged, 0 failed" in report
    assert "1 converged, 1 diverged" in report and "| done (diverged at step" in report
    # the figures say what they draw: the diverged run is marked, not silently left out or drawn as a point
    assert "red × at the top: the 1 diverged run(s)" in report and "Drawn: the 1 run(s) where the theorem applies" in (
        report
    )
    for name in ("sweep_figures.png", "sweep_bound.png", "sweep_curves.png"):
        assert (out / name).read_bytes().endswith(b"IEND\xaeB`\x82")


def test_runs_list_and_show_say_diverged(mixed, capsys):
    out, _, records = mixed
    good, bad = records
    capsys.readouterr()
    assert main(["runs", "list", str(out)]) == 0
    listing = capsys.readouterr().out
    assert f"done (diverged at step {bad.results['diverged_at']})" in " ".join(listing.split())
    assert "Runs: 1 converged, 1 diverged." in " ".join(listing.split())
    assert "seconds" in listing and "wall time of the run" in " ".join(listing.split())
    assert main(["runs", "show", str(out), bad.run_id[:8]]) == 0
    shown = capsys.readouterr().out
    assert f"status    done (diverged at step {bad.results['diverged_at']}) (attempts: 1)" in shown
    assert "bound     diverged at step" in shown
    assert main(["runs", "show", str(out), good.run_id[:8]]) == 0
    assert "bound     applies" in capsys.readouterr().out


def test_params_hold_the_minimum_and_the_endpoint(mixed):
    out, _, records = mixed
    good = records[0]
    path = run_dir(out, good.run_id) / "params.pt"
    theta, endpoint = load_params(path), load_params(path, "endpoint_theta")
    assert not torch.equal(theta, endpoint)
    cfg = run_from_dict(good.config)
    problem, _ = build_problem(cfg)
    problem.set_parameters(endpoint)
    assert float(problem.loss()) == pytest.approx(good.results["final_loss"], rel=1e-12)
    problem.set_parameters(theta)
    assert float(problem.loss()) == pytest.approx(good.results["minimum_loss"], rel=1e-6, abs=1e-30)


OLD_RESULTS = {  # what sgdstab wrote before polishing: figures at the SGD endpoint, no minimum fields
    "final_loss": 0.0675,
    "diverged": 0,
    "diverged_at": None,
    "steps_done": 500,
    "hessian_frobenius": 37.3,
    "trace": 60.1,
    "sharpness": 32.1,
    "curvature_method": "kernel",
    "curvature_exact": 1,
    "mu": 1.52,
    "mu_inf": 0.4,
    "noise_scale": 0.25,
    "frobenius_bound": 81.1,
    "bound_ratio": 0.46,
    "gd_ratio": 0.32,
}


def test_a_store_written_before_polishing_opens_and_is_reported_honestly(tmp_path):
    config = write_config(tmp_path, "[grid]\nlr = [0.02, 0.2]\n", name="old")
    sweep = load_sweep(config)
    out = tmp_path / "out"
    out.mkdir()
    runs = sweep.expand()
    from sgdstab.sweep.config import run_hash, run_to_dict

    ids = [run_hash(r) for r in runs]
    diverged_results = dict.fromkeys(OLD_RESULTS, math.nan) | {"diverged": 1, "diverged_at": 10, "final_loss": 1e6}
    with Store.create(out, "old") as store:
        store.register([(rid, run_to_dict(r)) for rid, r in zip(ids, runs, strict=True)])
        owner = store.register_owner()
        store.claim(owner, ids, limit=2)
        history = {"step": [0, 10], "loss": [0.5, 0.4]}
        for rid, results in zip(ids, (OLD_RESULTS, diverged_results), strict=True):
            theta = np.zeros(3)
            write_artifacts(out, rid, {}, history, results, {"total": 1.0}, theta)  # no endpoint_theta: old files
            assert store.complete(rid, owner, results, history, {"total": 1.0}, "host:1")
        store.release(owner)
    with Store.open(out) as store:
        old, bad = store.runs()
        assert bound_note(old).startswith("not applicable, measured at the SGD endpoint")
        assert (
            status_label(bad) == "done (diverged at step 10)" and counts_line([old, bad]) == "1 converged, 1 diverged"
        )
        console = Console(width=250, record=True)
        console.print(runs_table([old, bad], "old"))
        text = console.export_text()
        assert "n/a" in text and "0.46" not in text  # the endpoint ratio is not shown as a check of the theorem
        assert "not applicable" in run_text(store, old)
        write_report(out, store, sweep, ids)
    report = (out / "report.md").read_text()
    assert "**FAILED** — ||H||_F ≤ sqrt(1/(cμ))/η" in report and "0/0 runs satisfy it" in report
    assert "not applicable, measured at the SGD endpoint" in report
    assert torch.equal(
        load_params(run_dir(out, ids[0]) / "params.pt", "endpoint_theta"), torch.zeros(3, dtype=torch.float64)
    )
