"""The :class:`Dataset` container returned by :func:`sgdstab.load_dataset`."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from sgdstab.errors import DataError


@dataclass(frozen=True, eq=False)
class Dataset:
    """A loaded data set: inputs, square-loss targets and the metadata needed to reproduce it.

    Attributes:
        X: float32 inputs of shape ``(n, ...)``. Image data sets keep their spatial shape
            (Fashion-MNIST ``(n, 1, 28, 28)``, CIFAR-10 ``(n, 3, 32, 32)``, digits ``(n, 1, 8, 8)``);
            synthetic data sets are ``(n, d)``. Models flatten as they need.
        Y: float32 targets of shape ``(n, k)``: one-hot over the selected classes, a single ±1 column
            when exactly two classes were selected, or real-valued regression outputs.
        labels: int64 class ids of shape ``(n,)`` in the data set's original numbering, or ``None``
            for regression data.
        name: registry name of the data set (e.g. ``"fashion-mnist-small"``).
        classes: class ids in target-column order (for ±1 targets: ``(positive, negative)``), or
            ``None`` for regression data.
        description: one line stating source, subset rule and normalization.
        split: ``"train"`` or ``"test"``.
        indices: int64 positions of the returned examples in the split's file order (``None`` for
            synthetic data).
        params: JSON-able arguments that produced the data set (n, seed, subset, options, ...).

    ``X, Y = dataset`` unpacks inputs and targets.

    Example:
        >>> import sgdstab
        >>> ds = sgdstab.load_dataset("digits", n=10)  # scikit-learn's bundled digits, one-hot over 10 classes
        >>> ds.name, tuple(ds.X.shape), tuple(ds.Y.shape)
        ('digits', (10, 1, 8, 8), (10, 10))
    """

    X: torch.Tensor
    Y: torch.Tensor
    labels: torch.Tensor | None
    name: str
    classes: tuple[int, ...] | None
    description: str
    split: str = "train"
    indices: torch.Tensor | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.X.shape[0] if self.X.dim() > 0 else -1
        if self.X.dtype != torch.float32 or self.X.dim() < 2:
            raise DataError(
                f"Dataset {self.name!r}: X must be float32 of shape (n, ...), got {self.X.dtype} {tuple(self.X.shape)}"
            )
        if self.Y.dtype != torch.float32 or self.Y.dim() != 2 or self.Y.shape[0] != n:
            raise DataError(
                f"Dataset {self.name!r}: Y must be float32 of shape ({n}, k), got {self.Y.dtype} {tuple(self.Y.shape)}"
            )
        for attr in ("labels", "indices"):
            value = getattr(self, attr)
            if value is not None and (value.dtype != torch.int64 or tuple(value.shape) != (n,)):
                raise DataError(
                    f"Dataset {self.name!r}: {attr} must be int64 of shape ({n},), got "
                    f"{value.dtype} {tuple(value.shape)}"
                )
        if (self.labels is None) != (self.classes is None):
            raise DataError(f"Dataset {self.name!r}: labels and classes must both be set or both be None")

    def __iter__(self) -> Iterator[torch.Tensor]:
        """Yield ``X`` then ``Y`` so that ``X, Y = dataset`` works."""
        yield self.X
        yield self.Y

    def __len__(self) -> int:
        return int(self.X.shape[0])

    @property
    def n(self) -> int:
        """Number of examples."""
        return len(self)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one input, e.g. ``(1, 28, 28)``."""
        return tuple(int(s) for s in self.X.shape[1:])

    @property
    def num_outputs(self) -> int:
        """Number of target columns k."""
        return int(self.Y.shape[1])

    @property
    def target_encoding(self) -> str:
        """``"one-hot"``, ``"pm1"`` (a single ±1 column for two classes) or ``"regression"``."""
        if self.classes is None:
            return "regression"
        return "pm1" if len(self.classes) == 2 else "one-hot"

    def info(self) -> dict[str, Any]:
        """JSON-able metadata (no tensors): name, split, sizes, classes, class counts, description, params."""
        counts: dict[str, int] | None = None
        if self.labels is not None and self.classes is not None:
            counts = {str(c): int((self.labels == c).sum()) for c in self.classes}
        return {
            "name": self.name,
            "split": self.split,
            "n": self.n,
            "input_shape": list(self.input_shape),
            "num_outputs": self.num_outputs,
            "task": "regression" if self.classes is None else "classification",
            "target_encoding": self.target_encoding,
            "classes": None if self.classes is None else list(self.classes),
            "class_counts": counts,
            "description": self.description,
            "params": _jsonable(dict(self.params)),
        }


def _jsonable(value: Any) -> Any:
    """Convert tuples to lists and numpy/torch scalars to Python numbers, recursively."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item):
        return value.item()
    return value
