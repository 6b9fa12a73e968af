"""The checkpoint files of :func:`sgdstab.train`: written, read back, and checked against the run that resumes them.

A checkpoint is a ``torch.save`` file of plain tensors, numbers and strings — ``format``, ``version``,
``parameters`` (name → CPU tensor, in the model's order), ``step``, ``sampler`` (the batch sampler's state),
``run`` (the settings a resumed run must repeat, the data's fingerprint and the initial loss) and ``history`` (the
table so far and the seconds spent) — read back with ``torch.load(..., weights_only=True)`` (no arbitrary
unpickling) and written to a temporary file in the target folder that is renamed into place.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sgdstab.errors import CheckpointError
from sgdstab.models.loading import TRAIN_CHECKPOINT_FORMAT
from sgdstab.problem.problem import Problem
from sgdstab.training.history import write_atomically

# defined where models are loaded (a lower layer), which reads the parameters of these files too
CHECKPOINT_FORMAT = TRAIN_CHECKPOINT_FORMAT
CHECKPOINT_VERSION = 1

# the entries every checkpoint holds, with their types
_ENTRIES: dict[str, type] = {"parameters": dict, "step": int, "sampler": dict, "run": dict, "history": dict}


# ---------------------------------------------------------------------------------------------------- files
def write_checkpoint(
    path: Path,
    *,
    parameters: dict[str, Tensor],
    step: int,
    sampler: dict[str, Any],
    run: dict[str, Any],
    history: dict[str, Any],
) -> None:
    """Write a checkpoint atomically to ``path`` (its folder is created if needed), replacing any earlier one."""
    state = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "parameters": parameters,
        "step": step,
        "sampler": sampler,
        "run": run,
        "history": history,
    }
    write_atomically(path, lambda f: torch.save(state, f))


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint at ``path``, with every entry of the right type; :class:`CheckpointError` if it is none."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist or is not a file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, a forbidden global: all mean "not a checkpoint we wrote"
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r}: truncated, corrupt, or holding more than plain tensors and values "
            f"({type(exc).__name__}: {detail})"
        ) from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{str(path)!r} is not an sgdstab training checkpoint")
    if state.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format version {state.get('version')!r}; this reads {CHECKPOINT_VERSION}"
        )
    for key, kind in _ENTRIES.items():
        if not isinstance(state.get(key), kind):
            raise CheckpointError(f"checkpoint {str(path)!r} lacks a valid {key!r} entry")
    return state


# ---------------------------------------------------------------------------------------------------- checks
def check_checkpoint(state: dict[str, Any], problem: Problem, run: dict[str, Any], source: str) -> None:
    """Refuse a checkpoint of another architecture or another run, naming the first difference.

    ``run`` holds this call's settings (as :func:`sgdstab.train` stores them); ``source`` names the file in messages.
    """
    params = state["parameters"]
    _check_parameter_names(tuple(params), problem.layout.names, source)
    for name, shape in zip(problem.layout.names, problem.layout.shapes, strict=True):
        _check_parameter(name, params[name], tuple(shape), problem.dtype, source)
    _check_run(state["run"], run, source)
    sampler = state["sampler"]
    if not isinstance(sampler.get("generator"), Tensor) or not isinstance(sampler.get("pos"), int):
        raise CheckpointError(f"checkpoint {source} lacks a valid sampler state")
    if not isinstance(state["run"].get("loss0"), float):
        raise CheckpointError(f"checkpoint {source} lacks the run's initial loss")


def _check_parameter_names(names: tuple[str, ...], expected: tuple[str, ...], source: str) -> None:
    if names == expected:
        return
    missing = [n for n in expected if n not in names]
    extra = [n for n in names if n not in expected]
    what = "are in another order"
    if missing or extra:
        what = f"lack {missing[0]!r}" if missing else f"include {extra[0]!r}, which the model has not"
    raise CheckpointError(f"checkpoint {source} does not fit this model: its parameters {what}")


def _check_parameter(name: str, value: object, shape: tuple[int, ...], dtype: torch.dtype, source: str) -> None:
    if not isinstance(value, Tensor) or value.shape != shape:
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise CheckpointError(
            f"checkpoint {source} does not fit this model: {name!r} has shape {got}, the model's is {shape}"
        )
    if value.dtype != dtype:
        raise CheckpointError(f"checkpoint {source} holds {value.dtype} parameters; the problem is {dtype}")
    if not bool(torch.isfinite(value).all()):
        raise CheckpointError(f"checkpoint {source}: parameter {name!r} is not finite")


def _check_run(saved: Mapping[str, Any], run: Mapping[str, Any], source: str) -> None:
    """Every setting of this call equals the saved one (the initial loss is the checkpoint's to give)."""
    for key, value in run.items():
        if key == "loss0":
            continue
        if key == "data":
            if not _same_data(saved.get(key), value):
                raise CheckpointError(f"checkpoint {source} was written on other data (X, Y sums differ)")
            continue
        if saved.get(key) != value:
            raise CheckpointError(
                f"checkpoint {source} was written with {key}={saved.get(key)!r}, this call has {key}={value!r}; "
                "resume with the same settings"
            )


def _same_data(saved: object, fingerprint: list[float]) -> bool:
    # sums may differ in their last bits with the thread count; other data differ far more
    if not isinstance(saved, list) or len(saved) != len(fingerprint):
        return False
    return all(math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9) for a, b in zip(saved, fingerprint, strict=True))


def data_fingerprint(problem: Problem) -> list[float]:
    """Sums and sums of squares of X and Y: a cheap check that a run resumes on the data it was trained on."""
    out = []
    for t in (problem.X, problem.Y):
        out += [float(t.sum(dtype=torch.float64)), float(t.square().sum(dtype=torch.float64))]
    return out


def saved_history(
    history: Mapping[str, Any], columns: list[str], source: str
) -> tuple[list[int], list[float], dict[str, list[float]], float]:
    """The checkpoint's table so far as (steps, losses, tracked columns, seconds), its columns of equal length."""
    try:
        steps = [int(s) for s in history["steps"]]
        losses = [float(x) for x in history["losses"]]
        tracked = {c: [float(x) for x in history["tracked"][c]] for c in columns}
        seconds = float(history["seconds"])
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {source} lacks a valid history ({type(exc).__name__}: {exc})") from exc
    if not steps or any(len(v) != len(steps) for v in (losses, *tracked.values())):
        raise CheckpointError(f"checkpoint {source} holds a history whose columns differ in length")
    return steps, losses, tracked, seconds


__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "CheckpointError",
    "check_checkpoint",
    "data_fingerprint",
    "read_checkpoint",
    "saved_history",
    "write_checkpoint",
]
