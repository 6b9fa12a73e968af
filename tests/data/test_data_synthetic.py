"""Synthetic regression sets: shapes, determinism from seed, the generating relations, option checks."""

from __future__ import annotations

import math

import pytest
import torch

from sgdstab.data import load_dataset
from sgdstab.data.synthetic import gaussian_linear, teacher
from sgdstab.errors import DataError


def test_gaussian_linear_defaults() -> None:
    ds = load_dataset("gaussian-linear")
    assert ds.X.shape == (1000, 20) and ds.Y.shape == (1000, 1)
    assert ds.X.dtype == torch.float32 and ds.Y.dtype == torch.float32
    assert ds.labels is None and ds.classes is None and ds.indices is None
    assert ds.target_encoding == "regression"
    assert ds.info()["params"] == {
        "n": 1000,
        "seed": 0,
        "subset": "first",
        "options": {"dim": 20, "outputs": 1, "noise": 0.0},
    }


def test_gaussian_linear_relation_y_equals_x_wstar() -> None:
    ds = load_dataset("gaussian-linear", n=200, dim=7, outputs=3, seed=4)
    X, Y, W = gaussian_linear(200, dim=7, outputs=3, seed=4)
    assert torch.equal(ds.X, X) and torch.equal(ds.Y, Y) and W.shape == (3, 7)
    torch.testing.assert_close(ds.Y, ds.X @ W.T, rtol=0, atol=1e-6)
    solution = torch.linalg.lstsq(ds.X.double(), ds.Y.double()).solution
    torch.testing.assert_close(solution.T, W.double(), rtol=0, atol=1e-5)
    assert abs(W.double().pow(2).mean().item() * 7 - 1) < 0.6  # W* ~ N(0, 1/d)


def test_gaussian_linear_determinism_and_split_streams() -> None:
    a = load_dataset("gaussian-linear", n=50, seed=1)
    b = load_dataset("gaussian-linear", n=50, seed=1)
    c = load_dataset("gaussian-linear", n=50, seed=2)
    assert torch.equal(a.X, b.X) and torch.equal(a.Y, b.Y)
    assert not torch.equal(a.X, c.X)
    test = load_dataset("gaussian-linear", n=50, seed=1, split="test")
    assert not torch.equal(a.X, test.X)
    W = torch.linalg.lstsq(a.X.double(), a.Y.double()).solution
    torch.testing.assert_close(test.X.double() @ W, test.Y.double(), rtol=0, atol=1e-5)  # same W*


def test_noise_is_added_from_its_own_stream() -> None:
    clean = load_dataset("gaussian-linear", n=4000, seed=5)
    noisy = load_dataset("gaussian-linear", n=4000, seed=5, noise=0.5)
    assert torch.equal(clean.X, noisy.X)
    residual = noisy.Y - clean.Y
    assert abs(residual.std().item() - 0.5) < 0.03 and abs(residual.mean().item()) < 0.05


def test_global_rng_is_untouched() -> None:
    torch.manual_seed(123)
    state = torch.get_rng_state()
    load_dataset("teacher", n=10, noise=0.1)
    load_dataset("gaussian-linear", n=10, noise=0.1)
    load_dataset("fashion-mnist-small", n=20, subset="stratified")
    assert torch.equal(state, torch.get_rng_state())


def test_teacher_relation_and_options() -> None:
    ds = load_dataset("teacher", n=300, dim=5, outputs=2, teacher_width=8, seed=7)
    assert ds.X.shape == (300, 5) and ds.Y.shape == (300, 2)
    X, Y, weights = teacher(300, dim=5, outputs=2, teacher_width=8, seed=7)
    assert weights["W1"].shape == (8, 5) and weights["W2"].shape == (2, 8)
    assert torch.equal(ds.X, X) and torch.equal(ds.Y, Y)
    torch.testing.assert_close(ds.Y, torch.tanh(ds.X @ weights["W1"].T) @ weights["W2"].T)
    again = load_dataset("teacher", n=300, dim=5, outputs=2, teacher_width=8, seed=7)
    assert torch.equal(ds.Y, again.Y)
    assert not torch.equal(ds.Y, load_dataset("teacher", n=300, dim=5, outputs=2, teacher_width=8, seed=8).Y)
    assert "tanh" in ds.description and "(8, 5)" in ds.description


@pytest.mark.parametrize(
    ("name", "options", "pattern"),
    [
        ("gaussian-linear", {"teacher_width": 3}, "unknown option teacher_width for gaussian-linear"),
        ("teacher", {"width": 3, "depth": 2}, "unknown options depth, width for teacher"),
        ("gaussian-linear", {"noise": -0.1}, "noise must be a finite number >= 0"),
        ("gaussian-linear", {"noise": math.nan}, "noise must be a finite number >= 0"),
        ("teacher", {"noise": math.inf}, "noise must be a finite number >= 0"),
        ("teacher", {"noise": "0.1"}, "noise must be a number"),
        ("gaussian-linear", {"dim": 0}, "dim must be >= 1"),
        ("gaussian-linear", {"outputs": 2.0}, "outputs must be an integer"),
        ("teacher", {"teacher_width": True}, "teacher_width must be an integer"),
        ("teacher", {"classes": (0, 1)}, "regression data set; classes= does not apply"),
        ("gaussian-linear", {"subset": "stratified"}, "stratified' needs class labels"),
        ("gaussian-linear", {"n": 0}, "must be >= 1"),
        ("teacher", {"data_dir": "/tmp"}, "teacher reads no files"),
        ("teacher", {"seed": 1.5}, "seed must be an integer"),
    ],
)
def test_invalid_synthetic_arguments(name: str, options: dict, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        load_dataset(name, **options)
