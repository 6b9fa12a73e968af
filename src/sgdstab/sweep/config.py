"""Sweep configurations: one run's fields (:class:`RunConfig`) and a grid or list of runs over them (TOML).

A sweep file has four top-level keys, all optional except that it must give at least one run::

    name = "quick"                 # the sweep's name (default: the file's stem); a directory holds one sweep
    [base]                         # fields every run shares, over RunConfig's defaults
    n = 64
    widths = [16]
    [grid]                         # the Cartesian product of these lists (in the order written)
    lr = [0.05, 0.1]
    batch_size = [4, 16]
    [[runs]]                       # and/or a list of runs, each a table of overrides
    seed = 0

The runs are every grid point combined with every ``[[runs]]`` entry (a missing ``[grid]`` is one point, missing
``[[runs]]`` one empty entry), over ``[base]``, over the defaults. Each is validated field by field with the
experiments' rules (:func:`~sgdstab.experiments.config.build_config`): an unknown key, a wrong type, a value out of
range, a field given both in ``[grid]`` and in a ``[[runs]]`` entry, an empty or repeated grid value, or two runs
that come out identical raise :class:`~sgdstab.experiments.config.ConfigError` with one line naming the field.

**The run hash.** A run is identified by :func:`run_hash`, the SHA-256 of the canonical JSON of *every* field of
its resolved :class:`RunConfig` (keys sorted, no spaces, floats in Python's shortest round-trip form, wrapped as
``{"format": "sgdstab-run", "version": 1, "config": {...}}``). It does not depend on how the file spelled the run
(key order, ``1`` vs ``1.0``, a default written out or left implicit), and it changes when any field changes —
so a changed config is a new run, and an unchanged one is found again on resume.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import itertools
import json
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sgdstab.conventions import SAMPLING_SCHEMES
from sgdstab.data import DATASETS
from sgdstab.errors import ConfigError, SgdstabError, SweepArgumentError
from sgdstab.experiments.config import (
    build_config,
    check_device,
    coerce_field,
    config_to_dict,
    fail,
    param,
    read_config_file,
)
from sgdstab.experiments.minimum import NetConfig
from sgdstab.measure.curvature import check_seed
from sgdstab.models.architectures import MAX_LAYERS
from sgdstab.training.trainer import TRAIN_SAMPLING

HASH_FORMAT = "sgdstab-run"
HASH_VERSION = 1
MAX_RUNS = 100_000
# the curvature estimators' floor (sgdstab.measure.curvature.check_rtol): below it 1/rtol² underflowed to a division
# by zero in the run, after the sweep had started
MIN_RTOL = 1e-12
TOP_LEVEL_KEYS = ("name", "base", "grid", "runs")
CLASSIFICATION = tuple(name for name, spec in DATASETS.items() if spec.task == "classification")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class RunConfig(NetConfig):
    """One run of a sweep: data and model (:class:`~sgdstab.experiments.minimum.NetConfig`, float64), SGD, and
    what is measured at the end. Learning rates are on the half-MSE loss L = (1/2n) Σ ||f(x_i) − y_i||²."""

    n: int = param(64, ge=2, help="number of training samples")
    widths: tuple[int, ...] = param((16,), ge=1, min_len=1, max_len=MAX_LAYERS, help="hidden widths of the MLP")
    lr: float = param(0.05, gt=0, help="SGD learning rate η on the half-MSE loss L")
    batch_size: int = param(8, ge=1, help="batch size B (at most n)")
    sampling: str = param("with_replacement", choices=TRAIN_SAMPLING, help="how SGD draws its batches")
    steps: int = param(200, ge=1, help="number of SGD steps")
    track_every: int = param(10, ge=1, help="record the full-data loss every this many steps")
    rtol: float = param(
        1e-2, ge=MIN_RTOL, lt=1, help="relative accuracy of stochastic curvature figures (exact routes: —)"
    )
    stability: bool = param(
        False, help="also compute ρ(T), log ρ and the exact η* at the final point (exact only at a global minimum)"
    )

    def check(self) -> None:
        check_device(self.device)
        if len(self.channels) > MAX_LAYERS:  # NetConfig's field: checked here, before any run starts
            fail(f"config field 'channels' holds {len(self.channels)} values, more than {MAX_LAYERS} layers")
        try:  # the run's estimators take the seed: what they refuse must not pass here and fail in the run
            check_seed(self.seed)
        except SgdstabError as exc:
            fail(f"config field 'seed' = {self.seed}: {exc}")
        if DATASETS[self.dataset].task != "classification":
            fail(
                f"config field 'dataset' must be a classification data set for a sweep, got {self.dataset!r} "
                "(a regression set); choose one of " + ", ".join(CLASSIFICATION)
            )
        if self.batch_size > self.n:
            fail(f"config field 'batch_size' must be ≤ n = {self.n}, got {self.batch_size}; lower it or raise n")
        if self.stability and self.sampling not in SAMPLING_SCHEMES:
            fail(
                f"config field 'stability' needs sampling {' or '.join(SAMPLING_SCHEMES)}, got {self.sampling!r}; "
                "set stability = false or change sampling"
            )


RUN_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(RunConfig))


def run_to_dict(config: RunConfig) -> dict[str, Any]:
    """The run's fields as JSON-able values (tuples become lists)."""
    return config_to_dict(config)


