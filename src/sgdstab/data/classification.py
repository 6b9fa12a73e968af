"""Turn raw labelled uint8 images into a :class:`Dataset`: class filter, subset, normalization, targets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from sgdstab.data.dataset import Dataset
from sgdstab.data.targets import (
    describe_subset,
    encode_targets,
    filter_by_classes,
    select_subset,
    validate_classes,
)


@dataclass(frozen=True)
class RawImages:
    """Unnormalized images of one split as stored on disk.

    Attributes:
        images: uint8 array ``(N, C, H, W)`` in file order.
        labels: int64 array ``(N,)`` of original class ids.
        source: phrase naming where the data came from, e.g. ``"Fashion-MNIST train"``.
        class_ids: every class id of the data set (the one-hot columns when no classes are selected).
    """

    images: np.ndarray
    labels: np.ndarray
    source: str
    class_ids: tuple[int, ...] = tuple(range(10))


def build_classification(
    raw: RawImages,
    *,
    name: str,
    split: str,
    n: int | None,
    classes: object,
    subset: str,
    seed: int,
    normalize: Callable[[np.ndarray], torch.Tensor],
    normalization: str,
) -> Dataset:
    """Select classes and a subset of ``raw`` and normalize only the selected images.

    Args:
        normalize: maps a uint8 ``(m, C, H, W)`` array to a float32 tensor of the same shape.
        normalization: phrase for the description, e.g. ``"pixels/255 then standardized with ..."``.
    """
    present = np.unique(raw.labels).tolist()
    chosen_classes = validate_classes(classes, raw.class_ids, present, f"{name} ({split} split)")
    all_classes = classes is None
    candidates = filter_by_classes(raw.labels, chosen_classes)
    scope = f"{name} ({split} split{'' if all_classes else f', classes {chosen_classes}'})"
    idx = select_subset(raw.labels, candidates, n, subset, seed, chosen_classes, scope)
    labels = raw.labels[idx]
    subset_text = describe_subset(len(candidates), n, subset, seed, chosen_classes, all_classes)
    return Dataset(
        X=normalize(raw.images[idx]),
        Y=encode_targets(labels, chosen_classes),
        labels=torch.from_numpy(labels.astype(np.int64)),
        name=name,
        classes=chosen_classes,
        description=f"{raw.source}, {subset_text}, {normalization}",
        split=split,
        indices=torch.from_numpy(idx.astype(np.int64)),
        params={
            "n": n,
            "classes": None if all_classes else list(chosen_classes),
            "seed": seed,
            "subset": subset,
        },
    )


def standardize(images: np.ndarray, scale: float, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """``(images / scale - mean[c]) / std[c]`` per channel c, computed in float32.

    ``mean``/``std`` have one entry per channel, or a single entry used for all channels.
    """
    x = torch.from_numpy(np.ascontiguousarray(images)).to(torch.float32).div_(scale)
    shape = (1, len(mean), 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32).reshape(shape)
    std_t = torch.tensor(std, dtype=torch.float32).reshape(shape)
    return x.sub_(mean_t).div_(std_t)
