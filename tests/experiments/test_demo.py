"""The main job, in its CI-sized variant: eight experiments in one report, every claim repeated in summary.json."""

from __future__ import annotations

import dataclasses
import json
import math
import re

import pytest
import torch

from sgdstab.cli import main
from sgdstab.errors import SgdstabError
from sgdstab.experiments.demo import ORDER, _run_here, _run_parallel, demo_configs, run_demo
from sgdstab.experiments.registry import get_experiment


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = run_demo(out=str(out), quick=True, quiet=True, workers=1)  # here, one after the other
    finally:
        torch.set_num_threads(old)
    return out, report


def test_demo_writes_one_report_linking_all_eight(demo):
    out, report = demo
    assert report == out / "report.md"
    summary = json.loads((out / "summary.json").read_text())
    assert [e["name"] for e in summary["experiments"]] == list(ORDER)
    assert set(ORDER) == {
        "alignment",
        "flatness",
        "scaling",
        "escape",
        "diagram",
        "cross_entropy",
        "momentum",
        "edge_of_stability",
    }
    text = report.read_text()
    for e in summary["experiments"]:
        sub = json.loads((out / e["dir"] / "summary.json").read_text())
        assert sub["experiment"] == e["name"]
        assert e["passed"] == sub["passed"]
        assert f"]({e['report']})" in text and (out / e["report"]).is_file()
        assert e["figures"], e["name"]
        for fig in e["figures"]:
            assert (out / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
            assert f"]({fig})" in text
        # every claim of the experiment is repeated, with the same verdict and detail, in the top-level files
        mine = [c for c in summary["claims"] if c["experiment"] == e["name"]]
        assert [c["name"] for c in mine] == [c["name"] for c in sub["claims"]]
        for top, own in zip(mine, sub["claims"], strict=True):
            assert {k: v for k, v in top.items() if k != "experiment"} == own
            assert f"**{'PASSED' if own['passed'] else 'FAILED'}** — {own['statement']}: {own['detail']}" in text
    assert summary["passed"] == all(c["passed"] for c in summary["claims"])
    assert not list(out.rglob(".*.tmp"))
    assert summary["seconds"] > 0 and len(summary["load_average"]["start"]) == 3


def test_demo_claims_hold(demo):
    out, _ = demo
    summary = json.loads((out / "summary.json").read_text())
    failed = [(c["experiment"], c["name"], c["detail"]) for c in summary["claims"] if not c["passed"]]
    assert not failed
    assert len(summary["claims"]) >= 25
    # the original demo's three checks, recomputed from the flatness results table
    head = summary["headline"]
    assert head["frobenius_certificate"]["holds"] and head["linear_stability"]["holds"] and head["gd_bound"]["holds"]
    flat = json.loads((out / "flatness" / "summary.json").read_text())
    rows = [r for r in _csv(out / "flatness" / "results.csv") if r["status"] == "ok"]
    sgd = [r for r in rows if r["method"] == "SGD"]
    assert sgd and any(r["method"] == "GD" for r in rows)
    for r in sgd:
        c, mu, lr = float(r["c"]), float(r["mu"]), float(r["lr"])
        assert c == pytest.approx(1 / int(r["batch_size"]), rel=1e-12)
        bound = math.sqrt(1 / (c * mu)) / lr
        assert float(r["frobenius_bound"]) == pytest.approx(bound, rel=1e-12)
        assert float(r["hessian_frobenius"]) <= bound
        assert lr <= float(r["critical_lr"]) * 1.02
    for r in rows:
        assert float(r["lambda_max"]) * float(r["lr"]) / 2 <= 1.02
    largest = max(float(r["hessian_frobenius"]) / float(r["frobenius_bound"]) for r in sgd)
    assert head["frobenius_certificate"]["numbers"]["frobenius_bound"]["largest_ratio"] == pytest.approx(largest)
    assert flat["config"] == summary["experiments"][0]["config"]


def _csv(path):
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_demo_configs_are_compact_versions_of_the_full_runs():
    compact, quick = demo_configs(), demo_configs(quick=True)
    for name in ORDER:
        exp = get_experiment(name)
        assert quick[name] == exp.default_config(quick=True)
        assert compact[name] != exp.default_config()
    assert compact["flatness"].n == compact["alignment"].n == compact["diagram"].n == 64
    sized = demo_configs(n=20)
    assert sized["scaling"].ns == (10, 20) and sized["scaling"].batch_size < 10
    assert max(sized["flatness"].batch_sizes) < 20 and sized["alignment"].batch_size <= 20


def test_parallel_workers_give_the_same_results_as_one_process(tmp_path, one_thread):
    from rich.console import Console

    exp = get_experiment("diagram")
    tiny = dataclasses.replace(exp.default_config(quick=True), n=12, widths=(8,), num_batch_sizes=3, random_checks=2)
    configs = {"diagram": tiny, "flatness": demo_configs(n=12, quick=True)["flatness"]}
    configs["flatness"] = dataclasses.replace(configs["flatness"], lrs=(0.02,), batch_sizes=(2,))
    quiet = Console(quiet=True)
    here = _run_here(configs, tmp_path / "here", True, quiet)
    there = _run_parallel(configs, tmp_path / "there", 2, quiet)
    for name in configs:
        assert here[name]["claims"] == there[name]["claims"], name
        assert here[name]["numbers"] == there[name]["numbers"], name
        assert (tmp_path / "there" / name / "report.md").is_file()


def test_demo_refuses_unwritable_output(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("not a directory")
    assert main(["demo", "--out", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err
    with pytest.raises(SgdstabError, match="cannot create output directory"):
        run_demo(out=str(target / "inside"), quiet=True)


def test_demo_refuses_an_experiment_directory(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({"experiment": "diagram"}))
    assert main(["demo", "--out", str(tmp_path)]) == 2
    assert "holds the results of experiment 'diagram'" in capsys.readouterr().err


def test_demo_says_which_certificate_binds_at_the_diagram_minimum(demo):
    """Generated from the diagram experiment's results: at every B, the tightest certificate named is the necessary
    one with the smallest bound/η* in diagram/results.csv; the μ_inf slack and the GD comparison are recomputed."""
    from sgdstab.linear_stability.diagram import LABELS
    from sgdstab.utils.text import fmt

    out, report = demo
    text = report.read_text()
    section = text.split("## Which certificate binds, at the diagram's minimum", 1)[1].split("\n## ", 1)[0]
    rows = [r for r in _csv(out / "diagram" / "results.csv") if r["sampling"] == "with_replacement"]
    table = [line for line in section.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(table) == len(rows) >= 4
    necessary = ("frobenius_mu_inf", "gd", "mulayoff_michaeli", "trace")
    for line, r in zip(table, rows, strict=True):
        cells = [c.strip() for c in line.strip("| ").split(" | ")]
        ratios = {x: float(r[x]) / float(r["critical_lr"]) for x in necessary}
        assert cells[0] == r["B"] and cells[1] == fmt(float(r["critical_lr"]), 4)
        assert cells[-1] == LABELS[min(ratios, key=ratios.__getitem__)]
    frob = [float(r["frobenius_mu_inf"]) / float(r["critical_lr"]) for r in rows]
    looser = sum(float(r["frobenius_mu_inf"]) > float(r["gd"]) for r in rows)
    assert f"allows {fmt(min(frob), 3)}–{fmt(max(frob), 3)}× the exact η*" in section
    assert f"looser than GD's 2/λ_max at {looser}/{len(rows)} batch sizes" in section
    assert "Why the headline check uses the measured μ" in section
    summary = json.loads((out / "summary.json").read_text())
    assert [c["B"] for c in summary["certificates"]["certificates"]["with_replacement"]] == [int(r["B"]) for r in rows]
    # the escape heading says what was checked, and no number collapses ("λ_max·η/2 1")
    assert "at the predicted rate" not in text
    assert "## 4. Escape: SGD runs above η* left the sharp minimum and runs below stayed" in text
    assert not re.search(r"λ_max·η/2 1(?![.\d])", text)
