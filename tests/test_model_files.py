"""Models a user brings (issue #8 §2, §3, §5, §6): plain PyTorch state dicts, torch.export programs read without
running code from the file, answers in the user's learning-rate convention, ``print(analysis)`` as the CLI's table,
and bad input caught before any work.

The hostile archives are each a real ``torch.export.save`` file with one part replaced by a payload that would
create a marker file if any code from the file ran: a pickle with ``__reduce__`` (weights, sample inputs, pickled
constants), a symbolic shape that ``sympy.sympify`` would evaluate, guard code that ``ep.module()`` would compile,
a name that would be pasted into FX's generated code, and a compiled-library member. Before the fix the sympify and
guard payloads ran with plain ``torch.export.load`` (the marker appeared).
"""

from __future__ import annotations

import io
import json
import math
import pickle
import time
import zipfile

import pytest
import torch
from torch import nn

import sgdstab
from sgdstab.cli import main
from sgdstab.errors import ModelFileError, ProblemError
from sgdstab.linear_stability.analysis import analyze
from sgdstab.models.loading import fit_inputs, load_model, load_program, program_input_shape

SPEC = {"kind": "mlp", "input_shape": [784], "outputs": 1, "widths": [16]}


def _plain(seed: int = 0, d: int = 784, width: int = 16) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, width), nn.Tanh(), nn.Linear(width, 1)).double()


def _data(n: int = 24):
    return sgdstab.load_dataset("fashion-mnist-small", n=n, classes=(0, 6))


def _small(n: int = 20, d: int = 6, k: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, k, generator=g, dtype=torch.float64)


def _one_line_error(capsys, args):
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------------------------------------- state dicts
@pytest.mark.parametrize("prefix", ["", "module.", "_orig_mod."])
def test_a_plain_sequential_state_dict_fits_the_mlp_spec(tmp_path, prefix):
    plain = _plain()
    path = tmp_path / "plain.pt"
    torch.save({prefix + k: v for k, v in plain.state_dict().items()}, path)
    model = load_model(SPEC, path)
    X = _data().X.double()
    torch.testing.assert_close(model(X), plain(X.flatten(1)), rtol=0, atol=0)


def test_a_state_dict_of_another_architecture_names_the_expected_keys_and_the_fix(tmp_path):
    other = nn.Sequential(nn.Linear(784, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1))
    path = tmp_path / "other.pt"
    torch.save(other.state_dict(), path)
    with pytest.raises(ModelFileError) as info:
        load_model(SPEC, path)
    message = str(info.value)
    assert "'net.0.weight'" in message and "sgdstab.build_model" in message and "--program" in message
    assert "\n" not in message


# ---------------------------------------------------------------------------------------------- torch.export
def _export(model: nn.Module, path, X):
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(model, (X[:4],), dynamic_shapes=({0: batch},)), path)


def test_an_exported_program_gives_the_same_figures_as_the_module(tmp_path):
    plain = _plain(1, d=6, width=5)
    X, Y = _small()
    path = tmp_path / "net.pt2"
    _export(plain, path, X)
    program = load_program(path)
    assert program_input_shape(program) == (None, 6)
    a = analyze(program, X, Y, lr=0.02, batch_size=4, method="dense", at_minimum=False)
    b = analyze(plain, X, Y, lr=0.02, batch_size=4, method="dense", at_minimum=False)
    for name in ("hessian_frobenius", "trace", "sharpness", "gauss_newton_frobenius"):
        assert getattr(a.curvature, name) == pytest.approx(getattr(b.curvature, name), rel=1e-10, abs=0), name
    assert a.alignment.mu == pytest.approx(b.alignment.mu, rel=1e-10)
    assert a.stability.critical_lr == pytest.approx(b.stability.critical_lr, rel=1e-10)
    # and the reference: ||H||_F of the dense autograd Hessian of L on the original module
    params = dict(plain.named_parameters())
    names, shapes = list(params), [p.shape for p in params.values()]
    sizes = [p.numel() for p in params.values()]

    def loss(theta):
        parts = dict(zip(names, (t.reshape(s) for t, s in zip(theta.split(sizes), shapes, strict=True)), strict=True))
        r = torch.func.functional_call(plain, parts, (X,)) - Y
        return (r * r).sum() / (2 * len(X))

    H = torch.autograd.functional.hessian(loss, torch.cat([p.detach().reshape(-1) for p in params.values()]))
    assert a.curvature.hessian_frobenius == pytest.approx(float(torch.linalg.matrix_norm(H)), rel=1e-10)


