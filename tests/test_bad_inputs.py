"""The bad-input catalogue (docs/bad-inputs.md), API side: each bad input raises a typed one-line error naming the
problem, or — where the input is legal but degenerate (one sample, duplicate samples, absent classes) — the answer
is checked against a closed form or an enumerated reference.

Cases already pinned elsewhere are referenced from the catalogue, not repeated here.
"""

from __future__ import annotations

import itertools
import math
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from references import dense, tiny_inputs, tiny_model, tiny_problem
from sgdstab import (
    Kernel,
    Problem,
    alignment,
    certificates,
    critical_learning_rate,
    curvature,
    load_dataset,
    mlp,
    noise_scale,
    ntk,
    simulate_linearized,
    stability,
    stability_diagram,
    train,
)
from sgdstab.conventions import check_batch_size, half_mse_learning_rate
from sgdstab.data.cifar import read_py_batch
from sgdstab.data.idx import read_idx
from sgdstab.errors import (
    CheckpointError,
    ConventionError,
    DataError,
    EstimatorError,
    MemoryBudgetError,
    ProblemError,
    SgdstabError,
)
from sgdstab.estimators.matrix_free import hutchpp, top_eigenpairs
from sgdstab.kernel import figures as kf
from sgdstab.utils.memory import available_memory_bytes

pytestmark = pytest.mark.usefixtures("one_thread")


def one_line(exc: BaseException) -> str:
    """The message of a typed error: an SgdstabError, one line, not empty."""
    assert isinstance(exc, SgdstabError), type(exc)
    text = str(exc)
    assert text and "\n" not in text
    return text


def at_minimum(X: torch.Tensor, k: int = 1, seed: int = 0) -> Problem:
    """A tiny tanh MLP on X with targets equal to its outputs: a global minimum (zero residuals)."""
    model = tiny_model("mlp", k, seed)
    with torch.no_grad():
        Y = model(X)
    return Problem(model, X, Y)


# ---------------------------------------------------------------------------------------- non-finite values
def test_non_finite_theta_is_refused_and_the_problem_is_unchanged():
    P = tiny_problem("mlp", 1, "off")
    before = P.theta.clone()
    bad = before.clone()
    bad[3] = math.inf
    with pytest.raises(ProblemError, match=r"θ contains 1 non-finite value") as info:
        P.set_parameters(bad)
    one_line(info.value)
    assert torch.equal(P.theta, before)


def test_non_finite_model_output_is_refused():
    model = nn.Linear(4, 1).double()
    X = torch.full((3, 4), 1e308, dtype=torch.float64)  # finite inputs, but 4·1e308·w overflows
    with torch.no_grad():
        model.weight.fill_(1.0)
    with pytest.raises(ProblemError, match=r"model output contains \d+ non-finite value") as info:
        Problem(model, X, torch.zeros(3, 1, dtype=torch.float64))
    one_line(info.value)


@pytest.mark.parametrize(
    ("dtype", "scale", "what"),
    [(torch.float32, 1e20, "targets Y"), (torch.float64, 1e155, "targets Y"), (torch.float32, -1, "first residuals")],
)
def test_data_whose_squares_overflow_the_dtype_are_refused(dtype, scale, what):
    # finite numbers whose squares are not: L, ∇L and every figure would be inf
    P = tiny_problem("mlp", 1, "off")
    model, Y = P.model, P.Y * scale
    if scale < 0:  # finite targets, but outputs of ~1e25 from huge weights
        model, Y = tiny_model("mlp", 1), P.Y
        with torch.no_grad():
            model[2].weight.mul_(1e25)
    with pytest.raises(ProblemError, match=rf"the squared {what}.* overflow torch\.{str(dtype)[6:]}") as info:
        Problem(model, P.X, Y, dtype=dtype)
    one_line(info.value)
    if dtype == torch.float32:
        assert Problem(model, P.X, Y, dtype=torch.float64).loss() > 1e30  # float64 holds them


