"""sgdstab.train: the SGD step against closed forms, reproducibility, resuming, checkpoints, History files."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
from torch import nn

from references import dense, tiny_problem
from sgdstab import Problem, train
from sgdstab.errors import CheckpointError, ConventionError, HistoryError, SgdstabError, TrainingError
from sgdstab.training.trainer import TRACKABLE, History, _BatchSampler, _ProgressBar
from sgdstab.training.trainer import _stderr_is_terminal as real_is_terminal

pytestmark = pytest.mark.usefixtures("one_thread")

SCHEMES = ("with_replacement", "without_replacement", "reshuffle")


def linear_problem(n: int = 12, d: int = 3, k: int = 1, seed: int = 0, **kwargs) -> Problem:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, dtype=torch.float64, generator=g)
    Y = torch.randn(n, k, dtype=torch.float64, generator=g)
    model = nn.Linear(d, k, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(k, d, dtype=torch.float64, generator=g))
    return Problem(model, X, Y, **kwargs)


def reference_batches(n: int, b: int, sampling: str, seed: int, steps: int) -> list[torch.Tensor]:
    """The documented index sequence of each scheme, drawn from a CPU generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    out, perm, pos = [], None, 0
    for _ in range(steps):
        if sampling == "with_replacement":
            out.append(torch.randint(n, (b,), generator=g))
        elif sampling == "without_replacement":
            out.append(torch.randperm(n, generator=g)[:b])
        else:
            if perm is None or pos + b > n:
                perm, pos = torch.randperm(n, generator=g), 0
            out.append(perm[pos : pos + b])
            pos += b
    return out


def weight(problem: Problem) -> torch.Tensor:
    return problem.model.weight.detach().reshape(-1).clone()


def same_run(a: History, b: History) -> bool:
    """Equal tables and settings; the timing fields differ between runs and are left out."""
    timeless = {"seconds": 0.0, "steps_per_second": 0.0}
    return History(**{**a.__dict__, **timeless}) == History(**{**b.__dict__, **timeless})


