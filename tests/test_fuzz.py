"""Property-based fuzzing of the public API's numeric inputs and of the command line (hypothesis).

Every example draws each argument from its *valid* range, except that about half the examples replace exactly one
argument by a *bad* value (zero, negative, NaN, ±inf, a string, a bool, None, out of range). Properties:

- a bad argument is refused with a typed one-line error (:class:`sgdstab.SgdstabError`), and a refused
  call changes nothing; valid arguments are answered; no other exception ever escapes;
- every example finishes within a hard time bound (SIGALRM; hypothesis' own deadline is advisory);
- no figure is NaN or infinite unless the result's notes say why;
- where an exact statement is cheap it is checked too: the closed forms of the conventions, ρ(T) ≤ 1 exactly when
  η ≤ η*, a diverged run is recorded at the evaluation where L left its bound, the dense route equals the autograd
  Hessian, the top eigenvalues equal ``eigvalsh``'s.

The command line is fuzzed the same way (a valid command line with, half the time, one part spoiled) with the
experiments' bodies (which the demo runs too) replaced by a stub that loads their data: exit code 0 or 2, never a
traceback, and sgdstab's own errors in one line. ``--hypothesis-show-statistics`` prints how many examples were
answered or refused.

The default suite runs 50 examples per property (about 10 s on one thread); ``-m slow`` runs 300 more of each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import json
import math
import re
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

from references import dense
from sgdstab import (
    Kernel,
    ModelSpec,
    Problem,
    alignment,
    build_model,
    count_parameters,
    curvature,
    load_dataset,
    noise_scale,
    simulate_linearized,
    stability,
    train,
)
from sgdstab.cli import main
from sgdstab.conventions import check_learning_rate, half_mse_learning_rate
from sgdstab.errors import SgdstabError
from sgdstab.estimators.matrix_free import hutchpp, top_eigenpairs
from sgdstab.models.architectures import expected_parameter_count
from sgdstab.utils.memory import parse_bytes

pytestmark = pytest.mark.usefixtures("one_thread")

EXAMPLE_SECONDS = 30  # hard bound per example: a hang fails the test instead of stalling the suite
# the function-scoped fixtures (one thread, monkeypatched stubs) hold for every example: nothing to reset between them
_HEALTH = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
FAST = settings(max_examples=50, deadline=None, suppress_health_check=_HEALTH, derandomize=True)
SLOW = settings(max_examples=300, deadline=None, suppress_health_check=_HEALTH)


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_bound(seconds: float = EXAMPLE_SECONDS):
    def alarm(signum, frame):
        raise Hang(f"example ran longer than {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


LAST_REFUSAL: list[str] = [""]  # the message of the last typed error typed_or_result caught


def typed_or_result(call, what: str = ""):
    """``call()``'s result, or None when it raised a typed one-line error; anything else propagates (a failure).

    ``what`` labels the outcome as a hypothesis event (``--hypothesis-show-statistics`` counts them)."""
    with time_bound():
        try:
            result = call()
        except SgdstabError as exc:
            assert str(exc) and "\n" not in str(exc), repr(exc)
            LAST_REFUSAL[0] = str(exc)
            if what:
                event(f"{what}: refused ({type(exc).__name__})")
            return None
    if what:
        event(f"{what}: answered")
    return result


def explained(result, skip: tuple[str, ...] = ()) -> None:
    """Fail when a float figure of a result dataclass is NaN or ±inf and its notes are empty."""
    bad = []
    for f in dataclasses.fields(result):
        if f.name in skip or f.name == "notes":
            continue
        value = getattr(result, f.name)
        values = value if isinstance(value, list | tuple) else [value]
        if any(isinstance(v, float) and not math.isfinite(v) for v in values):
            bad.append(f.name)
    assert not bad or result.notes, f"{type(result).__name__} reports non-finite {bad} without a note"


# ----------------------------------------------------------------------------------------------- strategies
SCALES = [1e-30, 1e-10, 1e-3, 1.0, 1e3, 1e10, 1e30]
SCHEMES = ["with_replacement", "without_replacement"]
NOT_A_NUMBER = st.sampled_from(["0.1", "", b"1", True, False, None, 1j, [0.1], (), object()])
BAD_POSITIVE = st.one_of(
    st.sampled_from([0, 0.0, -0.0, -1e-300, -1, math.nan, math.inf, -math.inf]),
    st.floats(max_value=0.0, allow_nan=False),
    NOT_A_NUMBER,
)
# "~" + text is never a valid name (random text alone could spell "dense")
BAD_NAME = st.one_of(
    st.sampled_from(["", "nope", "With_Replacement", "reshuffle "]), st.text(max_size=5).map("~".__add__)
)


def bad_count(low: int, high: int | None = None):
    """Values that are not integers in [low, high]."""
    out = [
        st.integers(max_value=low - 1),
        st.sampled_from([low + 0.5, math.nan, math.inf, -math.inf, str(low), True]),
        NOT_A_NUMBER,
    ]
    if high is not None:
        out.append(st.integers(min_value=high + 1))
    return st.one_of(*out)


@st.composite
def one_bad(draw, good: dict, bad: dict):
    """Every argument from its good strategy, except — in about half the examples — one from its bad strategy.
    Returns (arguments, name of the spoiled one or None)."""
    names = sorted(bad)
    spoiled = draw(st.sampled_from([None] * len(names) + names))
    args = {name: draw(bad[name] if name == spoiled else strategy) for name, strategy in good.items()}
    event(f"spoiled: {spoiled}")
    return args, spoiled


@st.composite
def kernels(draw):
    """A validated :class:`Kernel` ``A Aᵀ · scale`` of a random A (nk × p), sometimes singular, sometimes float32."""
    n, k, p = draw(st.integers(1, 4)), draw(st.integers(1, 2)), draw(st.integers(1, 6))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    A = torch.randn(n * k, p, dtype=torch.float64, generator=g)
    if n * k > 1 and draw(st.booleans()):
        A[draw(st.integers(1, n * k - 1))] = A[0]  # a duplicate row: K singular
    K = A @ A.T * draw(st.sampled_from(SCALES))
    if draw(st.booleans()):
        K = K.float()
    return Kernel(K, n, k)


def lr_for(ker: Kernel, log_ratio: float) -> float:
    """A learning rate 10^log_ratio times the GD limit 2n/λ_max(K) (where the interesting things happen)."""
    return 10.0**log_ratio * 2 * ker.n / float(ker.eigen.values[-1])


# ------------------------------------------------------------------------------------------------ conventions
@st.composite
def convention_cases(draw):
    n = draw(st.integers(1, 50))
    good = {
        "lr": st.floats(1e-12, 1e12),
        "b": st.integers(1, n),
        "sampling": st.sampled_from(SCHEMES),
        "loss": st.sampled_from(["half_mse", "torch_mse"]),
        "k": st.integers(1, 12),
    }
    bad = {"lr": BAD_POSITIVE, "b": bad_count(1, n), "sampling": BAD_NAME, "loss": BAD_NAME, "k": bad_count(1)}
    return n, *draw(one_bad(good, bad))


def _conventions(case):
    n, a, spoiled = case
    c = typed_or_result(lambda: noise_scale(a["b"], n, a["sampling"]), "noise_scale")
    if spoiled in ("b", "sampling"):
        assert c is None
    else:
        b = a["b"]
        expected = 1 / b if a["sampling"] == "with_replacement" else (0.0 if n == 1 else (n - b) / (b * (n - 1)))
        assert c == pytest.approx(expected, rel=1e-15, abs=0)
    eta = typed_or_result(lambda: check_learning_rate(a["lr"]))
    assert (eta is None) == (spoiled == "lr")
    converted = typed_or_result(lambda: half_mse_learning_rate(a["lr"], a["loss"], a["k"]), "half_mse_learning_rate")
    refused = spoiled in ("lr", "loss") or (spoiled == "k" and a["loss"] == "torch_mse")
    assert (converted is None) == refused
    if converted is not None:
        assert converted == pytest.approx(a["lr"] * (2 / a["k"] if a["loss"] == "torch_mse" else 1.0), rel=1e-15)


@FAST
@given(convention_cases())
def test_fuzz_conventions(case):
    _conventions(case)


# --------------------------------------------------------------------------------------------------- stability
@st.composite
def stability_cases(draw):
    ker = draw(kernels())
    good = {"log_ratio": st.floats(-3, 2), "b": st.integers(1, ker.n), "sampling": st.sampled_from(SCHEMES)}
    bad = {"log_ratio": BAD_POSITIVE, "b": bad_count(1, ker.n), "sampling": BAD_NAME}
    return ker, *draw(one_bad(good, bad))


def _stability(case):
    ker, a, spoiled = case
    lr = a["log_ratio"] if spoiled == "log_ratio" else lr_for(ker, a["log_ratio"])
    res = typed_or_result(lambda: stability(ker, lr, a["b"], a["sampling"]), "stability")
    assert (res is None) == (spoiled is not None)
    if res is None:
        return
    explained(res)
    explained(res.certificates, skip=("bounds",))
    assert res.rho >= 0 and res.critical_lr > 0
    # ρ(T) ≤ 1 exactly when η ≤ η* (away from the boundary, where the eigen-solvers' tolerance decides)
    if res.converged and math.isfinite(res.critical_lr):
        if res.lr < res.critical_lr * (1 - 1e-6):
            assert res.stable, res
        elif res.lr > res.critical_lr * (1 + 1e-6):
            assert not res.stable, res


@FAST
@given(stability_cases())
def test_fuzz_stability_on_tiny_kernels(case):
    _stability(case)


@st.composite
def simulation_cases(draw):
    ker = draw(kernels())
    good = {
        "log_ratio": st.floats(-3, 2),
        "b": st.integers(1, ker.n),
        "steps": st.integers(1, 40),
        "chains": st.integers(1, 8),
        "seed": st.integers(0, 2**63 - 1),
    }
    bad = {
        "log_ratio": BAD_POSITIVE,
        "b": bad_count(1, ker.n),
        "steps": bad_count(1),
        "chains": bad_count(1),
        "seed": st.one_of(st.integers(max_value=-1), st.integers(min_value=2**63), NOT_A_NUMBER),
    }
    return ker, *draw(one_bad(good, bad))


def _simulation(case):
    ker, a, spoiled = case
    lr = a["log_ratio"] if spoiled == "log_ratio" else lr_for(ker, a["log_ratio"])
    sim = typed_or_result(
        lambda: simulate_linearized(ker, lr, a["b"], a["steps"], chains=a["chains"], seed=a["seed"]),
        "simulate_linearized",
    )
    assert (sim is None) == (spoiled is not None)
    if sim is not None:
        explained(sim, skip=("chain_rates", "log_norms"))
        assert sim.steps == a["steps"] and sim.chains == a["chains"]


@FAST
@given(simulation_cases())
def test_fuzz_linearized_simulation(case):
    _simulation(case)


# --------------------------------------------------------------------------------------- curvature, alignment
@st.composite
def tiny_problems(draw):
    """A 4 → 3 → k tanh MLP on n random samples; inputs, targets and weights each scaled by a drawn power of 10,
    sometimes at a global minimum (targets = outputs), float64 or float32."""
    n, k = draw(st.integers(1, 5)), draw(st.integers(1, 2))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    x_scale, y_scale, w_scale = (draw(st.sampled_from(SCALES)) for _ in range(3))
    model = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, k)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, dtype=torch.float64, generator=g) * w_scale)
    X = torch.randn(n, 4, dtype=torch.float64, generator=g) * x_scale
    Y = torch.randn(n, k, dtype=torch.float64, generator=g) * y_scale
    if draw(st.booleans()):
        with torch.no_grad():
            Y = model(X)
    return model, X, Y, draw(st.sampled_from([torch.float64, torch.float32]))


@st.composite
def curvature_cases(draw):
    good = {
        "problem": tiny_problems(),
        "method": st.sampled_from(["auto", "dense", "kernel", "matrix_free"]),
        "rtol": st.floats(1e-3, 0.5),
        "top": st.integers(1, 4),
        "seed": st.integers(0, 2**32),
    }
    bad = {"method": BAD_NAME, "rtol": st.one_of(BAD_POSITIVE, st.floats(min_value=1.0)), "top": bad_count(1)}
    return draw(one_bad(good, bad))


def _curvature_alignment(case):
    a, spoiled = case
    model, X, Y, dtype = a["problem"]
    P = typed_or_result(lambda: Problem(model, X, Y, dtype=dtype), "Problem")
    if P is None:
        return
    theta = P.theta.clone()
    curv = typed_or_result(
        lambda: curvature(P, method=a["method"], rtol=a["rtol"], top=a["top"], seed=a["seed"]), "curvature"
    )
    if curv is None and spoiled is None:  # valid arguments are refused only when the problem's numbers overflow
        assert "not finite" in LAST_REFUSAL[0] or "overflow" in LAST_REFUSAL[0], LAST_REFUSAL[0]
    else:
        assert (curv is None) == (spoiled is not None)
    assert torch.equal(P.theta, theta)
    if curv is not None:
        explained(curv)
        if curv.method == "dense" and dtype == torch.float64:
            H = dense(P).H
            ref = float(torch.linalg.matrix_norm(H))
            assert curv.hessian_frobenius == pytest.approx(ref, rel=1e-6, abs=1e-12 * float(H.abs().max()))
    align = typed_or_result(lambda: alignment(P, hessian=False, rtol=0.1, seed=a["seed"]), "alignment")
    assert align is not None
    explained(align, skip=("mu_hessian", "tr_sigma_h", "two_loss_hess_frob2"))  # not asked for (hessian=False)


@FAST
@given(curvature_cases())
def test_fuzz_curvature_and_alignment_on_tiny_problems(case):
    _curvature_alignment(case)


# ------------------------------------------------------------------------------------------------- training
@st.composite
def training_cases(draw):
    problem = draw(tiny_problems())
    n = problem[1].shape[0]
    good = {
        "log_lr": st.floats(-6, 6),
        "b": st.integers(1, n),
        "steps": st.integers(0, 25),
        "sampling": st.sampled_from([*SCHEMES, "reshuffle"]),
        "seed": st.integers(0, 2**63 - 1),
    }
    bad = {
        "log_lr": BAD_POSITIVE,
        "b": bad_count(1, n),
        "steps": bad_count(0),
        "sampling": BAD_NAME,
        "seed": st.one_of(st.integers(max_value=-1), NOT_A_NUMBER),
    }
    return problem, *draw(one_bad(good, bad))


def _training(case):
    (model, X, Y, dtype), a, spoiled = case
    P = typed_or_result(lambda: Problem(model, X, Y, dtype=dtype), "Problem")
    if P is None:
        return
    start = P.theta.clone()
    lr = a["log_lr"] if spoiled == "log_lr" else 10.0 ** a["log_lr"]
    hist = typed_or_result(
        lambda: train(P, lr, a["b"], a["sampling"], steps=a["steps"], track_every=1, seed=a["seed"], progress=False),
        "train",
    )
    assert (hist is None) == (spoiled is not None)
    if hist is None:
        assert torch.equal(P.theta, start)  # a refused call changes nothing
        return
    assert list(hist.steps) == sorted(set(hist.steps))
    bound = 1e6 * max(hist.losses[0], 1e-12)
    if hist.diverged_at is None:
        assert all(math.isfinite(v) and v <= bound for v in hist.losses)
    else:
        # recorded at the first evaluation where L left its bound; the problem keeps θ from before the run
        event("train: diverged")
        assert hist.diverged_at == hist.steps[-1]
        assert not math.isfinite(hist.losses[-1]) or hist.losses[-1] > bound
        assert all(math.isfinite(v) and v <= bound for v in hist.losses[:-1])
        assert torch.equal(P.theta, start)


@FAST
@given(training_cases())
def test_fuzz_training(case):
    _training(case)


# ------------------------------------------------------------------------------------ data, models, estimators
@st.composite
def synthetic_cases(draw):
    good = {
        "name": st.sampled_from(["gaussian-linear", "teacher"]),
        "n": st.integers(1, 40),
        "dim": st.integers(1, 12),
        "outputs": st.integers(1, 3),
        "noise": st.floats(0, 10),
        "seed": st.integers(0, 2**63 - 1),
    }
    bad = {
        "name": BAD_NAME,
        "n": bad_count(1),
        "dim": bad_count(1),
        "outputs": bad_count(1),
        "noise": st.one_of(st.sampled_from([-1.0, math.nan, math.inf]), NOT_A_NUMBER),
        "seed": st.one_of(st.integers(max_value=-1), st.integers(min_value=2**63), NOT_A_NUMBER),
    }
    return draw(one_bad(good, bad))


def _synthetic(case):
    a, spoiled = case
    kwargs = {"n": a["n"], "seed": a["seed"], "dim": a["dim"], "outputs": a["outputs"], "noise": a["noise"]}
    ds = typed_or_result(lambda: load_dataset(a["name"], **kwargs), "load_dataset")
    # n=None means the default size; every other spoiled value must be refused
    assert (ds is None) == (spoiled is not None and not (spoiled == "n" and a["n"] is None))
    if ds is not None and spoiled is None:
        assert ds.X.shape == (a["n"], a["dim"]) and ds.Y.shape == (a["n"], a["outputs"])
        assert bool(torch.isfinite(ds.X).all()) and bool(torch.isfinite(ds.Y).all())
        again = load_dataset(a["name"], **kwargs)
        assert torch.equal(ds.X, again.X) and torch.equal(ds.Y, again.Y)


@FAST
@given(synthetic_cases())
def test_fuzz_synthetic_data(case):
    _synthetic(case)


@st.composite
def valid_specs(draw):
    kind = draw(st.sampled_from(["mlp", "cnn", "linear_net", "random_features"]))
    fields = {
        "kind": kind,
        "outputs": draw(st.integers(1, 3)),
        "seed": draw(st.integers(0, 2**63 - 1)),
        "bias": draw(st.booleans()),
        "init_scale": draw(st.floats(1e-3, 1e3)),
    }
    if kind == "cnn":
        fields |= {
            "input_shape": draw(st.tuples(st.integers(1, 2), st.integers(1, 6), st.integers(1, 6))),
            "channels": draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)),
            "kernel_size": draw(st.sampled_from([1, 3])),
        }
    else:
        fields["input_shape"] = draw(st.lists(st.integers(1, 5), min_size=1, max_size=2))
    width_counts = {"mlp": (1, 2), "cnn": (0, 1), "linear_net": (0, 2), "random_features": (1, 1)}[kind]
    fields["widths"] = draw(st.lists(st.integers(1, 5), min_size=width_counts[0], max_size=width_counts[1]))
    fields["activation"] = "identity" if kind == "linear_net" else draw(st.sampled_from(["tanh", "relu", "gelu"]))
    return fields


spec_cases = st.one_of(
    valid_specs(),
    st.fixed_dictionaries(
        {
            "kind": st.sampled_from(["mlp", "cnn", "linear_net", "random_features", "resnet"]),
            "input_shape": st.one_of(st.lists(st.integers(-1, 6), max_size=3), st.integers(-1, 6), NOT_A_NUMBER),
            "outputs": st.one_of(st.integers(-1, 3), NOT_A_NUMBER),
        },
        optional={
            "widths": st.one_of(st.lists(st.integers(-1, 5), max_size=3), NOT_A_NUMBER),
            "activation": st.sampled_from(["tanh", "relu", "identity", "swish"]),
            "bias": st.one_of(st.booleans(), NOT_A_NUMBER),
            "seed": st.one_of(st.integers(-1, 2**64), NOT_A_NUMBER),
            "channels": st.one_of(st.lists(st.integers(-1, 3), max_size=2), NOT_A_NUMBER),
            "kernel_size": st.one_of(st.integers(-1, 4), NOT_A_NUMBER),
            "init_scale": st.one_of(st.floats(), NOT_A_NUMBER),
            "depth": st.integers(),
        },
    ),
)


def _model_spec(fields):
    spec = typed_or_result(lambda: ModelSpec.from_dict(fields), "ModelSpec")
    if spec is None:
        return
    model = build_model(spec)
    assert count_parameters(model) == expected_parameter_count(spec)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    assert ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


@FAST
@given(spec_cases)
def test_fuzz_model_specs(fields):
    _model_spec(fields)


@st.composite
def estimator_cases(draw):
    size = draw(st.integers(1, 12))
    good = {
        "matrix_seed": st.integers(0, 2**16),
        "scale": st.sampled_from(SCALES),
        "k": st.integers(1, size),
        "tol": st.sampled_from([0.0, 1e-10, 1e-6]),
        "rtol": st.floats(0.01, 0.5),
        "seed": st.integers(0, 2**64),
    }
    bad = {
        "k": bad_count(1, size),
        "tol": st.one_of(st.sampled_from([-1.0, math.nan, math.inf]), NOT_A_NUMBER),
        "rtol": BAD_POSITIVE,
        "seed": st.one_of(st.integers(max_value=-1), NOT_A_NUMBER),
    }
    return size, *draw(one_bad(good, bad))


def _estimators(case):
    size, a, spoiled = case
    A = np.random.default_rng(a["matrix_seed"]).standard_normal((size, size))
    A = (A @ A.T) * a["scale"]
    pairs = typed_or_result(lambda: top_eigenpairs(A, a["k"], tol=a["tol"], seed=a["seed"]), "top_eigenpairs")
    assert (pairs is None) == (spoiled in ("k", "tol", "seed"))
    if pairs is not None and pairs.converged:
        exact = np.linalg.eigvalsh(A)[::-1][: len(pairs.eigenvalues)]
        np.testing.assert_allclose(pairs.eigenvalues, exact, rtol=1e-4, atol=1e-10 * abs(exact[0]))
    tf = typed_or_result(lambda: hutchpp(A, rtol=a["rtol"], seed=a["seed"], max_matvecs=4 * size), "hutchpp")
    assert (tf is None) == (spoiled in ("rtol", "seed"))
    if tf is not None:
        assert math.isfinite(tf.trace) and math.isfinite(tf.frobenius) and tf.frobenius >= 0


@FAST
@given(estimator_cases())
def test_fuzz_estimators(case):
    _estimators(case)


memory_sizes = st.one_of(
    st.builds(
        "{}{}{}".format,
        st.floats(0, 1e6).map(repr),
        st.sampled_from(["", "K", "m", "G", "T"]),
        st.sampled_from(["", "B", "iB", "ib"]),
    ),
    st.text(max_size=8),
    st.from_regex(r"\s*-?[0-9.e+]{0,6}\s*[kKmMgGtT]?[iI]?[bB]?", fullmatch=True),
)


def _memory_size(text):
    value = typed_or_result(lambda: parse_bytes(text), "parse_bytes")
    assert value is None or (isinstance(value, int) and value >= 0)


@FAST
@given(memory_sizes)
def test_fuzz_memory_sizes(text):
    _memory_size(text)


# -------------------------------------------------------------------------------------------------------- CLI
def _stub_body(config, ctx):
    """Stands in for an experiment's minutes of work: loads its data (so that bad data settings fail as they would)
    and returns one claim, so that the real ``Experiment.run`` writes every file."""
    from sgdstab.experiments.base import Outcome
    from sgdstab.experiments.minimum import NetConfig, load_data
    from sgdstab.experiments.report import Claim

    if isinstance(config, NetConfig):
        load_data(config)
    return Outcome(rows=[{"x": 1.0}], claims=[Claim("stub", "the stub ran", True, "")])


def stub_experiments(monkeypatch) -> None:
    """Replace every registered experiment's body by :func:`_stub_body` (the demo runs them too)."""
    from sgdstab.experiments.registry import MODULES

    for module_name, _ in MODULES.values():
        module = importlib.import_module(module_name)
        monkeypatch.setattr(module, "EXPERIMENT", dataclasses.replace(module.EXPERIMENT, body=_stub_body))


