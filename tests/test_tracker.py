"""sgdstab.Tracker along real torch.optim loops: every figure of its table against dense float64 references
computed here at the θ it measured (the Hessian of the user's own loss by torch.func, enumerated batches, the
optimizer's state read by hand), its files (durable, resumable, never over files it did not write) and its refusals.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.func import functional_call, hessian

import sgdstab
from sgdstab.errors import OutputError, TrackerError
from sgdstab.tracking import tracker as tracker_module
from sgdstab.tracking.table import COLUMNS

N, D, K = 24, 4, 2


def _data(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(N, D, generator=g, dtype=torch.float64)
    Y = torch.stack([X[:, 0] * X[:, 1], torch.sin(X[:, 2])], 1)
    return X, Y


def _model(seed: int = 0) -> nn.Module:
    return sgdstab.mlp(D, K, widths=(8,), seed=seed).double()


def _flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).clone()


def _dense_hessian(model: nn.Module, X: torch.Tensor, Y: torch.Tensor, loss_fn) -> torch.Tensor:
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]

    def loss(theta: torch.Tensor) -> torch.Tensor:
        params = {n: t.view(s) for n, t, s in zip(names, torch.split(theta, sizes), shapes, strict=True)}
        return loss_fn(functional_call(model, params, (X,)), Y)

    return hessian(loss)(_flat(model))


def _half_mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((out - y) ** 2).sum(1).mean()


def _loop(model, X, Y, opt, tracker, steps, batch=8, loss_fn=_half_mse, seed=0, at_rows=None):
    """Train with seeded batches; ``at_rows(step, model, row, update)`` sees each measured θ."""
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        before = _flat(model)
        idx = torch.randperm(len(X), generator=g)[:batch]
        opt.zero_grad()
        loss = loss_fn(model(X[idx]), Y[idx])
        loss.backward()
        opt.step()
        row = tracker.step(loss)
        if row is not None and at_rows is not None:
            at_rows(model, row, _flat(model) - before)


def test_rows_match_dense_hessian_of_the_users_own_loss(tmp_path, one_thread):
    """torch's MSELoss over k = 2 outputs: sharpness and step sharpness are of *that* loss (2/k · L), against 2/η."""
    X, Y = _data()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    checked = []

    def check(m, row, update):
        H = _dense_hessian(m, X, Y, nn.MSELoss())
        lam = float(torch.linalg.eigvalsh(H)[-1])
        assert row["sharpness"] == pytest.approx(lam, rel=1e-7)
        assert row["step_sharpness"] == pytest.approx(float(update @ H @ update / (update @ update)), rel=1e-9)
        assert row["loss"] == pytest.approx(float(nn.MSELoss()(m(X).detach(), Y)), rel=1e-12)
        checked.append(row["step"])

    tr = sgdstab.Tracker(
        model, X, Y, opt, loss="torch_mse", every=5, out=tmp_path, batch_size=8, sharpness_rtol=1e-10, kernel_size=0
    )
    _loop(model, X, Y, opt, tr, 15, loss_fn=nn.MSELoss(), at_rows=check)
    tr.close()
    assert checked == [5, 10, 15]
    assert [r["step"] for r in tr.rows] == [0, 5, 10, 15]
    assert all(r["threshold"] == pytest.approx(2 / 0.05) for r in tr.rows)
    assert math.isnan(tr.rows[0]["step_sharpness"])  # no update before the first step