# ---------------------------------------------------------------------------------------------------- the step
@pytest.mark.parametrize("sampling", SCHEMES)
def test_step_is_minibatch_sgd_on_the_half_mse(sampling):
    # Linear least squares: ∇ℓ_i = x_i (x_iᵀθ − y_i), so θ ← θ − (η/B) Σ_batch x_i (x_iᵀθ − y_i) in closed form.
    P = linear_problem()
    X, y, theta = P.X, P.Y[:, 0], weight(P)
    lr, b, steps = 0.07, 5, 23
    for idx in reference_batches(P.n, b, sampling, seed=3, steps=steps):
        xb = X[idx]
        theta = theta - lr / b * xb.T @ (xb @ theta - y[idx])
    hist = train(P, lr, b, sampling, steps=steps, track_every=4, seed=3, progress=False)
    torch.testing.assert_close(weight(P), theta, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(P.theta, theta, rtol=1e-13, atol=1e-13)  # problem and model agree
    assert hist.steps == (0, 4, 8, 12, 16, 20, 23)
    assert hist.final_loss == pytest.approx(0.5 * float(((X @ theta - y) ** 2).mean()), rel=1e-12)


def test_gd_is_full_batch_without_replacement():
    P = linear_problem(n=9)
    X, y, theta = P.X, P.Y[:, 0], weight(P)
    for _ in range(15):
        theta = theta - 0.1 * X.T @ (X @ theta - y) / P.n
    train(P, 0.1, P.n, "without_replacement", steps=15, progress=False)
    torch.testing.assert_close(weight(P), theta, rtol=1e-13, atol=1e-13)


def test_torch_mse_learning_rate_is_converted():
    # torch's MSELoss = (2/k)·L: a step η on it is the step 2η/k on L.
    a, b = linear_problem(k=3, loss="torch_mse"), linear_problem(k=3)
    train(a, 0.3, 4, steps=20, seed=1, progress=False)
    train(b, 2 * 0.3 / 3, 4, steps=20, seed=1, progress=False)
    assert torch.equal(a.theta, b.theta)


def test_sampling_schemes_draw_what_they_claim():
    n, b = 12, 4
    epoch = _BatchSampler(n, b, "reshuffle", 0, torch.device("cpu"))
    for _ in range(5):  # every sample exactly once per epoch of n/B batches, a new order each epoch
        assert sorted(torch.cat([epoch() for _ in range(n // b)]).tolist()) == list(range(n))
    subset = _BatchSampler(n, b, "without_replacement", 0, torch.device("cpu"))
    assert all(len(set(subset().tolist())) == b for _ in range(200))
    iid = _BatchSampler(n, b, "with_replacement", 0, torch.device("cpu"))
    draws = torch.cat([iid() for _ in range(3000)])
    counts = torch.bincount(draws, minlength=n).double()
    chi2 = float(((counts - counts.mean()) ** 2 / counts.mean()).sum())
    assert chi2 < 35  # 11 degrees of freedom: P(χ² > 35) ≈ 2e-4
    assert any(len(set(iid().tolist())) < b for _ in range(50))  # repeats happen with replacement
    assert _BatchSampler(n, n, "without_replacement", 0, torch.device("cpu"))() is None  # GD: no indexing


# ---------------------------------------------------------------------------------------------------- stopping
def test_until_loss_stops_at_the_first_evaluation_below_it():
    P = linear_problem(n=20, d=3)
    best = torch.linalg.lstsq(P.X, P.Y).solution
    target = 0.5 * float(((P.X @ best - P.Y) ** 2).mean()) * 1.01
    hist = train(P, 0.2, P.n, "without_replacement", steps=None, until_loss=target, track_every=3, progress=False)
    assert hist.final_loss <= target < hist.losses[-2]
    assert hist.steps[-1] % 3 == 0 and hist.diverged_at is None


def test_divergence_by_growth_is_recorded_at_the_first_step_over_the_factor():
    P = linear_problem(n=10)
    X, y, theta = P.X, P.Y[:, 0], weight(P)
    lam = float(torch.linalg.eigvalsh(X.T @ X / P.n)[-1])
    lr = 2.5 / lam  # unstable for GD: the top mode grows by |1 − 2.5| per step

    def loss(t):
        return 0.5 * float(((X @ t - y) ** 2).mean())

    loss0, expected, t = loss(theta), None, theta.clone()
    for step in range(1, 100):
        t = t - lr * X.T @ (X @ t - y) / P.n
        if loss(t) > 10 * loss0:
            expected = step
            break
    before = P.theta.clone()
    hist = train(P, lr, P.n, "without_replacement", steps=100, track_every=1, divergence_factor=10, progress=False)
    assert hist.diverged_at == expected == hist.steps[-1]
    assert math.isfinite(hist.final_loss) and hist.final_loss > 10 * loss0
    assert torch.equal(P.theta, before) and torch.equal(weight(P), before)  # the problem is left as it was


def test_non_finite_loss_is_divergence_not_a_crash():
    P = linear_problem(n=10)
    before = P.theta.clone()
    hist = train(P, 1e40, 3, steps=200, track_every=5, track={"w": lambda p: 1.0}, progress=False)
    assert hist.diverged_at is not None and hist.diverged_at % 5 == 0
    assert not math.isfinite(hist.final_loss)
    assert math.isnan(hist.tracked["w"][-1]) and hist.tracked["w"][:-1] == (1.0,) * (len(hist) - 1)
    assert torch.equal(P.theta, before)


# ---------------------------------------------------------------------------------------------------- tracking
def test_named_figures_match_dense_references():
    P = tiny_problem("mlp", 2, "off", n=7)
    hist = train(P, 0.05, 3, steps=10, track_every=5, track=("loss", "curvature", "alignment"), progress=False)
    assert list(hist.tracked) == [*TRACKABLE["curvature"], *TRACKABLE["alignment"]]
    assert hist.steps == (0, 5, 10)
    D = dense(P)  # at the final θ, which the problem and its model now hold
    eig = torch.linalg.eigvalsh(D.H)
    last = {name: column[-1] for name, column in hist.tracked.items()}
    assert last["hessian_frobenius"] == pytest.approx(float(torch.linalg.matrix_norm(D.H)), rel=1e-8)
    assert last["sharpness"] == pytest.approx(float(eig[-1]), rel=1e-8)
    assert last["trace"] == pytest.approx(float(eig.sum()), rel=1e-8)
    mu = float(torch.trace(D.Sigma @ D.G)) / (2 * D.loss * float(torch.linalg.matrix_norm(D.G)) ** 2)
    assert last["mu"] == pytest.approx(mu, rel=1e-8)
    # μ_inf = λ_min(A on range K)/||K||_F² with A = n·bdiag(K²) − K² (THEORY.md §3)
    n, k = P.n, P.k
    K = D.J @ D.J.T
    K2 = K @ K
    mask = torch.block_diag(*[torch.ones(k, k, dtype=K.dtype)] * n)
    A = n * K2 * mask - K2
    lam, V = torch.linalg.eigh(K)
    W = V[:, lam > lam[-1] * 1e-10]
    mu_inf = float(torch.linalg.eigvalsh(W.T @ A @ W)[0]) / float(torch.linalg.matrix_norm(K)) ** 2
    assert last["mu_inf"] == pytest.approx(mu_inf, rel=1e-6, abs=1e-10)
    assert hist.tracked["sharpness"][0] != last["sharpness"]  # measured at each step's θ, not once


def test_callable_tracks_see_the_current_parameters():
    P = linear_problem()
    hist = train(P, 0.05, 4, steps=12, track_every=4, track={"w0": lambda p: float(p.theta[0])}, progress=False)
    assert hist.tracked["w0"][-1] == float(P.theta[0])
    assert len(set(hist.tracked["w0"])) == 4


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"track": ("curvature", "hessian")}, TrainingError, "unknown tracked figure 'hessian'"),
        ({"track": {"loss": lambda p: 0.0}}, TrainingError, "cannot be named 'loss'"),
        ({"track": 3}, TrainingError, "track must be"),
        ({"track_every": 0}, TrainingError, "track_every"),
        ({"steps": -1}, TrainingError, "steps"),
        ({"steps": None}, TrainingError, "until_loss"),
        ({"checkpoint_every": 5}, TrainingError, "checkpoint_path"),
        ({"divergence_factor": 0.5}, TrainingError, "divergence_factor"),
        ({"sampling": "poisson"}, ConventionError, "unknown sampling scheme"),
        ({"seed": -1}, TrainingError, "seed"),
        ({"seed": 2**63}, TrainingError, r"seed must be an integer in \[0, 2\*\*63\)"),
        ({"steps": 2.5}, TrainingError, "steps"),
        ({"track_every": True}, TrainingError, "track_every"),
        ({"until_loss": -1.0}, TrainingError, "until_loss"),
        ({"until_loss": math.nan}, TrainingError, "until_loss"),
        ({"until_loss": "small"}, TrainingError, "until_loss"),
        ({"divergence_factor": math.nan}, TrainingError, "divergence_factor"),
        ({"checkpoint_every": 0, "checkpoint_path": "unused.pt"}, TrainingError, "checkpoint_every"),
    ],
)
def test_bad_arguments_raise_one_line_typed_errors(kwargs, error, match):
    with pytest.raises(error, match=match) as info:
        train(linear_problem(), 0.1, 4, **{"progress": False, **kwargs})
    assert isinstance(info.value, SgdstabError) and "\n" not in str(info.value)


def test_integers_of_any_kind_are_taken_and_recorded_as_python_ints():
    import numpy as np

    plain, other = linear_problem(), linear_problem()
    a = train(plain, 0.05, 4, steps=12, track_every=4, seed=3, progress=False)
    b = train(other, 0.05, np.int64(4), steps=np.int64(12), track_every=np.int32(4), seed=np.uint8(3), progress=False)
    assert same_run(a, b) and torch.equal(plain.theta, other.theta)
    assert type(b.seed) is int and type(b.steps[-1]) is int


# ---------------------------------------------------------------------------------------------------- reproducibility
@pytest.mark.parametrize("sampling", SCHEMES)
def test_same_seed_same_run_bit_for_bit(sampling):
    runs = []
    for _ in range(2):
        P = tiny_problem("mlp", 2, "off", n=11)
        h = train(P, 0.1, 3, sampling, steps=40, track_every=7, track={"w": lambda p: float(p.theta.sum())}, seed=5)
        runs.append((h, P.theta))
    assert same_run(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    P = tiny_problem("mlp", 2, "off", n=11)
    other = train(P, 0.1, 3, sampling, steps=40, track_every=7, track={"w": lambda p: float(p.theta.sum())}, seed=6)
    assert not torch.equal(P.theta, runs[0][1]) and not same_run(other, runs[0][0])


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("sampling", SCHEMES)
def test_interrupted_run_resumed_from_its_checkpoint_equals_the_uninterrupted_run(sampling, tmp_path):
    settings = {"lr": 0.1, "batch_size": 3, "sampling": sampling, "steps": 60, "track_every": 10, "seed": 2}

    def norm(p):
        return float(p.theta.norm())

    P = tiny_problem("mlp", 2, "off", n=11)  # 11/3: the epoch scheme is mid-permutation at the checkpoint
    full = train(P, **settings, track={"norm": norm}, progress=False)

    def crash_at_40(p):
        if torch.equal(p.theta, theta_at_40[0]):
            raise Interrupt
        return norm(p)

    # the crash comes after the checkpoint at step 25 and the evaluations at 30 and 40's θ is known from a probe
    probe = tiny_problem("mlp", 2, "off", n=11)
    train(probe, **{**settings, "steps": 40}, progress=False)
    theta_at_40 = [probe.theta.clone()]
    ckpt = tmp_path / "run.ckpt"
    Q = tiny_problem("mlp", 2, "off", n=11)
    with pytest.raises(Interrupt):
        train(Q, **settings, track={"norm": crash_at_40}, checkpoint_every=25, checkpoint_path=ckpt, progress=False)
    assert torch.equal(Q.theta, theta_at_40[0])  # interrupted: the problem keeps the last θ reached
    state = torch.load(ckpt, weights_only=True)  # plain tensors and primitives only
    assert state["step"] == 25 and state["history"]["steps"] == [0, 10, 20]

    R = tiny_problem("mlp", 2, "off", n=11)
    R.set_parameters(torch.randn(R.p, dtype=R.dtype))  # other weights: the checkpoint replaces them
    resumed = train(R, **settings, track={"norm": norm}, resume=ckpt, progress=False)
    assert same_run(resumed, full)
    assert torch.equal(R.theta, P.theta)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))


