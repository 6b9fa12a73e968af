"""The conventions of THEORY.md §1, stated once: loss scaling, learning-rate conversion, SGD noise scale.

- Square loss, half-mean convention: ``L(θ) = (1/(2n)) Σ_i ||f(x_i; θ) − y_i||²`` (``loss="half_mse"``).
- PyTorch's ``nn.MSELoss()`` is ``(1/(nk)) Σ_i ||r_i||² = (2/k)·L`` (``loss="torch_mse"``): SGD on it with step η
  is SGD on ``L`` with step ``2η/k``.
- SGD noise covariance is ``c·Σ`` with ``c = 1/B`` (batches drawn with replacement) or
  ``c = (n − B)/(B(n − 1))`` (a uniform B-subset without replacement; ``B = n`` gives ``c = 0``, i.e. GD).
"""

from __future__ import annotations

import math
import operator
from typing import Literal

import torch
from torch import Tensor

from sgdstab.errors import ConventionError

LossConvention = Literal["half_mse", "torch_mse", "cross_entropy", "bce_with_logits"]
Sampling = Literal["with_replacement", "without_replacement"]

LOSS_CONVENTIONS: tuple[str, ...] = ("half_mse", "torch_mse", "cross_entropy", "bce_with_logits")
# the losses of THEORY.md §9 (a per-sample loss convex in the outputs, through the generalized Gauss–Newton)
GGN_LOSSES: tuple[str, ...] = ("cross_entropy", "bce_with_logits")
SAMPLING_SCHEMES: tuple[str, ...] = ("with_replacement", "without_replacement")


def check_loss_convention(loss: str) -> LossConvention:
    if loss not in LOSS_CONVENTIONS:
        raise ConventionError(f"unknown loss convention {loss!r}; use one of {', '.join(LOSS_CONVENTIONS)}")
    return loss  # type: ignore[return-value]


def check_sampling(sampling: str) -> Sampling:
    if sampling not in SAMPLING_SCHEMES:
        raise ConventionError(f"unknown sampling scheme {sampling!r}; use one of {', '.join(SAMPLING_SCHEMES)}")
    return sampling  # type: ignore[return-value]


MAX_LEARNING_RATE = 1e150  # the stability operator holds η²·λ² terms: beyond this η² alone is near overflow