def test_batch_sharpness_is_exact_over_every_batch_of_a_small_subset(tmp_path, one_thread):
    X, Y = _data()
    model = _model(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    tr = sgdstab.Tracker(model, X, Y, opt, every=3, out=tmp_path, batch_size=2, eval_size=6, kernel_size=0)
    _loop(model, X, Y, opt, tr, 3, batch=2)
    row = tr.rows[-1]
    # the tracker's evaluation subset and a dense enumeration over its C(6, 2) batches
    Xe, Ye = tr.problem.X, tr.problem.Y
    values = []
    for pair in itertools.combinations(range(6), 2):
        idx = torch.tensor(pair)
        H = _dense_hessian(model, Xe[idx], Ye[idx], _half_mse)
        model.zero_grad()
        _half_mse(model(Xe[idx]), Ye[idx]).backward()
        g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
        values.append(float(g @ H @ g / (g @ g)))
    assert row["batch_sharpness"] == pytest.approx(sum(values) / len(values), rel=1e-9)
    assert row["batch_sharpness_stderr"] == 0.0


def test_kernel_figures_match_the_library_at_the_measured_point(tmp_path, one_thread):
    X, Y = _data()
    model = _model(2)
    opt = torch.optim.SGD(model.parameters(), lr=0.03, momentum=0.9)
    tr = sgdstab.Tracker(model, X, Y, opt, every=4, out=tmp_path, batch_size=4, kernel_size=12, kernel_every=1)
    _loop(model, X, Y, opt, tr, 4, batch=4)
    row = tr.rows[-1]
    sub = sgdstab.Problem(model, tr.problem.X[:12], tr.problem.Y[:12])
    eta = sgdstab.critical_learning_rate(sub, 4, "without_replacement", momentum=0.9, progress=False)
    assert row["critical_lr"] == pytest.approx(eta, rel=1e-6)
    mu = sgdstab.alignment(sub, method="kernel").mu
    assert row["mu"] == pytest.approx(mu, rel=1e-8)
    assert row["threshold"] == pytest.approx(2 * 1.9 / 0.03)
    # the Frobenius bound and the mean-square proxy are plain SGD's: not reported under momentum
    assert math.isnan(row["frobenius_bound"]) and math.isnan(row["mean_square_proxy"])


def test_adam_preconditioned_sharpness_against_its_own_state(tmp_path, one_thread):
    X, Y = _data()
    model = _model(3)
    lr, b1, b2, eps = 0.01, 0.9, 0.999, 1e-8
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(b1, b2), eps=eps)
    tr = sgdstab.Tracker(model, X, Y, opt, every=6, out=tmp_path, batch_size=8, sharpness_rtol=1e-10)
    _loop(model, X, Y, opt, tr, 6)
    row = tr.rows[-1]
    t = 6
    v = torch.cat([opt.state[p]["exp_avg_sq"].reshape(-1) for p in model.parameters()])
    P = (1 - b1**t) * ((v / (1 - b2**t)).sqrt() + eps)
    H = _dense_hessian(model, X, Y, _half_mse)
    expected = float(torch.linalg.eigvalsh(H / P.sqrt()[:, None] / P.sqrt()[None, :])[-1])
    assert row["preconditioned_sharpness"] == pytest.approx(expected, rel=1e-6)
    assert row["threshold"] == pytest.approx((2 + 2 * b1) / ((1 - b1) * lr))
    assert math.isnan(row["critical_lr"])  # no exact η* for an adaptive method
    assert json.loads((tmp_path / "track.json").read_text())["meta"]["preconditioned"] is True


def test_threshold_follows_a_scheduler(tmp_path, one_thread):
    X, Y = _data()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    tr = sgdstab.Tracker(model, X, Y, opt, every=5, out=tmp_path, batch_size=8, kernel_size=0)
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        idx = torch.randperm(N, generator=g)[:8]
        opt.zero_grad()
        _half_mse(model(X[idx]), Y[idx]).backward()
        opt.step()
        sched.step()
        tr.step()
    assert [r["threshold"] for r in tr.rows] == pytest.approx([20.0, 40.0, 80.0])


def test_files_are_durable_and_a_killed_run_resumes(tmp_path, one_thread):
    X, Y = _data()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    tr = sgdstab.Tracker(model, X, Y, opt, every=5, out=tmp_path, batch_size=8, kernel_size=0)
    _loop(model, X, Y, opt, tr, 12)
    # killed here: no close(); and a row the kill cut short
    with open(tmp_path / "track.csv", "a") as handle:
        handle.write("15,0.1,0.05")
    with open(tmp_path / "track.csv") as handle:
        written = list(csv.reader(handle))
    assert written[0] == list(COLUMNS) and [int(r[0]) for r in written[1:-1]] == [0, 5, 10]
    with pytest.raises(TrackerError, match="resume=True"):
        sgdstab.Tracker(model, X, Y, opt, every=5, out=tmp_path, batch_size=8)
    again = sgdstab.Tracker(model, X, Y, opt, every=5, out=tmp_path, batch_size=8, kernel_size=0, resume=True)
    assert [r["step"] for r in again.rows] == [0, 5, 10]
    # the loop restarts from its checkpoint at step 10 (the last row): the tracker counts on from there
    _loop(model, X, Y, opt, again, 10, seed=1)  # steps 11..20
    again.close()
    assert [r["step"] for r in again.rows] == [0, 5, 10, 15, 20]
    saved = json.loads((tmp_path / "track.json").read_text())
    assert [r["step"] for r in saved["rows"]] == [0, 5, 10, 15, 20]
    assert saved["state"]["steps"] == 20
    assert (tmp_path / "track.png").stat().st_size > 0
    with pytest.raises(TrackerError, match="closed"):
        again.step()
    third = sgdstab.Tracker(model, X, Y, opt, every=5, out=tmp_path, batch_size=8, kernel_size=0, resume=True)
    with pytest.raises(TrackerError, match="not after the last recorded step 20"):
        third.step(step=20)


