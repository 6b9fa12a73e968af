"""The Dataset container and the public package surface."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import sgdstab.data as data
from sgdstab.data import DATASETS, DEFAULT_DATASET, Dataset, load_dataset
from sgdstab.errors import DataError


def test_public_names() -> None:
    assert {"load_dataset", "Dataset", "DATASETS", "DEFAULT_DATASET"} <= set(data.__all__)
    assert DEFAULT_DATASET == "fashion-mnist-small" and DEFAULT_DATASET in DATASETS
    assert DATASETS["cifar10"].uses_data_dir and not DATASETS[DEFAULT_DATASET].uses_data_dir
    assert dict(DATASETS["teacher"].options) == {"dim": 20, "outputs": 1, "teacher_width": 32, "noise": 0.0}
    with pytest.raises(TypeError):
        DATASETS["x"] = DATASETS["digits"]  # type: ignore[index]


def test_unpacking_and_length() -> None:
    ds = load_dataset(DEFAULT_DATASET, n=10)
    X, Y = ds
    assert X is ds.X and Y is ds.Y and len(ds) == ds.n == 10
    assert ds.input_shape == (1, 28, 28) and ds.num_outputs == 10


def test_frozen() -> None:
    ds = load_dataset("digits", n=3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.X = torch.zeros(3, 64)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("fashion-mnist-small", {"classes": (2, 4)}),
        ("digits", {}),
        ("teacher", {"n": 5}),
        ("gaussian-linear", {"n": 5, "split": "test"}),
    ],
)
def test_info_is_json_without_tensors(name: str, kwargs: dict) -> None:
    ds = load_dataset(name, **kwargs)
    info = ds.info()
    assert json.loads(json.dumps(info)) == info
    assert info["name"] == name and info["n"] == len(ds) and info["description"] == ds.description
    assert info["input_shape"] == list(ds.X.shape[1:]) and info["num_outputs"] == ds.Y.shape[1]
    if ds.classes is not None:
        assert sum(info["class_counts"].values()) == len(ds)


def test_description_is_one_line() -> None:
    for name in ("fashion-mnist-small", "digits", "teacher", "gaussian-linear"):
        description = load_dataset(name, n=20).description
        assert "\n" not in description and len(description) > 40


def test_dataset_validates_its_fields() -> None:
    X, Y = torch.zeros(4, 3), torch.zeros(4, 1)
    with pytest.raises(DataError, match="X must be float32"):
        Dataset(X.double(), Y, None, "t", None, "d")
    with pytest.raises(DataError, match="Y must be float32 of shape"):
        Dataset(X, torch.zeros(3, 1), None, "t", None, "d")
    with pytest.raises(DataError, match="labels must be int64"):
        Dataset(X, Y, torch.zeros(4, dtype=torch.int32), "t", (0, 1), "d")
    with pytest.raises(DataError, match="both be set or both be None"):
        Dataset(X, Y, torch.zeros(4, dtype=torch.int64), "t", None, "d")
