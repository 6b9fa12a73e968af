"""One run of a sweep: build the data, the model and the float64 :class:`sgdstab.Problem`, train with
:func:`sgdstab.train`, measure the alignment where SGD stopped, polish to the global minimum next to it and measure
the curvature there — as the ``flatness`` experiment does (THEORY.md §4–§5: the Frobenius bound is a theorem at
linearly stable *global minima*, where H = G; at the SGD endpoint L > 0 and H ≠ G).

Figures (``RunOutput.results``; conventions of THEORY.md §1–§4, L the half-mean square loss):

- ``final_loss`` (L where SGD stopped), ``diverged`` (0/1), ``diverged_at`` (the step, or None), ``steps_done``;
- ``mu`` = Tr(ΣG)/(2L||G||_F²) and ``mu_inf`` (:func:`sgdstab.alignment`) **at the SGD endpoint**, before
  polishing: μ needs a non-zero residual (at an exact minimum it is 0/0);
- the polish (:func:`sgdstab.polish_to_minimum`, at most ``POLISH_BUILDS`` NTK builds): ``minimum_loss`` (L after
  it), ``at_minimum`` (1 when that is a global minimum to float64 rounding), ``polish_steps``, ``polish_builds``,
  ``polish_distance`` ||Δθ|| and ``polish_relative`` ||Δθ||/||θ||;
- ``hessian_frobenius`` ||H||_F, ``trace`` Tr H, ``sharpness`` λ_max(H) (:func:`sgdstab.curvature`, ``auto``
  route, the run's ``rtol`` and ``seed``), ``curvature_method``, ``curvature_exact``: at the polished minimum when
  ``at_minimum`` = 1 (there H = G and the kernel route is exact), else at the SGD endpoint (θ is put back);
- ``noise_scale`` c (1/B with replacement, (n − B)/(B(n − 1)) without; a ``reshuffle`` step's batch is a uniform
  B-subset, so its c is the without-replacement one), ``frobenius_bound`` = sqrt(1/(cμ))/η (the bound
  ||H||_F ≤ sqrt(B/μ)/η of Wu, Wang & Su 2022 at c = 1/B), ``gd_ratio`` = η λ_max / 2 (≤ 1: GD-stable);
- with ``stability = true``: ``rho`` ρ(T), ``escape_rate`` log ρ, ``critical_lr`` η*, ``lr_ratio`` η/η*,
  ``stable`` (0/1) from :func:`sgdstab.stability` at the measured point (exact at the polished minimum; at an
  endpoint it linearizes with the Gauss–Newton kernel);
- ``bound_applies`` (0/1): the theorem's hypotheses hold at the measured point — a global minimum to rounding and,
  with ``stability = true``, ρ(T) ≤ 1 there; ``bound_ratio`` = ||H||_F / bound only then (NaN otherwise: a ratio
  at a point that is not a minimum tests nothing).

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

from sgdstab.conventions import frobenius_bound, noise_scale
from sgdstab.experiments.minimum import build_problem
from sgdstab.linear_stability.solver import stability
from sgdstab.measure.alignment import alignment
from sgdstab.measure.curvature import curvature
from sgdstab.problem.problem import Problem
from sgdstab.sweep.config import RunConfig, run_from_dict
from sgdstab.training.polish import polish_to_minimum
from sgdstab.training.trainer import train

Scalar = float | int | str | None

# The figures in the order tables show them.
RESULT_NAMES = (
    "final_loss",
    "diverged",
    "diverged_at",
    "steps_done",
    "mu",
    "mu_inf",
    "minimum_loss",
    "at_minimum",
    "polish_steps",
    "polish_builds",
    "polish_distance",
    "polish_relative",
    "hessian_frobenius",
    "trace",
    "sharpness",
    "curvature_method",
    "curvature_exact",
    "noise_scale",
    "frobenius_bound",
    "bound_applies",
    "bound_ratio",
    "gd_ratio",
    "rho",
    "escape_rate",
    "critical_lr",
    "lr_ratio",
    "stable",
)
POLISH_BUILDS = 10  # most NTK builds of the polish; smooth nets reach the float64 floor in 1–3
_STABILITY = ("rho", "escape_rate", "critical_lr", "lr_ratio", "stable")


@dataclass(frozen=True)
class RunOutput:
    """What a finished run hands back to the driver (picklable: plain values and one numpy array).

    ``history``: columns ``step`` and ``loss`` (one entry per evaluation); ``theta``: the flat parameters
    (float64) of the measured point — the polished minimum when reached, else where SGD stopped;
    ``endpoint_theta``: where SGD stopped (None when that is ``theta``); ``timings``: seconds of ``data``,
    ``train``, ``polish`` (μ at the endpoint, then the polish), ``measure`` and ``total``; ``worker``: host:pid."""

    results: dict[str, Scalar]
    history: dict[str, list[float]]
    theta: np.ndarray
    timings: dict[str, float]
    worker: str
    endpoint_theta: np.ndarray | None = None


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


def _flat(problem: Problem) -> np.ndarray:
    return problem.theta.detach().cpu().double().numpy().copy()


def _measure(problem: Problem, config: RunConfig, c: float, mu: float, at_minimum: bool) -> dict[str, Scalar]:
    """Curvature (and stability) at the problem's θ, the bound sqrt(1/(cμ))/η with μ from the endpoint, and
    whether the theorem applies there (see the module docstring)."""
    curv = curvature(problem, rtol=config.rtol, seed=config.seed, top=1)
    bound = frobenius_bound(config.lr, c, mu)
    figures: dict[str, Scalar] = {
        "hessian_frobenius": curv.hessian_frobenius,
        "trace": curv.trace,
        "sharpness": curv.sharpness,
        "curvature_method": curv.method,
        "curvature_exact": int(curv.exact),
        "frobenius_bound": bound,
        "gd_ratio": config.lr * curv.sharpness / 2,
    }
    applies = at_minimum and math.isfinite(mu) and mu > 0
    if config.stability:
        st = stability(problem, config.lr, config.batch_size, config.sampling, with_certificates=False)
        figures.update(rho=st.rho, escape_rate=st.escape_rate, critical_lr=st.critical_lr, lr_ratio=st.lr_ratio)
        figures["stable"] = int(st.stable)
        applies = applies and bool(st.stable)
    figures["bound_applies"] = int(applies)
    figures["bound_ratio"] = curv.hessian_frobenius / bound if applies else math.nan
    return figures


def execute_run(config: RunConfig) -> RunOutput:
    """Train, measure μ, polish and measure one run (see the module docstring). Raises on bad input or a failed
    measurement."""
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
    c = noise_scale(config.batch_size, config.n, _scheme(config.sampling))
    results: dict[str, Scalar] = {
        "final_loss": history.final_loss,
        "diverged": int(diverged),
        "diverged_at": history.diverged_at,
        "steps_done": int(history.steps[-1]) if history.steps else 0,
        "noise_scale": c,
    }
    measured = [n for n in RESULT_NAMES if n not in results and (config.stability or n not in _STABILITY)]
    results.update(dict.fromkeys(measured, nan))
    results.update(curvature_method=None, curvature_exact=None, at_minimum=0, bound_applies=0)
    endpoint_theta = None
    t3 = t2
    if not diverged:
        # μ where SGD stopped: it needs r ≠ 0, and it is the noise SGD felt there
        align = alignment(problem, hessian=False, rtol=config.rtol, seed=config.seed)
        results.update(mu=align.mu, mu_inf=align.mu_inf)
        endpoint = problem.theta.clone()
        polished = polish_to_minimum(problem, max_kernel_builds=POLISH_BUILDS)
        results.update(
            minimum_loss=polished.loss_after,
            at_minimum=int(polished.global_minimum),
            polish_steps=polished.steps,
            polish_builds=polished.kernel_builds,
            polish_distance=polished.distance,
            polish_relative=polished.relative_distance,
        )
        if polished.global_minimum:
            endpoint_theta = endpoint.detach().cpu().double().numpy().copy()
        else:  # not a minimum: measure where SGD stopped, the point the run produced
            problem.set_parameters(endpoint)
        t3 = time.perf_counter()
        results.update(_measure(problem, config, c, align.mu, polished.global_minimum))
    t4 = time.perf_counter()
    return RunOutput(
        results=results,
        history={"step": [float(s) for s in history.steps], "loss": list(history.losses)},
        theta=_flat(problem),
        timings={"data": t1 - t0, "train": t2 - t1, "polish": t3 - t2, "measure": t4 - t3, "total": t4 - t0},
        worker=worker_name(),
        endpoint_theta=endpoint_theta,
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


__all__ = [
    "POLISH_BUILDS",
    "RESULT_NAMES",
    "RunFailure",
    "RunOutput",
    "execute_run",
    "limit_threads",
    "run_safely",
    "worker_name",
]
