"""When the tracker measures, and what measuring has cost against the training it watches.

Three schedules, one of them at a time:

- ``every=N``: at every N-th step (steps N, 2N, …);
- ``seconds=T``: once T seconds of wall time have passed since the last measurement;
- ``overhead=f``: whenever the time spent measuring, the next measurement included (its cost taken as the last
  one's), stays within ``f`` × the time spent training: an adaptive schedule that holds the tracker to a fraction
  of the run (the default, ``f = 0.1``).

The decision for step t + 1 is taken at step t (the tracker must keep θ_t to know the update Δθ of the step it
measures). Training time is the wall time between the tracker's calls, less the time it spent measuring.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from sgdstab.errors import TrackerError
from sgdstab.utils.validation import check_float, check_int

DEFAULT_OVERHEAD = 0.1


@dataclass
class Clock:
    """Wall time split between training (between the tracker's calls) and measuring (inside them)."""

    train_seconds: float = 0.0
    measure_seconds: float = 0.0
    last_measure_seconds: float = 0.0
    last_measured_at: float = field(default_factory=time.perf_counter)
    _mark: float = field(default_factory=time.perf_counter)

    def training_until_now(self) -> None:
        """Count the time since the tracker last returned as training."""
        now = time.perf_counter()
        self.train_seconds += now - self._mark
        self._mark = now

    def measured(self, seconds: float) -> None:
        """Count one measurement of ``seconds``; the clock restarts for training."""
        self.measure_seconds += seconds
        self.last_measure_seconds = seconds
        self._mark = self.last_measured_at = time.perf_counter()

    def resumed(self) -> None:
        """Training time restarts now (the tracker was just built, or loaded a table)."""
        self._mark = self.last_measured_at = time.perf_counter()

    @property
    def overhead(self) -> float:
        """Measuring time over training time (NaN before any training time)."""
        return self.measure_seconds / self.train_seconds if self.train_seconds > 0 else math.nan


@dataclass(frozen=True)
class Schedule:
    """Exactly one of ``every`` (steps), ``seconds`` (wall time) or ``overhead`` (a fraction of training time)."""

    every: int | None = None
    seconds: float | None = None
    overhead: float | None = None

    def due(self, step: int, clock: Clock) -> bool:
        """Whether step ``step`` is measured."""
        if self.every is not None:
            return step % self.every == 0
        if self.seconds is not None:
            return time.perf_counter() - clock.last_measured_at >= self.seconds
        assert self.overhead is not None
        return clock.measure_seconds + clock.last_measure_seconds <= self.overhead * clock.train_seconds

    def describe(self) -> str:
        if self.every is not None:
            return f"every {self.every} steps"
        if self.seconds is not None:
            return f"every {self.seconds:g} s of wall time"
        return f"whenever measuring stays within {self.overhead:g} of the training time"


def make_schedule(every: object, seconds: object, overhead: object) -> Schedule:
    """The :class:`Schedule` of the tracker's ``every=``, ``seconds=`` and ``overhead=`` (at most one given;
    none: ``overhead = 0.1``). Raises :class:`TrackerError` naming the bad argument."""
    given = [
        name for name, value in (("every", every), ("seconds", seconds), ("overhead", overhead)) if value is not None
    ]
    if len(given) > 1:
        raise TrackerError(f"give one schedule, not {' and '.join(given)}: every=N steps, seconds=T or overhead=f")
    if every is not None:
        return Schedule(every=check_int(every, "every", minimum=1, error=TrackerError))
    if seconds is not None:
        return Schedule(seconds=check_float(seconds, "seconds", minimum=0.0, error=TrackerError))
    if overhead is not None:
        value = check_float(overhead, "overhead", minimum=0.0, include_minimum=False, error=TrackerError)
        return Schedule(overhead=value)
    return Schedule(overhead=DEFAULT_OVERHEAD)
