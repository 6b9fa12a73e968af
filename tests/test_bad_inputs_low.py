"""The bad-input catalogue (docs/bad-inputs.md), the "Low" items of issue 13: unreadable model files, checkpoints
holding tensors that are not dense real weights, parser limits in every reader of user JSON/TOML, unchecked
seeds, rtol and list lengths, integer data that float32 would round, and models that couple the samples of a
batch, write into their input or hold no values. Each input here gave a traceback, a silent change or no limit
before; each now gives a typed one-line error (exit 2 on the command line), and the valid neighbours of each
are still answered.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from sgdstab import Problem
from sgdstab.cli import main
from sgdstab.errors import ConfigError, ModelFileError, ModelSpecError, ProblemError, SgdstabError
from sgdstab.experiments.config import MAX_LIST_LEN, load_config, parse_overrides
from sgdstab.experiments.minimum import NetConfig
from sgdstab.models.architectures import MAX_INPUT_DIMS, MAX_LAYERS, ModelSpec, mlp
from sgdstab.models.loading import load_model, load_program, load_spec, load_weights, read_state_dict
from sgdstab.sweep.config import RunConfig, load_sweep, run_from_dict

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = {"kind": "mlp", "input_shape": [784], "outputs": 1, "widths": [8], "seed": 0}
SPEC_TEXT = json.dumps(SPEC)


def one_line(exc: BaseException) -> str:
    assert isinstance(exc, SgdstabError), type(exc)
    text = str(exc)
    assert text and "\n" not in text and len(text) < 400, text
    return text


def cli(argv: list[str], capsys) -> str:
    """The one error line of ``sgdstab argv``, which must exit 2 without a traceback."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, (rc, err)
    return err


@pytest.fixture
def weights(tmp_path):
    """A state dict of SPEC's model (float64) and its checkpoint file."""
    model = mlp((784,), 1, widths=(8,), seed=5).double()
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    return model.state_dict(), path


def analyze(checkpoint: Path, spec: str | Path = SPEC_TEXT) -> list[str]:
    return ["analyze", "--checkpoint", checkpoint, "--model", spec, "--n", "8", "--classes", "0,6"]


# ------------------------------------------------------------------------------------- unreadable model files
@pytest.fixture
def deny(monkeypatch):
    """deny(path): opening ``path`` raises PermissionError, as a chmod 000 file does for a user other than root
    (tests run as root on CI, where permission bits do not stop reads)."""

    def install(path: Path) -> None:
        real_open, real_io_open = builtins.open, io.open
        target = os.path.realpath(path)

        def guarded(opener):
            def open_(file, *args, **kwargs):
                if isinstance(file, str | os.PathLike) and os.path.realpath(os.fspath(file)) == target:
                    raise PermissionError(13, "Permission denied", os.fspath(file))
                return opener(file, *args, **kwargs)

            return open_

        monkeypatch.setattr(builtins, "open", guarded(real_open))
        monkeypatch.setattr(io, "open", guarded(real_io_open))

    return install


def _program(tmp_path: Path) -> Path:
    model = nn.Sequential(nn.Linear(784, 4), nn.Tanh(), nn.Linear(4, 1)).eval()
    path = tmp_path / "net.pt2"
    batch = torch.export.Dim("batch")
    X = torch.zeros(4, 784)
    torch.export.save(torch.export.export(model, (X,), dynamic_shapes=({0: batch},)), path)
    return path


def test_unreadable_model_files_are_one_line(weights, tmp_path, deny):
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(SPEC))
    program = _program(tmp_path)
    for path, load in (
        (weights[1], lambda: read_state_dict(weights[1])),
        (program, lambda: load_program(program)),
        (spec_file, lambda: load_spec(spec_file)),
    ):
        deny(path)
        with pytest.raises(ModelFileError) as info:
            load()
        assert "permission denied; check the file's permissions" in one_line(info.value)
        assert path.name in str(info.value)


