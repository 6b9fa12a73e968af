"""Targets of the losses of THEORY.md §9, checked and brought to one shape: rows y_i ∈ R^k.

- ``cross_entropy``: class indices (shape (n,) or (n, 1), integers in 0..k−1) become one-hot rows; rows of shape
  (n, k) are soft labels and must be distributions (non-negative, summing to 1), as ``nn.CrossEntropyLoss`` takes.
- ``bce_with_logits``: probabilities in [0, 1] of shape (n, k), or (n,) for one output.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sgdstab.errors import ProblemError

__all__ = ["checked_targets"]

_SUM_TOL = 1e-5  # soft labels stored in float32 sum to 1 within a few ulps; a row off by more is not a distribution


def _finite(Y: Tensor) -> None:
    if Y.is_floating_point() and not bool(torch.isfinite(Y).all()):
        raise ProblemError("Y contains non-finite values (NaN or inf); clean or drop them first")


def _class_indices(Y: Tensor, k: int) -> Tensor:
    labels = Y.reshape(-1)
    if labels.is_floating_point():
        if not bool((labels == labels.round()).all()):
            raise ProblemError(
                "cross_entropy takes Y as class indices (n,) or as soft labels (n, k); got non-integer values of "
                "shape (n,)"
            )
        labels = labels.round()
    labels = labels.to(torch.int64)
    bad = (labels < 0) | (labels >= k)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise ProblemError(
            f"class label {int(labels[i])} of sample {i} is outside 0..{k - 1} (the model has k = {k} outputs)"
        )
    return torch.nn.functional.one_hot(labels, k).to(torch.float64)


def _soft_labels(Y: Tensor, k: int) -> Tensor:
    if Y.shape[1] != k:
        raise ProblemError(f"Y has {Y.shape[1]} columns but the model has k = {k} outputs (logits)")
    y = Y.to(torch.float64)
    negative = (y < 0).any(dim=1)
    off = (y.sum(dim=1) - 1).abs() > _SUM_TOL
    bad = negative | off
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        what = "has a negative entry" if bool(negative[i]) else f"sums to {float(y[i].sum()):.6g}"
        raise ProblemError(
            f"soft labels must be distributions over the k = {k} classes (non-negative, summing to 1); row {i} {what}"
        )
    return y


def checked_targets(Y: Tensor, k: int, loss: str) -> Tensor:
    """Y as rows of k targets for ``loss`` (``"cross_entropy"`` or ``"bce_with_logits"``), else :class:`ProblemError`.

    Args:
        Y: the targets as given.
        k: the model's number of outputs.
        loss: the loss convention.

    Returns:
        A float64 tensor (n, k) on Y's device: one-hot or soft labels, or probabilities.

    Raises:
        ProblemError: labels outside 0..k−1, soft labels that are not distributions, probabilities outside [0, 1],
            a shape that fits neither form, or cross-entropy on a model with one output.
    """
    if not isinstance(Y, Tensor) or Y.is_complex() or Y.dtype == torch.bool:
        raise ProblemError("Y must be a real tensor of targets")
    _finite(Y)
    if loss == "cross_entropy":
        if k < 2:
            raise ProblemError(
                "cross_entropy needs k ≥ 2 outputs (one logit per class); for one output use loss='bce_with_logits'"
            )
        if Y.ndim == 1 or (Y.ndim == 2 and Y.shape[1] == 1):
            return _class_indices(Y, k)
        if Y.ndim == 2:
            return _soft_labels(Y, k)
        raise ProblemError(f"cross_entropy takes Y of shape (n,) (class indices) or (n, k), got {tuple(Y.shape)}")
    y = Y.to(torch.float64)
    if y.ndim == 1:
        y = y[:, None]
    if y.ndim != 2 or y.shape[1] != k:
        raise ProblemError(f"bce_with_logits takes Y of shape (n, {k}) (or (n,) for one output), got {tuple(Y.shape)}")
    if bool(((y < 0) | (y > 1)).any()):
        raise ProblemError("bce_with_logits targets must be probabilities in [0, 1]")
    return y
