"""Shared behaviour of result dataclasses: conversion to plain dicts/JSON and a readable text form."""

from __future__ import annotations

import dataclasses
import json
import math
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
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    return value


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
        return json.dumps(self.to_dict(), allow_nan=True, **kwargs)

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
