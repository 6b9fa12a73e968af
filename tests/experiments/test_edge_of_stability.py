"""The edge_of_stability experiment (docs/THEORY.md §9): its quick run through sgdstab.Tracker, its first rows against
a direct measurement at the initialization, two routes to GD's edge agreeing, its claims against its rows."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from sgdstab.data import load_dataset
from sgdstab.experiments.edge_of_stability import quick_config
from sgdstab.experiments.registry import run_experiment
from sgdstab.models.architectures import mlp


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("eos")
    report, summary = run_experiment("edge_of_stability", out, quick=True, quiet=True)
    return out, report, summary


def _rows(out):
    table = list(csv.DictReader((out / "results.csv").open()))
    return [r for r in table if r["run"] == "GD"], [r for r in table if r["run"] != "GD"]


def test_both_runs_start_at_the_initial_sharpness_measured_densely(quick):
    out, _, summary = quick
    cfg = quick_config()
    data = load_dataset(cfg.dataset, n=cfg.n, classes=cfg.classes, seed=cfg.seed, subset=cfg.subset)
    X, Y = data.X.reshape(len(data.X), -1).double(), data.Y.double()
    model = mlp(784, Y.shape[1], widths=(cfg.width, cfg.width), activation="tanh", seed=cfg.seed).double()
    params = dict(model.named_parameters())
    # λ_max(H) at initialization by power iteration on autograd Hessian-vector products (not the tracker's Lanczos)
    v = torch.ones(sum(p.numel() for p in params.values()), dtype=torch.float64)
    for _ in range(300):
        loss = 0.5 * ((model(X) - Y) ** 2).sum(1).mean()
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        flat = torch.cat([g.reshape(-1) for g in grads])
        hv = torch.autograd.grad(flat @ (v / v.norm()), list(params.values()))
        v = torch.cat([h.reshape(-1) for h in hv])
    lam = float(v.norm())
    gd, sgd = _rows(out)
    for first in (gd[0], sgd[0]):
        assert float(first["sharpness"]) == pytest.approx(lam, rel=2e-3)  # float32 run against float64
    assert summary["numbers"]["lr"] == pytest.approx(cfg.lr_fraction * 2 / summary["numbers"]["sharpness_init"])


def test_gd_edge_by_lanczos_agrees_with_its_exact_eta_star_at_the_end(quick):
    """At GD's last kernel row η/η*(n) = η·λ_max(G)/2 (through the kernel) and λ_max(H)·η/2 (Hessian products) are
    two routes to the same edge near a minimum."""
    out, _, _ = quick
    gd, _ = _rows(out)
    last = [r for r in gd if math.isfinite(float(r["critical_lr"]))][-1]
    assert float(last["lr_over_critical"]) == pytest.approx(float(last["edge_ratio"]), rel=0.05)


def test_claims_follow_the_rows_and_the_tracker_tables_are_written(quick):
    out, report, summary = quick
    gd, sgd = _rows(out)
    cfg = quick_config()
    claims = {c["name"]: c for c in summary["claims"]}
    late = [float(r["edge_ratio"]) for r in gd if int(r["step"]) >= cfg.steps / 2]
    assert claims["gd_at_edge"]["passed"] == all(abs(x - 1) <= cfg.gd_band for x in late)
    late_sgd = [float(r["edge_ratio"]) for r in sgd if int(r["step"]) >= cfg.steps / 2]
    assert claims["sgd_below_edge"]["passed"] == (
        max(late_sgd) <= cfg.sgd_ceiling and float(sgd[-1]["sharpness"]) < float(gd[-1]["sharpness"])
    )
    assert all(c["passed"] for c in summary["claims"])
    for name in ("track-gd.csv", "track-sgd.csv", "track-gd.png", "track-sgd.png"):
        assert (out / name).stat().st_size > 0
    assert "Batch sharpness" in report.read_text()