def test_finished_run_extends_from_its_final_checkpoint(tmp_path):
    ckpt = tmp_path / "sub" / "final.pt"
    P = tiny_problem("mlp", 2, "off", n=11)
    full = train(P, 0.1, 4, "reshuffle", steps=50, track_every=5, seed=1, progress=False)
    Q = tiny_problem("mlp", 2, "off", n=11)
    first = train(Q, 0.1, 4, "reshuffle", steps=30, track_every=5, seed=1, checkpoint_path=ckpt, progress=False)
    assert first.steps[-1] == 30
    saved_seconds = torch.load(ckpt, weights_only=True)["history"]["seconds"]
    assert 0 < saved_seconds <= first.seconds
    rest = train(Q, 0.1, 4, "reshuffle", steps=50, track_every=5, seed=1, resume=ckpt, progress=False)
    assert same_run(rest, full) and torch.equal(Q.theta, P.theta)
    assert rest.seconds > saved_seconds  # time is summed over the sessions


def test_checkpoint_layout_is_the_documented_one(tmp_path):
    # the file format others read (sgdstab.models.loading, resumed runs of older versions): entries and their order
    path = tmp_path / "c.pt"
    P = tiny_problem("mlp", 2, "off", n=11)
    train(P, 0.1, 3, "reshuffle", steps=7, track_every=3, track={"w": lambda p: 1.0}, checkpoint_path=path, seed=4)
    state = torch.load(path, weights_only=True)
    assert list(state) == ["format", "version", "parameters", "step", "sampler", "run", "history"]
    assert (state["format"], state["version"], state["step"]) == ("sgdstab-train-checkpoint", 1, 7)
    assert list(state["parameters"]) == list(P.layout.names)
    assert all(t.device.type == "cpu" and t.dtype == P.dtype for t in state["parameters"].values())
    assert list(state["sampler"]) == ["generator", "perm", "pos"]
    assert state["sampler"]["pos"] == 3  # 3 batches of 3 per epoch of 11: step 7 is the first of the third epoch
    run = state["run"]
    assert list(run) == [
        "lr", "batch_size", "sampling", "seed", "n", "loss_convention", "track_every", "columns", "data", "loss0"
    ]  # fmt: skip
    assert (run["lr"], run["batch_size"], run["sampling"], run["seed"], run["n"]) == (0.1, 3, "reshuffle", 4, 11)
    assert run["columns"] == ["w"] and run["track_every"] == 3 and len(run["data"]) == 4
    history = state["history"]
    assert list(history) == ["steps", "losses", "tracked", "seconds"]
    assert history["steps"] == [0, 3, 6, 7] and history["tracked"] == {"w": [1.0] * 4}


