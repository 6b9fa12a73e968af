"""A saved model, read safely: its architecture from a :class:`~sgdstab.models.ModelSpec` (JSON) and its weights
from a checkpoint file, never by unpickling code.

Checkpoint formats (the state_dict of a model, or just its parameters):

- ``torch.save(model.state_dict(), path)`` — read with ``torch.load(path, weights_only=True)``, which refuses any
  pickle that would build other objects than tensors, numbers, strings and containers (so code in a crafted pickle
  never runs); also accepted: a dict holding the state dict under ``"state_dict"``, and the training checkpoints
  of :func:`sgdstab.train` (``format = "sgdstab-train-checkpoint"``, parameters under ``"parameters"``);
- safetensors (``safetensors.torch.save_file``), recognised by its header (an 8-byte little-endian length followed
  by a JSON object); needs the ``safetensors`` package.

Every problem (missing or truncated file, a pickle carrying code, a state dict of another architecture) raises
:class:`ModelFileError` with a one-line message.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from sgdstab.errors import SgdstabError
from sgdstab.models import ModelSpec, build_model

TRAIN_CHECKPOINT_FORMAT = "sgdstab-train-checkpoint"  # sgdstab.training's checkpoint files


class ModelFileError(SgdstabError, ValueError):
    """A model spec or checkpoint cannot be read, or does not fit the model."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def load_spec(spec: str | os.PathLike[str] | Mapping[str, Any]) -> ModelSpec:
    """A :class:`ModelSpec` from a dict, a JSON object string or a JSON file holding one."""
    if isinstance(spec, Mapping):
        return ModelSpec.from_dict(spec)
    text = os.fspath(spec)
    source = "--model"
    if not text.lstrip().startswith("{"):
        path = Path(text)
        if not path.is_file():
            raise ModelFileError(
                f"model spec {text!r} is neither a JSON object nor an existing JSON file; pass e.g. "
                '\'{"kind": "mlp", "input_shape": [784], "outputs": 1, "widths": [64]}\''
            )
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ModelFileError(f"cannot read model spec file {str(path)!r}: {_one_line(str(exc))}") from None
        source = f"model spec file {str(path)!r}"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{source} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{source} must hold a JSON object (the ModelSpec fields), got {type(data).__name__}")
    return ModelSpec.from_dict(data)


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (length,) = struct.unpack("<Q", head[:8])
    return 2 <= length <= size - 8 and head[8:9] == b"{"


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """The tensors of a checkpoint file (see the module docstring), on the CPU; never runs code from the file."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"checkpoint {str(path)!r} does not exist or is not a file")
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(9)
    if _is_safetensors(head, size):
        state: Any = _read_safetensors(path)
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # truncated zip, a pickle with code (refused unrun), anything else unreadable
            first = _one_line(str(exc).strip().splitlines()[0]) if str(exc).strip() else ""
            raise ModelFileError(
                f"cannot read checkpoint {str(path)!r}: truncated, corrupt, or holding more than tensors "
                f"(weights_only loading refuses pickled code) ({type(exc).__name__}: {first[:200]})"
            ) from None
    if isinstance(state, Mapping) and state.get("format") == TRAIN_CHECKPOINT_FORMAT:
        state = state.get("parameters")
    elif isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not state:
        raise ModelFileError(f"checkpoint {str(path)!r} holds no state dict (a mapping of names to tensors)")
    bad = [str(k) for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise ModelFileError(f"checkpoint {str(path)!r}: entry {bad[0]!r} is not a named tensor")
    return dict(state)


def _read_safetensors(path: Path) -> dict[str, Tensor]:
    try:
        from safetensors import SafetensorError
        from safetensors.torch import load_file
    except ImportError:
        raise ModelFileError(
            f"checkpoint {str(path)!r} is a safetensors file; reading it needs the safetensors package "
            "(pip install safetensors)"
        ) from None
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"cannot read safetensors checkpoint {str(path)!r}: {_one_line(str(exc))[:200]}") from None


def load_weights(model: nn.Module, state: Mapping[str, Tensor], source: str = "checkpoint") -> nn.Module:
    """Load ``state`` into ``model`` (strictly: every parameter present with its shape, nothing unknown) and return
    it, converted to the checkpoint's floating dtype. Buffers the checkpoint lacks (e.g. the frozen features of
    ``random_features``, rebuilt from the spec's seed) keep the model's values."""
    expected = model.state_dict()
    params = [name for name, _ in model.named_parameters()]  # in module order: the first missing one is named
    unknown = [k for k in state if k not in expected]
    missing = [k for k in params if k not in state]
    if unknown or missing:
        what = f"has {unknown[0]!r}, which the model has not" if unknown else f"lacks the parameter {missing[0]!r}"
        raise ModelFileError(f"{source} does not fit the model spec: it {what} (another architecture?)")
    for name, value in state.items():
        if value.shape != expected[name].shape:
            raise ModelFileError(
                f"{source} does not fit the model spec: {name!r} has shape {tuple(value.shape)}, the model's is "
                f"{tuple(expected[name].shape)}"
            )
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ModelFileError(f"{source}: {name!r} holds non-finite values")
    dtypes = {v.dtype for k, v in state.items() if k in params and v.is_floating_point()}
    if len(dtypes) > 1:
        raise ModelFileError(f"{source} mixes parameter dtypes {sorted(map(str, dtypes))}; save one dtype")
    if dtypes:
        model = model.to(dtypes.pop())
    model.load_state_dict(dict(state), strict=False)
    return model


def load_model(
    spec: str | os.PathLike[str] | Mapping[str, Any] | ModelSpec, checkpoint: str | os.PathLike[str]
) -> nn.Module:
    """Build the model of ``spec`` and load the weights of ``checkpoint`` into it (eval mode)."""
    model_spec = spec if isinstance(spec, ModelSpec) else load_spec(spec)
    model = build_model(model_spec)
    state = read_state_dict(checkpoint)
    model = load_weights(model, state, source=f"checkpoint {os.fspath(checkpoint)!r}")
    return model.eval()


__all__ = [
    "TRAIN_CHECKPOINT_FORMAT",
    "ModelFileError",
    "load_model",
    "load_spec",
    "load_weights",
    "read_state_dict",
]
