"""Typed exceptions raised by sgdstab.

Every error a user can provoke with bad input is a subclass of :class:`SgdstabError`, carries a one-line message
that names the problem and the fix, and is turned into exit code 2 (no traceback) by the command-line tool.
"""

from __future__ import annotations

import signal


class SgdstabError(Exception):
    """Base class of every error sgdstab raises on purpose."""


class DataError(SgdstabError, ValueError):
    """A data set cannot be found, read or used as asked (missing files, corrupt files, bad arguments)."""


class ModelSpecError(SgdstabError, ValueError):
    """A model specification is invalid (unknown kind, bad widths or activation)."""


class ProblemError(SgdstabError, ValueError):
    """Model and data do not form a valid finite-sum square-loss problem."""


class MemoryBudgetError(SgdstabError, MemoryError):
    """A request would allocate more memory than allowed; the message gives the estimate and what would fit."""


class StabilityError(SgdstabError, ValueError):
    """An invalid kernel or stability request (non-square, asymmetric, non-PSD or non-finite K, unknown method)."""


# -------------------------------------------------------------------------------------------- plumbing
class OutputError(SgdstabError, OSError):
    """An output cannot be written as asked: a path that is not a regular file, a protected file, a file sgdstab did
    not write, a full disk, no permission — or a directory holding another experiment's results."""


class ParseError(SgdstabError, ValueError):
    """JSON/TOML text that is malformed (``syntax``) or beyond a limit of this module (not ``syntax``)."""

    def __init__(self, message: str, *, syntax: bool = False) -> None:
        super().__init__(message)
        self.syntax = syntax


class Terminated(KeyboardInterrupt):
    """SIGTERM (or another terminating signal) arrived: unwind as for Ctrl-C. ``signum``: the signal;
    ``exit_code``: 128 + signum, the shell's code for a process ended by that signal."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.exit_code = 128 + signum
        super().__init__(f"terminated by {signal.Signals(signum).name}")


# ----------------------------------------------------------------------------------------- conventions
class ConventionError(SgdstabError, ValueError):
    """An unknown loss convention or sampling scheme, or an invalid learning rate or batch size."""


# ---------------------------------------------------------------------------------------------- models
class ModelFileError(SgdstabError, ValueError):
    """A model spec or checkpoint cannot be read, or does not fit the model."""


# --------------------------------------------------------------------------------------------- problem
class LayerChainError(SgdstabError, ValueError):
    """The model is not a chain of Linear layers and parameter-free maps, so the layerwise route does not apply."""


# ------------------------------------------------------------------------------------------- operators
class OperatorError(SgdstabError, ValueError):
    """A product was asked with vectors of the wrong shape, or an operator was built from inconsistent parts."""


# ------------------------------------------------------------------------------------------ estimators
class EstimatorError(SgdstabError, ValueError):
    """An estimator was called with invalid arguments (tolerances, budgets, shapes)."""


# ---------------------------------------------------------------------------------------------- kernel
class NtkError(SgdstabError, ValueError):
    """An NTK route was asked for that does not exist or does not apply to the model."""


class NoModuleStructureError(NtkError):
    """The module-by-module NTK found no module called with its own parameters (an exported program calls the
    operations directly): K comes from J's rows instead."""


# ---------------------------------------------------------------------------------------- measurements
class MethodError(SgdstabError, ValueError):
    """An unknown or unusable measurement method."""


# ------------------------------------------------------------------------------------ linear stability
class AnalysisError(SgdstabError, ValueError):
    """Inconsistent arguments to :func:`analyze` (e.g. a batch size without a learning rate)."""


# -------------------------------------------------------------------------------------------- training
class CheckpointError(SgdstabError, ValueError):
    """A checkpoint is unreadable (missing, truncated, corrupt) or does not belong to this problem or run."""


class HistoryError(SgdstabError, ValueError):
    """A history file cannot be read, or a history's columns do not form a table."""


class PolishError(SgdstabError, ValueError):
    """Bad arguments to :func:`polish_to_minimum`, or a point that cannot be polished (non-finite loss)."""


class TrainingError(SgdstabError, ValueError):
    """Invalid arguments to :func:`train` (unknown tracked figure, bad step counts, checkpoint settings)."""


class TrackerError(SgdstabError, ValueError):
    """A :class:`sgdstab.Tracker` given bad arguments or data, an output folder it may not write, or a step out of
    order."""


# ----------------------------------------------------------------------------------------- experiments
class ConfigError(SgdstabError, ValueError):
    """An experiment configuration is invalid: unknown key, wrong type, value out of range, unreadable file."""


class UnknownExperimentError(SgdstabError, KeyError):
    """No experiment has this name."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


# ---------------------------------------------------------------------------------------------- sweeps
class ArtifactError(SgdstabError, ValueError):
    """A run's parameter file is missing, truncated, or not an sgdstab sweep file."""


class SweepArgumentError(SgdstabError, ValueError):
    """A sweep command is missing an argument (the config file, the output directory, a subcommand)."""


class ExecutorError(SgdstabError, RuntimeError):
    """An executor cannot be set up: unknown name, bad worker count, Ray missing or unreachable."""


class ExportError(SgdstabError, ValueError):
    """An export cannot be written as asked (unknown format or table, pyarrow missing for Parquet)."""


class StoreError(SgdstabError, RuntimeError):
    """The sweep store is missing, not an sgdstab store, of another sweep, locked too long, or damaged."""
