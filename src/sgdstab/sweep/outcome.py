"""What became of a run, in words shared by ``runs list``, ``runs show`` and the report.

A run the store marks ``done`` ran to its end, but that is not the same as converged: SGD may have diverged (a
result, ``diverged = 1``), and a converged run counts for the Frobenius claim only where the theorem applies
(:mod:`sgdstab.sweep.run`: a global minimum to rounding after polishing, and ρ(T) ≤ 1 there when stability was
computed). Stores written before polishing existed hold runs without ``bound_applies``: their figures are at the
SGD endpoint, and they are reported as such.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sgdstab.sweep.store import STATUSES, RunRecord
from sgdstab.utils.text import fmt

# the outcomes of a run, in the order counts are shown: a done run is either converged or diverged
OUTCOMES = ("converged", "diverged", "failed", "running", "pending")


def diverged(record: RunRecord) -> bool:
    return record.status == "done" and bool(record.results.get("diverged"))


def outcome(record: RunRecord) -> str:
    """``converged`` (done, not diverged), ``diverged``, or the store's status (failed, running, pending)."""
    if record.status != "done":
        return record.status
    return "diverged" if diverged(record) else "converged"


def status_label(record: RunRecord) -> str:
    """The status in words: ``done``, ``done (diverged at step 30)``, ``failed``, …"""
    if diverged(record):
        step = record.results.get("diverged_at")
        return f"done (diverged at step {step})" if step is not None else "done (diverged)"
    return record.status


def outcome_counts(records: Sequence[RunRecord]) -> dict[str, int]:
    """Runs per outcome (every key of :data:`OUTCOMES`, zeros included)."""
    counts = dict.fromkeys(OUTCOMES, 0)
    for r in records:
        counts[outcome(r)] += 1
    return counts


def counts_line(records: Sequence[RunRecord]) -> str:
    """``"5 converged, 3 diverged, 1 failed"`` (outcomes with no run left out)."""
    counts = outcome_counts(records)
    return ", ".join(f"{n} {name}" for name, n in counts.items() if n) or "no runs"


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return math.nan
    return float(value)


def bound_applies(record: RunRecord) -> bool:
    """Whether the run counts for the Frobenius claim (done, converged, measured where the theorem applies)."""
    return record.status == "done" and not diverged(record) and bool(record.results.get("bound_applies"))


def bound_note(record: RunRecord) -> str:
    """Why the Frobenius bound is or is not checked at this run: ``applies``, ``not applicable, L = … after
    polishing``, ``not applicable, ρ(T) = … > 1 …``, ``diverged at step N``, or the status of a run not done."""
    if record.status != "done":
        return record.status
    res = record.results
    if diverged(record):
        return f"diverged at step {res.get('diverged_at')}"
    if "bound_applies" not in res:
        return "not applicable, measured at the SGD endpoint (stored by an sgdstab that did not polish; rerun it)"
    if res.get("bound_applies"):
        return "applies"
    if not res.get("at_minimum"):
        loss = _number(res.get("minimum_loss"))
        return f"not applicable, L = {fmt(loss, 3)} after polishing (not a global minimum)"
    if "stable" in res and not res.get("stable"):
        return (
            f"not applicable, ρ(T) = {fmt(_number(res.get('rho')), 5)} > 1 at the minimum "
            f"(η/η* = {fmt(_number(res.get('lr_ratio')), 4)}: SGD cannot stay there)"
        )
    return f"not applicable, μ = {fmt(_number(res.get('mu')), 3)}"


__all__ = [
    "OUTCOMES",
    "STATUSES",
    "bound_applies",
    "bound_note",
    "counts_line",
    "diverged",
    "outcome",
    "outcome_counts",
    "status_label",
]
