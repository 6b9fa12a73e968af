"""Argument checks of the linear-stability functions, in one place.

The numbers are checked by :mod:`sgdstab.utils.validation` (what a valid integer or real is: no bools, no
strings, NaN refused); a failed check is re-raised as :class:`~sgdstab.errors.StabilityError` with the one-line
message docs/bad-inputs.md quotes. Learning rates, batch sizes and sampling schemes are checked by
:mod:`sgdstab.conventions`, whose :class:`~sgdstab.errors.ConventionError` passes through unchanged.

Example:
    >>> from sgdstab.linear_stability.checks import check_tol
    >>> check_tol(1e-10)
    1e-10
    >>> check_tol(0.5)
    Traceback (most recent call last):
    ...
    sgdstab.errors.StabilityError: tol must be a number in (0, 0.01), got 0.5
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from sgdstab.conventions import check_batch_size, check_learning_rate
from sgdstab.errors import StabilityError
from sgdstab.utils.validation import check_choice, check_float, check_int

T = TypeVar("T")

__all__ = [
    "check_batch_sizes",
    "check_galerkin_rtol",
    "check_lrs",
    "check_method",
    "check_mu",
    "check_non_negative_int",
    "check_positive_int",
    "check_seed",
    "check_tol",
    "check_unit_interval",
]


def _said(check: Callable[[], T], message: str) -> T:
    """``check()``, its failure re-raised as a StabilityError saying ``message``."""
    try:
        return check()
    except (StabilityError, OverflowError):  # float() of a huge int overflows before any comparison
        raise StabilityError(message) from None


def _open_interval(value: float, name: str, low: float, high: float) -> float:
    return check_float(
        value, name, minimum=low, maximum=high, include_minimum=False, include_maximum=False, error=StabilityError
    )


def check_tol(tol: float) -> float:
    """The eigen-solvers' relative tolerance, in (0, 0.01)."""
    return _said(lambda: _open_interval(tol, "tol", 0.0, 1e-2), f"tol must be a number in (0, 0.01), got {tol!r}")


def check_unit_interval(value: float, name: str) -> float:
    """A relative tolerance in (0, 1)."""
    return _said(lambda: _open_interval(value, name, 0.0, 1.0), f"{name} must be a number in (0, 1), got {value!r}")


def check_galerkin_rtol(galerkin_rtol: float) -> float:
    """Galerkin's stopping rule: the relative change of ρ and η* between subspace ranks, in (0, 1)."""
    return _said(
        lambda: _open_interval(galerkin_rtol, "galerkin_rtol", 0.0, 1.0),
        f"galerkin_rtol must be in (0, 1), got {galerkin_rtol!r}",
    )


def check_mu(mu: float, name: str) -> float:
    """A loss alignment: a finite number ≥ 0."""
    return _said(
        lambda: check_float(mu, name, minimum=0.0, error=StabilityError),
        f"{name} must be a non-negative finite number, got {mu!r}",
    )


def check_positive_int(value: int, name: str) -> int:
    """A count ≥ 1 (steps, chains)."""
    return _said(
        lambda: check_int(value, name, minimum=1, error=StabilityError),
        f"{name} must be a positive integer, got {value!r}",
    )


def check_non_negative_int(value: int, name: str) -> int:
    """A count ≥ 0."""
    return _said(
        lambda: check_int(value, name, minimum=0, error=StabilityError),
        f"{name} must be a non-negative integer, got {value!r}",
    )


def check_seed(seed: int) -> int:
    """A seed in [0, 2**63)."""
    return _said(
        lambda: check_int(seed, "seed", minimum=0, maximum=2**63 - 1, error=StabilityError),
        f"seed must be an integer in [0, 2**63), got {seed!r}",
    )


def check_method(method: str, methods: Sequence[str]) -> str:
    """One of the solver's ``methods``."""
    return _said(
        lambda: check_choice(method, "method", methods, error=StabilityError),
        f"unknown method {method!r}; use one of {', '.join(methods)}",
    )


def check_lrs(lrs: Sequence[float]) -> tuple[float, ...]:
    """Learning rates for a grid: at least one, each checked, sorted, duplicates dropped."""
    values = list(lrs)
    if not values:
        raise StabilityError("lrs is empty: give at least one positive learning rate")
    return tuple(sorted({check_learning_rate(v) for v in values}))


def check_batch_sizes(batch_sizes: Sequence[int], n: int) -> tuple[int, ...]:
    """Batch sizes for a grid: at least one, each in 1..n, sorted, duplicates dropped."""
    values = list(batch_sizes)
    if not values:
        raise StabilityError("batch_sizes is empty: give at least one batch size in 1..n")
    return tuple(sorted({check_batch_size(b, n) for b in values}))
