"""The main job, shrunk: it writes its report, figures and a summary whose figures are self-consistent."""

from __future__ import annotations

import json
import math

import pytest

from sgdstab.cli import main
from sgdstab.errors import SgdstabError
from sgdstab.experiments.demo import run_demo


def test_demo_writes_report_and_consistent_summary(tmp_path):
    report = run_demo(out=str(tmp_path), n=40, steps=300, quiet=True)
    assert report == tmp_path / "report.md"
    for name in ("report.md", "summary.json", "loss.png", "flatness.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert not list(tmp_path.glob(".*.tmp"))  # every file renamed into place
    summary = json.loads((tmp_path / "summary.json").read_text())
    runs = summary["runs"]
    assert [r["label"] for r in runs] == ["GD", "SGD B=20", "SGD B=10"]
    for r in runs:
        if r["c"] > 0:
            assert r["frobenius_bound"] == pytest.approx(math.sqrt(1 / (r["c"] * r["mu"])) / r["lr"], rel=1e-12)
        assert r["gd_bound"] == pytest.approx(2 / r["lr"])
        # ρ(T) and η* come from one exact computation: ρ ≤ 1 exactly when η ≤ η*
        assert (r["rho"] <= 1 + 1e-9) == (r["lr"] <= r["critical_lr"] * (1 + 1e-6))
    claim = summary["claims"]["frobenius_certificate"]
    sgd = [r for r in runs if r["c"] > 0]
    assert claim["holds"] == all(r["hessian_frobenius"] <= r["frobenius_bound"] for r in sgd)
    lin = summary["claims"]["linear_stability"]
    assert lin["holds"] == all(r["rho"] <= 1 + 1e-9 for r in runs)
    text = report.read_text()
    assert ("**holds**" in text) or ("**FAILS**" in text)


def test_demo_refuses_unwritable_output(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("not a directory")
    assert main(["demo", "--out", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err
    with pytest.raises(SgdstabError, match="cannot create output directory"):
        run_demo(out=str(target / "inside"), quiet=True)
