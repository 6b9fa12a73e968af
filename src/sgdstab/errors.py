"""Typed exceptions raised by sgdstab.

Every error a user can provoke with bad input is a subclass of :class:`SgdstabError`, carries a one-line message
that names the problem and the fix, and is turned into exit code 2 (no traceback) by the command-line tool.
"""

from __future__ import annotations


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


class NotBuiltError(SgdstabError, NotImplementedError):
    """A command or feature that is planned but not yet part of this release."""