def test_unreadable_model_files_exit_2(weights, tmp_path, capsys, deny):
    program = _program(tmp_path)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(SPEC))
    deny(weights[1])
    assert "cannot read checkpoint" in cli(analyze(weights[1]), capsys)
    deny(program)
    assert "cannot read program" in cli(["analyze", "--program", program], capsys)
    deny(spec_file)
    assert "cannot read model spec file" in cli(analyze(tmp_path / "other.pt", spec_file), capsys)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads a chmod 000 file")
def test_chmod_000_checkpoint_exits_2(weights, capsys):
    weights[1].chmod(0)
    try:
        assert "permission denied" in cli(analyze(weights[1]), capsys)
    finally:
        weights[1].chmod(0o644)


# ------------------------------------------------------------------------- tensors that are not real weights
def _quantized(t: torch.Tensor) -> torch.Tensor:
    return torch.quantize_per_tensor(t.float(), 0.01, 0, torch.qint8)


HOSTILE_WEIGHTS = {
    "meta": (lambda t: t.to("meta"), "is a meta tensor"),
    "sparse coo": (lambda t: t.to_sparse(), "layout torch.sparse_coo"),
    "sparse csr": (lambda t: t.to_sparse_csr(), "layout torch.sparse_csr"),
    "complex": (lambda t: t.to(torch.complex128), "dtype torch.complex128"),
    "float8 e4m3": (lambda t: t.to(torch.float8_e4m3fn), "dtype torch.float8_e4m3fn"),
    "float8 e5m2": (lambda t: t.to(torch.float8_e5m2), "dtype torch.float8_e5m2"),
    "quantized": (_quantized, r"is quantized \(torch.qint8\)"),
    "int64": (lambda t: t.long(), "dtype torch.int64, but the model's is floating point"),
    "nested dict": (lambda t: {"w": t}, r"is not a named tensor \(dict\)"),
    "list": (lambda t: t.tolist(), r"is not a named tensor \(list\)"),
}


@pytest.mark.filterwarnings("ignore::UserWarning")  # torch: "Sparse CSR tensor support is in beta"
@pytest.mark.parametrize("kind", sorted(HOSTILE_WEIGHTS))
def test_checkpoints_holding_what_is_not_a_real_weight_are_refused(weights, tmp_path, capsys, kind):
    change, match = HOSTILE_WEIGHTS[kind]
    state = dict(weights[0])
    state["net.0.weight"] = change(state["net.0.weight"])
    path = tmp_path / "bad.pt"
    torch.save(state, path)
    with pytest.raises(ModelFileError, match=match) as info:
        load_model(SPEC, path)
    assert "'net.0.weight'" in one_line(info.value)
    assert "'net.0.weight'" in cli(analyze(path), capsys)  # the complex one was analysed with exit 0 before


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("kind", ["meta", "sparse coo", "complex", "float8 e4m3", "quantized", "int64"])
def test_a_state_dict_given_in_python_is_checked_the_same(weights, kind):
    change, match = HOSTILE_WEIGHTS[kind]
    state = dict(weights[0])
    state["net.2.weight"] = change(state["net.2.weight"])
    with pytest.raises(ModelFileError, match=match) as info:
        load_weights(mlp((784,), 1, widths=(8,)), state)
    assert "'net.2.weight'" in one_line(info.value)


@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.float8_e5m2, torch.complex64])
def test_safetensors_of_a_dtype_that_is_not_a_real_weight_are_refused(weights, tmp_path, dtype):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    state = {k: v.to(dtype) for k, v in weights[0].items()}
    path = tmp_path / "bad.safetensors"
    safetensors_torch.save_file(state, str(path))
    with pytest.raises(ModelFileError, match=f"has dtype {dtype}") as info:
        load_model(SPEC, path)
    one_line(info.value)


def test_real_float_checkpoints_still_load(weights, tmp_path):
    for dtype in (torch.float32, torch.float64):
        path = tmp_path / f"{dtype}.pt"
        torch.save({k: v.to(dtype) for k, v in weights[0].items()}, path)
        model = load_model(SPEC, path)
        assert next(model.parameters()).dtype == dtype
        assert torch.equal(model.state_dict()["net.0.weight"], weights[0]["net.0.weight"].to(dtype))