# ---------------------------------------------------------------------------------------------------- bad checkpoints
@pytest.fixture
def checkpoint(tmp_path):
    path = tmp_path / "c.pt"
    train(tiny_problem("mlp", 2, "off", n=11), 0.1, 3, steps=10, checkpoint_path=path, progress=False)
    return path


def _resume(path, problem=None, **kwargs):
    problem = problem or tiny_problem("mlp", 2, "off", n=11)
    return train(problem, **{"lr": 0.1, "batch_size": 3, "steps": 20, "progress": False, **kwargs}, resume=path)


def test_truncated_or_corrupt_checkpoint_is_a_typed_error(checkpoint, tmp_path):
    data = checkpoint.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    for path, match in [
        (cut, "cannot read checkpoint .*truncated, corrupt"),
        (garbage, "truncated, corrupt"),
        (other, "not an sgdstab training checkpoint"),
        (tmp_path / "missing.pt", "does not exist"),
    ]:
        with pytest.raises(CheckpointError, match=match) as info:
            _resume(path)
        assert "\n" not in str(info.value)


def test_unsafe_pickle_is_refused_not_executed(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "sgdstab-train-checkpoint", "payload": Interrupt("x")}, path)
    with pytest.raises(CheckpointError, match="holding more than plain tensors"):
        _resume(path)