def test_refuses_a_folder_with_files_it_did_not_write(tmp_path):
    X, Y = _data()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    (tmp_path / "track.csv").write_text("mine\n")
    with pytest.raises(OutputError, match="did not write"):
        sgdstab.Tracker(model, X, Y, opt, out=tmp_path)
    assert (tmp_path / "track.csv").read_text() == "mine\n"


def test_users_model_is_untouched_and_batchnorm_is_measured_in_eval_mode(tmp_path, one_thread):
    X, Y = _data()
    model = nn.Sequential(nn.Linear(D, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, K)).double()
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    tr = sgdstab.Tracker(model, X, Y, opt, every=2, out=tmp_path, batch_size=8, kernel_size=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tr.step()  # no training happened: measuring must change nothing
    tr.step()
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    twin = tr._twin
    H = _dense_hessian(twin, tr.problem.X, tr.problem.Y, _half_mse)
    assert tr.rows[-1]["sharpness"] == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-3)


def test_a_dataloader_gives_batch_size_and_sampling(tmp_path, one_thread):
    X, Y = _data()
    data = torch.utils.data.TensorDataset(X, Y)
    replacement = torch.utils.data.RandomSampler(data, replacement=True, num_samples=N)
    loader = torch.utils.data.DataLoader(data, batch_size=4, sampler=replacement)
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    tr = sgdstab.Tracker(model, loader, None, opt, every=1, out=tmp_path, eval_size=16, kernel_size=0)
    assert (tr.data.batch_size, tr.data.sampling, tr.problem.n) == (4, "with_replacement", 16)
    plain = torch.utils.data.DataLoader(data, batch_size=6, shuffle=True)
    tr2 = sgdstab.Tracker(model, plain, None, opt, every=1, out=tmp_path / "b", kernel_size=0)
    assert (tr2.data.batch_size, tr2.data.sampling, tr2.problem.n) == (6, "without_replacement", N)


def test_unknown_optimizer_warns_and_still_measures(tmp_path, one_thread):
    X, Y = _data()
    model = _model()
    opt = torch.optim.Adagrad(model.parameters(), lr=0.05)
    with pytest.warns(UserWarning, match="Adagrad"):
        tr = sgdstab.Tracker(model, X, Y, opt, every=1, out=tmp_path, batch_size=8, kernel_size=0)
    row = tr.rows[0]
    assert math.isnan(row["threshold"]) and row["sharpness"] > 0 and row["batch_sharpness"] > 0


def test_an_expensive_schedule_warns_with_the_overhead(tmp_path, monkeypatch, one_thread):
    monkeypatch.setattr(tracker_module, "_MIN_TRAIN_SECONDS", 0.0)
    X, Y = _data()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    tr = sgdstab.Tracker(model, X, Y, opt, every=1, out=tmp_path, batch_size=8, kernel_size=0, max_overhead=0.5)
    with pytest.warns(UserWarning, match=r"measuring took .* s against .* s of training"):
        _loop(model, X, Y, opt, tr, 3)
    assert tr.overhead > 0.5


def test_the_default_schedule_keeps_to_a_tenth_of_training(tmp_path, one_thread):
    X, Y = _data()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    tr = sgdstab.Tracker(model, X, Y, opt, out=tmp_path, batch_size=8, kernel_size=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _loop(model, X, Y, opt, tr, 200)
    assert 1 <= len(tr.rows) < 200
    # every row after the first waited for ten times its predecessors' cost in training time
    assert tr.clock.measure_seconds <= 0.1 * tr.clock.train_seconds + tr.rows[0]["measure_seconds"] + 0.05


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"every": 2, "seconds": 1.0}, "give one schedule"),
        ({"every": 0}, "every must be"),
        ({"overhead": 0}, "overhead must be"),
        ({"eval_size": 0}, "eval_size must be"),
        ({"batch_size": N + 1}, "batch_size must be"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, kwargs, message):
    X, Y = _data()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    with pytest.raises(TrackerError, match=message):
        sgdstab.Tracker(model, X, Y, opt, out=tmp_path, **kwargs)