# ------------------------------------------------------------------------------------------- parser limits
DEEP = 100_000
HOSTILE_JSON = {
    "deep": "[" * DEEP + "]" * DEEP,
    "deep value": '{"kind": ' + "[" * DEEP + "]" * DEEP + "}",
    "5000 digits": '{"kind": "mlp", "input_shape": [784], "outputs": 1, "seed": ' + "7" * 5000 + "}",
    "401-digit float field": '{"kind": "mlp", "input_shape": [784], "outputs": 1, "init_scale": ' + "1" * 401 + "}",
    "1e401": '{"kind": "mlp", "input_shape": [784], "outputs": 1, "init_scale": 1e401}',
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_JSON))
def test_hostile_spec_json_is_one_line(tmp_path, capsys, kind):
    text = HOSTILE_JSON[kind]
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(text)
    for given in (text, spec_file):
        with pytest.raises(ModelFileError) as info:
            load_spec(given)
        one_line(info.value)
    assert "model spec file" in cli(analyze(tmp_path / "none.pt", spec_file), capsys)
    assert "--model" in cli(analyze(tmp_path / "none.pt", text), capsys)


def test_a_spec_dict_with_a_huge_int_is_one_line():
    for field in ("init_scale", "seed", "outputs", "kernel_size"):
        with pytest.raises(ModelSpecError, match=field) as info:
            ModelSpec.from_dict({**SPEC, field: 10**400})  # math.isfinite raised OverflowError on init_scale
        one_line(info.value)


HOSTILE_TOML = {  # kind: (the text, what the one line says)
    "deep": ("n = " + "[" * DEEP + "]" * DEEP + "\n", "too deeply"),
    "41 levels": ("widths = " + "[" * 41 + "]" * 41 + "\n", "deeper than 32 levels"),
    "5000 digits": ("n = " + "7" * 5000 + "\n", "does not fit in 64 bits"),
    "401-digit float field": ("gd_lr = " + "1" * 401 + "\n", "does not fit in 64 bits"),
    "401-digit float": ("gd_lr = " + "1" * 401 + ".0\n", "longer than 100 characters"),
    "1e401": ("gd_lr = 1e401\n", "beyond the range of a float"),
    "seed 2**63": ("seed = 9223372036854775808\n", "does not fit in 64 bits"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE_TOML))
def test_hostile_experiment_config_is_one_line(tmp_path, capsys, kind):
    from sgdstab.experiments.diagram import DiagramConfig

    text, match = HOSTILE_TOML[kind]
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match) as info:
        load_config(DiagramConfig, path)
    assert "config file" in one_line(info.value)
    argv = ["experiment", "diagram", "--quick", "--quiet", "--config", path, "--out", tmp_path / "o"]
    assert match.split()[-1] in cli(argv, capsys)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kind", ["deep", "5000 digits", "401-digit float field", "1e401", "seed 2**63"])
def test_hostile_json_config_is_one_line(tmp_path, kind):
    from sgdstab.experiments.diagram import DiagramConfig

    text, match = HOSTILE_TOML[kind]
    key, _, value = text.partition(" = ")
    path = tmp_path / "config.json"
    path.write_text(f'{{"{key}": {value.strip()}}}')
    with pytest.raises(ConfigError, match=match) as info:  # "5000 digits" advised sys.set_int_max_str_digits
        load_config(DiagramConfig, path)
    assert "config file" in one_line(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "[base]\nn = " + "[" * DEEP + "]" * DEEP,
        "[grid]\nlr = [" + "1" * 401 + "]",
        "[grid]\nseed = [" + "7" * 5000 + "]",
        "[[runs]]\nseed = 18446744073709551616",
        "[base]\nrtol = 1e-300\n[grid]\nlr = [0.1]",
    ],
    ids=["deep", "401-digit lr", "5000-digit seed", "seed 2**64", "rtol 1e-300"],
)
def test_hostile_sweep_config_is_one_line(tmp_path, capsys, text):
    path = tmp_path / "s.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_sweep(path).expand()
    one_line(info.value)
    assert "s.toml" in cli(["sweep", path, "--out", tmp_path / "out", "--quiet"], capsys)
    assert not (tmp_path / "out").exists()  # refused before the directory or its store is created


