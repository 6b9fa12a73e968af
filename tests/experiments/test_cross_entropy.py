"""The cross_entropy experiment (docs/THEORY.md §9): its quick run, its rows against direct measurements, its claims
against its rows."""

from __future__ import annotations

import csv

import pytest
import torch
from torch import nn

from sgdstab.data import load_dataset
from sgdstab.experiments.cross_entropy import quick_config
from sgdstab.experiments.registry import run_experiment
from sgdstab.models.architectures import mlp


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("ce")
    report, summary = run_experiment("cross_entropy", out, quick=True, quiet=True)
    return out, report, summary


def test_rows_start_at_the_models_initial_cross_entropy_and_gd_eta_star_is_two_over_lambda_g(quick):
    out, _, summary = quick
    rows = summary["numbers"]
    cfg = quick_config()
    data = load_dataset(cfg.dataset, n=cfg.n, classes=cfg.classes, seed=cfg.seed, subset=cfg.subset)
    X = data.X.reshape(len(data.X), -1).double()
    model = mlp((784,), len(cfg.classes), widths=(cfg.width,), activation="tanh", seed=cfg.seed).double()
    initial = float(nn.CrossEntropyLoss()(model(X), data.Y.argmax(1)).detach())
    table = list(csv.DictReader((out / "results.csv").open()))
    first = {r["run"]: r for r in table if int(r["step"]) == 0}
    assert set(first) == {"GD", f"SGD (B = {cfg.batch_size})"}
    for r in first.values():  # both runs start from the same initialization
        assert float(r["loss"]) == pytest.approx(initial, rel=1e-12)
    for r in (r for r in table if r["run"] == "GD"):  # c = 0: η* = 2/λ_max(G)
        assert float(r["critical_lr"]) == pytest.approx(2 / float(r["ggn_sharpness"]), rel=1e-12)
    assert rows["lr"] == pytest.approx(cfg.lr_fraction * 2 / rows["sharpness_init"])
    assert float(first["GD"]["sharpness"]) == pytest.approx(rows["sharpness_init"], rel=1e-6)


def test_claims_follow_the_rows(quick):
    out, report, summary = quick
    table = list(csv.DictReader((out / "results.csv").open()))
    claims = {c["name"]: c for c in summary["claims"]}
    sgd = [r for r in table if r["run"] != "GD"]
    assert claims["sgd_ends_linearly_stable"]["passed"] == (float(sgd[-1]["lr_over_critical"]) <= 1)
    gd_last = [r for r in table if r["run"] == "GD"][-1]
    assert claims["sgd_flatter_than_gd"]["passed"] == (float(sgd[-1]["sharpness"]) <= float(gd_last["sharpness"]))
    assert "edge of stability" in report.read_text()
    assert torch.tensor([float(r["mu"]) for r in table]).min() > 0