# -------------------------------------------------------------------------------------- shapes and dtypes
@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda X, Y: (X.to(torch.complex128), Y), r"X must hold real numbers, got dtype torch\.complex128"),
        (lambda X, Y: (X > 0, Y), r"X must hold real numbers, got dtype torch\.bool"),
        (lambda X, Y: (X, Y.to(torch.complex128)), r"Y must hold real numbers, got dtype torch\.complex128"),
        (lambda X, Y: (X, Y > 0), r"Y must hold real numbers, got dtype torch\.bool"),
        (lambda X, Y: (X, Y[:, :, None]), r"Y must have shape \(n, k\) or \(n,\), got \(7, 1, 1\)"),
        (lambda X, Y: (X, Y[:, :0]), r"model outputs 1 value\(s\) per sample but Y has k = 0"),
        (lambda X, Y: (X[:, 0], Y), r"model failed on X of shape \(7,\)"),
    ],
    ids=["X complex", "X bool", "Y complex", "Y bool", "Y 3-d", "Y no columns", "X 1-d"],
)
def test_data_of_the_wrong_dtype_or_shape_is_refused(change, match):
    P = tiny_problem("mlp", 1, "off")
    X, Y = change(P.X, P.Y)
    with pytest.raises(ProblemError, match=match) as info:
        Problem(P.model, X, Y)
    one_line(info.value)


def test_integer_data_are_converted_exactly():
    model = tiny_model("mlp", 1)
    X = torch.arange(12).reshape(3, 4)
    P = Problem(model, X, torch.tensor([1, 0, 2]))
    assert P.X.dtype == torch.float64 and torch.equal(P.X, X.double())
    assert torch.equal(P.Y[:, 0], torch.tensor([1.0, 0.0, 2.0], dtype=torch.float64))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dtype": torch.float16}, r"dtype must be torch\.float32 or torch\.float64, got torch\.float16"),
        ({"chunk_size": 0}, "chunk_size must be an integer ≥ 1, got 0"),
        ({"chunk_size": 2.5}, "chunk_size must be an integer ≥ 1, got 2.5"),
    ],
)
def test_bad_problem_options_are_refused(kwargs, match):
    P = tiny_problem("mlp", 1, "off")
    with pytest.raises(ProblemError, match=match) as info:
        Problem(P.model, P.X, P.Y, **kwargs)
    one_line(info.value)


def test_theta_that_is_not_a_real_tensor_is_refused():
    P = tiny_problem("mlp", 1, "off")
    for theta, got in [([0.0] * P.p, "list"), (torch.zeros(P.p, dtype=torch.complex128), "torch.complex128")]:
        with pytest.raises(ProblemError, match=rf"θ must be a real torch tensor of {P.p} parameters, got .*{got}"):
            P.loss(theta)


