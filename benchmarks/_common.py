"""Helpers shared by the benchmark scripts: timing, the machine's state, tables and JSON output."""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

T = TypeVar("T")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_START = time.perf_counter()

# The clock every timing uses: "wall" (time.perf_counter) or "cpu" (time.process_time, the CPU seconds of this
# process). With one thread per library, CPU seconds do not count the time other processes hold the cores, which
# makes side-by-side ratios robust on a shared machine.
_CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
_clock_name = "wall"


def set_clock(name: str) -> None:
    global _clock_name
    if name not in _CLOCKS:
        raise ValueError(f"clock must be one of {sorted(_CLOCKS)}, got {name!r}")
    _clock_name = name


def clock_name() -> str:
    return _clock_name


def now() -> float:
    """The current reading of the chosen clock (see :func:`set_clock`)."""
    return _CLOCKS[_clock_name]()


def limit_blas_threads(threads: int) -> object | None:
    """Limit numpy/scipy's BLAS thread pool (OpenBLAS) to ``threads``; keep the returned object alive.

    Needed beside ``torch.set_num_threads``: OpenBLAS's idle threads spin for a while after each numpy call and
    then compete with torch for the cores. Returns None when threadpoolctl is not installed.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    return threadpool_limits(limits=threads, user_api="blas")


def progress(message: str) -> None:
    """A progress line on stderr (the tables go to stdout)."""
    print(f"[{time.perf_counter() - _START:7.1f} s] {message}", file=sys.stderr, flush=True)


def timed(fn: Callable[[], T], label: str = "", repeat_below: float = 1.0, max_repeats: int = 3) -> tuple[T, float]:
    """Run ``fn`` and return (its result, wall seconds).

    A call faster than ``repeat_below`` seconds is repeated (up to ``max_repeats`` runs) and the fastest time is
    kept: on a shared machine the minimum is the least disturbed measurement. The result of the last run is
    returned, so ``fn`` must be deterministic (seed it inside) for the result to match the time.
    """
    best = math.inf
    result: T
    for _ in range(max_repeats):
        start = now()
        result = fn()
        best = min(best, now() - start)
        if best >= repeat_below:
            break
    if label:
        progress(f"{label}: {best:.3f} s")
    return result, best


def median_time(fn: Callable[[], Any], repeats: int = 5) -> float:
    """Median wall seconds of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = now()
        fn()
        times.append(now() - start)
    times.sort()
    return times[len(times) // 2]


def machine_state() -> dict[str, Any]:
    """What the timings depend on: versions, threads and how busy the machine was."""
    load = os.getloadavg()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "blas_threads": _blas_threads(),
        "clock": _clock_name,
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15min": [round(x, 2) for x in load],
        "machine": platform.machine(),
    }


def _blas_threads() -> int | None:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    counts = [int(info["num_threads"]) for info in threadpool_info() if info.get("user_api") == "blas"]
    return max(counts) if counts else None


def busy_warning() -> str | None:
    """A warning when other processes compete for the cores (timings are then inflated and noisy)."""
    load = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    if load > cores * 0.75:
        return (
            f"the 1-minute load average is {load:.1f} on {cores} cores: other processes compete for the CPU, so "
            "absolute times are inflated and noisy (ratios measured side by side are more robust)"
        )
    return None


def fmt_seconds(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "-"
    if s < 1e-2:
        return f"{s * 1e3:.2f} ms"
    if s < 1:
        return f"{s * 1e3:.0f} ms"
    if s < 120:
        return f"{s:.2f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def fmt_value(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{x:.6g}"


def fmt_percent(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    return f"{100 * x:.2f}%"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """A plain-text table: columns padded to their widest cell, ``right`` columns right-aligned."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` as strict JSON (NaN and infinities become null; numpy/torch scalars become numbers), through
    a temporary file renamed into place, so an interrupted benchmark never leaves a half-written result."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(_plain(data), indent=2, allow_nan=False) + "\n"
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _plain(obj: object) -> object:
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, bool | int | str) or obj is None:
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item"):  # numpy / torch scalars
        return _plain(obj.item())
    return str(obj)
