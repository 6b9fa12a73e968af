"""The experiments framework and every registered experiment's ``--quick`` run.

The quick runs are checked through their ``summary.json`` (the claims, not the prose) and, where a figure can be
recomputed from the written results table, against that recomputation.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import os
import stat
from pathlib import Path

import pytest
import torch

from sgdstab.cli import main
from sgdstab.errors import ConfigError, OutputError, SgdstabError, UnknownExperimentError
from sgdstab.experiments import build_config, config_to_toml, experiment_names, get_experiment, load_config
from sgdstab.experiments.base import CONFIG_FILE, REPORT_FILE, RESULTS_FILE, SUMMARY_FILE
from sgdstab.experiments.registry import MODULES, run_experiment

NAMES = experiment_names()


@pytest.fixture(scope="module")
def quick_runs(tmp_path_factory):
    """Each registered experiment's --quick run through the CLI, once per test session (one thread)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    runs = {}
    try:
        for name in NAMES:
            out = tmp_path_factory.mktemp(name)
            rc = main(["experiment", name, "--quick", "--quiet", "--out", str(out)])
            runs[name] = (rc, out)
    finally:
        torch.set_num_threads(old)
    return runs


def _summary(out):
    return json.loads((out / SUMMARY_FILE).read_text())


def _claims(out):
    return {c["name"]: c for c in _summary(out)["claims"]}


def _rows(out, name=RESULTS_FILE):
    with open(out / name, newline="") as handle:
        return list(csv.DictReader(handle))


# ------------------------------------------------------------------------------------------------ registry
def test_registry_names_and_summaries_match_the_modules():
    assert {"alignment", "diagram", "escape", "flatness", "scaling"} <= set(NAMES)
    for name in NAMES:
        exp = get_experiment(name)
        assert exp.name == name
        assert exp.summary == MODULES[name][1]
    with pytest.raises(
        UnknownExperimentError,
        match="unknown experiment 'nope'; choose one of alignment, cross_entropy, diagram, edge_of_stability, escape",
    ):
        get_experiment("nope")


@pytest.mark.parametrize("name", NAMES)
def test_default_and_quick_configs_are_valid(name):
    exp = get_experiment(name)
    for config in (exp.default_config(), exp.default_config(quick=True)):
        assert build_config(exp.config_type, {}, base=config) == config
    assert exp.default_config(quick=True) != exp.default_config()


# -------------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize("name", NAMES)
def test_config_round_trips_through_toml_and_config_json(name, tmp_path):
    exp = get_experiment(name)
    base = exp.default_config(quick=True)
    # change every int/float field so the round trip is not the defaults' echo
    changes = {}
    for f in dataclasses.fields(base):
        value = getattr(base, f.name)
        if isinstance(value, float):
            changes[f.name] = value * 1.5 if f.metadata.get("le") is None else value
        elif isinstance(value, int) and not isinstance(value, bool) and f.name != "n":
            changes[f.name] = value + 1 if f.metadata.get("le") is None or value + 1 <= f.metadata["le"] else value
    config = dataclasses.replace(base, **changes)
    path = tmp_path / "c.toml"
    path.write_text(config_to_toml(config, experiment=name))
    assert load_config(exp.config_type, path, experiment=name) == config
    as_json = tmp_path / "config.json"
    as_json.write_text(json.dumps({"experiment": name, **dataclasses.asdict(config)}))
    assert load_config(exp.config_type, as_json, experiment=name) == config
    # a file overrides only the keys it gives, on top of the base (here the quick variant)
    partial = tmp_path / "partial.toml"
    partial.write_text("seed = 7\n")
    assert exp.config(str(partial), quick=True) == dataclasses.replace(base, seed=7)


@pytest.mark.parametrize("name", NAMES)
def test_shipped_config_is_the_full_run(name):
    exp = get_experiment(name)
    path = Path(__file__).resolve().parents[2] / "examples" / "experiments" / f"{name}.toml"
    assert load_config(exp.config_type, path, experiment=name) == exp.default_config()
    # and it names every field, so that it documents the full run
    names = {line.split("=")[0].strip() for line in path.read_text().splitlines() if "=" in line and line[0] != "#"}
    assert {f.name for f in dataclasses.fields(exp.config_type)} <= names


