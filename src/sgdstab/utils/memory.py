"""Memory estimates made before large allocations, so that a request that cannot fit is refused, not killed."""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os

from sgdstab.errors import MemoryBudgetError


def available_memory_bytes() -> int:
    """Memory available to this process now (``MemAvailable`` on Linux; a conservative 4 GiB elsewhere).

    The environment variable ``SGDSTAB_MEMORY_LIMIT`` (bytes, or with a K/M/G suffix) overrides it.
    """
    limit = os.environ.get("SGDSTAB_MEMORY_LIMIT")
    if limit:
        try:
            return parse_bytes(limit)
        except MemoryBudgetError as exc:
            raise MemoryBudgetError(f"environment variable SGDSTAB_MEMORY_LIMIT: {exc}") from None
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 1024**3


def parse_bytes(text: str) -> int:
    """``"8G"`` → 8·1024³ bytes (suffixes K, M, G, T, optionally followed by ``i``/``B``); refuses anything that is
    not a finite non-negative size."""
    units = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        number, unit = (t[:-1], units[t[-1]]) if t and t[-1] in units else (t, 1)
        value = float(number) * unit
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):  # "inf", "1e400", "-1G" would turn every check into nonsense
        raise MemoryBudgetError(f"cannot read memory size {text!r}; use a non-negative size such as 8G or 512M")
    return int(value)


def format_bytes(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(nbytes) < 1024 or unit == "TiB":
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    raise AssertionError("unreachable")


_LIBC: ctypes.CDLL | bool | None = False  # False: not looked up yet


def release_freed_memory() -> None:
    """Give the heap's freed pages back to the system (glibc's ``malloc_trim(0)``; nothing elsewhere).

    glibc keeps freed blocks below its dynamic mmap threshold (which grows to 32 MB after such a block is freed) on
    the heap: a loop of many medium temporaries (a chunk's activations and gradients) then holds their high-water
    mark as resident memory on top of what it builds. Called between such chunks it bounds the peak by what is live."""
    global _LIBC
    if _LIBC is False:
        name = ctypes.util.find_library("c")
        try:
            _LIBC = ctypes.CDLL(name) if name else None
        except OSError:
            _LIBC = None
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


def check_allocation(nbytes: int, what: str, hint: str, fraction: float = 0.8) -> None:
    """Refuse an allocation of ``nbytes`` that exceeds ``fraction`` of the available memory."""
    budget = int(available_memory_bytes() * fraction)
    if nbytes > budget:
        raise MemoryBudgetError(
            f"{what} needs about {format_bytes(nbytes)} but only {format_bytes(budget)} is available; {hint}"
        )