def run_from_dict(values: Mapping[str, Any], source: str = "run config") -> RunConfig:
    """A validated :class:`RunConfig` from a dict (e.g. a stored config JSON). Raises ConfigError."""
    return build_config(RunConfig, values, source=source)


def canonical_json(config: RunConfig) -> str:
    """The text :func:`run_hash` hashes (see the module docstring)."""
    wrapped = {"format": HASH_FORMAT, "version": HASH_VERSION, "config": run_to_dict(config)}
    return json.dumps(wrapped, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def run_hash(config: RunConfig) -> str:
    """SHA-256 (hex) of :func:`canonical_json`: the run's identity in the store."""
    return hashlib.sha256(canonical_json(config).encode("ascii")).hexdigest()


@dataclass(frozen=True)
class SweepConfig:
    """A validated sweep: its name, the shared base run, the grid (field → values, in file order) and the list
    entries (override tables). :meth:`expand` gives the runs."""

    name: str
    base: RunConfig
    grid: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    entries: tuple[dict[str, Any], ...] = ({},)
    source: str = "sweep config"

    def varying(self) -> tuple[str, ...]:
        """The fields that differ between runs (grid fields first, then list fields, each once)."""
        names = [name for name, values in self.grid if len(values) > 1]
        for entry in self.entries:
            names += [k for k in entry if k not in names]
        return tuple(names)

    def expand(self) -> list[RunConfig]:
        """Every run, grid points in product order (last field fastest), each combined with every list entry."""
        names = [name for name, _ in self.grid]
        runs: list[RunConfig] = []
        seen: dict[str, int] = {}
        for number, (point, entry) in enumerate(
            itertools.product(itertools.product(*(values for _, values in self.grid)), self.entries), start=1
        ):
            values = {**dict(zip(names, point, strict=True)), **entry}
            where = f"run {number} ({_describe(values)}) of {self.source}"
            try:
                run = build_config(RunConfig, values, base=self.base, source=where)
            except ConfigError as exc:
                raise ConfigError(f"{where}: {exc}") from None
            key = run_hash(run)
            if key in seen:
                raise ConfigError(
                    f"{where} is identical to run {seen[key]}; remove the repeated [[runs]] entry or grid value"
                )
            seen[key] = number
            runs.append(run)
        return runs


def _describe(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in values.items()) or "the base run"


def _guess(key: str, valid: typing.Sequence[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1)
    return f"did you mean {close[0]!r}? " if close else ""


def _check_run_keys(table: Mapping[str, Any], where: str) -> None:
    for key in table:
        if key not in RUN_FIELDS:
            raise ConfigError(
                f"unknown run field {str(key)!r} in {where}; {_guess(str(key), RUN_FIELDS)}"
                f"valid fields: {', '.join(RUN_FIELDS)}"
            )


def _first_repeat(values: tuple[Any, ...]) -> Any | None:
    """The first value seen twice, else None (a set: the pairwise scan took minutes on 100000 values)."""
    seen: set[Any] = set()
    for value in values:
        if value in seen:
            return value
        seen.add(value)
    return None


def _grid(table: Any, source: str) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    where = f"[grid] of {source}"
    if not isinstance(table, Mapping):
        raise ConfigError(f"'grid' in {source} must be a table of field = [values]; write [grid] then lr = [0.1, 0.2]")
    _check_run_keys(table, where)
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    hints = typing.get_type_hints(RunConfig)
    grid = []
    for name, values in table.items():
        if not isinstance(values, list):
            raise ConfigError(
                f"grid field {name!r} in {source} must be a list of values, got {values!r}; "
                f"write {name} = [{json.dumps(values) if not isinstance(values, Mapping) else '...'}] "
                "or move it to [base]"
            )
        if not values:
            raise ConfigError(f"grid field {name!r} in {source} has no values; give at least one or remove it")
        if len(values) > MAX_RUNS:  # before checking each: 5 million values took seconds to be refused
            raise ConfigError(f"grid field {name!r} in {source} has {len(values)} values, more than {MAX_RUNS} runs")
        try:
            coerced = tuple(coerce_field(fields[name], hints[name], v) for v in values)
        except ConfigError as exc:
            raise ConfigError(f"in {where}: {exc}") from None
        repeated = _first_repeat(coerced)
        if repeated is not None:
            raise ConfigError(f"grid field {name!r} in {source} repeats the value {repeated!r}; list each once")
        grid.append((name, coerced))
    return tuple(grid)


def _entries(items: Any, grid_fields: set[str], source: str) -> tuple[dict[str, Any], ...]:
    if not isinstance(items, list) or not all(isinstance(item, Mapping) for item in items):
        raise ConfigError(f"'runs' in {source} must be a list of tables; write [[runs]] then lr = 0.1 for each run")
    if not items:
        raise ConfigError(f"'runs' in {source} is empty; give at least one [[runs]] table or remove it")
    if len(items) > MAX_RUNS:
        raise ConfigError(f"'runs' in {source} has {len(items)} entries, more than {MAX_RUNS}; split the sweep")
    entries = []
    for number, item in enumerate(items, start=1):
        where = f"[[runs]] entry {number} of {source}"
        _check_run_keys(item, where)
        both = sorted(grid_fields & set(item))
        if both:
            raise ConfigError(
                f"field {both[0]!r} is both in [grid] and in {where}; give it in one place (a list entry "
                "combines with every grid point)"
            )
        entries.append(dict(item))
    return tuple(entries)


def sweep_from_dict(
    values: Mapping[str, Any], source: str = "sweep config", default_name: str = "sweep"
) -> SweepConfig:
    """Validate the parsed TOML of a sweep file (see the module docstring). Raises ConfigError."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{source} must be a table of key = value pairs")
    for key in values:
        if key not in TOP_LEVEL_KEYS:
            hint = (
                f"run fields go in [base] or [grid] (e.g. [base] then {key} = ...)"
                if key in RUN_FIELDS
                else f"{_guess(str(key), TOP_LEVEL_KEYS)}valid keys: {', '.join(TOP_LEVEL_KEYS)}"
            )
            raise ConfigError(f"unknown sweep key {str(key)!r} in {source}; {hint}")
    name = values.get("name", default_name)
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(
            f"sweep field 'name' in {source} must be 1–64 letters, digits, '.', '_' or '-' (starting with a letter "
            f"or digit), got {name!r}"
        )
    base_values = values.get("base", {})
    if not isinstance(base_values, Mapping):
        raise ConfigError(f"'base' in {source} must be a table; write [base] then n = 64 on the next lines")
    _check_run_keys(base_values, f"[base] of {source}")
    try:
        base = build_config(RunConfig, base_values, source=f"[base] of {source}")
    except ConfigError as exc:
        raise ConfigError(f"in [base] of {source}: {exc}") from None
    grid = _grid(values["grid"], source) if "grid" in values else ()
    entries = _entries(values["runs"], {n for n, _ in grid}, source) if "runs" in values else ({},)
    if "grid" not in values and "runs" not in values:
        raise ConfigError(f"{source} defines no runs; add a [grid] table or [[runs]] entries")
    count = 1
    for _, options in grid:
        count *= len(options)
    count *= len(entries)
    if count > MAX_RUNS:
        raise ConfigError(f"{source} expands to {count} runs, more than {MAX_RUNS}; split the sweep")
    return SweepConfig(name=name, base=base, grid=grid, entries=entries, source=source)


def load_sweep(path: str | os.PathLike[str]) -> SweepConfig:
    """Read and validate a sweep TOML file; the name defaults to the file's stem. Raises ConfigError."""
    file = Path(path)
    values = read_config_file(file)
    stem = re.sub(r"[^A-Za-z0-9._-]", "-", file.stem)[:64].lstrip("._-") or "sweep"
    return sweep_from_dict(values, source=f"sweep config {str(file)!r}", default_name=stem)


__all__ = [
    "RUN_FIELDS",
    "RunConfig",
    "SweepArgumentError",
    "SweepConfig",
    "canonical_json",
    "load_sweep",
    "run_from_dict",
    "run_hash",
    "run_to_dict",
    "sweep_from_dict",
]
