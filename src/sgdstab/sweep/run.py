"""One run of a sweep: build the data, the model and the float64 :class:`~sgdstab.problem.Problem`, train with
:func:`sgdstab.train`, and measure the final point.

Figures (``RunOutput.results``; conventions of THEORY.md §1–§4, L the half-mean square loss):

- ``final_loss``, ``diverged`` (0/1), ``diverged_at`` (the step, or None), ``steps_done``;
- ``hessian_frobenius`` ||H||_F, ``trace`` Tr H, ``sharpness`` λ_max(H) (:func:`sgdstab.curvature`, ``auto``
  route, the run's ``rtol`` and ``seed``), ``curvature_method``, ``curvature_exact``;
- ``mu`` = Tr(ΣG)/(2L||G||_F²) and ``mu_inf`` (:func:`sgdstab.alignment`, reusing the curvature);
- ``noise_scale`` c (1/B with replacement, (n − B)/(B(n − 1)) without; a ``reshuffle`` step's batch is a uniform
  B-subset, so its c is the without-replacement one), ``frobenius_bound`` = sqrt(1/(cμ))/η (the bound
  ||H||_F ≤ sqrt(B/μ)/η of Wu, Wang & Su 2022 at c = 1/B) and ``bound_ratio`` = ||H||_F / bound (≤ 1 where the
  bound holds; it is a theorem at linearly stable global minima), ``gd_ratio`` = η λ_max / 2 (≤ 1: GD-stable);
- with ``stability = true``: ``rho`` ρ(T), ``escape_rate`` log ρ, ``critical_lr`` η*, ``lr_ratio`` η/η*,
  ``stable`` (0/1) from :func:`sgdstab.stability` (exact at a global minimum; elsewhere it linearizes with the
  Gauss–Newton kernel).

A run that diverges is a result (``diverged = 1``, measured figures NaN), not a failure. :func:`run_safely` is
what executors call: it never raises, returning a :class:`RunFailure` (one-line error and traceback) instead.
"""

from __future__ import annotations

import math
import os
import socket
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sgdstab.alignment import alignment
from sgdstab.conventions import noise_scale
from sgdstab.curvature import curvature
from sgdstab.experiments.minimum import build_problem
from sgdstab.stability import stability
from sgdstab.sweep.config import RunConfig, run_from_dict
from sgdstab.training import train

Scalar = float | int | str | None

# The figures in the order tables show them.
RESULT_NAMES = (
    "final_loss",
    "diverged",
    "diverged_at",
    "steps_done",
    "hessian_frobenius",
    "trace",
    "sharpness",
    "curvature_method",
    "curvature_exact",
    "mu",
    "mu_inf",
    "noise_scale",
    "frobenius_bound",
    "bound_ratio",
    "gd_ratio",
    "rho",
    "escape_rate",
    "critical_lr",
    "lr_ratio",
    "stable",
)


@dataclass(frozen=True)
class RunOutput:
    """What a finished run hands back to the driver (picklable: plain values and one numpy array).

    ``history``: columns ``step`` and ``loss`` (one entry per evaluation); ``theta``: the final flat parameters
    (float64); ``timings``: seconds of ``data``, ``train``, ``measure`` and ``total``; ``worker``: host:pid."""

    results: dict[str, Scalar]
    history: dict[str, list[float]]
    theta: np.ndarray
    timings: dict[str, float]
    worker: str


@dataclass(frozen=True)
class RunFailure:
    """A run that raised: ``error`` is one line (type: message), ``traceback`` the full text."""

    error: str
    traceback: str
    timings: dict[str, float] = field(default_factory=dict)
    worker: str = ""


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _scheme(sampling: str) -> str:
    return "with_replacement" if sampling == "with_replacement" else "without_replacement"


def execute_run(config: RunConfig) -> RunOutput:
    """Train and measure one run (see the module docstring). Raises on bad input or a failed measurement."""
    t0 = time.perf_counter()
    problem, _ = build_problem(config)
    t1 = time.perf_counter()
    history = train(
        problem,
        config.lr,
        config.batch_size,
        config.sampling,
        steps=config.steps,
        track_every=config.track_every,
        seed=config.seed,
        progress=False,
    )
    t2 = time.perf_counter()
    nan = math.nan
    diverged = history.diverged_at is not None
    results: dict[str, Scalar] = {
        "final_loss": history.final_loss,
        "diverged": int(diverged),
        "diverged_at": history.diverged_at,
        "steps_done": int(history.steps[-1]) if history.steps else 0,
    }
    c = noise_scale(config.batch_size, config.n, _scheme(config.sampling))
    figures: dict[str, Scalar] = dict.fromkeys(
        ("hessian_frobenius", "trace", "sharpness", "mu", "mu_inf", "frobenius_bound", "bound_ratio", "gd_ratio"), nan
    )
    figures.update(curvature_method=None, curvature_exact=None)
    if not diverged:
        curv = curvature(problem, rtol=config.rtol, seed=config.seed, top=1)
        align = alignment(problem, curvature_result=curv, hessian=False, rtol=config.rtol, seed=config.seed)
        bound = math.sqrt(1.0 / (c * align.mu)) / config.lr if c > 0 and align.mu > 0 else math.inf
        figures.update(
            hessian_frobenius=curv.hessian_frobenius,
            trace=curv.trace,
            sharpness=curv.sharpness,
            curvature_method=curv.method,
            curvature_exact=int(curv.exact),
            mu=align.mu,
            mu_inf=align.mu_inf,
            frobenius_bound=bound,
            bound_ratio=curv.hessian_frobenius / bound,
            gd_ratio=config.lr * curv.sharpness / 2,
        )
    results.update(figures, noise_scale=c)
    if config.stability:
        keys = ("rho", "escape_rate", "critical_lr", "lr_ratio", "stable")
        if diverged:
            results.update(dict.fromkeys(keys, nan))
        else:
            st = stability(problem, config.lr, config.batch_size, config.sampling, with_certificates=False)
            results.update(rho=st.rho, escape_rate=st.escape_rate, critical_lr=st.critical_lr, lr_ratio=st.lr_ratio)
            results["stable"] = int(st.stable)
    t3 = time.perf_counter()
    return RunOutput(
        results=results,
        history={"step": [float(s) for s in history.steps], "loss": list(history.losses)},
        theta=problem.theta.detach().cpu().double().numpy().copy(),
        timings={"data": t1 - t0, "train": t2 - t1, "measure": t3 - t2, "total": t3 - t0},
        worker=worker_name(),
    )


def limit_threads(threads: int) -> None:
    """One process, ``threads`` compute threads (torch and BLAS): N workers × 1 thread do not oversubscribe."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=threads, user_api="blas")
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        pass


def run_safely(config: Mapping[str, Any], threads: int | None = None) -> RunOutput | RunFailure:
    """:func:`execute_run` on a config dict (as stored), catching every exception into a :class:`RunFailure`.

    ``threads``: limit torch and BLAS to this many threads first (the executors' workers pass 1)."""
    start = time.perf_counter()
    try:
        if threads is not None:
            limit_threads(threads)
        return execute_run(run_from_dict(config))
    except Exception as exc:
        line = " ".join(f"{type(exc).__name__}: {exc}".split())
        return RunFailure(
            error=line[:2000],
            traceback=traceback.format_exc(),
            timings={"total": time.perf_counter() - start},
            worker=worker_name(),
        )


__all__ = ["RESULT_NAMES", "RunFailure", "RunOutput", "execute_run", "limit_threads", "run_safely", "worker_name"]
