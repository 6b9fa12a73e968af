"""The bad-input catalogue (docs/bad-inputs.md), command-line side: exit code 2, one line on stderr naming the
problem, no traceback (``--debug`` shows it). Every bad input here fails before any real work starts, so the
experiments run with their real bodies.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sgdstab.cli import main
from sgdstab.experiments.base import CONFIG_FILE

pytestmark = pytest.mark.usefixtures("one_thread")


def run(argv: list[str], capsys) -> tuple[int, str]:
    """Exit code and stderr of ``sgdstab argv``; stderr must hold no traceback."""
    rc = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def one_error_line(err: str) -> str:
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def experiment(tmp_path: Path, config_text: str | bytes, *extra: str) -> list[str]:
    path = tmp_path / "config.toml"
    path.write_bytes(config_text if isinstance(config_text, bytes) else config_text.encode())
    return ["experiment", "diagram", "--quick", "--quiet", "--config", str(path), "--out", str(tmp_path / "o"), *extra]


# ---------------------------------------------------------------------------------------------------- configs
@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("widht = [8]\n", "unknown config key 'widht' .*did you mean 'widths'"),
        ('n = "many"\n', "config field 'n' must be an integer, got 'many'"),
        ("gd_lr = -0.5\n", "config field 'gd_lr' must be > 0, got -0.5"),
        ("n = 5000\n", "config field 'n' must be ≤ 1000, got 5000"),
        ('dataset = "mnist"\n', "config field 'dataset' must be one of"),
        ('samplings = ["shuffle"]\n', "config field 'samplings' must be one of"),
        ("n = [\n", "is not valid TOML"),
        (b"\xff\xfe n = 3", "not UTF-8"),
    ],
    ids=[
        "unknown key",
        "wrong type",
        "out of range",
        "above range",
        "unknown dataset",
        "unknown sampling",
        "not TOML",
        "not UTF-8",
    ],
)
def test_bad_config_exits_2_naming_the_field(tmp_path, capsys, text, pattern):
    rc, err = run(experiment(tmp_path, text), capsys)
    assert rc == 2
    assert re.search(pattern, one_error_line(err)), err
    assert not (tmp_path / "o").exists()  # nothing is written for a config that does not validate


def test_missing_config_file(tmp_path, capsys):
    argv = ["experiment", "diagram", "--config", str(tmp_path / "none.toml"), "--out", str(tmp_path / "o")]
    rc, err = run(argv, capsys)
    assert rc == 2 and "not found; check the --config path" in one_error_line(err)


# ------------------------------------------------------------------------------------------------- data files
def _idx_pair(folder: Path, count: int = 6) -> None:
    images = np.random.default_rng(0).integers(0, 256, (count, 28, 28), dtype=np.uint8)
    labels = np.arange(count, dtype=np.uint8) % 10
    header = bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in images.shape)
    (folder / "train-images-idx3-ubyte").write_bytes(header + images.tobytes())
    (folder / "train-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + count.to_bytes(4, "big") + labels.tobytes())


def test_missing_data_files(tmp_path, capsys):
    rc, err = run(experiment(tmp_path, f'dataset = "fashion-mnist"\ndata_dir = "{tmp_path / "nothing"}"\n'), capsys)
    assert rc == 2
    assert "Fashion-MNIST train files not found; tried: " in one_error_line(err) and "apt-get install" in err


def test_truncated_idx_file(tmp_path, capsys):
    data = tmp_path / "fm"
    data.mkdir()
    _idx_pair(data)
    images = data / "train-images-idx3-ubyte"
    images.write_bytes(images.read_bytes()[:-100])
    rc, err = run(experiment(tmp_path, f'dataset = "fashion-mnist"\ndata_dir = "{data}"\n'), capsys)
    assert rc == 2 and "train-images-idx3-ubyte: truncated" in one_error_line(err)


def test_corrupt_cifar_batch(tmp_path, capsys):
    folder = tmp_path / "cifar" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        (folder / name).write_bytes(bytes(3073 * 2))
    (folder / "data_batch_3.bin").write_bytes(bytes(3073 * 2 - 7))  # cut mid-record
    rc, err = run(experiment(tmp_path, f'dataset = "cifar10"\ndata_dir = "{tmp_path / "cifar"}"\n'), capsys)
    assert rc == 2 and "data_batch_3.bin: size 6139 bytes is not a positive multiple" in one_error_line(err)


class _Payload:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_cifar_pickle_carrying_code_is_refused_and_never_run(tmp_path, capsys):
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    marker = tmp_path / "ran"
    payload = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"x": _Payload(str(marker))}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(payload, protocol=4))
    rc, err = run(experiment(tmp_path, f'dataset = "cifar10"\ndata_dir = "{tmp_path / "cifar"}"\n'), capsys)
    assert rc == 2 and "refusing to unpickle builtins.exec from" in one_error_line(err)
    assert not marker.exists()


def test_class_absent_from_the_data(tmp_path, capsys):
    rc, err = run(experiment(tmp_path, "classes = [0, 11]\n"), capsys)
    assert rc == 2 and "class 11 not present in fashion-mnist-small" in one_error_line(err)


# ------------------------------------------------------------------------------------------ output directories
def test_output_path_is_a_file_or_below_one(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    for out, message in [(target, "is a file, not a directory"), (target / "inside", "cannot create output directory")]:
        rc, err = run(["experiment", "diagram", "--quick", "--quiet", "--out", str(out)], capsys)
        assert rc == 2 and message in one_error_line(err)
    assert target.read_text() == "x"


def test_output_directory_of_another_experiment_is_left_alone(tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / CONFIG_FILE).write_text(json.dumps({"experiment": "escape", "n": 3}))
    rc, err = run(["experiment", "diagram", "--quick", "--quiet", "--out", str(other)], capsys)
    assert rc == 2 and "holds the results of experiment 'escape'" in one_error_line(err)
    assert json.loads((other / CONFIG_FILE).read_text()) == {"experiment": "escape", "n": 3}
    assert sorted(p.name for p in other.iterdir()) == [CONFIG_FILE]


def test_unwritable_output_directory(tmp_path, capsys, monkeypatch):
    # root may write anywhere, so the permission check is made to see a read-only directory
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: not (Path(p) == locked and mode & os.W_OK) and real_access(p, mode)
    )
    for argv in (["experiment", "diagram", "--quick", "--quiet", "--out", str(locked)], ["demo", "--out", str(locked)]):
        rc, err = run(argv, capsys)
        assert rc == 2 and "is not writable" in one_error_line(err)
    assert list(locked.iterdir()) == []


# --------------------------------------------------------------------------------------------------- demo
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--n", "1"], "Invalid value for '--n': 1 is not in the range x>=2."),
        (["--n", "many"], "Invalid value for '--n': 'many' is not a valid integer range."),
        (["--seed", "1.5"], "Invalid value for '--seed': '1.5' is not a valid integer."),
        (["--frobnicate"], "No such option '--frobnicate'."),
    ],
)
def test_demo_option_errors(tmp_path, capsys, args, message):
    rc, err = run(["demo", "--out", str(tmp_path / "o"), *args], capsys)
    assert rc == 2
    # click's usage errors come out as one line too, pointing at the command's help
    assert one_error_line(err) == f"error: {message} (see `sgdstab demo --help`)\n"


def test_demo_asking_for_more_samples_than_exist(tmp_path, capsys):
    rc, err = run(["demo", "--n", "100000", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2
    assert one_error_line(err) == (
        "error: n=100000 requested but fashion-mnist-small (train split, classes (0, 6)) has only 388 examples\n"
    )


# ---------------------------------------------------------------------------------------- environment, debug
def test_unreadable_memory_limit(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SGDSTAB_MEMORY_LIMIT", "lots")
    rc, err = run(["experiment", "diagram", "--quick", "--quiet", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2
    assert one_error_line(err) == (
        "error: environment variable SGDSTAB_MEMORY_LIMIT: cannot read memory size 'lots'; "
        "use a non-negative size such as 8G or 512M\n"
    )


def test_memory_limit_refuses_before_allocating(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("SGDSTAB_MEMORY_LIMIT", "1K")
    rc, err = run(["experiment", "diagram", "--quick", "--quiet", "--out", str(tmp_path / "o")], capsys)
    assert rc == 2 and "needs about" in one_error_line(err) and "but only 819 B is available" in err


def test_debug_shows_the_traceback_of_a_typed_error(tmp_path, capsys):
    rc = main(["--debug", *experiment(tmp_path, "n = 1\n")])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" in err and "ConfigError" in err
    assert err.strip().splitlines()[-1] == "error: config field 'n' must be ≥ 2, got 1; choose a value ≥ 2"


def test_console_script_prints_one_line_and_exits_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("widths = [0]\n")
    argv = ["experiment", "diagram", "--config", str(bad), "--out", str(tmp_path / "o")]
    proc = subprocess.run([sys.executable, "-m", "sgdstab.cli", *argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == "error: config field 'widths' must be ≥ 1, got 0; choose a value ≥ 1\n"


# ------------------------------------------------------------------------------------------------- analyze
SPEC = json.dumps({"kind": "mlp", "input_shape": [784], "outputs": 1, "widths": [8], "seed": 0})


@pytest.fixture
def checkpoint(tmp_path):
    from sgdstab.models.architectures import mlp

    model = mlp((784,), 1, widths=(8,), seed=5).double()
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    return model, path


def analyze(path, *extra) -> list[str]:
    return ["analyze", "--checkpoint", str(path), "--model", SPEC, "--n", "8", "--classes", "0,6", *map(str, extra)]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--lr", "0"], "learning rate must be a positive finite number, got 0.0"),
        (["--lr", "-1"], "learning rate must be a positive finite number, got -1.0"),
        (["--lr", "nan"], "learning rate must be a positive finite number, got nan"),
        (["--lr", "inf"], "learning rate must be a positive finite number, got inf"),
        (["--lr", "0.1", "--batch-size", "9"], "batch size must be between 1 and n = 8, got 9"),
        (["--rtol", "2"], "rtol must be a number in (0, 1), got 2.0"),
    ],
    ids=["lr 0", "lr < 0", "lr nan", "lr inf", "batch above n", "rtol 2"],
)
def test_analyze_refuses_bad_numbers(checkpoint, capsys, extra, message):
    rc, err = run(analyze(checkpoint[1], *extra), capsys)
    assert rc == 2 and one_error_line(err) == f"error: {message}\n"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--lr", "fast"], "Invalid value for '--lr': 'fast' is not a valid float."),
        (["--lr", "0.1", "--batch-size", "0"], "Invalid value for '--batch-size': 0 is not in the range x>=1."),
        (
            ["--lr", "0.1", "--batch-size", "2.5"],
            "Invalid value for '--batch-size': '2.5' is not a valid integer range.",
        ),
        (["--sampling", "shuffle"], "Invalid value for '--sampling': 'shuffle' is not one of"),
    ],
)
def test_analyze_option_errors(checkpoint, capsys, extra, message):
    rc, err = run(analyze(checkpoint[1], *extra), capsys)
    assert rc == 2 and one_error_line(err).startswith(f"error: {message}")
    assert err.rstrip().endswith("(see `sgdstab analyze --help`)")


def test_analyze_refuses_non_finite_weights(checkpoint, tmp_path, capsys):
    state = checkpoint[0].state_dict()
    state["net.0.weight"][2, 3] = float("nan")
    bad = tmp_path / "nan.pt"
    torch.save(state, bad)
    rc, err = run(analyze(bad), capsys)
    assert rc == 2 and "'net.0.weight' holds non-finite values" in one_error_line(err)


def test_analyze_refuses_corrupt_safetensors(checkpoint, tmp_path, capsys):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    good = tmp_path / "model.safetensors"
    safetensors_torch.save_file(checkpoint[0].state_dict(), str(good))
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    huge_header = tmp_path / "header.safetensors"
    huge_header.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    for path in (cut, huge_header):
        rc, err = run(analyze(path), capsys)
        assert rc == 2 and "cannot read" in one_error_line(err) and path.name in err


def test_analyze_under_a_memory_limit_refuses_before_building(checkpoint, capsys, monkeypatch):
    monkeypatch.setenv("SGDSTAB_MEMORY_LIMIT", "1K")
    rc, err = run(analyze(checkpoint[1]), capsys)
    assert rc == 2 and "the mlp model (6289 float32 numbers) needs about 24.6 KiB" in one_error_line(err)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["analyze", "--program", "m.pt2", "--checkpoint", "m.pt"], "give either --program FILE, or --checkpoint"),
        (["analyze", "--program", "m.pt2", "--model", SPEC], "give either --program FILE, or --checkpoint"),
        (["analyze", "--checkpoint", "m.pt"], "a model is needed: --checkpoint FILE with --model SPEC, or --program"),
        (["analyze"], "a model is needed: --checkpoint FILE with --model SPEC, or --program"),
    ],
    ids=["program and checkpoint", "program and spec", "checkpoint without spec", "no model"],
)
def test_analyze_needs_exactly_one_model(capsys, args, message):
    rc, err = run(args, capsys)
    assert rc == 2 and err.count("\n") == 1 and message in err, err