@pytest.fixture
def quick_cli(monkeypatch):
    stub_experiments(monkeypatch)


GOOD_CONFIGS = [b"seed = 3\n", b"n = 12\n", b"classes = [1, 2]\nsubset = 'first'\n"]
SWEEP_CONFIGS = [b"[grid]\nlr = [0.1, -1.0]\n", b"", b"[grid\nlr = [1]\n", b"runs = [1, 2]\n", b"[base]\nn = 1\n"]
BAD_CONFIGS = [
    b"n = 1\n",
    b"widht = [8]\n",
    b'n = "many"\n',
    b'dataset = "mnist"\n',
    b'dataset = "fashion-mnist"\ndata_dir = "{tmp}/nothing"\n',
    b"classes = [0, 11]\n",
    b"classes = [0, 0]\n",
    b"n = [\n",
    b"seed = -1\n",
    b"\xff\xfe n = 3",
]


@st.composite
def cli_cases(draw):
    """A valid command line (placeholders <OUT:...>/<CONFIG:...> are files made per example), and half the time
    one part spoiled: a bad value, a missing value, an unknown option or a junk token."""
    from sgdstab.experiments.registry import experiment_names

    command = draw(
        st.sampled_from(["experiment"] * 3 + ["analyze"] * 3 + ["demo", "sweep", "runs", "--version", "--help"])
    )
    if command == "analyze":
        argv = ["analyze", "--checkpoint", "<CKPT:good>", "--model", ANALYZE_SPEC, "--n", "8", "--classes", "0,6"]
        argv += ["--rtol", "0.1"] + (["--lr", "0.05", "--batch-size", "4"] if draw(st.booleans()) else [])
    elif command == "sweep":  # never a valid sweep (minutes of work): a config that fails, or a refused directory
        argv = ["sweep", f"<CONFIG:sweep{draw(st.integers(0, len(SWEEP_CONFIGS) - 1))}>", "--out", "<OUT:new>"]
    elif command == "runs":
        argv = ["runs", draw(st.sampled_from(["list", "show", "export"])), "<OUT:other>"]
    elif command == "experiment":
        argv = ["experiment", draw(st.sampled_from(experiment_names())), "--quick", "--quiet", "--out", "<OUT:new>"]
        if draw(st.booleans()):
            argv += ["--config", f"<CONFIG:good{draw(st.integers(0, len(GOOD_CONFIGS) - 1))}>"]
    elif command == "demo":
        argv = ["demo", "--n", draw(st.sampled_from(["2", "4", "16"])), "--seed", "1", "--out", "<OUT:new>"]
    else:
        argv = [command]
    # the demo's experiments must run in this process, where their bodies are stubbed: "--workers 1" stays last
    # and is never spoiled
    keep = len(argv)
    if draw(st.booleans()):
        argv.insert(0, "--debug")
    spoil = draw(st.sampled_from(["none"] * 5 + ["value", "drop", "option", "junk"]))
    event(f"cli {command}, spoiled: {spoil}")
    if spoil == "value":
        bad_values = {
            "--out": [f"<OUT:{kind}>" for kind in ("file", "inside-file", "other", "empty")],
            "--config": [f"<CONFIG:bad{i}>" for i in range(len(BAD_CONFIGS))] + ["<CONFIG:missing>"],
            "--n": ["1", "-3", "x", "2.5", "100000"],
            "--seed": ["-1", "x", "1.5"],
            "experiment": ["nope", "Diagram", ""],
            "--checkpoint": [f"<CKPT:{kind}>" for kind in ("truncated", "code", "other", "nan", "missing")],
            "--model": ["nonsense", "{}", '{"kind": "mlp"}', ANALYZE_SPEC.replace("[8]", "[9]")],
            "--classes": ["a,b", "0", "0,11", "0,0"],
            "--lr": ["0", "-1", "nan", "inf", "x"],
            "--batch-size": ["0", "9", "-1", "x"],
            "--rtol": ["0", "nan", "1", "2", "-0.5", "x"],
        }
        slots = [i for i, tok in enumerate(argv[: keep - 1]) if tok in bad_values]
        if slots:
            i = draw(st.sampled_from(slots))
            argv[i + 1] = draw(st.sampled_from(bad_values[argv[i]]))
    elif spoil == "drop" and keep > 1:
        del argv[draw(st.integers(0, keep - 1))]
    elif spoil == "option":
        argv.insert(draw(st.integers(1, keep)), draw(st.sampled_from(["--frob", "-x", "--n", "--out"])))
    elif spoil == "junk":
        argv.insert(draw(st.integers(0, keep)), draw(st.text(max_size=6)))
    if "demo" in argv:
        argv += ["--workers", "1"]
    return argv