@pytest.mark.parametrize(
    "item",
    ["widths=" + "[" * DEEP + "]" * DEEP, "n=" + "7" * 5000, "gd_lr=" + "1" * 401 + ".5", f"seed={2**64}"],
    ids=["deep", "5000 digits", "401-digit float", "seed 2**64"],
)
def test_set_overrides_beyond_a_limit_are_refused_not_taken_as_text(item):
    with pytest.raises(ConfigError, match="--set") as info:
        parse_overrides([item])
    one_line(info.value)
    assert parse_overrides(["data_dir=/data/x"]) == {"data_dir": "/data/x"}  # plain text is still a string


# ---------------------------------------------------------------------------------- seeds, rtol and lengths
@pytest.mark.parametrize("seed", [2**63, 2**64, 10**30, -(2**63) - 1])
def test_config_integers_beyond_64_bits_are_refused_before_any_run(seed):
    with pytest.raises(ConfigError, match="fit in 64 bits") as info:
        run_from_dict({"seed": seed})
    one_line(info.value)
    assert run_from_dict({"seed": 2**62 - 1}).seed == 2**62 - 1


@pytest.mark.parametrize("seed", [2**62 - 1, 2**62, 2**63 - 1])
def test_a_sweep_takes_exactly_the_seeds_its_estimators_take(seed):
    from sgdstab.errors import MethodError
    from sgdstab.measure.curvature import check_seed

    try:
        check_seed(seed)
    except MethodError:  # refused with the config, not after the run has started (it was)
        with pytest.raises(ConfigError, match="config field 'seed'") as info:
            run_from_dict({"seed": seed})
        one_line(info.value)
    else:
        assert run_from_dict({"seed": seed}).seed == seed


def test_the_sweep_rtol_floor_is_checked_with_the_config():
    for rtol in (1e-300, 5e-324, 1e-13):
        with pytest.raises(ConfigError, match="rtol") as info:
            run_from_dict({"rtol": rtol})
        one_line(info.value)
    assert run_from_dict({"rtol": 1e-12}).rtol == 1e-12


def test_five_million_widths_are_refused_at_once(tmp_path):
    widths = [1] * 5_000_000
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=f"holds 5000000 values, more than {MAX_LAYERS}") as info:
        run_from_dict({"widths": widths})
    one_line(info.value)
    with pytest.raises(ConfigError, match=f"more than {MAX_LIST_LEN}"):
        load_config(NetConfig, _write(tmp_path / "c.json", json.dumps({"widths": widths})))
    with pytest.raises(ModelSpecError, match=f"widths holds more than {MAX_LAYERS} values") as info:
        ModelSpec.from_dict({**SPEC, "widths": widths})
    one_line(info.value)
    assert time.perf_counter() - start < 10  # ran on for minutes before; about 1 s here, mostly the JSON


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_layer_and_dimension_counts_have_limits():
    ModelSpec.from_dict({**SPEC, "widths": [2] * MAX_LAYERS})  # the limit itself is accepted
    cases = [
        ({**SPEC, "widths": [2] * (MAX_LAYERS + 1)}, "widths holds more than 64"),
        ({**SPEC, "input_shape": [1] * (MAX_INPUT_DIMS + 1)}, "input_shape holds more than 8"),
        ({**SPEC, "kind": "cnn", "input_shape": [1, 4, 4], "channels": [1] * 65}, "channels holds more than 64"),
    ]
    for spec, match in cases:
        with pytest.raises(ModelSpecError, match=match) as info:
            ModelSpec.from_dict(spec)
        one_line(info.value)
    with pytest.raises(ConfigError, match="'channels' holds 65 values"):
        run_from_dict({"channels": [1] * 65})
    assert len(RunConfig().widths) >= 1


