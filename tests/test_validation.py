"""sgdstab.utils.validation: what counts as a valid number, the converted value, and the one-line message."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sgdstab.errors import DataError, SgdstabError
from sgdstab.utils.validation import check_choice, check_float, check_int


@pytest.mark.parametrize("value", [3, np.int64(3), torch.tensor(3), np.uint8(3)])
def test_check_int_takes_any_integer_scalar_and_returns_a_builtin_int(value):
    out = check_int(value, "steps", minimum=1, maximum=3)
    assert out == 3 and type(out) is int


@pytest.mark.parametrize("value", [True, 3.0, "3", b"3", None, torch.tensor([3]), np.float64(3)])
def test_check_int_refuses_what_is_not_an_integer(value):
    with pytest.raises(SgdstabError, match=r"^steps must be an integer ≥ 1, got "):
        check_int(value, "steps", minimum=1)


def test_check_int_bounds_are_inclusive_and_the_error_class_is_the_callers():
    assert check_int(1, "n", minimum=1, maximum=1) == 1
    with pytest.raises(DataError, match=r"^n must be an integer ≥ 1 and ≤ 5, got 6$"):
        check_int(6, "n", minimum=1, maximum=5, error=DataError)
    assert check_int(10**30, "seed") == 10**30  # no float detour: exact beyond 2⁵³


@pytest.mark.parametrize("value", [0.5, np.float32(0.5), torch.tensor(0.5, dtype=torch.float64), 1, np.int64(1)])
def test_check_float_takes_real_scalars_and_returns_a_builtin_float(value):
    out = check_float(value, "rtol", minimum=0, include_minimum=False, maximum=1)
    assert out == float(value) and type(out) is float


def test_check_float_open_and_closed_bounds():
    assert check_float(0.0, "x", minimum=0) == 0.0
    with pytest.raises(SgdstabError, match=r"^x must be a finite number > 0, got 0$"):
        check_float(0.0, "x", minimum=0, include_minimum=False)
    with pytest.raises(SgdstabError, match=r"^x must be a finite number < 1, got 1$"):
        check_float(1.0, "x", maximum=1, include_maximum=False)


@pytest.mark.parametrize("value", [math.nan, np.float64("nan"), torch.tensor(math.nan)])
def test_check_float_refuses_nan_even_when_infinity_is_allowed(value):
    with pytest.raises(SgdstabError, match="must be a number"):
        check_float(value, "lr", finite=False)


def test_check_float_infinity_only_when_allowed():
    assert check_float(math.inf, "limit", finite=False) == math.inf
    with pytest.raises(SgdstabError, match=r"^limit must be a finite number, got inf$"):
        check_float(math.inf, "limit")


@pytest.mark.parametrize("value", ["0.1", b"0.1", True, None, [0.1], torch.tensor([0.1, 0.2]), 1 + 0j])
def test_check_float_refuses_what_is_not_a_real_number(value):
    with pytest.raises(SgdstabError, match=r"^lr must be a finite number > 0, got "):
        check_float(value, "lr", minimum=0, include_minimum=False)


def test_check_float_an_integer_beyond_float_range_is_one_line_not_an_overflow():
    with pytest.raises(SgdstabError, match=r"^lr must be a finite number, got an integer of 401 digits$"):
        check_float(10**400, "lr")


def test_check_choice_returns_the_value_or_lists_the_choices():
    assert check_choice("gd", "sampling", ("sgd", "gd")) == "gd"
    with pytest.raises(DataError, match=r"^sampling must be one of 'sgd', 'gd'; got 'adam'$"):
        check_choice("adam", "sampling", ("sgd", "gd"), error=DataError)
    with pytest.raises(SgdstabError, match="got \\['gd'\\]"):
        check_choice(["gd"], "sampling", ("sgd", "gd"))  # unhashable: refused, not a TypeError
