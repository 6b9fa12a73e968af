"""The paper-scale configurations under examples/experiments/paper/: each loads, names every key of its experiment,
states its measured run time, and runs end to end when shrunk (same data set, network kind and switches)."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from sgdstab.experiments.config import load_config, read_config_file
from sgdstab.experiments.registry import get_experiment, run_experiment

FOLDER = Path(__file__).resolve().parents[2] / "examples" / "experiments" / "paper"
CONFIGS = sorted(FOLDER.glob("*.toml"))


def test_there_are_paper_configs_for_both_data_sets():
    names = {p.stem for p in CONFIGS}
    assert {"flatness-fashion-mnist", "flatness-cifar10", "alignment-cifar10"} <= names


def test_the_committed_paper_report_is_that_config_and_its_claims_are_as_stated():
    """The measured Fashion-MNIST run shipped beside the configs: same grid, and the report's verdicts are the
    summary's (what the README and the config header quote)."""
    folder = FOLDER / "results" / "flatness-fashion-mnist"
    summary = json.loads((folder / "summary.json").read_text())
    shipped = read_config_file(FOLDER / "flatness-fashion-mnist.toml")
    for key in ("dataset", "classes", "n", "subset", "widths", "activation", "lrs", "batch_sizes", "gd", "until_loss"):
        assert summary["config"][key] == shipped[key], key
    claims = {c["name"]: c["passed"] for c in summary["claims"]}
    assert claims == {
        "frobenius_bound": True,
        "gd_bound": False,
        "gd_edge_of_stability": False,
        "sgd_flatter_than_gd": True,
    }
    report = (folder / "report.md").read_text()
    assert "**2 of 4 claims FAILED:** gd_bound, gd_edge_of_stability" in report
    assert all((folder / name).stat().st_size > 10_000 for name in ("flatness.png", "batch_size.png"))


def test_the_committed_paper_diagram_is_that_config_and_passes_at_full_rank():
    """The measured Fashion-MNIST diagram shipped beside its config: n·k = 10⁴ at a float64 interpolating minimum,
    η*(1) exact to the full rank, every claim passed, η*(n) = GD's 2/λ_max."""
    folder = FOLDER / "results" / "diagram-fashion-mnist"
    summary = json.loads((folder / "summary.json").read_text())
    shipped = read_config_file(FOLDER / "diagram-fashion-mnist.toml")
    for key in ("dataset", "classes", "n", "subset", "widths", "activation", "gd_lr", "gd_max_steps", "samplings"):
        assert summary["config"][key] == shipped[key], key
    assert summary["passed"] and len(summary["claims"]) == 5
    report = (folder / "report.md").read_text()
    assert "p = 898510" in report and "L = 6.30e-32" in report
    assert all((folder / name).stat().st_size > 10_000 for name in ("diagram_without_replacement.png", "slack.png"))


def test_the_committed_paper_flatness_run_with_exact_stability_is_that_config_and_stable():
    """One SGD solution of the Fashion-MNIST flatness config run with its exact_stability on (η = 0.1, B = 4, no GD):
    the exact η*(4) at the polished minimum is above η, and the report's table says what the summary says."""
    folder = FOLDER / "results" / "flatness-fashion-mnist-exact-stability"
    summary = json.loads((folder / "summary.json").read_text())
    shipped = read_config_file(FOLDER / "flatness-fashion-mnist.toml")
    for key in ("dataset", "classes", "n", "subset", "widths", "activation", "until_loss", "exact_stability"):
        assert summary["config"][key] == shipped[key], key
    assert summary["config"]["lrs"] == [0.1] and summary["config"]["batch_sizes"] == [4]
    claims = {c["name"]: c for c in summary["claims"]}
    assert all(c["passed"] for c in claims.values()) and "linearly_stable" in claims
    with open(folder / "results.csv", newline="") as handle:
        (row,) = csv.DictReader(handle)
    assert row["method"] == "SGD" and float(row["min_loss"]) < 1e-30  # η* is exact at an interpolating minimum
    assert float(row["lr"]) / float(row["critical_lr"]) == pytest.approx(float(row["lr_ratio"]), rel=1e-12)
    assert 0.8 < float(row["lr_ratio"]) < 1  # η/η*(4) = 0.852: stable, and not by a wide margin
    assert "| SGD | 0.1 | 4 |" in (folder / "report.md").read_text()