# -------------------------------------------------------------------------------------- integer data
def _linear(dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(3, 1).to(dtype)


@pytest.mark.parametrize(
    ("dtype", "value", "power"),
    [(torch.float32, 2**24 + 1, 24), (torch.float64, 2**53 + 1, 53), (torch.float64, 2**62, 53)],
)
def test_integers_the_dtype_would_round_are_refused(dtype, value, power):
    X = torch.tensor([[1, 2, 3], [value, 5, 6]], dtype=torch.int64)
    Y = torch.zeros(2, 1)
    with pytest.raises(ProblemError, match=rf"X holds integers that {dtype} cannot represent exactly .*2\*\*{power}"):
        Problem(_linear(dtype), X, Y)
    with pytest.raises(ProblemError, match="Y holds integers"):
        Problem(_linear(dtype), X[:, :1].repeat(1, 3) * 0, X[:, :1])


def test_integers_the_dtype_holds_are_converted_exactly():
    X = torch.tensor([[2**24, 2**25, -(2**24)], [1, 2, 3]], dtype=torch.int64)  # 2**25 is exact in float32
    P = Problem(_linear(torch.float32), X, torch.zeros(2, 1))
    assert torch.equal(P.X.to(torch.int64), X)
    X64 = torch.tensor([[2**53, 2**24 + 1, 7]], dtype=torch.int64)
    assert torch.equal(Problem(_linear(), X64, torch.zeros(1, 1)).X.to(torch.int64), X64)


# ---------------------------------------------------------------------------------- models that misbehave
class Shift(nn.Module):
    """Sample i ≥ 1 sees sample i − 1: sample 0 (all the old check looked at alone) is as if alone."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 1).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(torch.cat([x[:1], x[1:] + x[:-1]]))


class LargeBatches(nn.Module):
    """Couples the samples only in batches of more than 8 (the old check ran at most 8)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 1).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) + (x.mean(0).sum() if x.shape[0] > 8 else 0)


class LastSample(nn.Module):
    """Only the last sample of a batch sees another one."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 1).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lin(x)
        return torch.cat([out[:-1], out[-1:] + x[:1].sum()]) if x.shape[0] > 1 else out


class NotVmappable(nn.Module):
    """Data-dependent control flow (``.item()``), which ``vmap`` cannot run, coupling a batch of more than 8."""

    def __init__(self, couple: bool) -> None:
        super().__init__()
        self.lin, self.couple = nn.Linear(3, 1).double(), couple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lin(x)
        if float(x.abs().sum().item()) > 0 and self.couple and x.shape[0] > 8:
            out = out + x.mean(0).sum()
        return out


class InPlace(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 1).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.mul_(2))


def _data(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 3, dtype=torch.float64, generator=g), torch.randn(n, 1, dtype=torch.float64, generator=g)


@pytest.mark.parametrize("model", [Shift, LargeBatches, LastSample, lambda: NotVmappable(True)], ids=repr)
@pytest.mark.parametrize("n", [12, 300])
def test_models_coupling_samples_beyond_the_first_eight_are_refused(model, n):
    torch.manual_seed(0)
    with pytest.raises(ProblemError, match="depends on the other samples in its batch") as info:
        Problem(model(), *_data(n))
    one_line(info.value)


def test_models_that_treat_samples_alone_pass_the_whole_batch_check():
    torch.manual_seed(0)
    for model in (NotVmappable(False), nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()):
        X, _ = _data(300)
        Problem(model, X, torch.zeros(300, 2 if isinstance(model, nn.Sequential) else 1, dtype=torch.float64))
    bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 1)).double().eval()
    Problem(bn, *_data(300), chunk_size=7)  # running statistics: per-sample, in any chunking


class NeedsTwo(nn.Module):
    """Fails on a batch of one sample, as the per-sample derivatives run it."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 1).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == 1:
            raise RuntimeError("this model needs two samples")
        return self.lin(x)


def test_a_model_that_fails_on_one_sample_is_one_line():
    with pytest.raises(ProblemError, match=r"model failed on the single sample X\[0\] .*needs two samples") as info:
        Problem(NeedsTwo(), *_data())
    one_line(info.value)


