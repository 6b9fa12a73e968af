"""``sgdstab analyze`` and :func:`sgdstab.analyze`: the figures of a saved model, and safe loading.

The CLI's JSON must equal the Python API's figures on the same model and data; the figures are checked against
dense float64 references; every bad input ends in one line on stderr and exit code 2, and a pickle that carries
code never runs it (a marker file it would create must not appear).
"""

from __future__ import annotations

import json
import math
import pickle

import pytest
import torch

from sgdstab.cli import main
from sgdstab.data import load_dataset
from sgdstab.errors import AnalysisError, ModelFileError
from sgdstab.linear_stability.analysis import analyze
from sgdstab.models.architectures import mlp
from sgdstab.models.loading import load_model, read_state_dict
from sgdstab.problem.problem import Problem
from sgdstab.training.trainer import train

N, CLASSES = 24, (0, 6)


def _spec(widths=(8,), seed=0, outputs=1):
    # the spec's seed differs from the saved weights' (seed 5): analysing the spec's own init would be caught
    return json.dumps({"kind": "mlp", "input_shape": [784], "outputs": outputs, "widths": list(widths), "seed": seed})


@pytest.fixture
def saved(tmp_path):
    model = mlp((784,), 1, widths=(8,), seed=5).double()
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    return model, path


def _data():
    return load_dataset("fashion-mnist-small", n=N, classes=CLASSES)


def _run(capsys, *args):
    rc = main(["analyze", *map(str, args)])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _one_line_error(rc, err):
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "Traceback" not in err


COMMON = ("--n", N, "--classes", "0,6", "--lr", 0.02, "--batch-size", 4, "--rtol", 0.1)


def test_cli_json_equals_the_python_api_and_dense_references(saved, capsys, one_thread):
    model, path = saved
    rc, out, err = _run(capsys, "--checkpoint", path, "--model", _spec(), *COMMON, "--json")
    assert rc == 0, err
    cli = json.loads(out)
    X, Y = _data()
    api = analyze(model, X, Y, lr=0.02, batch_size=4, rtol=0.1).to_dict()
    for part, key in [
        ("curvature", "hessian_frobenius"),
        ("curvature", "sharpness"),
        ("curvature", "trace"),
        ("curvature", "gauss_newton_frobenius"),
        ("alignment", "mu"),
        ("alignment", "mu_inf"),
        ("alignment", "mu_hessian"),
        ("stability", "rho"),
        ("stability", "critical_lr"),
    ]:
        assert cli[part][key] == pytest.approx(api[part][key], rel=1e-9), (part, key)
    for key in ("loss", "frobenius_bound", "frobenius_ratio", "gd_ratio", "c"):
        assert cli[key] == pytest.approx(api[key], rel=1e-9), key

    # dense float64 references on the saved weights (not the spec's seed-0 initialization)
    with torch.no_grad():
        r = (model(X.double()) - Y.double()).reshape(-1)
    assert cli["loss"] == pytest.approx(float(r @ r) / (2 * N), rel=1e-12)
    params = dict(model.named_parameters())
    names = list(params)

    def f(*flat):
        out = torch.func.functional_call(model, dict(zip(names, flat, strict=True)), (X.double(),))
        return out.reshape(-1)

    J = torch.cat([j.reshape(N, -1) for j in torch.autograd.functional.jacobian(f, tuple(params.values()))], 1)
    G = J.T @ J / N
    assert cli["curvature"]["gauss_newton_frobenius"] == pytest.approx(float(torch.linalg.matrix_norm(G)), rel=1e-9)
    grads = J * r[:, None]  # ∇ℓ_i = J_iᵀ r_i (k = 1)
    centred = grads - grads.mean(0)
    sigma = centred.T @ centred / N
    mu = float(torch.trace(sigma @ G)) / (2 * cli["loss"] * float(torch.linalg.matrix_norm(G)) ** 2)
    assert cli["alignment"]["mu"] == pytest.approx(mu, rel=1e-8)
    assert cli["c"] == 0.25
    assert cli["frobenius_bound"] == pytest.approx(math.sqrt(4 / mu) / 0.02, rel=1e-8)
    assert cli["gd_bound"] == pytest.approx(2 / 0.02)


def test_cli_table_output(saved, capsys):
    _, path = saved
    rc, out, err = _run(capsys, "--checkpoint", path, "--model", _spec(), "--n", 12, "--classes", "0,6", "--rtol", 0.2)
    assert rc == 0, err
    for text in ("||H||_F", "μ = Tr(ΣG)/(2L||G||_F²)", "λ_max(H)", "μ_inf"):
        assert text in out


def test_safetensors_and_training_checkpoints_load_the_same_weights(saved, tmp_path):
    model, path = saved
    safetensors_torch = pytest.importorskip("safetensors.torch")
    st = tmp_path / "model.safetensors"
    safetensors_torch.save_file(model.state_dict(), str(st))
    # a checkpoint of sgdstab.train (θ after a few SGD steps; the model is trained in place, so `expected` is after)
    ckpt = tmp_path / "train.pt"
    X, Y = _data()
    train(Problem(model, X, Y), 0.01, 4, steps=3, checkpoint_path=ckpt, progress=False)
    for file in (path, st):  # saved before training: the initial weights
        assert not torch.equal(load_model(_spec(), file).net[0].weight, model.net[0].weight)
    torch.save(model.state_dict(), path)
    safetensors_torch.save_file(model.state_dict(), str(st))
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, wrapped)
    with torch.no_grad():
        expected = model(X.double())
        for file in (path, st, ckpt, wrapped):
            loaded = load_model(_spec(), file)
            assert next(loaded.parameters()).dtype == torch.float64
            assert torch.equal(loaded(X.double()), expected), file