def test_bad_data_is_refused(tmp_path):
    X, Y = _data()
    opt = torch.optim.SGD(_model().parameters(), lr=0.05)
    with pytest.raises(TrackerError, match="Y must be a tensor"):
        sgdstab.Tracker(_model(), X, None, opt, out=tmp_path)
    with pytest.raises(TrackerError, match="same number of samples"):
        sgdstab.Tracker(_model(), X, Y[:3], opt, out=tmp_path)
    with pytest.raises(TrackerError, match="cannot measure this model"):
        sgdstab.Tracker(_model(), X, Y[:, :1], opt, out=tmp_path)
    assert not Path(tmp_path / "track.csv").exists()


def test_mean_square_proxy_matches_the_stability_of_plain_sgd(tmp_path, one_thread):
    X, Y = _data()
    model = _model(4)
    opt = torch.optim.SGD(model.parameters(), lr=0.03)
    tr = sgdstab.Tracker(model, X, Y, opt, every=4, out=tmp_path, batch_size=4, kernel_size=12, kernel_every=1)
    _loop(model, X, Y, opt, tr, 4, batch=4)
    row = tr.rows[-1]
    sub = sgdstab.Problem(model, tr.problem.X[:12], tr.problem.Y[:12])
    st = sgdstab.stability(sub, 0.03, 4, "without_replacement")
    assert row["mean_square_proxy"] == pytest.approx(st.mean_square_proxy, rel=1e-9)
    assert row["critical_lr"] == pytest.approx(st.critical_lr, rel=1e-6)
    assert math.isnan(tr.rows[0]["step_sharpness"]) and math.isfinite(row["step_sharpness"])


def test_tracking_leaves_the_loops_random_state_alone(tmp_path, one_thread):
    """Reading the evaluation subset from a shuffling DataLoader and measuring must not change the batches the loop
    draws next: torch's global generator and the sampler's own end where they were."""
    X, Y = _data()
    data = torch.utils.data.TensorDataset(X, Y)

    def order(track: bool, generator: torch.Generator | None) -> list[list[int]]:
        torch.manual_seed(5)
        loader = torch.utils.data.DataLoader(data, batch_size=6, shuffle=True, generator=generator)
        model = _model()
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        if track:
            tr = sgdstab.Tracker(model, loader, None, opt, every=1, out=tmp_path / str(generator is None), eval_size=12)
            tr.step()
        return [[int(v) for v in y[:, 0].argsort()] for _, y in loader] + [[int(torch.randint(1000, (1,)))]]

    assert order(True, None) == order(False, None)
    assert order(True, torch.Generator().manual_seed(3)) == order(False, torch.Generator().manual_seed(3))


def test_a_diverged_run_is_recorded_not_raised(tmp_path, one_thread):
    X, Y = _data()
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    tr = sgdstab.Tracker(model, X, Y, opt, every=1, out=tmp_path, batch_size=8, kernel_size=0)
    with torch.no_grad():
        next(model.parameters())[0, 0] = math.inf
    row = tr.step()
    assert row["loss"] == math.inf and math.isnan(row["sharpness"])
    assert any("diverged" in note for note in tr.notes)
    tr.close()


def test_a_warm_start_on_a_former_top_direction_still_finds_the_top(tmp_path, one_thread):
    """After the top eigenvalue changes places, the last eigenvector is (nearly) an eigenvector of the second one:
    from it alone Lanczos's residual test passes at once on the wrong eigenvalue. The tracker's warm start must
    still find λ_max."""
    X, Y = _data()
    model = _model(5)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    tr = sgdstab.Tracker(model, X, Y, opt, every=1, out=tmp_path, batch_size=8, kernel_size=0)
    H = _dense_hessian(model, X, Y, _half_mse)
    values, vectors = torch.linalg.eigh(H)
    second = vectors[:, -2] + 1e-9 * torch.randn(H.shape[0], generator=torch.Generator().manual_seed(0))
    tr._measurer._warm = second
    row = tr.step()
    assert row["sharpness"] == pytest.approx(float(values[-1]), rel=2e-3)
    assert abs(row["sharpness"] - float(values[-2])) > 0.01 * float(values[-1])
