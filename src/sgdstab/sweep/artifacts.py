"""Per-run files of a sweep, beside the store: ``DIR/runs/<first 16 hex digits of the run id>/``.

- ``config.json``: the run's resolved config and its full id;
- ``history.json``: the per-step columns (``step``, ``loss``), the final figures and the timings;
- ``params.pt``: the flat parameter vector θ (float64) of the measured point, ``{"format", "run_id", "theta"}``
  by ``torch.save`` — the polished global minimum when the run reached one, and then also ``"endpoint_theta"``,
  where SGD stopped; read them back with :func:`load_params` (``torch.load(..., weights_only=True)``: no code
  runs).

Each file is written to a hidden temporary name in the same folder, ``fsync``-ed and renamed into place
(:mod:`sgdstab.utils.files`), and all of them before the run's completion is committed to the store: a file that is
visible is complete, and a run marked done has its files. :func:`remove_stale_temporaries` deletes the temporary
files a killed sweep may leave (only names carrying sgdstab's temporary tag: never a user's ``.*.tmp``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sgdstab.errors import ArtifactError
from sgdstab.experiments.io import atomic_write, atomic_write_json
from sgdstab.utils import files

RUNS_DIR = "runs"
PARAMS_FORMAT = "sgdstab-sweep-params"


def run_dir(out: str | os.PathLike[str], run_id: str) -> Path:
    return Path(out) / RUNS_DIR / run_id[:16]


def write_artifacts(
    out: str | os.PathLike[str],
    run_id: str,
    config: Mapping[str, Any],
    history: Mapping[str, Any],
    results: Mapping[str, Any],
    timings: Mapping[str, float],
    theta: np.ndarray,
    endpoint_theta: np.ndarray | None = None,
) -> Path:
    """Write the three files of a finished run (each atomically); returns the run's folder."""
    folder = run_dir(out, run_id)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / "config.json", {"run_id": run_id, "config": dict(config)})
    atomic_write_json(
        folder / "history.json",
        {"run_id": run_id, "columns": dict(history), "results": dict(results), "timings": dict(timings)},
    )
    payload = {"format": PARAMS_FORMAT, "run_id": run_id, "theta": torch.from_numpy(np.array(theta, dtype=np.float64))}
    if endpoint_theta is not None:
        payload["endpoint_theta"] = torch.from_numpy(np.array(endpoint_theta, dtype=np.float64))
    atomic_write(folder / "params.pt", lambda p: torch.save(payload, p))
    return folder


def load_params(path: str | os.PathLike[str], which: str = "theta") -> torch.Tensor:
    """θ of a run from its ``params.pt`` (weights only: nothing in the file is executed): ``which = "theta"``, the
    measured point (the polished minimum when reached), or ``"endpoint_theta"``, where SGD stopped (the same θ
    when the run was measured there, and in files written before polishing existed)."""
    if which not in ("theta", "endpoint_theta"):
        raise ArtifactError(f"unknown parameter vector {which!r}; use 'theta' or 'endpoint_theta'")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ArtifactError(f"parameter file {str(path)!r} not found") from None
    except Exception as exc:
        raise ArtifactError(
            f"parameter file {str(path)!r} cannot be read ({type(exc).__name__}); rerun the run"
        ) from None
    if (
        not isinstance(data, dict)
        or data.get("format") != PARAMS_FORMAT
        or not isinstance(data.get("theta"), torch.Tensor)
    ):
        raise ArtifactError(f"{str(path)!r} is not an sgdstab sweep parameter file")
    if which == "endpoint_theta" and isinstance(data.get("endpoint_theta"), torch.Tensor):
        return data["endpoint_theta"]
    return data["theta"]


def remove_stale_temporaries(out: str | os.PathLike[str]) -> int:
    """Delete the temporary files of killed sgdstab writers under ``DIR`` and ``DIR/runs/*``
    (:func:`sgdstab.utils.files.remove_temporaries`: sgdstab's temporary names only, of processes no longer alive);
    returns how many. Call it only when no other sweep process writes to the directory."""
    root = Path(out)
    folders = [root, *(p for p in (root / RUNS_DIR).glob("*") if p.is_dir() and not p.is_symlink())]
    return sum(files.remove_temporaries(folder) for folder in folders)


__all__ = ["RUNS_DIR", "ArtifactError", "load_params", "remove_stale_temporaries", "run_dir", "write_artifacts"]
