"""scikit-learn digits: shape, count, normalization and the absence of a test split."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from sgdstab.data import load_dataset
from sgdstab.errors import DataError


def test_digits_shape_count_and_normalization() -> None:
    ds = load_dataset("digits")
    assert ds.X.shape == (1797, 1, 8, 8) and ds.X.dtype == torch.float32
    assert ds.Y.shape == (1797, 10) and ds.labels.shape == (1797,) and ds.labels.dtype == torch.int64
    assert np.bincount(ds.labels.numpy()).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    raw = (ds.X.double() * 0.3760 + 0.3053) * 16
    np.testing.assert_allclose(raw, raw.round(), atol=1e-4)
    reference = load_digits()
    np.testing.assert_array_equal(raw.round().reshape(1797, 64).numpy(), reference.data)
    np.testing.assert_array_equal(ds.labels.numpy(), reference.target)
    assert abs(float(ds.X.mean())) < 1e-3 and abs(float(ds.X.std()) - 1) < 1e-3
    assert "1797" in ds.description and "no official split" in ds.description


def test_digits_test_split_is_refused() -> None:
    with pytest.raises(DataError, match="digits has no official test split: split='train' returns all 1797"):
        load_dataset("digits", split="test")
