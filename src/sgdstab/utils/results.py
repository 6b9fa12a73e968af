"""Shared behaviour of result dataclasses (plain dicts, JSON, a readable text form) and the one JSON spelling of
non-finite numbers.

Strict JSON has no NaN or infinity. Everywhere sgdstab writes JSON (histories, experiment outputs, results) a
non-finite float is the string ``"NaN"``, ``"Infinity"`` or ``"-Infinity"`` (JavaScript's spellings, what
``json.dumps(allow_nan=True)`` would have written unquoted); :func:`decode_float` also reads the older
``"nan"``/``"inf"``/``"-inf"`` of experiment files written before this was unified.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch


def to_plain(value: Any) -> Any:
    """Convert tensors, arrays, dataclasses and tuples to JSON-able Python values (NaN stays a float)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, torch.Tensor):
        return to_plain(value.detach().cpu().tolist())
    if isinstance(value, np.ndarray):
        return to_plain(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    return value


NON_FINITE: dict[str, float] = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_LEGACY_NON_FINITE: dict[str, float] = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def encode_float(x: float) -> float | str:
    """``x`` itself when finite, else its JSON spelling ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``."""
    if math.isnan(x):
        return "NaN"
    if math.isinf(x):
        return "Infinity" if x > 0 else "-Infinity"
    return x


def decode_float(x: Any) -> float | None:
    """The float that ``x`` (a JSON number or a non-finite spelling, old ones included) stands for, else None."""
    if isinstance(x, bool):
        return None
    if isinstance(x, int | float):
        return float(x)
    if isinstance(x, str):
        return NON_FINITE.get(x, _LEGACY_NON_FINITE.get(x))
    return None


def encode_non_finite(value: Any) -> Any:
    """``value`` (plain: dicts, lists, tuples, scalars) with every non-finite float spelled as a string."""
    if isinstance(value, float):
        return encode_float(value)
    if isinstance(value, dict):
        return {str(k): encode_non_finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [encode_non_finite(v) for v in value]
    return value


def strict_json(value: Any, **kwargs: Any) -> str:
    """Strict JSON (``allow_nan=False``) of ``value`` after :func:`to_plain`, non-finite floats as strings."""
    return json.dumps(encode_non_finite(to_plain(value)), allow_nan=False, **kwargs)


def _format(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.6g}"
    if isinstance(value, list | tuple):
        items = [_format(v) for v in value[:6]]
        more = f", … ({len(value)} in all)" if len(value) > 6 else ""
        return "[" + ", ".join(items) + more + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_format(v)}" for k, v in value.items()) + "}"
    return str(value)


class ResultMixin:
    """Mixin for frozen dataclasses: ``to_dict()``, ``to_json()`` and an aligned ``str()``.

    Fields whose name ends in ``_stderr`` are printed as ``± se`` beside the figure they belong to.
    """

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    def to_json(self, **kwargs: Any) -> str:
        """Strict JSON (:func:`strict_json`: non-finite floats as ``"NaN"``, ``"Infinity"``, ``"-Infinity"``)."""
        return strict_json(self.to_dict(), **kwargs)

    def __str__(self) -> str:
        d = self.to_dict()
        names = [k for k in d if not k.endswith("_stderr")]
        width = max(len(k) for k in names)
        lines = [type(self).__name__]
        for key in names:
            text = _format(d[key])
            se = d.get(f"{key}_stderr")
            if isinstance(se, float) and se > 0:
                text += f" ± {se:.2g}"
            lines.append(f"  {key.ljust(width)}  {text}")
        return "\n".join(lines)