def check_learning_rate(lr: float) -> float:
    """Return ``lr`` as a float, refusing non-numbers (strings and bools too), non-finite values and ``lr <= 0``."""
    # float("0.1") and float(True) succeed, but a learning rate given as text or a flag is a caller's mistake
    if isinstance(lr, str | bytes | bool):
        raise ConventionError(f"learning rate must be a positive number, got {lr!r}")
    try:
        value = float(lr)
    except (TypeError, ValueError, OverflowError, RuntimeError):
        raise ConventionError(f"learning rate must be a positive number, got {lr!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConventionError(f"learning rate must be a positive finite number, got {lr!r}")
    if value > MAX_LEARNING_RATE:
        raise ConventionError(f"learning rate {value:g} is too large: η² overflows a float (use η ≤ 1e150)")
    return value


def check_batch_size(batch_size: int, n: int) -> int:
    """Return ``batch_size`` as an int, refusing non-integers and values outside ``1..n``.

    Integers of any kind (Python, numpy, a 0-d integer tensor) and whole finite floats such as ``4.0`` are accepted.
    """
    b: int | None = None
    if not isinstance(batch_size, bool | str | bytes):
        try:
            b = operator.index(batch_size)
        except TypeError:
            if isinstance(batch_size, float) and math.isfinite(batch_size) and batch_size == int(batch_size):
                b = int(batch_size)
    if b is None:
        raise ConventionError(f"batch size must be a whole number, got {batch_size!r}")
    if not 1 <= b <= n:
        raise ConventionError(f"batch size must be between 1 and n = {n}, got {b}")
    return b


def check_outputs(outputs: int) -> int:
    """Return the number of outputs k as an int, refusing anything but an integer ≥ 1."""
    if isinstance(outputs, bool):
        raise ConventionError(f"the number of outputs k must be an integer ≥ 1, got {outputs!r}")
    try:
        k = operator.index(outputs)
    except TypeError:
        raise ConventionError(f"the number of outputs k must be an integer ≥ 1, got {outputs!r}") from None
    if k < 1:
        raise ConventionError(f"the number of outputs k must be an integer ≥ 1, got {k}")
    return k


def noise_scale(batch_size: int, n: int, sampling: str = "with_replacement") -> float:
    """The factor ``c`` in Cov(mini-batch gradient) = c·Σ (THEORY.md §1).

    ``c = 1/B`` with replacement; ``c = (n − B)/(B(n − 1))`` without replacement (0 at ``B = n``).

    Args:
        batch_size: B, an integer in [1, n].
        n: the number of samples.
        sampling: ``"with_replacement"`` (default) or ``"without_replacement"``.

    Returns:
        c.

    Raises:
        ConventionError: B not an integer in [1, n], or an unknown ``sampling``.

    Example:
        >>> import sgdstab
        >>> sgdstab.noise_scale(20, 200), round(sgdstab.noise_scale(20, 200, "without_replacement"), 6)
        (0.05, 0.045226)
    """
    scheme = check_sampling(sampling)
    b = check_batch_size(batch_size, n)
    if scheme == "with_replacement":
        return 1.0 / b
    if n == 1:
        return 0.0
    return (n - b) / (b * (n - 1))


def frobenius_bound(lr: float, c: float, mu: float) -> float:
    """The Frobenius certificate (THEORY.md §5): the largest ``||H(θ*)||_F`` at which SGD can stay at a global
    minimum, ``sqrt(1/(c·μ))/η`` (``sqrt(B/μ)/η`` with replacement), on the half-MSE loss L.

    Args:
        lr: the learning rate η on L (:func:`half_mse_learning_rate` converts one from ``torch_mse``).
        c: the noise scale (:func:`noise_scale`).
        mu: the alignment μ of the SGD noise with the curvature.

    Returns:
        The bound; ``inf`` when ``c`` or ``μ`` is 0 (no noise, or noise orthogonal to the curvature: no bound).

    Raises:
        Nothing: the inputs are checked where they are made (:func:`noise_scale`, the alignment).

    Example:
        >>> from sgdstab.conventions import frobenius_bound, noise_scale
        >>> round(frobenius_bound(0.05, noise_scale(20, 200), 0.5), 6)  # sqrt(B/μ)/η
        126.491106
    """
    return math.sqrt(1.0 / (c * mu)) / lr if c > 0 and mu > 0 else math.inf


def half_mse_learning_rate(lr: float, loss: str, outputs: int) -> float:
    """Convert a learning rate used on the ``loss`` convention to the equivalent one on the problem's loss L.

    ``torch_mse`` = (2/k)·L, so a step η on it is a step 2η/k on L; ``half_mse`` is returned unchanged. For the
    losses of THEORY.md §9, L is the mean over samples of the per-sample loss summed over outputs: a step on
    ``nn.CrossEntropyLoss()`` is the same step on L, a step η on ``nn.BCEWithLogitsLoss()`` is a step η/k on L.

    Args:
        lr: the learning rate as given to the optimizer, a positive finite number.
        loss: ``"half_mse"`` (L = (1/2n) Σ ||f − y||², sgdstab's), ``"torch_mse"`` (``nn.MSELoss()``, the mean
            over samples and outputs), ``"cross_entropy"`` or ``"bce_with_logits"``.
        outputs: k, the number of outputs.

    Returns:
        The equivalent learning rate on L.

    Raises:
        ConventionError: a learning rate that is not a positive finite number, an unknown ``loss``, or ``outputs``
            not an integer ≥ 1.

    Example:
        >>> import sgdstab
        >>> sgdstab.half_mse_learning_rate(0.1, "torch_mse", outputs=10)  # MSELoss over 10 outputs
        0.02
    """
    value = check_learning_rate(lr)
    if check_loss_convention(loss) == "torch_mse":
        return 2.0 * value / check_outputs(outputs)
    return value * loss_scale(loss, outputs)


def loss_scale(loss: str, outputs: int) -> float:
    """The factor ``s`` with (loss in convention ``loss``) = s · L(θ): 2/k for ``torch_mse``; 1/k for
    ``bce_with_logits`` (``nn.BCEWithLogitsLoss()`` averages over samples and outputs, L sums the outputs); 1 for
    ``half_mse`` and ``cross_entropy`` (``nn.CrossEntropyLoss()`` is L itself)."""
    convention = check_loss_convention(loss)
    if convention == "torch_mse":
        return 2.0 / check_outputs(outputs)
    if convention == "bce_with_logits":
        return 1.0 / check_outputs(outputs)
    return 1.0


def learning_rate_in_convention(lr_on_half_mse: float, loss: str, outputs: int) -> float:
    """The inverse of :func:`half_mse_learning_rate`: a step ``η`` on L expressed in the ``loss`` convention.

    ``torch_mse`` = (2/k)·L, so a step η on L is a step k·η/2 on MSELoss (thresholds such as η* convert alike).
    Non-finite values (an infinite bound) pass through unchanged.
    """
    value = float(lr_on_half_mse)
    return value / loss_scale(loss, outputs)


def zero_predictor_loss(Y: Tensor) -> float:
    """L of the zero predictor f ≡ 0: ½·mean_i ||y_i||², the natural scale of the loss on these targets (n, k)."""
    y = torch.as_tensor(Y)
    n = y.shape[0] if y.dim() else 1
    return 0.5 * float(y.to(torch.float64).pow(2).sum()) / max(n, 1)


# Residuals within this many machine epsilons of the targets' size are rounding noise: computing f alone moves them
# that much, so H = G to the working precision (THEORY.md §1). L is quadratic in r, hence the square below.
GLOBAL_MINIMUM_EPS = 100.0


def global_minimum_threshold(Y: Tensor, dtype: torch.dtype | None) -> float:
    """The loss below which θ counts as a global minimum (interpolation) to rounding in ``dtype``:
    ``(100·eps(dtype))²·½·mean||y||²``, i.e. residuals within 100 eps of the targets' size — 4.9e-28 of the zero
    predictor's loss in float64 (the experiments' interpolation threshold is 1e-28), 1.4e-10 in float32
    (1e-30 absolute when the targets are all zero)."""
    eps = torch.finfo(dtype).eps if dtype is not None else torch.finfo(torch.float64).eps
    return (GLOBAL_MINIMUM_EPS * eps) ** 2 * max(zero_predictor_loss(Y), 1e-30)


def is_global_minimum(loss: float, Y: Tensor, dtype: torch.dtype | None) -> bool:
    """Whether a loss ``loss`` on targets ``Y`` computed in ``dtype`` is zero to rounding (see
    :func:`global_minimum_threshold`)."""
    return math.isfinite(loss) and loss <= global_minimum_threshold(Y, dtype)