@pytest.mark.parametrize("chunk", [0, -1, 1.5])
def test_chunk_sizes_that_would_yield_no_chunks_are_refused(chunk):
    # before the check, ntk(P, chunk_size=-1) returned uninitialized memory and P.chunks(-1) nothing at all
    P = tiny_problem("mlp", 1, "off", n=5)
    with pytest.raises(ProblemError, match="chunk_size must be an integer ≥ 1") as info:
        ntk(P, chunk_size=chunk)
    one_line(info.value)
    with pytest.raises(ProblemError):
        list(P.chunks(chunk))
    J = dense(P).J
    assert torch.allclose(ntk(P, chunk_size=2).matrix, J @ J.T, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------- one sample
@pytest.mark.parametrize("k", [1, 2])
def test_one_sample_stability_is_the_closed_form(k):
    # n = 1: bdiag(M) = M, so T(M) = (I − ηK) M (I − ηK) and ρ = max_i (1 − ηλ_i)² on range K, η* = 2/λ_max
    P = at_minimum(tiny_inputs("mlp", 1), k=k)
    lam = torch.linalg.eigvalsh(dense(P).J @ dense(P).J.T)
    lam = lam[lam > 1e-12 * lam[-1]]
    for eta in (0.1, 1.5 / float(lam[-1]), 3.0 / float(lam[-1])):
        res = stability(P, eta, 1)
        assert res.rho == pytest.approx(float(((1 - eta * lam) ** 2).max()), rel=1e-9)
        assert res.critical_lr == pytest.approx(2 / float(lam[-1]), rel=1e-9)
        assert res.stable == (eta <= 2 / float(lam[-1]))


def test_one_sample_curvature_alignment_and_training_answer():
    P = at_minimum(tiny_inputs("mlp", 1))
    D = dense(P)
    curv = curvature(P, at_minimum=True)
    eig = torch.linalg.eigvalsh(D.H)
    assert curv.hessian_frobenius == pytest.approx(float(torch.linalg.matrix_norm(D.H)), rel=1e-9)
    assert curv.sharpness == pytest.approx(float(eig[-1]), rel=1e-9)
    assert curv.trace == pytest.approx(float(eig.sum()), rel=1e-9)
    # the loss is exactly zero: μ is 0/0, reported as NaN with the reason
    align = alignment(P, curvature_result=curv)
    assert math.isnan(align.mu) and any("exactly zero" in note for note in align.notes)
    hist = train(P, 0.1, 1, steps=5, track_every=1, progress=False)
    assert hist.losses == (0.0,) * 6 and hist.diverged_at is None


# -------------------------------------------------------------------------------- duplicate samples: K singular
def _enumerated_rho(K: torch.Tensor, n: int, eta: float, B: int) -> float:
    """ρ of E[P_ξ M P_ξᵀ] (every ordered batch of B indices drawn with replacement, k = 1) on Sym(range K)."""
    lam, U = torch.linalg.eigh(K)
    U = U[:, lam > 1e-10 * lam[-1]]
    r = U.shape[1]
    basis = []
    for a, b in itertools.combinations_with_replacement(range(r), 2):
        E = torch.zeros(r, r, dtype=torch.float64)
        E[a, b] = E[b, a] = 1.0 if a == b else 2**-0.5
        basis.append(U @ E @ U.T)
    steps = []
    for batch in itertools.product(range(n), repeat=B):
        xi = torch.bincount(torch.tensor(batch), minlength=n).to(torch.float64)
        steps.append(torch.eye(n, dtype=torch.float64) - (eta / B) * K * xi[None, :])
    cols = [sum(S @ M @ S.T for S in steps) / len(steps) for M in basis]
    T = np.array([[float((Bi * c).sum()) for c in cols] for Bi in basis])
    return float(np.abs(np.linalg.eigvals(T)).max())


def test_duplicate_samples_stability_matches_the_enumerated_operator():
    X = tiny_inputs("mlp", 3)
    X = torch.cat([X, X[:1]])  # sample 3 repeats sample 0: K has two equal rows, rank 3 of 4
    P = at_minimum(X)
    K = dense(P).J @ dense(P).J.T
    assert int((torch.linalg.eigvalsh(K) > 1e-10 * float(K.diagonal().max())).sum()) == 3
    res = stability(P, 0.1, 2)
    assert res.rank == 3
    assert res.rho == pytest.approx(_enumerated_rho(K, 4, 0.1, 2), rel=1e-9)
    # η* is where the enumerated ρ crosses 1
    eta_star = critical_learning_rate(P, 2)
    assert _enumerated_rho(K, 4, eta_star * (1 - 1e-6), 2) < 1 < _enumerated_rho(K, 4, eta_star * (1 + 1e-6), 2)


def test_duplicate_samples_curvature_is_the_dense_hessian():
    X = tiny_inputs("mlp", 3)
    P = at_minimum(torch.cat([X, X[:2]]))
    H = dense(P).H
    curv = curvature(P, at_minimum=True, top=3)
    eig = torch.linalg.eigvalsh(H)
    assert curv.hessian_frobenius == pytest.approx(float(torch.linalg.matrix_norm(H)), rel=1e-9)
    assert curv.top_eigenvalues == pytest.approx(eig.flip(0)[:3].tolist(), rel=1e-9, abs=1e-12)
    assert curv.min_eigenvalue == pytest.approx(0.0, abs=1e-12)  # rank ≤ nk = 3 distinct samples < p


def test_duplicate_samples_certificates_with_a_rounding_negative_alignment():
    # samples 0 and 1 share their first output's Jacobian row: some reachable residual carries no noise, μ_inf = 0,
    # and its eigenvalue comes out at -3e-17; sqrt of it crashed the certificates before
    g = torch.Generator().manual_seed(0)
    A = torch.randn(4, 3, dtype=torch.float64, generator=g)
    A[2] = A[0]
    ker = Kernel(A @ A.T * 1e-30, 2, 2)
    cert = certificates(ker, 1e29, 1)
    assert cert.mu_inf == 0.0 and cert.psi_limit_mu_inf == math.inf
    assert cert["frobenius_mu_inf"].bound_lr == math.inf and any("mu_inf = 0" in note for note in cert.notes)
    assert stability(ker, 1e29, 1).certificates.mu_inf == 0.0


# ------------------------------------------------------------------------------- classes absent from a subset
def test_classes_absent_from_a_subset_keep_their_target_columns():
    ds = load_dataset("fashion-mnist-small", n=3)  # the first three images: classes 9, 0, 0
    assert ds.labels.tolist() == [9, 0, 0]
    assert ds.Y.shape == (3, 10)
    expected = torch.zeros(3, 10)
    expected[0, 9] = expected[1, 0] = expected[2, 0] = 1.0
    assert torch.equal(ds.Y, expected)  # absent classes: all-zero columns, the model still has 10 outputs
    strat = load_dataset("fashion-mnist-small", n=3, subset="stratified", seed=1)
    # n < k: one example each of the three lowest class ids, the other seven columns all zero
    assert sorted(strat.labels.tolist()) == [0, 1, 2] and strat.Y[:, 3:].abs().sum() == 0


def test_two_classes_of_which_the_subset_holds_one():
    ds = load_dataset("fashion-mnist-small", n=2, classes=(0, 6))  # first two of classes 0/6 are both 0
    assert ds.labels.tolist() == [0, 0] and ds.Y[:, 0].tolist() == [1.0, 1.0]


# --------------------------------------------------------------------------------- learning rates, batch sizes
ENTRY_POINTS = {
    "stability": lambda P, lr, b: stability(P, lr, b, with_certificates=False),
    "certificates": lambda P, lr, b: certificates(P, lr, b),
    "train": lambda P, lr, b: train(P, lr, b, steps=2, progress=False),
    "simulate_linearized": lambda P, lr, b: simulate_linearized(P, lr, b, 4, chains=2),
    "stability_diagram": lambda P, lr, b: stability_diagram(P, lrs=[lr], batch_sizes=[b], verify=0),
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("lr", [0, -0.1, math.nan, math.inf, "0.1", True, None, 1j], ids=repr)
def test_every_entry_point_refuses_bad_learning_rates(entry, lr):
    P = tiny_problem("mlp", 1, "minimum")
    with pytest.raises(ConventionError, match="learning rate must be a positive") as info:
        ENTRY_POINTS[entry](P, lr, 2)
    one_line(info.value)


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("b", [0, -2, 8, 2.5, math.nan, math.inf, "2", True], ids=repr)
def test_every_entry_point_refuses_bad_batch_sizes(entry, b):
    P = tiny_problem("mlp", 1, "minimum")  # n = 7
    with pytest.raises(ConventionError, match="batch size must be") as info:
        ENTRY_POINTS[entry](P, 0.1, b)
    one_line(info.value)


@pytest.mark.parametrize("b", [3, 3.0, np.int64(3), np.int32(3), torch.tensor(3)], ids=repr)
def test_integral_batch_sizes_of_any_type_are_accepted(b):
    assert check_batch_size(b, 7) == 3 and type(check_batch_size(b, 7)) is int
    assert noise_scale(b, 7, "without_replacement") == pytest.approx(4 / 18, rel=1e-15)


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_bad_output_counts_in_the_learning_rate_conversion(k):
    with pytest.raises(ConventionError, match="number of outputs k must be an integer ≥ 1"):
        half_mse_learning_rate(0.1, "torch_mse", k)


# -------------------------------------------------------------------------------------------------- seeds
@pytest.mark.parametrize("seed", [-1, 1.5, "0", None, True])
def test_estimators_refuse_seeds_that_are_not_non_negative_integers(seed):
    A = np.diag(np.arange(1.0, 7.0))
    for call in (lambda: top_eigenpairs(A, 1, seed=seed), lambda: hutchpp(A, rtol=0.1, seed=seed)):
        with pytest.raises(EstimatorError, match="seed must be a non-negative integer") as info:
            call()
        one_line(info.value)


@pytest.mark.parametrize(("seed", "match"), [(-1, r"\[0, 2\*\*63\)"), (2**70, r"\[0, 2\*\*63\)"), ("1", "integer")])
def test_simulation_and_data_refuse_out_of_range_seeds(seed, match):
    with pytest.raises(SgdstabError, match=match):
        simulate_linearized(torch.eye(3, dtype=torch.float64), 0.1, 1, 4, chains=2, seed=seed)
    with pytest.raises(DataError, match="seed must be"):
        load_dataset("digits", n=4, subset="stratified", seed=seed)


# ----------------------------------------------------------------------------------- data files and loaders
def test_a_directory_where_a_data_file_should_be(tmp_path):
    # root reads any file, so an unreadable file is simulated by a directory in its place
    for name in ("images-ubyte", "data_batch_1"):
        (tmp_path / name).mkdir()
    with pytest.raises(DataError, match=r"cannot read .*images-ubyte") as info:
        read_idx(tmp_path / "images-ubyte")
    one_line(info.value)
    with pytest.raises(DataError, match=r"cannot read .*data_batch_1") as info:
        read_py_batch(tmp_path / "data_batch_1")
    one_line(info.value)


def test_idx_files_holding_no_images_are_refused(tmp_path):
    header = bytes([0, 0, 8, 3]) + (0).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    (tmp_path / "train-images-idx3-ubyte").write_bytes(header)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1]) + (0).to_bytes(4, "big"))
    with pytest.raises(DataError, match="the files hold no images") as info:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    one_line(info.value)


