"""Sweep configs: expansion of [base]/[grid]/[[runs]], the run hash, and bad configs naming their field."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from sweep_helpers import TINY_BASE, cli_env, write_config

from sgdstab.cli import main
from sgdstab.errors import ConfigError
from sgdstab.sweep.config import (
    RUN_FIELDS,
    RunConfig,
    load_sweep,
    run_from_dict,
    run_hash,
    run_to_dict,
    sweep_from_dict,
)


def _load(tmp_path, text, file="s.toml"):
    path = tmp_path / file
    path.write_text(text, encoding="utf-8")
    return load_sweep(path)


def test_grid_expands_to_the_product_in_file_order(tmp_path):
    sweep = _load(tmp_path, TINY_BASE + "[grid]\nlr = [0.1, 0.2, 0.3]\nbatch_size = [4, 8]\n")
    runs = sweep.expand()
    assert [(r.lr, r.batch_size) for r in runs] == [(lr, b) for lr in (0.1, 0.2, 0.3) for b in (4, 8)]
    assert all(r.n == 40 and r.widths == (8,) and r.dataset == "digits" for r in runs)
    assert sweep.varying() == ("lr", "batch_size")
    assert sweep.name == "s"  # the file's stem when the file gives none


def test_list_entries_combine_with_every_grid_point(tmp_path):
    text = TINY_BASE + "[grid]\nlr = [0.1, 0.2]\n[[runs]]\nseed = 1\n[[runs]]\nseed = 2\nwidths = [4, 4]\n"
    runs = _load(tmp_path, text).expand()
    got = [(r.lr, r.seed, r.widths) for r in runs]
    assert got == [(0.1, 1, (8,)), (0.1, 2, (4, 4)), (0.2, 1, (8,)), (0.2, 2, (4, 4))]


def test_hash_ignores_spelling_and_key_order(tmp_path):
    a = _load(tmp_path, TINY_BASE + "[[runs]]\nlr = 1\nbatch_size = 4\n", "a.toml").expand()[0]
    # the same run: keys reordered, 1.0 for 1, a default written out, the base values given in the entry
    b_text = (
        "[[runs]]\nbatch_size = 4\nsampling = 'with_replacement'\nlr = 1.0\nn = 40\nwidths = [8]\n"
        "dataset = 'digits'\nclasses = [0, 1]\nsteps = 60\ntrack_every = 10\n"
    )
    b = _load(tmp_path, b_text, "b.toml").expand()[0]
    assert a == b
    assert run_hash(a) == run_hash(b)
    assert run_hash(run_from_dict(json.loads(json.dumps(run_to_dict(a))))) == run_hash(a)  # survives JSON storage


def test_hash_changes_with_every_field():
    base = RunConfig(dataset="digits", classes=(0, 1), n=40, widths=(8,))
    changed = {
        "dataset": "fashion-mnist-small",
        "data_dir": "/data",
        "classes": (1, 0),
        "n": 41,
        "subset": "first",
        "network": "cnn",
        "widths": (8, 8),
        "channels": (4,),
        "activation": "relu",
        "seed": 1,
        "device": "cuda",
        "lr": 0.05000000000000001,  # one ulp away: a different run
        "batch_size": 9,
        "sampling": "without_replacement",
        "steps": 201,
        "track_every": 11,
        "rtol": 0.02,
        "stability": True,
    }
    assert set(changed) == set(RUN_FIELDS), "every field must be covered"
    hashes = {run_hash(base)}
    for name, value in changed.items():
        other = dataclasses.replace(base, **{name: value})
        hashes.add(run_hash(other))
    assert len(hashes) == len(changed) + 1


def test_hash_is_the_sha256_of_the_canonical_json_and_stable_across_processes():
    cfg = RunConfig(dataset="digits", classes=(0, 1), n=40, widths=(8,), lr=0.1)
    fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    fields = {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}
    text = json.dumps({"format": "sgdstab-run", "version": 1, "config": fields}, sort_keys=True, separators=(",", ":"))
    assert run_hash(cfg) == hashlib.sha256(text.encode()).hexdigest()
    code = (
        "from sgdstab.sweep.config import RunConfig, run_hash;"
        "print(run_hash(RunConfig(dataset='digits', classes=(0, 1), n=40, widths=(8,), lr=0.1)))"
    )
    for seed in ("12345",):  # this process's hash seed is random: another one must agree
        env = {**cli_env(), "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
        assert out.stdout.strip() == run_hash(cfg)


BAD_CONFIGS = [
    # (top-level lines, the tables after the tiny [base], words the one-line message must contain)
    ("", "[grid]\nlrr = [0.1]\n", ["'lrr'", "did you mean 'lr'"]),
    ("", "[grid]\nlr = 0.1\n", ["'lr'", "list"]),
    ("", "[grid]\nlr = []\n", ["'lr'", "no values"]),
    ("", "[grid]\nlr = [0.1, -0.2]\n", ["'lr'", "> 0"]),
    ("", "[grid]\nlr = [0.1, 0.1]\n", ["'lr'", "repeats"]),
    ("", "[grid]\nbatch_size = [4, 'x']\n", ["'batch_size'", "integer"]),
    ("", "[grid]\nbatch_size = [4, 41]\n", ["'batch_size'", "≤ n = 40"]),
    ("", "[grid]\nactivation = ['tanh', 'sigmoidd']\n", ["'activation'", "did you mean"]),
    ("", "[grid]\nlr = [0.1]\n[[runs]]\nlr = 0.2\n", ["'lr'", "both in [grid]"]),
    ("", "[[runs]]\nseed = 1\n[[runs]]\nseed = 1\n", ["identical"]),
    ("", "[[runs]]\nsampling = 'reshuffle'\nstability = true\n", ["'stability'", "sampling"]),
    ("", "[[runs]]\ndataset = 'teacher'\n", ["'dataset'", "classification"]),
    ("executor = 'ray'\n", "[[runs]]\nseed = 1\n", ["'executor'", "valid keys"]),
    ("lr = 0.1\n", "[[runs]]\nseed = 1\n", ["'lr'", "[base]"]),
    ("", "", ["defines no runs"]),
]


@pytest.mark.parametrize(("top", "body", "words"), BAD_CONFIGS)
def test_bad_config_raises_config_error_naming_the_field(tmp_path, top, body, words):
    path = tmp_path / "sweep.toml"
    path.write_text(top + TINY_BASE + body, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_sweep(path).expand()
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('name = "a b"\n[[runs]]\nseed = 1\n', ["'name'"]),
        ("[base]\nn = 1\n[[runs]]\nseed = 1\n", ["[base]", "'n'", "≥ 2"]),
        ("[base]\nwidht = [3]\n[[runs]]\nseed = 1\n", ["'widht'", "did you mean 'widths'"]),
        ("grid = 3\n", ["'grid'", "table"]),
        ("runs = [1, 2]\n", ["'runs'", "list of tables"]),
        ("[grid\nlr = [1]\n", ["not valid TOML"]),
    ],
)
def test_bad_top_level_config(tmp_path, text, words):
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_sweep(path).expand()
    for word in words:
        assert word in str(info.value), str(info.value)


def test_cli_bad_config_exits_2_with_one_line(tmp_path, capsys):
    path = write_config(tmp_path, "[grid]\nlr = [0.1, -1.0]\n")
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1, err
    assert "'lr'" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing was created for a bad config
    path = write_config(tmp_path, "[grid]\nbatch_size = [4, 400]\n")  # found when the runs are expanded
    assert main(["sweep", str(path), "--out", str(tmp_path / "out")]) == 2
    assert "'batch_size'" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_readme_example_is_the_shipped_quick_sweep():
    root = Path(__file__).resolve().parents[2]
    section = (root / "README.md").read_text().split("## Sweeps", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```toml\n(.*?)```", section, flags=re.S)
    shown = sweep_from_dict(tomllib.loads(block)).expand()
    shipped = load_sweep(root / "examples" / "sweep-quick.toml")
    assert [run_hash(r) for r in shown] == [run_hash(r) for r in shipped.expand()]
    assert len(shown) == 8 and shipped.varying() == ("lr", "batch_size")
    assert "sgdstab sweep examples/sweep-quick.toml" in section