ANALYZE_SPEC = json.dumps({"kind": "mlp", "input_shape": [784], "outputs": 1, "widths": [8], "seed": 0})


class _CodePayload:
    """Unpickling it would create the file ``ran`` in the example's folder."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def _checkpoints(tmp: Path) -> dict[str, str]:
    from sgdstab.models.architectures import mlp

    state = mlp((784,), 1, widths=(8,), seed=5).double().state_dict()
    torch.save(state, tmp / "good.pt")
    data = (tmp / "good.pt").read_bytes()
    (tmp / "truncated.pt").write_bytes(data[: len(data) // 2])
    torch.save({"net.0.weight": _CodePayload(str(tmp / "ran"))}, tmp / "code.pt")
    torch.save(mlp((784,), 1, widths=(16,), seed=5).state_dict(), tmp / "other.pt")
    state["net.2.bias"][0] = math.inf
    torch.save(state, tmp / "nan.pt")
    names = ("good", "truncated", "code", "other", "nan", "missing")
    return {f"<CKPT:{name}>": str(tmp / f"{name}.pt") for name in names}


def _placeholders(tmp: Path) -> dict[str, str]:
    (tmp / "file").write_text("x")
    other = tmp / "other"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"experiment": "not-this-one"}))
    values = {
        "<OUT:new>": str(tmp / "new"),
        "<OUT:file>": str(tmp / "file"),
        "<OUT:inside-file>": str(tmp / "file" / "inside"),
        "<OUT:other>": str(other),
        "<OUT:empty>": "",
        "<CONFIG:missing>": str(tmp / "missing.toml"),
        **_checkpoints(tmp),
    }
    for prefix, texts in (("good", GOOD_CONFIGS), ("bad", BAD_CONFIGS), ("sweep", SWEEP_CONFIGS)):
        for i, text in enumerate(texts):
            path = tmp / f"{prefix}{i}.toml"
            path.write_bytes(text.replace(b"{tmp}", bytes(tmp)))
            values[f"<CONFIG:{prefix}{i}>"] = str(path)
    return values


def _run_cli(argv: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp_name:
        values = _placeholders(Path(tmp_name))
        resolved = [values.get(token, token) for token in argv]
        out, err = io.StringIO(), io.StringIO()
        # in tmp: a demo or experiment with --out "" writes into the working directory
        with time_bound(), contextlib.chdir(tmp_name), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(resolved)
        assert not (Path(tmp_name) / "ran").exists(), "a checkpoint's pickled code ran"
    err_text = err.getvalue()
    event(f"cli exit {rc}")
    assert rc in (0, 2), (resolved, rc, err_text)
    if "--debug" in resolved:
        return  # tracebacks are what --debug is for
    assert "Traceback" not in err_text, (resolved, err_text)
    if rc == 2:
        if err_text.startswith("error: "):  # sgdstab's own errors: exactly one line (user input quoted with repr)
            assert err_text.count("\n") == 1, (resolved, err_text)
        else:  # click's usage errors: usage lines, then "Error: ..." (which may echo a junk token's newlines)
            assert re.search(r"^Error: ", err_text, flags=re.M), (resolved, err_text)


@FAST
@given(cli_cases())
def test_fuzz_cli(quick_cli, argv):
    _run_cli(argv)


# ---------------------------------------------------------------------------------------- the bigger run
@pytest.mark.slow
@SLOW
@given(st.data())
def test_fuzz_everything_longer(quick_cli, data):
    """Every property above again, each with fresh examples (300 runs of this test: 300 more per property)."""
    _conventions(data.draw(convention_cases()))
    _stability(data.draw(stability_cases()))
    _simulation(data.draw(simulation_cases()))
    _curvature_alignment(data.draw(curvature_cases()))
    _training(data.draw(training_cases()))
    _synthetic(data.draw(synthetic_cases()))
    _model_spec(data.draw(spec_cases))
    _estimators(data.draw(estimator_cases()))
    _memory_size(data.draw(memory_sizes))
    _run_cli(data.draw(cli_cases()))
