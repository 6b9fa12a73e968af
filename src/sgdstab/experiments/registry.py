"""The registry of named experiments: name → the module that defines it (imported on first use).

Each module listed in :data:`MODULES` defines ``EXPERIMENT`` (an :class:`~sgdstab.experiments.base.Experiment`)
and ``run(config, out_dir, quiet=True)``. To add an experiment, write its module and add one line here.
"""

from __future__ import annotations

import difflib
import importlib
from pathlib import Path
from typing import Any

from sgdstab.errors import UnknownExperimentError
from sgdstab.experiments.base import REPORT_FILE, Experiment

MODULES: dict[str, tuple[str, str]] = {  # name → (module, one-line summary shown by `sgdstab experiment --help`)
    "alignment": (
        "sgdstab.experiments.alignment",
        "μ along SGD training of linear, random-feature, MLP and CNN models; μ against width",
    ),
    "flatness": (
        "sgdstab.experiments.flatness",
        "SGD solutions over an (η, B) grid satisfy ||H||_F ≤ sqrt(1/(cμ))/η; GD only λ_max ≤ 2/η",
    ),
    "scaling": (
        "sgdstab.experiments.scaling",
        "the same over n and width: the SGD bound does not grow with them",
    ),
    "escape": (
        "sgdstab.experiments.escape",
        "SGD above the exact η* leaves a sharp minimum for a flatter one; below η* it stays",
    ),
    "diagram": (
        "sgdstab.experiments.diagram",
        "exact stable region of one minimum in the (η, B) plane, with every certificate",
    ),
    "cross_entropy": (
        "sgdstab.experiments.cross_entropy",
        "GD and SGD on cross-entropy: λ_max(H) against 2/η, the exact η*(B) and μ along training",
    ),
    "edge_of_stability": (
        "sgdstab.experiments.edge_of_stability",
        "sgdstab.Tracker on GD and SGD from initialization: λ_max → 2/η for GD; SGD below, at η ≤ η*(B)",
    ),
    "momentum": (
        "sgdstab.experiments.momentum",
        "SGD with momentum β ∈ {0, 0.9} near the exact η*(B, β): stays below, escapes above",
    ),
}


def experiment_names() -> tuple[str, ...]:
    """The registered names, sorted."""
    return tuple(sorted(MODULES))


def get_experiment(name: str) -> Experiment:
    """The experiment called ``name``; raises :class:`UnknownExperimentError` naming the valid ones."""
    if not isinstance(name, str) or name not in MODULES:
        close = difflib.get_close_matches(str(name), experiment_names(), n=1)
        guess = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownExperimentError(
            f"unknown experiment {name!r}{guess}; choose one of {', '.join(experiment_names())}"
        )
    experiment = importlib.import_module(MODULES[name][0]).EXPERIMENT
    if experiment.name != name:  # pragma: no cover - a registry typo
        raise RuntimeError(f"module {MODULES[name][0]} defines experiment {experiment.name!r}, registered as {name!r}")
    return experiment


def run_experiment(
    name: str,
    out: str | Path,
    config_path: str | None = None,
    quick: bool = False,
    quiet: bool = False,
    overrides: dict[str, Any] | None = None,
) -> tuple[Path, dict]:
    """Resolve the config (defaults or ``quick``, then ``config_path``, then ``overrides``), run, and return
    (report path, summary)."""
    experiment = get_experiment(name)
    config = experiment.config(config_path, quick=quick, overrides=overrides)
    summary = experiment.run(config, out, quiet=quiet)
    return Path(out) / REPORT_FILE, summary


__all__ = ["MODULES", "UnknownExperimentError", "experiment_names", "get_experiment", "run_experiment"]