def test_random_features_buffer_comes_from_the_spec(tmp_path):
    from sgdstab.models.architectures import random_features

    model = random_features((784,), 1, width=16, seed=2)
    path = tmp_path / "rf.pt"
    torch.save({"readout.weight": model.readout.weight.detach(), "readout.bias": model.readout.bias.detach()}, path)
    spec = {
        "kind": "random_features",
        "input_shape": [784],
        "outputs": 1,
        "widths": [16],
        "activation": "relu",
        "seed": 2,
    }
    loaded = load_model(spec, path)
    X, _ = _data()
    with torch.no_grad():
        assert torch.equal(loaded(X), model(X))


def test_pickle_carrying_code_never_runs(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    zipped = tmp_path / "evil.pt"
    torch.save({"net.0.weight": Evil()}, zipped)
    legacy = tmp_path / "evil.pkl"
    with legacy.open("wb") as handle:
        pickle.dump({"net.0.weight": Evil()}, handle, protocol=2)
    assert not marker.exists()
    for file in (zipped, legacy):
        rc, _, err = _run(capsys, "--checkpoint", file, "--model", _spec(), "--n", 8, "--classes", "0,6")
        _one_line_error(rc, err)
        assert "weights_only" in err
        assert not marker.exists(), "unpickling ran code from the checkpoint"
    with pytest.raises(ModelFileError):
        read_state_dict(zipped)
    assert not marker.exists()


def test_bad_inputs_exit_2_with_one_line(saved, tmp_path, capsys):
    _, path = saved
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    other = tmp_path / "other.pt"
    torch.save(mlp((784,), 1, widths=(16,), seed=0).state_dict(), other)
    not_tensors = tmp_path / "numbers.pt"
    torch.save({"net.0.weight": 3}, not_tensors)
    bad_json = tmp_path / "spec.json"
    bad_json.write_text("{kind: mlp")
    cases = [
        (("--checkpoint", tmp_path / "missing.pt", "--model", _spec()), "does not exist"),
        (("--checkpoint", truncated, "--model", _spec()), "cannot read checkpoint"),
        (("--checkpoint", other, "--model", _spec()), "has shape (16, 784), the model's is (8, 784)"),
        (("--checkpoint", path, "--model", _spec(widths=(8, 8))), "lacks the parameter 'net.4.weight'"),
        (("--checkpoint", path, "--model", _spec(widths=())), "widths must not be empty"),
        (("--checkpoint", not_tensors, "--model", _spec()), "is not a named tensor"),
        (("--checkpoint", path, "--model", "nonsense"), "neither a JSON object nor an existing JSON file"),
        (("--checkpoint", path, "--model", bad_json), "is not valid JSON"),
        (("--checkpoint", path, "--model", '{"kind": "mlp", "widht": 3}'), "unknown model spec keys"),
        (("--checkpoint", path, "--model", _spec(), "--classes", "a,b"), "--classes must be comma-separated"),
        (("--checkpoint", path, "--model", _spec(), "--batch-size", 4), "a batch size needs a learning rate"),
        (("--checkpoint", path, "--model", _spec(), "--classes", "0,6,7"), "Y has k = 3"),
        (("--checkpoint", path, "--model", _spec(), "--data", "nope"), "unknown dataset 'nope'"),
    ]
    for args, message in cases:
        rc, _, err = _run(capsys, *args, "--n", 8, *(("--classes", "0,6") if "--classes" not in args else ()))
        _one_line_error(rc, err)
        assert message in err, (message, err)


def test_torch_mse_learning_rate_is_converted_to_the_step_on_l(one_thread):
    X, Y = load_dataset("fashion-mnist-small", n=8, classes=(0, 6, 7))  # k = 3 one-hot targets
    head = mlp((784,), 3, widths=(4,), seed=1).double()
    a = analyze(head, X, Y, lr=0.03, batch_size=2, loss="torch_mse", rtol=0.2)
    b = analyze(head, X, Y, lr=0.02, batch_size=2, rtol=0.2)  # MSELoss step 0.03 = step 2·0.03/3 = 0.02 on L
    assert a.k == 3 and a.lr == pytest.approx(0.02, rel=1e-12) and a.lr_given == 0.03
    assert a.gd_bound == pytest.approx(100.0) and a.loss_convention == "torch_mse"
    assert a.stability.rho == pytest.approx(b.stability.rho, rel=1e-9)
    assert a.frobenius_bound == pytest.approx(b.frobenius_bound, rel=1e-12)


def test_analyze_api_refuses_batch_size_without_lr(saved):
    model, _ = saved
    X, Y = _data()
    with pytest.raises(AnalysisError, match="needs a learning rate"):
        analyze(model, X, Y, batch_size=4)
