"""scikit-learn's bundled handwritten digits (UCI optical recognition, 1797 images of 8x8, 17 gray levels).

There is no official train/test split: ``split="train"`` returns all 1797 examples in file order and
``split="test"`` is refused. Normalization: ``x = (pixel / 16 - 0.3053) / 0.3760``, fixed constants equal to
the mean and standard deviation of all pixels/16 over the full set (0.305260, 0.376049). Inputs are
``(n, 1, 8, 8)`` float32, labels the digits 0..9.
"""

from __future__ import annotations

import numpy as np
import torch

from sgdstab.data.classification import RawImages, standardize
from sgdstab.errors import DataError

MEAN = 0.3053
STD = 0.3760
NORMALIZATION = f"pixels/16 then standardized with fixed mean {MEAN:.4f} std {STD:.4f}"
SIZE = 1797


def normalize(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(m, 1, 8, 8)`` in 0..16 -> float32 ``(pixel/16 - MEAN) / STD``."""
    return standardize(images, 16.0, (MEAN,), (STD,))


def load(split: str) -> RawImages:
    """Read the digits through :func:`sklearn.datasets.load_digits` (no download, the data ship with it)."""
    if split != "train":
        raise DataError(
            "digits has no official test split: split='train' returns all 1797 examples; hold out "
            "a test set yourself (Dataset.indices gives each example's position)"
        )
    from sklearn.datasets import load_digits

    bunch = load_digits()
    data = np.asarray(bunch.data)
    if data.shape != (SIZE, 64) or data.min() < 0 or data.max() > 16:
        raise DataError(
            f"scikit-learn digits: unexpected data of shape {data.shape} and range "
            f"[{data.min()}, {data.max()}]; expected (1797, 64) with values 0..16"
        )
    images = data.astype(np.uint8).reshape(SIZE, 1, 8, 8)
    labels = np.asarray(bunch.target, dtype=np.int64)
    return RawImages(images, labels, "scikit-learn digits (all 1797, no official split)")
