"""Argument checks, in the style of :func:`sklearn.utils.check_scalar`: one place that says what a valid number is.

Each check returns the value converted to a plain Python ``int``/``float`` (so a numpy or 0-d torch scalar comes
out as the builtin) or raises the exception class the caller names (default :class:`~sgdstab.errors.SgdstabError`;
pass the layer's own, e.g. ``error=DataError``) with a one-line message naming the argument, what it must be and
what it was. Strings, bytes and bools are refused as numbers: ``float("0.1")`` and ``int(True)`` would accept them.

Example:
    >>> from sgdstab.utils.validation import check_int, check_float
    >>> check_int(3, "steps", minimum=1)
    3
    >>> check_float(0.5, "rtol", minimum=0, include_minimum=False, maximum=1)
    0.5
    >>> check_int(0, "steps", minimum=1)
    Traceback (most recent call last):
    ...
    sgdstab.errors.SgdstabError: steps must be an integer ≥ 1, got 0
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Iterable
from typing import Any, TypeVar

from sgdstab.errors import SgdstabError

E = TypeVar("E", bound=Exception)
T = TypeVar("T")


def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _range_text(minimum: float | None, maximum: float | None, include_minimum: bool, include_maximum: bool) -> str:
    parts = []
    if minimum is not None:
        parts.append(f"{'≥' if include_minimum else '>'} {minimum}")
    if maximum is not None:
        parts.append(f"{'≤' if include_maximum else '<'} {maximum}")
    return " and ".join(parts)


def check_int(
    value: Any,
    name: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    error: type[Exception] = SgdstabError,
) -> int:
    """``value`` as an ``int`` within ``[minimum, maximum]``.

    Args:
        value: anything with ``__index__`` (a Python, numpy or 0-d integer tensor); bools are refused.
        name: the argument's name, for the message.
        minimum, maximum: inclusive bounds (``None``: unbounded).
        error: the exception class to raise.

    Returns:
        The value as a Python ``int``.

    Raises:
        error: not an integer, or out of range.
    """
    bounds = _range_text(minimum, maximum, True, True)
    what = f"an integer {bounds}" if bounds else "an integer"
    if isinstance(value, bool) or getattr(value, "ndim", 0) != 0:  # torch lets a one-element tensor index
        raise error(f"{name} must be {what}, got {_shown(value)}")
    try:
        result = operator.index(value)
    except TypeError:
        raise error(f"{name} must be {what}, got {_shown(value)}") from None
    if (minimum is not None and result < minimum) or (maximum is not None and result > maximum):
        raise error(f"{name} must be {what}, got {result}")
    return result


def check_float(
    value: Any,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    include_minimum: bool = True,
    include_maximum: bool = True,
    finite: bool = True,
    error: type[Exception] = SgdstabError,
) -> float:
    """``value`` as a ``float`` within the given bounds.

    Args:
        value: a real number (Python, numpy, or a 0-d tensor); strings, bytes and bools are refused.
        name: the argument's name, for the message.
        minimum, maximum: bounds (``None``: unbounded); ``include_minimum``/``include_maximum`` make them inclusive.
        finite: refuse NaN and ±inf (NaN is always refused).
        error: the exception class to raise.

    Returns:
        The value as a Python ``float``.

    Raises:
        error: not a real number, not finite (with ``finite``), NaN, or out of range.
    """
    bounds = _range_text(minimum, maximum, include_minimum, include_maximum)
    what = ("a finite number" if finite else "a number") + (f" {bounds}" if bounds else "")
    if isinstance(value, str | bytes | bool) or not _is_real(value):
        raise error(f"{name} must be {what}, got {_shown(value)}")
    try:
        result = float(value)
    except OverflowError:  # an integer beyond float range
        raise error(f"{name} must be {what}, got an integer of {len(str(abs(int(value))))} digits") from None
    if math.isnan(result) or (finite and math.isinf(result)):
        raise error(f"{name} must be {what}, got {result}")
    low_bad = minimum is not None and (result < minimum or (not include_minimum and result == minimum))
    high_bad = maximum is not None and (result > maximum or (not include_maximum and result == maximum))
    if low_bad or high_bad:
        raise error(f"{name} must be {what}, got {result:g}")
    return result


def _is_real(value: Any) -> bool:
    if isinstance(value, numbers.Real):
        return True
    # numpy / torch 0-d values without importing either here
    return getattr(value, "ndim", None) == 0 and hasattr(value, "item") and isinstance(value.item(), numbers.Real)


def check_choice(value: Any, name: str, choices: Iterable[T], *, error: type[Exception] = SgdstabError) -> T:
    """``value`` if it is one of ``choices`` (compared with ``==``), else ``error`` listing them.

    Args:
        value: the given value.
        name: the argument's name, for the message.
        choices: the allowed values.
        error: the exception class to raise.

    Returns:
        The value, unchanged.

    Raises:
        error: ``value`` is not one of ``choices``.
    """
    options = tuple(choices)
    if isinstance(value, str | int | float | bool | type(None)) and value in options:
        return value  # type: ignore[return-value]
    listed = ", ".join(repr(c) for c in options)
    raise error(f"{name} must be one of {listed}; got {_shown(value)}")