def test_images_go_flat_into_a_program_exported_on_flat_inputs(tmp_path):
    plain = _plain(2, d=784, width=3)
    X = _data(8).X.double()
    path = tmp_path / "flat.pt2"
    _export(plain, path, X.flatten(1))
    program = load_program(path)
    flat, note = fit_inputs(program, X)  # (8, 1, 28, 28) images
    assert flat.shape == (8, 784) and "flattened" in note
    torch.testing.assert_close(program(flat), plain(X.flatten(1)), rtol=0, atol=0)
    assert fit_inputs(program, X.flatten(1))[1] is None  # flat already: unchanged


def test_the_cli_analyzes_a_program_as_the_api_does(tmp_path, capsys):
    plain = _plain(3, d=784, width=3)
    data = _data(12)
    path = tmp_path / "net.pt2"
    _export(plain, path, data.X.flatten(1).double())
    args = ["--n", "12", "--classes", "0,6", "--lr", "0.05", "--batch-size", "3", "--at-minimum", "--json"]
    rc = main(["analyze", "--program", str(path), *args])
    out = capsys.readouterr()
    assert rc == 0, out.err
    cli = json.loads(out.out)
    api = analyze(plain, data.X.flatten(1), data.Y, lr=0.05, batch_size=3, at_minimum=True)
    assert "flattened" in cli["inputs"]
    for key in ("hessian_frobenius", "sharpness", "trace"):
        assert cli["curvature"][key] == pytest.approx(getattr(api.curvature, key), rel=1e-9), key
    assert cli["stability"]["critical_lr"] == pytest.approx(api.stability.critical_lr, rel=1e-9)


class _Marker:
    """Unpickling this creates a file: the proof that code from a file ran."""

    path = ""

    def __reduce__(self):
        return (open, (self.path, "w"))


def _pickled_marker(marker) -> bytes:
    _Marker.path = str(marker)
    buffer = io.BytesIO()
    torch.save({"x": _Marker()}, buffer)
    return buffer.getvalue()


def _rewrite(source, target, replace, add=None):
    """A copy of the archive ``source`` with members whose name ends with a key of ``replace`` rewritten."""
    with zipfile.ZipFile(source) as zin, zipfile.ZipFile(target, "w") as zout:
        root = zin.namelist()[0].split("/", 1)[0]
        for item in zin.infolist():
            data = zin.read(item.filename)
            for suffix, new in replace.items():
                if item.filename.endswith(suffix):
                    data = new(data)
            zout.writestr(item, data)
        for name, data in (add or {}).items():
            zout.writestr(f"{root}/{name}", data)
    return target


def _text(fn):
    return lambda data: fn(data.decode()).encode()


def _hostile(kind: str, good, tmp_path, marker):
    """A program archive whose ``kind`` part would run code (creating ``marker``) if loaded naively."""
    payload = _pickled_marker(marker)
    target = tmp_path / f"{kind}.pt2"

    def flag_pickle(text):
        config = json.loads(text)
        for meta in config["config"].values():
            meta["use_pickle"] = True
        return json.dumps(config)

    def sym(text):  # whatever torch named the batch symbol, wrap it in a call that writes the marker
        model = json.loads(text)

        def walk(node):
            if isinstance(node, dict):
                return {
                    k: (f"(open({str(marker)!r}, 'w') and {v})" if k == "expr_str" else walk(v))
                    for k, v in node.items()
                }
            return [walk(v) for v in node] if isinstance(node, list) else node

        return json.dumps(walk(model))

    cases = {
        "weights_use_pickle": {"model_weights_config.json": _text(flag_pickle), "weights/weight_0": lambda _: payload},
        "sample_inputs": {"sample_inputs/model.pt": lambda _: payload},
        "sympify": {"models/model.json": _text(sym)},
        "quoted_name": {
            "models/model.json": _text(lambda t: t.replace('"0.weight"', json.dumps(f'0.w"),open("{marker}","w"),("'))),
            "model_weights_config.json": _text(
                lambda t: t.replace('"0.weight"', json.dumps(f'0.w"),open("{marker}","w"),("'))
            ),
        },
    }
    if kind == "compiled_library":
        return _rewrite(good, target, {}, add={"data/aotinductor/model/model.so": b"\x7fELF" + payload})
    if kind == "custom_object":

        def add_object(text):
            config = json.loads(text)
            config.setdefault("config", {})["obj"] = {"path_name": "custom_obj_0", "use_pickle": True}
            return json.dumps(config)

        return _rewrite(
            good,
            target,
            {"model_constants_config.json": _text(add_object)},
            add={"data/constants/custom_obj_0": payload},
        )
    return _rewrite(good, target, cases[kind])