def test_checkpoint_of_another_architecture_or_run_is_refused(checkpoint):
    wider = tiny_problem("mlp", 2, "off", n=11, width=7)
    with pytest.raises(CheckpointError, match=r"does not fit this model: '0\.weight' has shape"):
        _resume(checkpoint, wider)
    deeper = Problem(nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 6), nn.Linear(6, 2)).double(), *_data())
    with pytest.raises(CheckpointError, match="does not fit this model"):
        _resume(checkpoint, deeper)
    with pytest.raises(CheckpointError, match=r"written with lr=0\.1, this call has lr=0\.2"):
        _resume(checkpoint, lr=0.2)
    with pytest.raises(CheckpointError, match="sampling"):
        _resume(checkpoint, sampling="reshuffle")
    with pytest.raises(CheckpointError, match="other data"):
        _resume(checkpoint, tiny_problem("mlp", 2, "off", n=11, seed=1))
    with pytest.raises(CheckpointError, match="float32"):
        _resume(checkpoint, tiny_problem("mlp", 2, "off", n=11, dtype=torch.float32))


def _data():
    P = tiny_problem("mlp", 2, "off", n=11)
    return P.X, P.Y


# ---------------------------------------------------------------------------------------------------- History
def test_history_is_a_tidy_table():
    P = linear_problem()
    h = train(P, 0.05, 4, steps=9, track_every=3, track={"a": lambda p: 1.5, "b": lambda p: -2.0}, progress=False)
    assert list(h.columns()) == ["step", "loss", "a", "b"]
    rows = h.rows()
    assert [r["step"] for r in rows] == [0, 3, 6, 9] and len(h) == 4
    assert [r["loss"] for r in rows] == list(h.losses) and all(r["a"] == 1.5 and r["b"] == -2.0 for r in rows)
    meta = h.metadata()
    assert meta["lr"] == 0.05 and meta["batch_size"] == 4 and meta["sampling"] == "with_replacement"
    assert meta["steps_per_second"] == pytest.approx(9 / h.seconds)
    with pytest.raises(HistoryError, match="tracked column 'a' has 1 values for 2 steps"):
        History(steps=(0, 1), losses=(1.0, 0.5), tracked={"a": (1.0,)})


def test_history_save_load_is_exact_including_non_finite_values(tmp_path):
    P = linear_problem(n=10)
    diverged = train(P, 1e40, 3, steps=200, track_every=5, track={"w": lambda p: 0.1 + 0.2}, progress=False)
    assert diverged.diverged_at is not None and not math.isfinite(diverged.final_loss)
    odd = History(
        steps=(0, 1, 2, 3, 4),
        losses=(1 / 3, math.inf, -math.inf, math.nan, -0.0),
        tracked={"x": (5e-324, 1.7976931348623157e308, math.pi, -1e-300, 0.0)},
        final_loss=math.nan,
        diverged_at=3,
        seconds=0.1 + 0.2,
        lr=1e-3,
        batch_size=7,
        sampling="reshuffle",
        seed=12,
        steps_per_second=math.inf,
    )
    for h in (diverged, odd):
        path = h.save(tmp_path / "h.json")
        text = path.read_text()
        json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))  # strict JSON
        back = History.load(path)
        assert back == h
        assert back.to_dict().keys() == h.to_dict().keys()
    assert History.load(tmp_path / "h.json").losses[4] == 0.0 and math.copysign(1, odd.losses[4]) == -1
    changed = History(**{**odd.__dict__, "losses": (1 / 3, math.inf, -math.inf, math.nan, 0.0)})
    assert changed != odd  # −0.0 and 0.0 differ, so equality is not too lenient
    assert not list(tmp_path.glob(".*.tmp"))