def test_batchnorm_without_running_statistics_is_refused_in_eval_mode():
    bn = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.Linear(4, 1))
    with pytest.raises(ProblemError, match="module '1' is BatchNorm without running statistics") as info:
        Problem(bn.double().eval(), *_data())
    one_line(info.value)


def test_a_model_writing_into_its_input_is_refused_and_the_data_are_unchanged():
    X, Y = _data()
    before = X.clone()
    with pytest.raises(ProblemError, match="modifies its input in place") as info:
        Problem(InPlace(), X, Y)
    one_line(info.value)
    assert torch.equal(X, before)  # X.to(float64) is X itself: the old check doubled the user's data


def test_tensors_without_values_are_refused():
    with torch.device("meta"):
        meta_model = nn.Linear(3, 1)
    with pytest.raises(ProblemError, match="model parameter 'weight' is a meta tensor") as info:
        Problem(meta_model, *_data())
    one_line(info.value)
    X, Y = _data()
    for bad_X, match in ((X.to("meta"), "X is a meta tensor"), (X.to_sparse(), "X is a tensor of layout")):
        with pytest.raises(ProblemError, match=match):
            Problem(_linear(), bad_X, Y)


# ------------------------------------------------------------- checks that live in modules owned elsewhere
# These pin the checks of issue 13 that live in curvature.py, training.py, cli.py and history.py.


def test_analyze_refuses_an_rtol_below_float64_rounding(weights, capsys):
    err = cli([*analyze(weights[1]), "--rtol", "1e-300"], capsys)  # ZeroDivisionError traceback before
    assert err == "error: rtol must be at least 1e-12 (float64 rounding), got 1e-300\n"


def test_seeds_up_to_2_63_are_taken_and_beyond_refused_at_the_option(weights, capsys):
    assert main([str(a) for a in analyze(weights[1])] + ["--seed", str(2**62)]) == 0  # refused before
    capsys.readouterr()
    for argv in (analyze(weights[1]), ["demo", "--quiet", "--out", weights[1].parent / "d"]):
        err = cli([*argv, "--seed", str(2**63)], capsys)
        assert "Invalid value for '--seed'" in err and "0<=x<=9223372036854775807" in err


def test_train_refuses_a_seed_beyond_64_bits():
    from sgdstab import train
    from sgdstab.errors import TrainingError

    P = Problem(_linear(), *_data())
    with pytest.raises(TrainingError, match=r"seed must be an integer in \[0, 2\*\*63\)") as info:
        train(P, 0.1, 4, steps=1, seed=2**64)  # torch's "Overflow when unpacking long" before
    one_line(info.value)


@pytest.mark.parametrize("text", ["[" * DEEP + "]" * DEEP, '{"a": ' + "7" * 5000 + "}"], ids=["deep", "5000 digits"])
def test_a_hostile_history_file_is_one_line(tmp_path, text):
    from sgdstab.errors import HistoryError
    from sgdstab.training.history import History

    path = tmp_path / "history.json"
    path.write_text(text)
    with pytest.raises(HistoryError, match="cannot read history") as info:  # RecursionError, ValueError before
        History.load(path)
    one_line(info.value)


def test_long_sweep_grids_and_run_lists_are_checked_at_once():
    from sgdstab.sweep.config import MAX_RUNS, sweep_from_dict

    start = time.perf_counter()
    for values, match in (
        ({"grid": {"lr": [0.1] * 5_000_000}}, "has 5000000 values, more than 100000 runs"),
        ({"runs": [{}] * (MAX_RUNS + 1)}, "has 100001 entries, more than 100000"),
    ):
        with pytest.raises(ConfigError, match=match) as info:
            sweep_from_dict(values)
        one_line(info.value)
    # the largest grid allowed is validated in well under a second (the pairwise repeat scan took minutes)
    sweep_from_dict({"grid": {"lr": [1e-3 + i * 1e-7 for i in range(MAX_RUNS)]}})
    assert time.perf_counter() - start < 10