def test_shipped_configs_are_what_the_script_writes():
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, str(root / "scripts" / "write_example_configs.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


def test_toml_writer_escapes_and_float_forms(tmp_path):
    cfg_type = get_experiment("diagram").config_type
    config = build_config(cfg_type, {"data_dir": 'a "quoted" \\ path\twith tab', "gd_until_loss": 1e-300})
    path = tmp_path / "c.toml"
    path.write_text(config_to_toml(config))
    assert load_config(cfg_type, path) == config


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("nn = 5", r"unknown config key 'nn' .*did you mean 'n'\?"),
        ("widht = [8]", r"unknown config key 'widht' .*did you mean 'widths'\?"),
        ('n = "many"', r"config field 'n' must be an integer, got 'many' \(string\); write e.g. n = "),
        ("n = 2.5", r"config field 'n' must be an integer, got 2.5"),
        ("measured_mu = 1", r"config field 'measured_mu' must be true or false, got 1"),
        ("widths = 32", r"config field 'widths' must be a list of integers, got 32 \(integer\)"),
        ('widths = ["a"]', r"config field 'widths' must be an integer, got 'a'"),
        ("n = 1", r"config field 'n' must be ≥ 2, got 1; choose a value ≥ 2"),
        ("gd_lr = 0", r"config field 'gd_lr' must be > 0, got 0.0"),
        ("gd_lr = nan", r"config field 'gd_lr' must be a finite number, got nan"),
        ("gd_lr = inf", r"config field 'gd_lr' must be a finite number, got inf"),
        ("widths = []", r"config field 'widths' needs at least 1 value\(s\), got 0"),
        ("widths = [0]", r"config field 'widths' must be ≥ 1, got 0"),
        ('samplings = ["with_replacment"]', r"must be one of .*did you mean 'with_replacement'\?"),
        ('activation = "sigmoidal"', r"config field 'activation' must be one of"),
        ('samplings = ["with_replacement", "with_replacement"]', r"'samplings' repeats a scheme"),
        ("[model]\nn = 3", r"config field 'model'|unknown config key 'model'"),
        ('experiment = "escape"', r"is for experiment 'escape', not 'diagram'"),
        ("n = [", r"is not valid TOML"),
    ],
)
def test_config_errors_name_the_field_and_the_fix(text, pattern, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(text + "\n")
    exp = get_experiment("diagram")
    with pytest.raises(ConfigError, match=pattern) as info:
        exp.config(str(path))
    assert "\n" not in str(info.value)
    assert isinstance(info.value, SgdstabError)


def test_config_file_problems(tmp_path):
    exp = get_experiment("diagram")
    with pytest.raises(ConfigError, match="not found; check the --config path"):
        exp.config(str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="is a directory"):
        exp.config(str(tmp_path))
    binary = tmp_path / "b.toml"
    binary.write_bytes(b"\xff\xfe n = 3")
    with pytest.raises(ConfigError, match="not UTF-8"):
        exp.config(str(binary))
    array = tmp_path / "a.json"
    array.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must hold a JSON object"):
        exp.config(str(array))


# ---------------------------------------------------------------------------------------------- output dirs
def test_output_directory_is_refused_clearly(tmp_path):
    exp = get_experiment("diagram")
    config = exp.default_config(quick=True)
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(OutputError, match="is a file, not a directory"):
        exp.run(config, target)
    with pytest.raises(OutputError, match="cannot create output directory"):
        exp.run(config, target / "inside")
    other = tmp_path / "other"
    other.mkdir()
    (other / CONFIG_FILE).write_text(json.dumps({"experiment": "flatness"}))
    with pytest.raises(OutputError, match="holds the results of experiment 'flatness'"):
        exp.run(config, other)
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
        try:
            with pytest.raises(OutputError, match="is not writable"):
                exp.run(config, locked)
        finally:
            locked.chmod(stat.S_IRWXU)


# ------------------------------------------------------------------------------------------------------ CLI
def test_cli_unknown_experiment_exits_2_with_one_line(capsys, tmp_path):
    assert main(["experiment", "frobnicate", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: unknown experiment 'frobnicate'")
    assert not (tmp_path / "o").exists()  # nothing created for a bad name


def test_cli_bad_config_exits_2_with_one_line(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("n = 1\n")
    assert main(["experiment", "diagram", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config field 'n' must be ≥ 2" in err and "Traceback" not in err
    assert main(["experiment", "diagram", "--config", str(tmp_path / "none.toml"), "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


def test_cli_set_overrides_keys_after_the_config_file(capsys, tmp_path):
    from sgdstab.experiments.config import parse_overrides

    exp = get_experiment("flatness")
    file = tmp_path / "c.toml"
    file.write_text("n = 30\nlrs = [0.5]\n")
    values = parse_overrides(["n=24", "lrs=[0.1, 0.2]", "gd=false", "data_dir=/data/my cifar", 'subset="first"'])
    assert values == {"n": 24, "lrs": [0.1, 0.2], "gd": False, "data_dir": "/data/my cifar", "subset": "first"}
    config = exp.config(str(file), quick=True, overrides=values)
    assert (config.n, config.lrs, config.gd, config.data_dir, config.subset) == (
        24,
        (0.1, 0.2),
        False,
        "/data/my cifar",
        "first",
    )
    for bad, message in [
        (["n"], "error: --set needs KEY=VALUE (e.g. --set n=500), got 'n'\n"),
        (["=3"], "error: --set needs KEY=VALUE (e.g. --set n=500), got '=3'\n"),
        (["n=3", "n=4"], "error: --set gives 'n' twice; give each key once\n"),
        (["n=abc"], "error: config field 'n' must be an integer, got 'abc' (string); write e.g. n = 64\n"),
    ]:
        args = [a for item in bad for a in ("--set", item)]
        assert main(["experiment", "flatness", "--quick", *args, "--out", str(tmp_path / "o")]) == 2
        assert capsys.readouterr().err == message
        assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name", NAMES)
def test_device_field_is_checked_before_anything_runs(name, capsys, tmp_path):
    exp = get_experiment(name)
    assert exp.config(quick=True, overrides={"device": "cpu"}).device == "cpu"
    cases = [
        ("gpu", "config field 'device' = 'gpu' is not a torch device; write e.g. device = \"cpu\" or \"cuda\""),
        ("meta", "config field 'device' = 'meta': experiments run on \"cpu\" or \"cuda\" devices"),
    ]
    if not torch.cuda.is_available():
        cases.append(
            ("cuda", "config field 'device' = 'cuda', but this machine has no CUDA device; use device = \"cpu\"")
        )
    for value, message in cases:
        assert main(["experiment", name, "--quick", "--set", f"device={value}", "--out", str(tmp_path / "o")]) == 2
        assert capsys.readouterr().err == f"error: {message}\n"
        assert not (tmp_path / "o").exists()


def test_cli_missing_out_and_help(capsys):
    assert main(["experiment", "diagram"]) == 2
    assert capsys.readouterr().err == "error: missing --out DIR: name the directory for the report\n"
    assert main(["experiment", "--help"]) == 0
    out = capsys.readouterr().out
    for name in NAMES:
        assert name in out


# ------------------------------------------------------------------------------------------ the quick runs
@pytest.mark.parametrize("name", NAMES)
def test_quick_run_writes_every_file(name, quick_runs):
    rc, out = quick_runs[name]
    assert rc == 0
    summary = _summary(out)
    assert summary["experiment"] == name
    for file in (CONFIG_FILE, RESULTS_FILE, REPORT_FILE, SUMMARY_FILE, *summary["files"]["figures"]):
        assert (out / file).stat().st_size > 0, file
    assert summary["files"]["figures"], "every experiment draws at least one figure"
    for figure in summary["files"]["figures"]:
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*.tmp"))
    # the resolved config is the quick variant and reruns as it is
    exp = get_experiment(name)
    assert exp.config(str(out / CONFIG_FILE)) == exp.default_config(quick=True)
    # every claim is in the report with its verdict, and the verdicts agree with summary.json
    report = (out / REPORT_FILE).read_text()
    for claim in summary["claims"]:
        verdict = "PASSED" if claim["passed"] else "FAILED"
        assert f"**{verdict}** — {claim['statement']}: {claim['detail']}" in report
    assert summary["passed"] == all(c["passed"] for c in summary["claims"])
    assert summary["seconds"] < 60


def test_diagram_quick_claims(quick_runs):
    _, out = quick_runs["diagram"]
    claims = _claims(out)
    expected = {
        "global_minimum",
        "eta_star_monotone",
        "necessary_certificates_hold",
        "rho_agrees_with_region",
        "gd_endpoint",
        "less_noise_larger_eta_star",
    }
    assert set(claims) == expected
    for name in expected:
        assert claims[name]["passed"], (name, claims[name]["detail"])
    assert claims["global_minimum"]["numbers"]["loss"] < 1e-20
    assert claims["rho_agrees_with_region"]["numbers"]["total"] >= 2 * 8
    # recompute the monotonicity and the certificate slack from results.csv
    rows = _rows(out)
    summary = _summary(out)
    necessary = ("frobenius_mu_inf", "gd", "mulayoff_michaeli", "trace")
    for scheme in ("with_replacement", "without_replacement"):
        mine = [r for r in rows if r["sampling"] == scheme]
        etas = [float(r["critical_lr"]) for r in mine]
        assert all(b >= a * (1 - 1e-9) for a, b in itertools.pairwise(etas))
        for r in mine:
            for name in necessary:
                assert float(r[name]) >= float(r["critical_lr"]) * (1 - 1e-9)
        assert etas == summary["numbers"]["critical_lr"][scheme]
    # GD's line: 2/λ_max(H), and η*(n) without replacement equals it
    lam = summary["numbers"]["lambda_max"]
    last = [r for r in rows if r["sampling"] == "without_replacement"][-1]
    assert int(last["B"]) == summary["numbers"]["n"]
    assert float(last["critical_lr"]) == pytest.approx(2 / lam, rel=1e-8)
    assert all(float(r["gd"]) == pytest.approx(2 / lam, rel=1e-12) for r in rows)
    # c in the table is the convention's noise scale
    n = summary["numbers"]["n"]
    for r in rows:
        b = int(r["B"])
        c = 1 / b if r["sampling"] == "with_replacement" else (n - b) / (b * (n - 1))
        assert float(r["c"]) == pytest.approx(c, rel=1e-12, abs=1e-15)
    assert math.isfinite(summary["numbers"]["mu_inf"]) and summary["numbers"]["mu_inf"] > 0


def test_escape_quick_claims(quick_runs):
    _, out = quick_runs["escape"]
    claims = _claims(out)
    expected = {
        "global_minimum",
        "above_escaped",
        "below_stayed",
        "slope_typical",
        "slope_below_mean_square",
        "gd_control",
        "settled",
        "settled_flatter",
        "settled_frobenius_bound",
        "settled_stable",
    }
    assert set(claims) == expected
    for name in expected:
        assert claims[name]["passed"], (name, claims[name]["detail"])
    summary = _summary(out)
    config = summary["config"]
    rows = _rows(out)
    ratios = [float(r["lr_ratio"]) for r in rows]
    assert ratios == config["lr_ratios"]
    assert any(x < 1 for x in ratios) and any(x > 1 for x in ratios), "restarts on both sides of η*"
    # recompute, from the written trajectories, the escape step and the slope over the stated window
    scale = 0.5  # ½ mean ||y||² for ±1 targets
    cap = config["linear_cap"] * scale
    traj = _rows(out, "trajectories.csv")
    for row in rows:
        mine = [t for t in traj if float(t["lr_ratio"]) == float(row["lr_ratio"])]
        losses = [float(t["sgd_loss"]) for t in mine]
        assert len(losses) == config["escape_steps"] + 1
        assert losses[0] == pytest.approx(config["start_loss"], rel=1e-3)
        above = [i for i, v in enumerate(losses) if v > cap]
        assert (row["escaped"] == "True") == bool(above) == (float(row["lr"]) > float(row["critical_lr"]))
        if above:
            assert int(row["escape_step"]) == above[0]
        a, b = int(row["window_start"]), int(row["window_end"])
        t = list(range(a, b + 1))
        y = [math.log(v) for v in losses[a : b + 1]]
        tm, ym = sum(t) / len(t), sum(y) / len(y)
        slope = sum((ti - tm) * (yi - ym) for ti, yi in zip(t, y, strict=True)) / sum((ti - tm) ** 2 for ti in t)
        assert float(row["slope"]) == pytest.approx(slope, rel=1e-9)
        assert float(row["linearized_lo"]) <= slope <= float(row["linearized_hi"])
        assert float(row["log_rho"]) == pytest.approx(math.log(float(row["rho"])), rel=1e-12)
        gd = [float(v["gd_loss"]) for v in mine]
        assert gd[-1] < gd[0]  # every quick restart η is below 2/λ_max: GD stays
    # the Frobenius bound where SGD settled, recomputed from μ, c and η
    settled = [r for r in rows if r["settled_steps"]]
    assert settled
    for r in settled:
        bound = math.sqrt(1 / (float(r["c"]) * float(r["settled_mu"]))) / float(r["lr"])
        assert float(r["settled_bound"]) == pytest.approx(bound, rel=1e-12)
        assert float(r["settled_hessian_frobenius"]) <= bound
        assert float(r["settled_sharpness"]) < summary["numbers"]["lambda_max"]
        assert float(r["c"]) == 1 / int(r["batch_size"])


def _f(row, key):
    return float(row[key])


def test_flatness_quick_claims(quick_runs):
    _, out = quick_runs["flatness"]
    claims = _claims(out)
    expected = {"frobenius_bound", "gd_bound", "linearly_stable", "gd_edge_of_stability", "sgd_flatter_than_gd"}
    assert set(claims) == expected
    for name in expected:
        assert claims[name]["passed"], (name, claims[name]["detail"])
    config = _summary(out)["config"]
    rows = _rows(out)
    assert len(rows) == len(config["lrs"]) * (len(config["batch_sizes"]) + 1)  # the grid and GD at every η
    ok = [r for r in rows if r["status"] == "ok"]
    sgd = [r for r in ok if r["method"] == "SGD"]
    gd = [r for r in ok if r["method"] == "GD"]
    assert claims["frobenius_bound"]["numbers"]["total"] == len(sgd) >= 4
    ratios = []
    for r in sgd:
        c = 1 / int(r["batch_size"])  # with replacement
        assert _f(r, "c") == pytest.approx(c, rel=1e-12)
        bound = math.sqrt(1 / (c * _f(r, "mu"))) / _f(r, "lr")
        assert _f(r, "frobenius_bound") == pytest.approx(bound, rel=1e-12)
        ratios.append(_f(r, "hessian_frobenius") / bound)
        assert _f(r, "min_loss") < 1e-20 and 0 < _f(r, "polish_relative") < 0.05
        assert _f(r, "lr") <= _f(r, "critical_lr") * (1 + config["tolerance"])
    assert max(ratios) <= 1
    assert claims["frobenius_bound"]["numbers"]["largest_ratio"] == pytest.approx(max(ratios), rel=1e-12)
    for r in gd:  # GD at the edge of stability, and its exact η* is 2/λ_max (c = 0)
        assert _f(r, "lambda_max") * _f(r, "lr") / 2 == pytest.approx(1, abs=0.1)
        assert _f(r, "critical_lr") == pytest.approx(2 / _f(r, "lambda_max"), rel=1e-8)
        smallest_b = min((s for s in sgd if s["lr"] == r["lr"]), key=lambda s: int(s["batch_size"]))
        assert _f(smallest_b, "hessian_frobenius") < _f(r, "hessian_frobenius")


def test_scaling_quick_claims(quick_runs):
    _, out = quick_runs["scaling"]
    claims = _claims(out)
    expected = {"frobenius_bound", "gd_bound", "linearly_stable", "gd_edge_of_stability", "bound_does_not_grow"}
    assert set(claims) == expected
    for name in expected:
        assert claims[name]["passed"], (name, claims[name]["detail"])
    config = _summary(out)["config"]
    rows = _rows(out)
    assert {(int(r["n"]), int(r["width"])) for r in rows} == set(itertools.product(config["ns"], config["widths"]))
    bound = {(int(r["n"]), int(r["width"])): _f(r, "frobenius_bound") for r in rows if r["method"] == "SGD"}
    for (n, w), value in bound.items():
        r = next(r for r in rows if r["method"] == "SGD" and (int(r["n"]), int(r["width"])) == (n, w))
        assert value == pytest.approx(math.sqrt(config["batch_size"] / _f(r, "mu")) / config["lr"], rel=1e-12)
        assert _f(r, "hessian_frobenius") <= value
    ns, ws = sorted(config["ns"]), sorted(config["widths"])
    growth = [bound[(ns[-1], w)] / bound[(ns[0], w)] for w in ws] + [bound[(n, ws[-1])] / bound[(n, ws[0])] for n in ns]
    assert claims["bound_does_not_grow"]["numbers"]["largest_growth_factor"] == pytest.approx(max(growth), rel=1e-12)
    assert max(growth) <= config["growth_tolerance"]


def test_alignment_quick_claims(quick_runs):
    _, out = quick_runs["alignment"]
    claims = _claims(out)
    expected = {"mu_bounded", "loglog_slope", "width_no_shrink"}
    assert set(claims) == expected
    for name in expected:
        assert claims[name]["passed"], (name, claims[name]["detail"])
    config = _summary(out)["config"]
    rows = _rows(out)
    main_rows = [r for r in rows if r["role"] == "main"]
    assert {r["model"] for r in main_rows} == set(config["models"]) == {"linear_net", "random_features", "mlp", "cnn"}
    for r in rows:  # μ = Tr(ΣG) / (2L||G||_F²), as written
        assert _f(r, "mu") == pytest.approx(_f(r, "tr_sigma_g") / _f(r, "two_loss_gn_frob2"), rel=1e-12)
        assert _f(r, "mu_inf") <= _f(r, "mu") * (1 + 1e-9)  # the uniform alignment is the worst case
    for kind in config["models"]:
        mine = [r for r in main_rows if r["model"] == kind]
        steps = [int(r["step"]) for r in mine]
        assert steps[0] == 0 and steps[-1] == config["steps"] and len(mine) >= 5
        assert _f(mine[-1], "loss") < _f(mine[0], "loss")  # it trained
        assert min(_f(r, "mu") for r in mine) >= config["mu_floor"]
        x = [math.log(_f(r, "two_loss_gn_frob2")) for r in mine]
        y = [math.log(_f(r, "tr_sigma_g")) for r in mine]
        xm, ym = sum(x) / len(x), sum(y) / len(y)
        slope = sum((a - xm) * (b - ym) for a, b in zip(x, y, strict=True)) / sum((a - xm) ** 2 for a in x)
        assert claims["loglog_slope"]["numbers"]["slopes"][kind] == pytest.approx(slope, rel=1e-9)
        assert abs(slope - 1) <= config["slope_tolerance"]
    for kind, widths in (("linear_net", config["linear_widths"]), ("random_features", config["rf_widths"])):
        med = {}
        for w in (min(widths), max(widths)):
            mus = sorted(_f(r, "mu") for r in rows if r["model"] == kind and int(r["width"]) == w)
            med[w] = mus[len(mus) // 2] if len(mus) % 2 else (mus[len(mus) // 2 - 1] + mus[len(mus) // 2]) / 2
        ratio = med[max(widths)] / med[min(widths)]
        assert claims["width_no_shrink"]["numbers"]["ratios"][kind] == pytest.approx(ratio, rel=1e-12)
        assert ratio >= config["shrink_tolerance"]


def test_readme_experiment_commands_name_registered_experiments_and_shipped_configs():
    root = Path(__file__).resolve().parents[2]
    section = (root / "README.md").read_text().split("## Experiments", 1)[1].split("\n## ", 1)[0]
    commands = [line.split("#")[0].split() for line in section.splitlines() if line.startswith("sgdstab experiment ")]
    named = [c[2] for c in commands if not c[2].startswith("-")]
    assert named and set(named) <= set(NAMES)
    for c in commands:
        if "--config" in c:
            assert (root / c[c.index("--config") + 1]).is_file()
    for name in NAMES:  # every experiment has its row in the README's table
        assert f"| `{name}` |" in section


@pytest.mark.parametrize(
    ("values", "pattern"),
    [
        ({"batch_size": 100, "n": 40}, r"'batch_size' = 100 exceeds n = 40"),
        ({"start_loss": 1e-7}, r"'start_loss' = 1e-07 must be below linear_cap/100"),
        ({"lr_ratios": [0.5, -1.0]}, r"config field 'lr_ratios' must be > 0, got -1.0"),
        ({"sampling": "reshuffle"}, r"config field 'sampling' must be one of with_replacement, without_replacement"),
        ({"chains": 10}, r"config field 'chains' must be ≥ 400"),
        ({"lr_ratios": [1.5, 2.0]}, r"'lr_ratios' = \[1.5, 2.0\] must hold ratios on both sides of η\*"),
    ],
)
def test_escape_config_checks(values, pattern):
    exp = get_experiment("escape")
    with pytest.raises(ConfigError, match=pattern):
        build_config(exp.config_type, values)


# ------------------------------------------------------------------------- what the reports and figures claim
@pytest.mark.parametrize(
    ("value", "digits", "text"),
    [
        (0.99967, 3, "1.00"),  # rounded: the zeros show the precision (was "1")
        (1.0000001, 6, "1.00000"),
        (0.4300001, 3, "0.430"),
        (100.0004, 3, "100"),
        (1.00001e-7, 3, "1.00e-07"),
        (0.02, 4, "0.02"),  # exactly its short form (a configured η): stays short
        (1.02, 3, "1.02"),
        (2.0, 4, "2"),
        (0.0, 3, "0"),
        (-0.99999, 2, "-1.0"),
        (math.inf, 3, "∞"),
        (7, 3, "7"),
    ],
)
def test_fmt_never_collapses_significant_figures(value, digits, text):
    from sgdstab.utils.text import fmt

    assert fmt(value, digits) == text


def test_loglog_slope_recovers_power_laws_and_batch_slopes_use_sgd_solutions_only():
    from sgdstab.experiments.flatness import batch_slopes, loglog_slope

    xs = [1.0, 2.0, 4.0, 16.0]
    assert loglog_slope(xs, [3 * x**0.37 for x in xs]) == pytest.approx(0.37, rel=1e-12)
    assert math.isnan(loglog_slope([2.0, 2.0], [1.0, 3.0]))

    def row(lr, b, frob, bound, method="SGD", status="ok"):
        return {"lr": lr, "batch_size": b, "hessian_frobenius": frob, "frobenius_bound": bound, "method": method,
                "status": status}  # fmt: skip

    rows = [
        row(0.01, 2, 10.0, 50.0),
        row(0.01, 8, 10.0 * 4**0.4, 100.0),  # slope 0.4 from 2 to 8
        row(0.01, 32, 10.0 * 4**0.4 * 4**0.2, 200.0),  # then 0.2: the fit is between, the pairs show the bend
        row(0.01, 64, 1e6, 1.0, method="GD"),
        row(0.01, 16, 1e6, 1.0, status="diverged at step 3"),
        row(0.02, 4, 5.0, 5.0),  # one batch size: no slope
    ]
    (s,) = batch_slopes(rows)
    assert s["lr"] == 0.01 and s["batch_sizes"] == [2, 8, 32]
    assert s["pairwise"] == pytest.approx([0.4, 0.2], rel=1e-12)
    lx = [math.log(b) for b in (2, 8, 32)]
    ly = [math.log(0.01 * r["hessian_frobenius"]) for r in rows[:3]]
    mx, my = sum(lx) / 3, sum(ly) / 3
    fit = sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)
    assert s["slope"] == pytest.approx(fit, rel=1e-12) and 0.2 < s["slope"] < 0.4
    assert s["bound_slope"] == pytest.approx(0.5, rel=1e-12)  # 50 → 100 → 200 over B 2 → 8 → 32


def test_flatness_batch_size_caption_states_the_measured_slope(quick_runs):
    from sgdstab.utils.text import fmt

    _, out = quick_runs["flatness"]
    summary = _summary(out)
    rows = [r for r in _rows(out) if r["status"] == "ok" and r["method"] == "SGD"]
    report = (out / REPORT_FILE).read_text()
    caption = next(line for line in report.splitlines() if line.startswith("![") and "(batch_size.png)" in line)
    assert "tracks sqrt(B)" not in report
    stated = {s["lr"]: s for s in summary["numbers"]["batch_slopes"]}
    assert set(stated) == {_f(r, "lr") for r in rows}
    for lr, s in stated.items():  # recomputed here from results.csv: least squares of log(η||H||_F) on log B
        mine = sorted((r for r in rows if _f(r, "lr") == lr), key=lambda r: int(r["batch_size"]))
        lx = [math.log(int(r["batch_size"])) for r in mine]
        ly = [math.log(lr * _f(r, "hessian_frobenius")) for r in mine]
        mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
        slope = sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum((a - mx) ** 2 for a in lx)
        assert s["slope"] == pytest.approx(slope, rel=1e-9)
        assert f"η = {lr:g}: {fmt(slope, 2)}" in caption
    assert "∝ sqrt(B) would be 0.5" in caption


def test_scaling_figure_draws_each_bound_on_the_axis_of_what_it_bounds():
    from sgdstab.experiments.scaling import ScalingConfig, _plot_scaling

    cfg = ScalingConfig(ns=(8, 16), widths=(4, 8), lr=0.05)

    def row(n, w, method, frob, lam, bound):
        return {"n": n, "width": w, "p": 10 * w, "method": method, "status": "ok", "hessian_frobenius": frob,
                "lambda_max": lam, "frobenius_bound": bound}  # fmt: skip

    rows = [row(n, w, m, 30.0 + n, 20.0 + w, 60.0) for n in (8, 16) for w in (4, 8) for m in ("SGD", "GD")]
    fig = _plot_scaling(rows, [8, 16], [4, 8], cfg)
    fig.canvas.draw()  # parses every mathtext label
    axes = fig.get_axes()
    assert len(axes) == 4
    gd_line = 2 / cfg.lr
    for ax in axes:
        flat = [tuple(line.get_ydata()) for line in ax.get_lines() if len(set(line.get_ydata())) == 1]
        has_gd = any(ys and ys[0] == pytest.approx(gd_line) for ys in flat)
        label = ax.get_ylabel()
        if r"\|H\|_F" in label:
            assert not has_gd, "GD's λ_max bound 2/η drawn on an ||H||_F axis"
            assert any(line.get_linestyle() == "--" for line in ax.get_lines())  # SGD's Frobenius bound
        else:
            assert r"\lambda_{\max}" in label and has_gd
    assert sum(r"\|H\|_F" in ax.get_ylabel() for ax in axes) == 2


def test_diagram_quick_says_which_certificate_binds_from_its_results(quick_runs):
    """The 'which binds' section is generated from the results: its tightest certificate at every B is the one
    with the smallest bound/η* among the necessary ones in results.csv, and every ratio cell is that ratio."""
    from sgdstab.linear_stability.diagram import LABELS
    from sgdstab.utils.text import fmt

    _, out = quick_runs["diagram"]
    report = (out / REPORT_FILE).read_text()
    section = report.split("## Which certificate binds", 1)[1].split("\n## ", 1)[0]
    necessary = ("frobenius_mu_inf", "gd", "mulayoff_michaeli", "trace")
    names = ("frobenius_mu_inf", "frobenius_mu", "gd", "wu_ma_e", "mulayoff_michaeli", "trace")
    blocks = section.split("Without replacement:")
    assert len(blocks) == 2
    for scheme, block in zip(("with_replacement", "without_replacement"), blocks, strict=True):
        table = [line for line in block.splitlines() if line.startswith("| ") and line[2].isdigit()]
        mine = [r for r in _rows(out) if r["sampling"] == scheme]
        assert len(table) == len(mine)
        for line, r in zip(table, mine, strict=True):
            cells = [c.strip() for c in line.strip("| ").split(" | ")]
            eta = _f(r, "critical_lr")
            ratios = {x: _f(r, x) / eta for x in names}
            finite = {x: ratios[x] for x in necessary if math.isfinite(ratios[x])}
            tightest = min(finite, key=finite.__getitem__)
            assert cells[0] == r["B"] and cells[-1] == LABELS[tightest]
            for x, cell in zip(names, cells[2:-1], strict=True):
                assert cell == (f"{fmt(ratios[x], 3)}×" if math.isfinite(ratios[x]) else "∞ (no bound)")
            assert all(v >= 1 - 1e-9 for v in finite.values())
        frob = [_f(r, "frobenius_mu_inf") / _f(r, "critical_lr") for r in mine]
        frob = [v for v in frob if math.isfinite(v)]
        assert f"allows {fmt(min(frob), 3)}–{fmt(max(frob), 3)}× the exact η*" in block
        looser = sum(_f(r, "frobenius_mu_inf") > _f(r, "gd") for r in mine if math.isfinite(_f(r, "frobenius_mu_inf")))
        assert f"looser than GD's 2/λ_max at {looser}/{len(frob)} batch sizes" in block
    assert "Why the headline check uses the measured μ" in section


def test_which_binds_groups_batch_sizes_and_skips_not_necessary_bounds():
    from sgdstab.experiments.diagram import which_binds

    necessary = {"frobenius_mu_inf": True, "gd": True, "wu_ma_e": False, "mulayoff_michaeli": True}

    def row(b, ratios):
        eta = 0.1
        return {"B": b, "c": 1 / b, "critical_lr": eta, "bounds": {k: v * eta for k, v in ratios.items()},
                "ratios": ratios, "necessary": necessary}  # fmt: skip

    inf = math.inf
    rows = [  # Wu–Ma–E is lowest everywhere but not necessary; the tightest necessary one changes at B = 4
        row(1, {"frobenius_mu_inf": 5.0, "gd": 3.0, "wu_ma_e": 0.9, "mulayoff_michaeli": 1.5}),
        row(2, {"frobenius_mu_inf": 4.0, "gd": 2.0, "wu_ma_e": 0.95, "mulayoff_michaeli": 1.25}),
        row(4, {"frobenius_mu_inf": 1.1, "gd": 1.2, "wu_ma_e": 1.0, "mulayoff_michaeli": 1.3}),
        row(8, {"frobenius_mu_inf": inf, "gd": 1.01, "wu_ma_e": 1.01, "mulayoff_michaeli": 1.4}),
    ]
    for r in rows:  # what certificate_rows computes
        finite = {k: v for k, v in r["ratios"].items() if necessary[k] and math.isfinite(v)}
        r["tightest"] = min(finite, key=finite.__getitem__)
        r["tightest_ratio"] = finite[r["tightest"]]
    numbers = {"n": 8, "lambda_max": 20.0, "hessian_frobenius": 30.0, "mu_inf": 0.1, "mu_measured": None,
               "certificates": {"with_replacement": rows}}  # fmt: skip
    text = which_binds(numbers)
    assert (
        "Tightest necessary certificate: Mulayoff–Michaeli at B ∈ {1, 2} (1.25–1.5×); Frobenius (WWS22, μ_inf) at "
        "B = 4 (1.1×); GD: 2/λ_max(H) at B = 8 (1.01×)." in text
    )
    # exact inputs print short (fmt); B = 8 has no finite Frobenius bound, so 3 batch sizes compare
    assert "allows 1.1–5× the exact η*, and is looser than GD's 2/λ_max at 2/3 batch sizes" in text
    assert "Wu–Ma–E box lies below η* at B ∈ {1, 2} (0.9–0.95×)" in text
    assert "μ measured" not in text.split("\n\n")[1]  # no measured μ given: none reported


def test_escape_without_rho_below_eta_star_keeps_every_verdict(quick_runs, tmp_path, one_thread):
    """rho_below = false (the paper-scale config) leaves out only the ρ(T) of restarts below η*: the same runs, the
    same claims passed, the same ρ above η*."""
    _, out = quick_runs["escape"]
    run_experiment("escape", tmp_path, quick=True, quiet=True, overrides={"rho_below": False})
    full, lean = _rows(out), _rows(tmp_path)
    assert [r["lr_ratio"] for r in lean] == [r["lr_ratio"] for r in full]
    for a, b in zip(full, lean, strict=True):
        if float(a["lr_ratio"]) > 1:
            assert float(b["rho"]) == pytest.approx(float(a["rho"]), rel=1e-12)
        else:
            assert math.isnan(float(b["rho"])) and float(a["rho"]) < 1
        # one thread as the fixture's runs: equal up to the rounding of another BLAS order at most
        assert float(a["slope"]) == pytest.approx(float(b["slope"]), rel=1e-3) and a["escaped"] == b["escaped"]
    assert {n: c["passed"] for n, c in _claims(tmp_path).items()} == {n: c["passed"] for n, c in _claims(out).items()}
    assert "rho_below = false" in (tmp_path / "report.md").read_text()