def test_history_load_errors_are_typed(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(HistoryError, match="cannot read history"):
        History.load(bad)
    bad.write_text(json.dumps({"format": "something else"}))
    with pytest.raises(HistoryError, match="not an sgdstab history"):
        History.load(bad)
    good = History(steps=(0,), losses=(1.0,)).to_file_dict()
    good["columns"]["loss"] = ["one"]
    bad.write_text(json.dumps(good))
    with pytest.raises(HistoryError, match="loss must be a number"):
        History.load(bad)
    with pytest.raises(HistoryError, match="cannot read history"):
        History.load(tmp_path / "missing.json")


def test_history_files_read_every_spelling_of_non_finite_numbers(tmp_path):
    # sgdstab.utils.results is the one spelling: "NaN"/"Infinity"/"-Infinity", and the older "nan"/"inf"/"-inf"
    data = History(steps=(0, 1, 2), losses=(1.0, 2.0, 3.0)).to_file_dict()
    data["columns"]["loss"] = ["nan", "inf", "-Infinity"]
    data["metadata"]["final_loss"] = "-inf"
    path = tmp_path / "h.json"
    path.write_text(json.dumps(data))
    back = History.load(path)
    assert math.isnan(back.losses[0]) and back.losses[1:] == (math.inf, -math.inf) and back.final_loss == -math.inf
    assert History(steps=(0,), losses=(math.inf,)).to_file_dict()["columns"]["loss"] == ["Infinity"]
    for bad in (True, None, "NAN", 10**400):  # a bool, no number, an unknown spelling, beyond float range
        data["columns"]["loss"] = [bad, 1.0, 1.0]
        path.write_text(json.dumps(data))
        with pytest.raises(HistoryError, match="loss must be a number") as info:
            History.load(path)
        assert "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------------- progress bar
def test_progress_bar_only_on_a_terminal(monkeypatch):
    import sgdstab.training.trainer as training

    updates: list[tuple[int, float]] = []

    class Recorder:
        def __init__(self, total, start=0):
            self.total = total

        def update(self, step, loss):
            updates.append((step, loss))

        def close(self):
            updates.append((-1, math.nan))

    monkeypatch.setattr(training, "_ProgressBar", Recorder)
    assert not real_is_terminal()  # pytest captures stderr
    train(linear_problem(), 0.05, 4, steps=20, track_every=5, progress=True)
    assert updates == []
    monkeypatch.setattr(training, "_stderr_is_terminal", lambda: True)
    train(linear_problem(), 0.05, 4, steps=20, track_every=5, progress=False)
    assert updates == []
    h = train(linear_problem(), 0.05, 4, steps=20, track_every=5, progress=True)
    assert updates[-1][0] == -1  # closed
    evaluated = dict(zip(h.steps, h.losses, strict=True))
    assert all(loss == evaluated[5 * (step // 5)] for step, loss in updates[:-1])  # the last evaluated loss
    assert [s for s, _ in updates[:-1]] == list(range(1, 21))


def test_progress_bar_shows_loss_and_rate():
    from rich.console import Console

    out = io.StringIO()
    bar = _ProgressBar(100, console=Console(file=out, force_terminal=True, width=120))
    bar.update(50, 0.125)
    bar.close()
    text = out.getvalue()
    assert "loss 1.250e-01" in text and "steps/s" in text and "50/100" in text


def test_progress_lines_without_a_terminal(monkeypatch, capsys):
    import sgdstab.training.trainer as training

    # one line per interval, none for a run shorter than it
    train(linear_problem(), 0.05, 4, steps=20, track_every=5, progress=True)
    assert capsys.readouterr().err == ""
    clock = iter(float(t) for t in range(0, 10_000, 7))  # every perf_counter call: 7 s later
    monkeypatch.setattr(training.time, "perf_counter", lambda: next(clock))
    lines = training._ProgressLines(300, interval=60.0)
    for step in range(1, 301):
        lines.update(step, 0.5 / step)
    lines.close()
    err = capsys.readouterr().err.splitlines()
    assert 30 <= len(err) <= 36  # ≈ 300 updates × 7 s / 60 s
    first = err[0].split()
    assert first[:2] == ["SGD", "step"] and first[2].endswith("/300") and "loss" in first and "steps/s" in err[0]
    step = int(first[2].split("/")[0])
    assert float(first[first.index("loss") + 1]) == pytest.approx(0.5 / step, rel=1e-3)