HOSTILE = ["weights_use_pickle", "sample_inputs", "sympify", "quoted_name", "compiled_library", "custom_object"]


@pytest.fixture(scope="module")
def good_program(tmp_path_factory):
    path = tmp_path_factory.mktemp("program") / "good.pt2"
    _export(_plain(4, d=784, width=2), path, _data(8).X.flatten(1).double())
    return path


@pytest.mark.parametrize("kind", HOSTILE)
def test_a_hostile_program_is_refused_without_running_its_code(good_program, tmp_path, capsys, kind):
    marker = tmp_path / "code-ran"
    path = _hostile(kind, good_program, tmp_path, marker)
    with pytest.raises(ModelFileError) as info:
        load_program(path)
    assert "\n" not in str(info.value)
    assert not marker.exists()
    err = _one_line_error(capsys, ["analyze", "--program", str(path), "--n", "8", "--classes", "0,6"])
    assert "program" in err
    assert not marker.exists()


def test_the_hostile_payloads_do_run_code_through_a_plain_torch_export_load(good_program, tmp_path):
    """The reason for the guard: the symbolic-shape payload is evaluated by torch.export.load itself."""
    marker = tmp_path / "code-ran"
    path = _hostile("sympify", good_program, tmp_path, marker)
    torch.export.load(path)
    assert marker.exists()


def test_guard_code_in_a_program_is_never_compiled(good_program, tmp_path):
    marker = tmp_path / "code-ran"
    guard = json.dumps([f"open({str(marker)!r}, 'w') is not None"])
    path = _rewrite(
        good_program,
        tmp_path / "guards.pt2",
        {"models/model.json": _text(lambda t: t.replace('"guards_code": []', f'"guards_code": {guard}'))},
    )
    x = torch.randn(5, 784, dtype=torch.float64)
    torch.export.load(path).module()(x)
    assert marker.exists()  # what a plain ep.module() does with it
    marker.unlink()
    program = load_program(path)
    torch.testing.assert_close(program(x), torch.export.load(good_program).module()(x))
    assert not marker.exists()


def test_the_guard_refuses_code_in_symbolic_strings_and_is_lifted_afterwards(tmp_path):
    import sympy

    from sgdstab.models.loading import _no_code_from_the_file

    marker = tmp_path / "code-ran"
    with _no_code_from_the_file():
        assert sympy.sympify("FloorDiv(Symbol('s0', integer=True), 2) + 1") is not None
        with pytest.raises(ValueError, match="not shape arithmetic"):
            sympy.sympify(f"open({str(marker)!r}, 'w')")
        with pytest.raises(pickle.UnpicklingError):
            pickle.loads(pickle.dumps({"a": 1}))
    assert not marker.exists()
    assert pickle.loads(pickle.dumps({"a": 1})) == {"a": 1}
    assert sympy.sympify("x + 1") == sympy.Symbol("x") + 1
    buffer = io.BytesIO()
    torch.save({"t": torch.ones(2)}, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer)["t"], torch.ones(2))


def test_not_a_program_is_one_line(tmp_path, capsys):
    path = tmp_path / "x.pt2"
    path.write_bytes(b"not a zip")
    with pytest.raises(ModelFileError, match=r"not a torch\.export archive"):
        load_program(path)
    _one_line_error(capsys, ["analyze", "--program", str(path)])


