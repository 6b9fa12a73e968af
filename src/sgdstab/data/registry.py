"""The data-set registry and the :func:`load_dataset` dispatcher."""

from __future__ import annotations

import difflib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from sgdstab.data import cifar, digits, fashion_mnist, synthetic
from sgdstab.data.classification import RawImages, build_classification
from sgdstab.data.dataset import Dataset
from sgdstab.data.targets import SUBSETS, check_int, check_n
from sgdstab.errors import DataError

DEFAULT_DATASET = "fashion-mnist-small"
SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetSpec:
    """What the registry knows about one data set (for listings and argument checks)."""

    name: str
    summary: str
    task: str  # "classification" or "regression"
    splits: tuple[str, ...]
    uses_data_dir: bool
    options: Mapping[str, Any] = field(default_factory=dict)


DATASETS: Mapping[str, DatasetSpec] = MappingProxyType(
    {
        "fashion-mnist-small": DatasetSpec(
            "fashion-mnist-small",
            "bundled first 2000 train / 1000 test Fashion-MNIST images (default)",
            "classification",
            SPLITS,
            False,
        ),
        "fashion-mnist": DatasetSpec(
            "fashion-mnist",
            "full Fashion-MNIST (60000 train / 10000 test) from IDX files",
            "classification",
            SPLITS,
            True,
        ),
        "digits": DatasetSpec(
            "digits",
            "scikit-learn 8x8 digits, 1797 images, train split only",
            "classification",
            ("train",),
            False,
        ),
        "cifar10": DatasetSpec(
            "cifar10",
            "CIFAR-10 (50000 train / 10000 test) from data_dir, binary or python batches",
            "classification",
            SPLITS,
            True,
        ),
        "gaussian-linear": DatasetSpec(
            "gaussian-linear",
            "synthetic linear regression Y = X W*ᵀ, Gaussian inputs",
            "regression",
            SPLITS,
            False,
            MappingProxyType(synthetic.OPTIONS["gaussian-linear"]),
        ),
        "teacher": DatasetSpec(
            "teacher",
            "synthetic regression from a random one-hidden-layer tanh teacher",
            "regression",
            SPLITS,
            False,
            MappingProxyType(synthetic.OPTIONS["teacher"]),
        ),
    }
)

_NORMALIZERS = {
    "fashion-mnist-small": (fashion_mnist.normalize, fashion_mnist.NORMALIZATION),
    "fashion-mnist": (fashion_mnist.normalize, fashion_mnist.NORMALIZATION),
    "digits": (digits.normalize, digits.NORMALIZATION),
    "cifar10": (cifar.normalize, cifar.NORMALIZATION),
}


def _raw_images(name: str, split: str, data_dir: str | os.PathLike[str] | None) -> RawImages:
    if name == "fashion-mnist-small":
        return fashion_mnist.load_small(split)
    if name == "fashion-mnist":
        return fashion_mnist.load_full(split, data_dir)
    if name == "digits":
        return digits.load(split)
    return cifar.load(split, data_dir)


def check_dataset_name(name: object) -> str:
    """``name`` if it is a known data set, else :class:`sgdstab.DataError` naming the closest known name
    and all of them (the CLI checks ``--data`` with it before loading anything)."""
    if not isinstance(name, str) or name not in DATASETS:
        close = difflib.get_close_matches(str(name), list(DATASETS), n=1)
        guess = f" (did you mean {close[0]!r}?)" if close else ""
        raise DataError(f"unknown dataset {name!r}{guess}; known: {', '.join(DATASETS)}")
    return name


def load_dataset(
    name: str,
    n: int | None = None,
    classes: Any = None,
    seed: int = 0,
    data_dir: str | os.PathLike[str] | None = None,
    split: str = "train",
    subset: str = "first",
    **options: Any,
) -> Dataset:
    """Load a data set by registry name as float32 inputs and square-loss targets.

    Args:
        name: one of :data:`DATASETS`; :data:`DEFAULT_DATASET` (``"fashion-mnist-small"``) needs no files.
        n: number of examples; None means all (classification) or 1000 (synthetic).
        classes: class ids to keep (at least 2, distinct, present); None keeps all. Two classes give a single
            ±1 target column (+1 for the first), otherwise targets are one-hot in this order.
        seed: non-negative int seeding the stratified subset and the synthetic generators.
        data_dir: folder with the files of ``fashion-mnist`` (optional, defaults to Debian's
            /usr/share/datasets/fashion-mnist then $SGDSTAB_DATA_DIR/fashion-mnist) or ``cifar10`` (required);
            other data sets read no files and refuse it.
        split: ``"train"`` or ``"test"`` (digits: ``"train"`` only; synthetic: same teacher, fresh inputs).
        subset: ``"first"`` (first n in file order after the class filter) or ``"stratified"`` (seeded,
            per-class counts as equal as possible, remainder to the lowest class ids, sorted by file order).
        **options: synthetic parameters: ``dim``, ``outputs``, ``noise`` (both), ``teacher_width`` (teacher).

    Normalization: Fashion-MNIST ``(p/255 - 0.2860)/0.3530``; digits ``(p/16 - 0.3053)/0.3760``; CIFAR-10
    ``(p/255 - mean[c])/std[c]`` with mean (0.4914, 0.4822, 0.4465), std (0.2470, 0.2435, 0.2616);
    synthetic data are not normalized.

    Returns:
        The :class:`Dataset` (``X, Y = dataset`` unpacks it).

    Raises:
        DataError: every problem: an unknown name, split or subset rule, a bad ``n``/``classes``/``seed``, missing
            or damaged files.

    Example:
        >>> import sgdstab
        >>> X, Y = sgdstab.load_dataset("fashion-mnist-small", n=8, classes=(0, 6))  # built in, ±1 targets
        >>> tuple(X.shape), tuple(Y.shape), sorted(set(Y.flatten().tolist()))
        ((8, 1, 28, 28), (8, 1), [-1.0, 1.0])
    """
    spec = DATASETS[check_dataset_name(name)]
    if split not in spec.splits:
        if name == "digits" and split == "test":
            digits.load(split)  # raises the explanatory error
        raise DataError(f"unknown split {split!r} for {name}; choose one of {', '.join(spec.splits)}")
    if subset not in SUBSETS:
        raise DataError(f"unknown subset rule {subset!r}; choose one of {', '.join(SUBSETS)}")
    n = check_n(n)
    seed = check_int(seed, "seed", minimum=0, maximum=2**63 - 1)  # torch.Generator seeds are 64-bit
    if data_dir is not None and not spec.uses_data_dir:
        raise DataError(
            f"{name} reads no files, so data_dir={str(data_dir)!r} cannot be used; "
            "data_dir applies to fashion-mnist and cifar10"
        )
    if spec.task == "regression":
        if classes is not None:
            raise DataError(f"{name} is a regression data set; classes= does not apply")
        if subset != "first":
            raise DataError(f"{name} is a regression data set; subset='stratified' needs class labels")
        return synthetic.load(name, n, seed, split, options)
    if options:
        raise DataError(
            f"unknown option{'s' if len(options) > 1 else ''} {', '.join(sorted(options))} for {name}; it takes none"
        )
    normalize, normalization = _NORMALIZERS[name]
    raw = _raw_images(name, split, data_dir)
    return build_classification(
        raw,
        name=name,
        split=split,
        n=n,
        classes=classes,
        subset=subset,
        seed=seed,
        normalize=normalize,
        normalization=normalization,
    )
