"""Experiments: thin, declarative layers over the measurement API (THEORY.md §6).

Run one with ``sgdstab experiment NAME [--config FILE] [--quick] --out DIR`` or from Python::

    from sgdstab.experiments import get_experiment
    exp = get_experiment("diagram")
    summary = exp.run(exp.config(quick=True), "out/diagram")   # the dict also written as summary.json

**What an experiment is.** A module ``sgdstab/experiments/<name>.py`` defining

- a frozen config dataclass whose fields all have defaults (the full, paper-scale run), declared with
  :func:`~sgdstab.experiments.config.param` to give each field its range, allowed values and help text; configs
  that train a net inherit :class:`~sgdstab.experiments.minimum.NetConfig` (data and model fields); an optional
  ``check(self)`` method validates constraints between fields;
- a ``quick`` factory returning the CI-sized config (well under a minute on 2 cores);
- ``body(config, ctx) -> Outcome``: the work. It reports progress with ``ctx.stage(...)``, saves figures with
  ``ctx.figure(name, fig, caption)`` (matplotlib Agg figures from :func:`~sgdstab.experiments.io.new_figure`),
  and returns an :class:`~sgdstab.experiments.base.Outcome`: the results table rows, the claims
  (:class:`~sgdstab.experiments.report.Claim`, each with ``passed``, a ``detail`` sentence with its numbers, and
  the numbers machine-readable; a claim that fails is reported as FAILED, never dropped), key numbers, an intro
  saying what was run, and extra Markdown sections;
- ``EXPERIMENT = Experiment(name, title, summary, config_type, quick, body)`` and ``run(config, out_dir)``.

Add its name, module and one-line summary to :data:`~sgdstab.experiments.registry.MODULES`; the CLI, the config
loader and the tests (``tests/experiments/test_experiments.py`` runs every registered quick variant) pick it up.

**What a run writes** (:meth:`Experiment.run`, every file atomically: temp file + rename): ``config.json`` (the
resolved config, first — rerun with ``--config config.json``), the figures (PNG), ``results.csv``, ``report.md``
(each claim checked with its numbers) and ``summary.json`` (the claims as ``{name, statement, passed, detail,
numbers}``, key numbers, file names, run time). The output directory is created; an unwritable one, or one holding
another experiment's results, is refused with :class:`~sgdstab.experiments.io.OutputError`.

**Configs.** TOML (``tomllib``), flat ``key = value`` pairs over the defaults (or the quick variant with
``--quick``); an optional ``experiment = "name"`` key must match. Unknown keys, wrong types and out-of-range
values raise :class:`~sgdstab.experiments.config.ConfigError` with one line naming the field and the fix.

**Building blocks for more experiments** (``alignment``, ``flatness``, ``scaling``, and ``sgdstab analyze``):
:mod:`~sgdstab.experiments.minimum` (a float64 MLP problem from a config, GD to a minimum and Gauss–Newton
polishing to an exact one, a perturbation of given linearized loss), :mod:`~sgdstab.experiments.report`
(claims, "m/n satisfy …; largest ratio r" claims, Markdown tables), :mod:`~sgdstab.experiments.io` (atomic
writes, figures, output directories), :func:`sgdstab.experiments.flatness.solve` (train to a small loss, μ there,
the exact minimum next to it). ``sgdstab demo`` (:mod:`~sgdstab.experiments.demo`) runs compact configs of all
five experiments into subdirectories and writes one report repeating every claim.
"""

from sgdstab.errors import ConfigError, OutputError, UnknownExperimentError
from sgdstab.experiments.base import Context, Experiment, Outcome
from sgdstab.experiments.config import build_config, config_to_toml, load_config, param
from sgdstab.experiments.registry import experiment_names, get_experiment, run_experiment
from sgdstab.experiments.report import Claim

__all__ = [
    "Claim",
    "ConfigError",
    "Context",
    "Experiment",
    "Outcome",
    "OutputError",
    "UnknownExperimentError",
    "build_config",
    "config_to_toml",
    "experiment_names",
    "get_experiment",
    "load_config",
    "param",
    "run_experiment",
]