def _py_batch(labels: list) -> bytes:
    data = np.zeros((len(labels), 3072), dtype=np.uint8)
    return pickle.dumps({b"data": data, b"labels": labels}, protocol=4)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (_py_batch([1, 2, 3])[:40], "not a readable CIFAR-10 python batch"),
        (_py_batch([1, 2, 3])[:-1], "not a readable CIFAR-10 python batch"),
        (_py_batch([1, 2**70, 3]), r"label 1180591620717411303424 out of range 0\.\.9"),
        (_py_batch([1, -1, 3]), r"label -1 out of range 0\.\.9"),
        (_py_batch([1, True, 3]), "b'labels' must be 3 integers"),
    ],
    ids=["truncated", "last byte cut", "label 2**70", "label -1", "bool label"],
)
def test_truncated_or_corrupt_cifar_python_batches(tmp_path, content, match):
    path = tmp_path / "data_batch_1"
    path.write_bytes(content)
    with pytest.raises(DataError, match=match) as info:
        read_py_batch(path)
    one_line(info.value)


# ------------------------------------------------------------------------------------- pickles carrying code
class _Payload:
    """Unpickling this runs ``open(marker, 'w')``: the marker file proves that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_a_checkpoint_carrying_code_is_refused_and_never_run(tmp_path):
    marker = tmp_path / "ran"
    raw = pickle.dumps({"format": "sgdstab-train-checkpoint", "x": _Payload(str(marker))}, protocol=2)
    pickle.loads(raw)  # the control: a plain unpickler runs the payload
    assert marker.read_text() == "ran"
    marker.unlink()
    zipped = tmp_path / "evil.pt"
    torch.save({"format": "sgdstab-train-checkpoint", "version": 1, "x": _Payload(str(marker))}, zipped)
    legacy = tmp_path / "evil-legacy.pt"
    legacy.write_bytes(raw)  # a bare pickle, as torch's pre-zip format
    for path in (zipped, legacy):
        P = tiny_problem("mlp", 2, "off", n=11)
        with pytest.raises(CheckpointError, match="holding more than plain tensors") as info:
            train(P, 0.1, 3, steps=20, progress=False, resume=path)
        one_line(info.value)
        assert not marker.exists()


# ------------------------------------------------------------------------------- memory: refused, not killed
@pytest.mark.parametrize("value", ["inf", "1e400", "-1G", "nan", "lots", "  "])
def test_unreadable_memory_limit_is_a_typed_error(monkeypatch, value):
    monkeypatch.setenv("SGDSTAB_MEMORY_LIMIT", value)
    with pytest.raises(MemoryBudgetError, match="SGDSTAB_MEMORY_LIMIT: cannot read memory size") as info:
        available_memory_bytes()
    one_line(info.value)


@pytest.mark.parametrize(
    "request_",
    [
        lambda: load_dataset("gaussian-linear", n=10**12),
        lambda: load_dataset("teacher", n=10, dim=10**12),
        lambda: mlp(10**6, 1, widths=(10**6,)),
        lambda: simulate_linearized(torch.eye(4, dtype=torch.float64), 0.1, 2, 10**9, chains=10**6),
    ],
    ids=["synthetic n", "synthetic dim", "model", "linearized chains"],
)
def test_requests_too_large_for_memory_are_refused_before_allocating(request_):
    with pytest.raises(MemoryBudgetError, match=r"needs about .* but only .* is available") as info:
        request_()
    one_line(info.value)


# ----------------------------------------------------------------------------- kernels at extreme scales
@pytest.mark.parametrize("scale", [1e-200, 1e-30, 1e30, 1e200])
def test_scale_free_kernel_figures_survive_extreme_scales(scale):
    # μ_inf is scale-free and s is homogeneous of degree 1; K² over- or underflows at 1e±200 unless normalized
    g = torch.Generator().manual_seed(0)
    A = torch.randn(6, 4, dtype=torch.float64, generator=g)
    K = A @ A.T
    mu_inf, s = kf.uniform_alignment(K, 3, 2), kf.nonuniformity(K, 3, 2)
    assert mu_inf > 0 and s > 0
    Ks = K * scale
    eig = kf.kernel_eigen(Ks)
    assert kf.uniform_alignment(Ks, 3, 2, eig) == pytest.approx(mu_inf, rel=1e-9)
    assert kf.nonuniformity(Ks, 3, 2, eig) == pytest.approx(s * scale, rel=1e-9)
    ker = Kernel(Ks, 3, 2)
    assert ker.rank == 4


# ------------------------------------------------------------------------------------------- the catalogue
def test_catalogue_names_real_tests():
    """Every test docs/bad-inputs.md names exists, and every row names one."""
    root = Path(__file__).resolve().parents[1]
    text = (root / "docs" / "bad-inputs.md").read_text(encoding="utf-8")
    named = re.findall(r"`(tests/[\w/]+\.py)::(\w+)`", text)
    assert len(named) >= 100
    for path, name in named:
        assert re.search(rf"^def {name}\(", (root / path).read_text(encoding="utf-8"), re.M), f"{path}::{name}"
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| ---")]
    headers = {line for line in rows if line.startswith(("| bad input ", "| fault injected "))}
    assert all("`tests/" in row for row in rows if row not in headers)
