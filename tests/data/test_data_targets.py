"""Class filtering, target encodings, first-n and stratified subsets, and argument validation."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

from sgdstab.data import DATASETS, load_dataset
from sgdstab.data.targets import encode_targets, stratified_counts, validate_classes
from sgdstab.errors import DataError


def test_one_hot_columns_follow_classes_order() -> None:
    ds = load_dataset("fashion-mnist-small", classes=(7, 2, 5))
    assert ds.classes == (7, 2, 5) and ds.Y.shape == (len(ds), 3) and ds.Y.dtype == torch.float32
    assert set(ds.labels.tolist()) == {2, 5, 7}
    assert torch.equal(ds.Y.sum(1), torch.ones(len(ds)))
    assert set(ds.Y.unique().tolist()) == {0.0, 1.0}
    column = ds.Y.argmax(1)
    assert torch.equal(torch.tensor([7, 2, 5])[column], ds.labels)
    assert ds.target_encoding == "one-hot"


def test_plus_minus_one_for_two_classes() -> None:
    ds = load_dataset("fashion-mnist-small", classes=[5, 3])
    assert ds.Y.shape == (len(ds), 1) and ds.classes == (5, 3) and ds.target_encoding == "pm1"
    assert torch.equal(ds.Y[:, 0], torch.where(ds.labels == 5, 1.0, -1.0))
    swapped = load_dataset("fashion-mnist-small", classes=[3, 5])
    assert torch.equal(swapped.Y, -ds.Y) and torch.equal(swapped.X, ds.X)


def test_default_is_all_classes_one_hot() -> None:
    Y = encode_targets(np.array([0, 3, 9]), tuple(range(10)))
    assert Y.shape == (3, 10) and Y[1, 3] == 1 and Y.sum() == 3


def test_first_n_after_class_filter_is_file_order() -> None:
    full = load_dataset("fashion-mnist-small")
    ds = load_dataset("fashion-mnist-small", classes=(1, 8), n=50)
    positions = torch.nonzero((full.labels == 1) | (full.labels == 8)).flatten()[:50]
    assert torch.equal(ds.indices, positions)
    assert torch.equal(ds.X, full.X[positions]) and torch.equal(ds.labels, full.labels[positions])


def test_stratified_counts_rule() -> None:
    assert stratified_counts(1003, tuple(range(10))) == {c: 101 if c < 3 else 100 for c in range(10)}
    assert stratified_counts(10, (9, 4, 7)) == {9: 3, 4: 4, 7: 3}
    assert stratified_counts(1, (5, 2)) == {5: 0, 2: 1}


def test_stratified_subset_per_class_counts_and_order() -> None:
    ds = load_dataset("fashion-mnist-small", n=1003, subset="stratified", seed=3)
    counts = Counter(ds.labels.tolist())
    assert counts == {c: 101 if c < 3 else 100 for c in range(10)}
    assert torch.all(ds.indices[1:] > ds.indices[:-1])
    assert ds.info()["class_counts"] == {str(c): 101 if c < 3 else 100 for c in range(10)}
    full = load_dataset("fashion-mnist-small")
    assert torch.equal(ds.X, full.X[ds.indices]) and torch.equal(ds.labels, full.labels[ds.indices])
    assert "stratified" in ds.description and "seed 3" in ds.description


def test_stratified_subset_with_classes() -> None:
    ds = load_dataset("digits", n=10, classes=(9, 4, 7), subset="stratified")
    assert Counter(ds.labels.tolist()) == {4: 4, 7: 3, 9: 3}
    assert ds.Y.shape == (10, 3)


def test_stratified_subset_is_seeded() -> None:
    a = load_dataset("fashion-mnist-small", n=40, subset="stratified", seed=1)
    b = load_dataset("fashion-mnist-small", n=40, subset="stratified", seed=1)
    c = load_dataset("fashion-mnist-small", n=40, subset="stratified", seed=2)
    assert torch.equal(a.indices, b.indices) and not torch.equal(a.indices, c.indices)


def test_stratified_subset_needs_enough_of_each_class() -> None:
    with pytest.raises(DataError, match=r"needs 187 examples of class 4 .* has only 186"):
        load_dataset("fashion-mnist-small", n=1870, subset="stratified")


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"n": 0}, r"n \(number of examples\) must be >= 1, got 0"),
        ({"n": -5}, "must be >= 1"),
        ({"n": 2.5}, "must be an integer"),
        ({"n": True}, "must be an integer"),
        ({"n": 1798}, "n=1798 requested but digits .* has only 1797 examples"),
        ({"n": 400, "classes": (0, 1)}, "n=400 requested but digits .*classes \\(0, 1\\).* has only 360"),
        ({"classes": (3,)}, "at least 2 classes"),
        ({"classes": 3}, "must be a sequence"),
        ({"classes": "35"}, "must be a sequence"),
        ({"classes": (3, 3)}, r"distinct; repeated: \[3\]"),
        ({"classes": (3, 11)}, r"class 11 not present in digits"),
        ({"classes": (12, 3, 11)}, r"classes 12, 11 not present"),
        ({"classes": (3, 4.0)}, "each class id must be an integer"),
        ({"subset": "random"}, "unknown subset rule 'random'; choose one of first, stratified"),
        ({"split": "validation"}, "unknown split 'validation'"),
        ({"split": "test"}, "no official test split"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"data_dir": "/tmp"}, "digits reads no files"),
        ({"dim": 3}, "unknown option dim for digits; it takes none"),
    ],
)
def test_invalid_arguments(kwargs: dict, pattern: str) -> None:
    with pytest.raises(DataError, match=pattern):
        load_dataset("digits", **kwargs)


def test_unknown_dataset_lists_known_names() -> None:
    with pytest.raises(DataError) as info:
        load_dataset("mnist")
    for name in DATASETS:
        assert name in str(info.value)
    assert set(DATASETS) == {
        "fashion-mnist-small",
        "fashion-mnist",
        "digits",
        "cifar10",
        "gaussian-linear",
        "teacher",
    }


def test_numpy_and_tensor_class_ids_are_accepted() -> None:
    assert validate_classes(np.array([2, 1]), range(3), range(3), "x") == (2, 1)
    assert validate_classes(torch.tensor([0, 2]), range(3), range(3), "x") == (0, 2)
    with pytest.raises(DataError, match="class 2 not present in x: no examples of it in this split"):
        validate_classes([0, 2], range(3), [0, 1], "x")
    ds = load_dataset("digits", classes=[np.int64(1), np.int32(2)], n=np.int64(5))
    assert ds.classes == (1, 2) and len(ds) == 5


def test_stratified_sample_does_not_depend_on_class_order() -> None:
    a = load_dataset("fashion-mnist-small", n=31, classes=(3, 5, 1), subset="stratified", seed=9)
    b = load_dataset("fashion-mnist-small", n=31, classes=(5, 1, 3), subset="stratified", seed=9)
    assert torch.equal(a.indices, b.indices)
    assert Counter(a.labels.tolist()) == {1: 11, 3: 10, 5: 10}