# ---------------------------------------------------------------------------------------------- the user's units
@pytest.mark.parametrize("k", [1, 3])
def test_learning_rate_figures_come_back_in_the_users_convention(k):
    X, Y = _small(n=16, d=5, k=k, seed=k)
    model = _plain(5, d=5, width=4)
    model[-1] = nn.Linear(4, k).double()
    torch_lr = 0.01
    a = analyze(model, X, Y, lr=torch_lr, batch_size=4, loss="torch_mse", method="dense", at_minimum=False)
    half = analyze(model, X, Y, lr=2 * torch_lr / k, batch_size=4, method="dense", at_minimum=False)
    # the same SGD: on L the figures agree; on MSELoss each learning rate is k/2 times the one on L
    assert a.lr_figures["lr"] == pytest.approx({"half_mse": 2 * torch_lr / k, "torch_mse": torch_lr})
    assert set(a.lr_figures) == set(half.lr_figures) >= {"lr", "gd_max_lr", "critical_lr"}
    assert any(name.startswith("certificate:") for name in a.lr_figures)
    for name, figures in a.lr_figures.items():
        assert figures["half_mse"] == pytest.approx(half.lr_figures[name]["half_mse"], rel=1e-9), name
        assert figures["torch_mse"] == pytest.approx(figures["half_mse"] * k / 2, rel=1e-12), name
        assert a.lr_in_convention(name) == figures["torch_mse"]
    assert a.lr_figures["critical_lr"]["half_mse"] == pytest.approx(a.stability.critical_lr, rel=1e-12)
    assert a.lr_figures["gd_max_lr"]["half_mse"] == pytest.approx(2 / a.curvature.sharpness, rel=1e-12)
    # the JSON names each convention
    assert json.loads(a.to_json())["lr_figures"]["critical_lr"] == pytest.approx(a.lr_figures["critical_lr"])
    text = str(a)
    assert f"{a.lr_in_convention('critical_lr'):.6g} on torch_mse" in text
    assert set(half.lr_figures["critical_lr"]) == {"half_mse"}


def test_print_of_an_analysis_is_the_cli_table(tmp_path, capsys):
    model = sgdstab.mlp((784,), 1, widths=(3,), seed=5).double()
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    spec = json.dumps({"kind": "mlp", "input_shape": [784], "outputs": 1, "widths": [3]})
    args = ["--n", "12", "--classes", "0,6", "--lr", "0.05", "--batch-size", "3", "--loss", "torch_mse"]
    rc = main(["analyze", "--checkpoint", str(path), "--model", spec, *args, "--at-minimum"])
    out = capsys.readouterr()
    assert rc == 0, out.err
    X, Y = _data(12)
    text = str(analyze(model, X, Y, lr=0.05, batch_size=3, loss="torch_mse", at_minimum=True))
    table = text.splitlines()[1:]  # the first line carries the run time
    assert table and all(line in out.out.splitlines() for line in table)
    assert max(len(line) for line in text.splitlines()[:-1] if not line.startswith("note")) < 160
    assert "η*(B) exact" in text and "on torch_mse" in text


# ---------------------------------------------------------------------------------------------- bad input, early
@pytest.mark.parametrize("model", [["--program", "/nonexistent.pt2"], ["--checkpoint", "/no.pt", "--model", "{}"]])
def test_a_bad_learning_rate_is_refused_before_anything_is_loaded(capsys, model):
    start = time.perf_counter()
    err = _one_line_error(capsys, ["analyze", *model, "--lr", "0", "--batch-size", "4"])
    assert "learning rate" in err and time.perf_counter() - start < 5


def test_a_model_no_better_than_zero_is_flagged():
    X, Y = _small(n=12, d=4, seed=7)
    Y = Y.sign()  # ±1 targets: the zero predictor's L is ½·mean y² = 0.5
    wrong = _plain(6, d=4, width=3)
    with torch.no_grad():
        for p in wrong.parameters():
            p.mul_(20)
    a = analyze(wrong, X, Y, method="dense", at_minimum=False)
    assert a.loss >= 0.5
    assert any("no better than predicting zero (½·mean||y||² = 0.5)" in note for note in a.notes)
    good = analyze(wrong, X, wrong(X).detach() + 1e-3, method="dense", at_minimum=False)
    assert not any("no better than predicting zero" in note for note in good.notes)
    assert math.isfinite(good.loss)


def test_images_into_a_linear_first_model_get_the_fix():
    X, Y = _data(8)
    with pytest.raises(ProblemError, match=r"X.reshape\(len\(X\), -1\)"):
        analyze(_plain().float(), X, Y)


def test_unknown_names_get_a_suggestion(capsys):
    with pytest.raises(sgdstab.DataError, match="did you mean 'fashion-mnist'"):
        sgdstab.load_dataset("fashon-mnist")
    err = _one_line_error(capsys, ["analyze", "--program", "x.pt2", "--data", "fashion-mnst"])
    assert "did you mean 'fashion-mnist'" in err
    err = _one_line_error(capsys, ["experiment", "flatnes", "--quick", "--out", "/tmp/never-written"])
    assert "did you mean 'flatness'" in err