def test_the_committed_paper_escape_is_that_config_and_its_claims_are_as_stated():
    """The measured Fashion-MNIST escape shipped beside its config: the same minimum as the committed diagram (its
    η*(1) to 1e-9: with and without replacement c = 1 at B = 1), the run above η* escaped and the one below stayed,
    and the one failed claim is the one the config header names."""
    folder = FOLDER / "results" / "escape-fashion-mnist"
    summary = json.loads((folder / "summary.json").read_text())
    shipped = read_config_file(FOLDER / "escape-fashion-mnist.toml")
    keys = ("dataset", "classes", "n", "subset", "widths", "activation", "gd_lr", "gd_max_steps", "batch_size")
    for key in (*keys, "sampling", "lr_ratios", "escape_steps", "chains", "settle_steps", "rho_below"):
        assert summary["config"][key] == shipped[key], key
    claims = {c["name"]: c["passed"] for c in summary["claims"]}
    assert [name for name, passed in claims.items() if not passed] == ["settled"]
    assert len(claims) == 10
    diagram = json.loads((FOLDER / "results" / "diagram-fashion-mnist" / "summary.json").read_text())
    eta_star = summary["numbers"]["critical_lr"]
    assert diagram["numbers"]["critical_lr"]["without_replacement"][0] == pytest.approx(eta_star, rel=1e-9)
    runs = {run["lr_ratio"]: run for run in summary["numbers"]["runs"]}
    assert not runs[0.8]["escaped"] and runs[2.5]["escaped"]
    assert runs[2.5]["slope"] < runs[2.5]["log_rho"]  # one run grows below the mean-square rate
    assert runs[2.5]["settled_hessian_frobenius"] < runs[2.5]["settled_bound"]
    header = (FOLDER / "escape-fashion-mnist.toml").read_text()
    assert f"escaped at step {runs[2.5]['escape_step']}" in header and "`settled` failed" in header
    report = (folder / "report.md").read_text()
    assert "p = 898510" in report and "**1 of 10 claims FAILED:** settled" in report
    assert all((folder / name).stat().st_size > 10_000 for name in ("escape.png", "settle.png"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_paper_config_loads_and_documents_itself(path):
    name = read_config_file(path)["experiment"]
    exp = get_experiment(name)
    config = load_config(exp.config_type, path, experiment=name)
    text = path.read_text()
    keys = {line.split("=")[0].strip() for line in text.splitlines() if "=" in line and not line.startswith("#")}
    assert {f.name for f in dataclasses.fields(exp.config_type)} <= keys  # nothing left to a default
    assert "# Run time: " in text and "TO BE MEASURED" not in text  # a run time that was measured, or estimated
    assert f"sgdstab experiment {name} --config examples/experiments/paper/{path.name}" in text
    if "fashion-mnist" in path.stem:
        assert config.dataset == "fashion-mnist" and config.n == 1000 and len(config.classes) == 10
    if path.stem == "flatness-fashion-mnist":
        assert config.widths == (500, 500, 500) and config.activation == "relu" and config.subset == "first"
    if "cifar10" in path.stem:
        assert config.dataset == "cifar10"


def _fake_cifar(root: Path, per_class: int = 3) -> Path:
    """CIFAR-10 binary batches with a few random images per class (the loader's format, not the data)."""
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = np.repeat(np.arange(10, dtype=np.uint8), per_class)
        images = rng.integers(0, 256, (len(labels), 3 * 32 * 32), dtype=np.uint8)
        (folder / f"{name}.bin").write_bytes(np.concatenate([labels[:, None], images], axis=1).tobytes())
    return root


SHRINK = {
    "flatness-fashion-mnist": {"n": 20, "lrs": [0.1], "batch_sizes": [4], "max_steps": 4000, "gd": False},
    "flatness-cifar10": {"n": 20, "lrs": [0.05], "batch_sizes": [4], "max_steps": 4000, "gd": False},
    "alignment-cifar10": {"n": 20, "steps": 40, "measure_every": 20, "linear_widths": [], "rf_widths": []},
    "diagram-fashion-mnist": {"n": 20, "widths": [32, 32, 32], "gd_max_steps": 200},
    "escape-fashion-mnist": {
        "n": 20,
        "widths": [32, 32, 32],
        "gd_max_steps": 200,
        "escape_steps": 150,
        "settle_steps": 3000,
        "chains": 400,
        "track_every": 500,
    },
}


@pytest.mark.parametrize("stem", sorted(SHRINK))
def test_shrunk_paper_config_runs_end_to_end(stem, tmp_path):
    path = FOLDER / f"{stem}.toml"
    name = read_config_file(path)["experiment"]
    overrides = dict(SHRINK[stem])
    if "cifar10" in stem:
        overrides["data_dir"] = str(_fake_cifar(tmp_path / "data"))
    report, summary = run_experiment(name, tmp_path / "out", config_path=str(path), quiet=True, overrides=overrides)
    assert report.is_file()
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written["config"]["dataset"] == read_config_file(path)["dataset"]
    if name == "flatness":
        rows = [r for r in summary["numbers"]["excluded"]]
        assert not rows, rows  # the one run reached a polished global minimum
        assert summary["numbers"]["solutions"] == 1
        claims = {c["name"]: c for c in summary["claims"]}
        assert claims["frobenius_bound"]["passed"], claims["frobenius_bound"]["detail"]
        # exact_stability is on in the paper configs (η* at n·k = 10⁴ takes minutes now): the claim is checked
        assert "linearly_stable" in claims and "η/η*" in claims["linearly_stable"]["detail"]
