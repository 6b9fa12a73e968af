"""`sgdstab experiment/demo/sweep --out DIR` replaces only what sgdstab can prove it wrote (issue 13, High 2).

Before: an experiment run into a user's directory overwrote their ``config.json``, ``report.md`` and
``results.csv`` (exit code 0), deleted every hidden ``*.tmp`` file there, and left each output 0600. Now every
output directory carries ``.sgdstab-output.json`` (the owner and the files written); a directory without it whose
files would be overwritten is refused in one line naming them, and only sgdstab's own temporaries are deleted.

The experiment bodies are replaced by a stub that writes what a real body writes (a table and a figure through
the context): the writing is what is under test, and the test stays fast.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import stat
import subprocess
import sys

import pytest

from sgdstab.cli import main
from sgdstab.errors import OutputError
from sgdstab.experiments.io import atomic_write_text, prepare_output_dir
from sgdstab.experiments.registry import MODULES
from sgdstab.sweep.artifacts import remove_stale_temporaries
from sgdstab.utils import files

STUB_FILES = ["config.json", "loss.png", "report.md", "results.csv", "summary.json", "trajectory.csv"]


def _stub_body(config, ctx):
    from sgdstab.experiments.base import Outcome
    from sgdstab.experiments.io import new_figure
    from sgdstab.experiments.report import Claim

    ctx.table("trajectory.csv", [{"step": i, "loss": 0.5**i} for i in range(5)])
    fig, ax = new_figure(size=(1.0, 1.0))
    ax.plot([0, 1], [1, 0])
    ctx.figure("loss.png", fig, "a stub figure")
    return Outcome(rows=[{"i": 1}], claims=[Claim("stub", "the stub ran", True, "wrote its files")], intro="stub\n")


@pytest.fixture
def stubbed(monkeypatch):
    """Every registered experiment with the stub body (restored after the test)."""
    for module_name, _ in MODULES.values():
        module = importlib.import_module(module_name)
        monkeypatch.setattr(module, "EXPERIMENT", dataclasses.replace(module.EXPERIMENT, body=_stub_body))


def _run(out, capsys, name="diagram"):
    code = main(["experiment", name, "--quick", "--quiet", "--out", str(out)])
    return code, capsys.readouterr().err


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_users_directory_is_refused_and_left_untouched(tmp_path, capsys, stubbed):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"my": "settings"}')
    (out / "report.md").write_text("# my report\n")
    (out / "results.csv").write_text("my,data\n")
    (out / ".draft.md.tmp").write_text("an editor's temporary")
    before = _snapshot(out)
    code, err = _run(out, capsys)
    assert code == 2 and err.count("\n") == 1, err
    assert "config.json, report.md, results.csv" in err and "empty or new directory" in err
    assert _snapshot(out) == before  # before: overwritten with exit code 0, and the .tmp deleted
    assert not (out / files.MARKER).exists()


def test_a_figure_name_clash_is_refused_before_anything_runs(tmp_path, capsys, stubbed):
    out = tmp_path / "pictures"
    out.mkdir()
    (out / "loss.png").write_bytes(b"my photo")
    code, err = _run(out, capsys)
    assert code == 2 and "loss.png" in err
    assert (out / "loss.png").read_bytes() == b"my photo" and not (out / "config.json").exists()


def test_unrelated_files_stay_and_the_marker_lists_every_output(tmp_path, capsys, stubbed):
    out = tmp_path / "shared"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / ".cache.tmp").write_text("mine too")
    old = os.umask(0o022)
    try:
        code, err = _run(out, capsys)
    finally:
        os.umask(old)
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "mine" and (out / ".cache.tmp").read_text() == "mine too"
    marker = files.read_marker(out)
    assert marker == {"owner": "diagram", "files": STUB_FILES}
    for name in STUB_FILES:
        assert stat.S_IMODE(os.stat(out / name).st_mode) == 0o644, name  # before: 0600
    # the same experiment again replaces its own files, and only them
    (out / "report.md").write_text("stale")
    code, err = _run(out, capsys)
    assert code == 0, err
    assert (out / "report.md").read_text() != "stale" and (out / "notes.txt").read_text() == "mine"
    assert files.read_marker(out)["files"] == STUB_FILES


def test_a_directory_written_before_markers_is_adopted_by_the_same_experiment(tmp_path, capsys, stubbed):
    out = tmp_path / "old-run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"experiment": "diagram", "n": 8}))
    for name in ("report.md", "results.csv", "summary.json", "loss.png"):
        (out / name).write_text("from an older sgdstab")
    code, err = _run(out, capsys)
    assert code == 0, err
    assert (out / "report.md").read_text() != "from an older sgdstab"
    assert files.read_marker(out)["owner"] == "diagram"


def test_another_experiments_directory_is_refused(tmp_path, capsys, stubbed):
    out = tmp_path / "run"
    assert _run(out, capsys, "diagram")[0] == 0
    before = _snapshot(out)
    code, err = _run(out, capsys, "flatness")
    assert code == 2 and "holds the results of experiment 'diagram'" in err
    assert _snapshot(out) == before
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text(json.dumps({"experiment": "escape"}))
    code, err = _run(legacy, capsys, "flatness")
    assert code == 2 and "experiment 'escape'" in err and not (legacy / files.MARKER).exists()


@pytest.mark.parametrize("content", [b"{", b'{"format": "sgdstab-output", "owner": 3, "files": []}'])
def test_a_damaged_marker_is_refused_in_one_line(tmp_path, capsys, stubbed, content):
    out = tmp_path / "run"
    out.mkdir()
    (out / files.MARKER).write_bytes(content)
    code, err = _run(out, capsys)
    assert code == 2 and err.count("\n") == 1 and "not a valid sgdstab output marker" in err
    assert (out / files.MARKER).read_bytes() == content


def test_a_marker_that_is_a_symlink_is_refused(tmp_path, stubbed):
    out = tmp_path / "run"
    out.mkdir()
    (tmp_path / "elsewhere.json").write_text(json.dumps({"format": "sgdstab-output", "owner": "x", "files": []}))
    (out / files.MARKER).symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(OutputError, match="not a valid sgdstab output marker"):
        prepare_output_dir(out, owner="x")


def test_only_sgdstabs_own_temporaries_are_deleted(tmp_path):
    out = prepare_output_dir(tmp_path / "run", owner="diagram")
    atomic_write_text(out / "report.md", "done\n")
    ours = out / f".summary.json.sgdstab-{_dead_pid()}-abcd1234.tmp"
    users = [out / ".summary.json.abc123.tmp", out / ".notes.tmp", out / ".x.tmp"]
    for path in [ours, *users]:
        path.write_text("x")
    prepare_output_dir(out, owner="diagram")
    assert not ours.exists() and all(p.exists() for p in users)  # before: every hidden .*.tmp was deleted


def test_a_sweeps_cleanup_keeps_a_users_temporaries(tmp_path):
    run = tmp_path / "runs" / "0123456789abcdef"
    run.mkdir(parents=True)
    dead = _dead_pid()
    ours = [tmp_path / f".config.json.sgdstab-{dead}-aaaa1111.tmp", run / f".params.pt.sgdstab-{dead}-bbbb2222.tmp"]
    users = [tmp_path / ".mine.tmp", run / ".params.pt.abc.tmp"]
    for path in [*ours, *users]:
        path.write_text("x")
    assert remove_stale_temporaries(tmp_path) == 2
    assert not any(p.exists() for p in ours) and all(p.exists() for p in users)


SWEEP_CONFIG = """name = "tiny"
[base]
dataset = "digits"
classes = [0, 1]
n = 40
widths = [8]
steps = 20
track_every = 10
[grid]
lr = [0.1]
"""


def test_a_sweep_into_a_users_directory_is_refused(tmp_path, capsys):
    config = tmp_path / "sweep.toml"
    config.write_text(SWEEP_CONFIG)
    out = tmp_path / "data"
    out.mkdir()
    (out / "results.csv").write_text("my,results\n")
    (out / "report.md").write_text("# mine\n")
    before = _snapshot(out)
    code = main(["sweep", str(config), "--out", str(out), "--workers", "1", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "report.md, results.csv" in err, err
    assert _snapshot(out) == before and not (out / "sweep.db").exists()


def test_nested_outputs_each_carry_their_owner(tmp_path):
    top = prepare_output_dir(tmp_path / "demo", owner="demo")
    sub = prepare_output_dir(top / "flatness", owner="flatness")
    atomic_write_text(top / "report.md", "demo\n")
    atomic_write_text(sub / "report.md", "flatness\n")
    assert files.read_marker(top) == {"owner": "demo", "files": ["report.md"]}
    assert files.read_marker(sub) == {"owner": "flatness", "files": ["report.md"]}
