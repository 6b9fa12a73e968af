"""THEORY.md §1 conventions: noise scale c against exhaustive enumeration of batches, lr conversion."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from sgdstab.conventions import check_batch_size, check_learning_rate, half_mse_learning_rate, noise_scale
from sgdstab.errors import ConventionError


def _batch_mean_covariance(n: int, B: int, scheme: str) -> float:
    """Covariance factor of the mean of a batch of scalars g_i (centred, unit variance), by enumeration."""
    g = np.random.default_rng(n * 10 + B).normal(size=n)
    g = (g - g.mean()) / g.std()  # population variance 1
    if scheme == "with_replacement":
        batches = list(itertools.product(range(n), repeat=B))
    else:
        batches = list(itertools.combinations(range(n), B))
    means = np.array([g[list(b)].mean() for b in batches])
    return float((means**2).mean())


@pytest.mark.parametrize("scheme", ["with_replacement", "without_replacement"])
@pytest.mark.parametrize(("n", "B"), [(4, 1), (4, 2), (5, 3), (6, 6), (6, 2)])
def test_noise_scale_matches_enumerated_batch_variance(n, B, scheme):
    assert noise_scale(B, n, scheme) == pytest.approx(_batch_mean_covariance(n, B, scheme), rel=1e-12)


def test_gd_has_no_noise():
    assert noise_scale(10, 10, "without_replacement") == 0.0


def test_lr_conversion():
    assert half_mse_learning_rate(0.1, "half_mse", 10) == 0.1
    assert half_mse_learning_rate(0.1, "torch_mse", 10) == pytest.approx(0.02)


@pytest.mark.parametrize("lr", [0, -1, float("nan"), float("inf"), "fast", None, 1e300])
def test_bad_learning_rates(lr):
    with pytest.raises(ConventionError, match="learning rate"):
        check_learning_rate(lr)
    assert check_learning_rate(1e150) == 1e150  # the largest accepted: η² still fits a float


@pytest.mark.parametrize("b", [0, -3, 11, 2.5, True, "4"])
def test_bad_batch_sizes(b):
    with pytest.raises(ConventionError, match="batch size"):
        check_batch_size(b, 10)


def test_unknown_sampling():
    with pytest.raises(ConventionError, match="unknown sampling scheme 'shuffle'"):
        noise_scale(2, 10, "shuffle")
