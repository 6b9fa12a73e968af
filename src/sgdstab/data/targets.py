"""Class selection, subset rules and target encoding shared by all classification data sets.

Rules:

* ``classes=None`` keeps every class of the data set (0..9 for the image sets), in sorted order, so the
  number of target columns does not depend on the split or subset. Otherwise ``classes`` must name at least
  two distinct integer class ids of the data set that have examples in the split; examples of other classes
  are dropped and the target columns follow the order given.
* Targets are one-hot ``(n, k)`` float32 over the selected classes, except that exactly two classes give a
  single ±1 column ``(n, 1)``: +1 for the first named class, -1 for the second.
* ``subset="first"`` keeps the first ``n`` remaining examples in file order. ``subset="stratified"`` draws,
  with a ``torch.Generator`` seeded by ``seed``, ``n // k`` examples of each class plus one more for each of
  the ``n % k`` lowest class ids, and returns them sorted by original index.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from sgdstab.errors import DataError
from sgdstab.utils import validation

SUBSETS = ("first", "stratified")


def check_int(value: Any, what: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` as a Python int, rejecting bools, floats and strings; enforce ``minimum`` and ``maximum``.

    The type check is :func:`sgdstab.utils.validation.check_int`'s; the range messages keep the data layer's
    ASCII wording (``n must be >= 1, got 0``), which users and the tests match.
    """
    result = validation.check_int(value, what, error=DataError)
    if minimum is not None and result < minimum:
        raise DataError(f"{what} must be >= {minimum}, got {result}")
    if maximum is not None and result > maximum:
        raise DataError(f"{what} must be <= {maximum}, got {result}")
    return result


def check_n(n: Any) -> int | None:
    """Validate the requested number of examples (None = all)."""
    if n is None:
        return None
    return check_int(n, "n (number of examples)", minimum=1)


def validate_classes(classes: Any, known: Sequence[int], present: Sequence[int], dataset: str) -> tuple[int, ...]:
    """Validate ``classes``; None selects all ``known`` class ids (sorted), whether present or not.

    Named classes must be ``known`` class ids of the data set and have examples (be ``present``) in the split.
    """
    known_set = {int(c) for c in known}
    present_set = {int(c) for c in present}
    if classes is None:
        return tuple(sorted(known_set))
    if isinstance(classes, str | bytes) or not isinstance(classes, Sequence | np.ndarray | torch.Tensor):
        raise DataError(f"classes must be a sequence of class ids (e.g. (3, 5)), got {classes!r}")
    ids = tuple(check_int(c, "each class id") for c in list(classes))
    if len(ids) < 2:
        raise DataError(f"classes must name at least 2 classes, got {ids}")
    duplicates = sorted({c for c in ids if ids.count(c) > 1})
    if duplicates:
        raise DataError(f"classes must be distinct; repeated: {duplicates}")
    unknown = [c for c in ids if c not in known_set]
    if unknown:
        raise DataError(
            f"class{'es' if len(unknown) > 1 else ''} {', '.join(map(str, unknown))} not present in "
            f"{dataset} (its classes are {sorted(known_set)})"
        )
    empty = [c for c in ids if c not in present_set]
    if empty:
        raise DataError(
            f"class{'es' if len(empty) > 1 else ''} {', '.join(map(str, empty))} not present in "
            f"{dataset}: no examples of {'them' if len(empty) > 1 else 'it'} in this split"
        )
    return ids


def filter_by_classes(labels: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Positions (int64, file order) of the examples whose label is in ``classes``."""
    return np.flatnonzero(np.isin(labels, np.asarray(classes, dtype=np.int64))).astype(np.int64)


def stratified_counts(n: int, classes: Sequence[int]) -> dict[int, int]:
    """Per-class counts for a stratified subset: ``n // k`` each, one more for the ``n % k`` lowest ids."""
    k = len(classes)
    base, extra = divmod(n, k)
    lowest = set(sorted(classes)[:extra])
    return {c: base + (1 if c in lowest else 0) for c in classes}


def select_subset(
    labels: np.ndarray,
    candidates: np.ndarray,
    n: int | None,
    subset: str,
    seed: int,
    classes: Sequence[int],
    dataset: str,
) -> np.ndarray:
    """Choose ``n`` of the ``candidates`` (positions into ``labels``) by the ``subset`` rule, sorted."""
    if subset not in SUBSETS:
        raise DataError(f"unknown subset rule {subset!r}; choose one of {', '.join(SUBSETS)}")
    available = len(candidates)
    if n is None:
        return candidates
    if n > available:
        raise DataError(f"n={n} requested but {dataset} has only {available} examples")
    if subset == "first":
        return candidates[:n]
    generator = torch.Generator().manual_seed(seed)
    chosen: list[np.ndarray] = []
    counts = stratified_counts(n, classes)
    for c in sorted(counts):  # sorted: the sample does not depend on the order classes were named in
        count = counts[c]
        pool = candidates[labels[candidates] == c]
        if count > len(pool):
            raise DataError(
                f"stratified subset of n={n} needs {count} examples of class {c} but {dataset} has only {len(pool)}"
            )
        perm = torch.randperm(len(pool), generator=generator)[:count].numpy()
        chosen.append(pool[perm])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def encode_targets(labels: np.ndarray, classes: Sequence[int]) -> torch.Tensor:
    """One-hot ``(n, k)`` float32 targets in ``classes`` order; ±1 ``(n, 1)`` when there are two classes."""
    labels = np.asarray(labels, dtype=np.int64)
    if len(classes) == 2:
        return torch.from_numpy(np.where(labels == classes[0], 1.0, -1.0).astype(np.float32)[:, None])
    column = {c: j for j, c in enumerate(classes)}
    Y = np.zeros((len(labels), len(classes)), dtype=np.float32)
    if len(labels):
        Y[np.arange(len(labels)), [column[int(c)] for c in labels]] = 1.0
    return torch.from_numpy(Y)


def describe_subset(
    n_total: int, n: int | None, subset: str, seed: int, classes: Sequence[int], all_classes: bool
) -> str:
    """Human-readable subset rule, e.g. ``"first 1000 by file order"``."""
    scope = "" if all_classes else f" of classes {tuple(classes)}"
    if n is None:
        return f"all {n_total}{scope} in file order"
    if subset == "first":
        return f"first {n}{scope} by file order"
    return (
        f"seeded stratified subset of {n}{scope} (seed {seed}, n//k per class, remainder to lowest ids), "
        "sorted by file order"
    )
