"""Monte-Carlo of linearized SGD at a global minimum: typical (Lyapunov) versus mean-square growth (THEORY.md §4).

At a global minimum SGD linearizes, on the residual ``u = Jδ ∈ R^{nk}``, to

    u_{t+1} = (I − (η/B) K D_ξ) u_t,   D_ξ = diag(ξ) ⊗ I_k,   ξ_i = multiplicity of sample i in the batch.

:func:`sgdstab.stability` gives the exact growth of the *second moment*: ``E||u_t||² ~ ρ(T)^t``. A single
run grows at the *typical* (almost-sure) rate, the Lyapunov exponent ``lim (1/t) log ||u_t||²``, and by Jensen
``typical ≤ log ρ(T)``, usually by a wide margin (THEORY.md §4: about half of log ρ at 1.25–3 η* on a random
n = 50, B = 5 kernel). This module measures the typical rate by simulation (:func:`simulate_linearized`) and the
learning rate where it crosses zero (:func:`typical_critical_learning_rate`) — a *second* threshold, above the
mean-square η*: between the two, E L̃_t grows while typical runs still converge.

**The Monte-Carlo mean square is not log ρ.** E||u_t||² is dominated by rare paths, so an average of ||u_t||² over a
few dozen chains is heavy-tailed and under-estimates ρ(T)^t for long runs; :attr:`Simulation.mean_square_rate` is
reported for comparison only, and :attr:`Simulation.predicted_rate` (= log ρ(T), exact) is the mean-square rate.
Never pass the typical rate off as the mean-square rate, or the reverse.

**Cost.** Each chain-step gathers only the batch's B·k columns of K (K is symmetric, so rows): O(nk·B·k) flops, never
a full ``K @ u``. All chains advance at once in float64; each chain is renormalized every step, its log-norm
accumulated, so long runs neither overflow nor underflow.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from sgdstab.conventions import check_batch_size, check_learning_rate, check_sampling
from sgdstab.errors import StabilityError
from sgdstab.kernel.ntk import KernelSource, as_kernel
from sgdstab.linear_stability.checks import check_positive_int, check_seed, check_unit_interval
from sgdstab.linear_stability.solver import critical_learning_rate, stability
from sgdstab.utils.memory import check_allocation
from sgdstab.utils.results import ResultMixin

__all__ = [
    "Simulation",
    "TypicalRateSample",
    "TypicalThreshold",
    "simulate_linearized",
    "typical_critical_learning_rate",
]

MAX_STORED_LOG_NORMS = 200_000  # entries of Simulation.log_norms kept; longer records are subsampled in time
_BOOTSTRAP = 2000  # bootstrap resamples for the CI of the median chain rate
_BOOTSTRAP_MAX_CHAINS = 512  # beyond this many chains, the order-statistic interval of the median instead
_CHUNK = 256  # steps of batch indices drawn at once

HEAVY_TAIL_NOTE = (
    "mean_square_rate is a Monte-Carlo estimate of the growth of E||u_t||²: the second moment is dominated by rare "
    "paths, so over finitely many chains it under-estimates log ρ(T) (= predicted_rate, exact). typical_rate is the "
    "Lyapunov exponent of a single run (median over chains); by Jensen it is ≤ log ρ(T), often far below it. "
    "Compare a single run's escape slope with typical_rate and an ensemble mean of the loss with predicted_rate; "
    "never pass one off as the other."
)


@dataclass(frozen=True)
class Simulation(ResultMixin):
    """Monte-Carlo of linearized SGD (THEORY.md §4). Rates are per step, of ``log ||u_t||²`` (i.e. of log L̃).

    ``typical_rate``: median over chains of the least-squares slope of ``log ||u_t||²`` over the second half of the
    run (the Lyapunov exponent, what one run shows); ``typical_rate_ci``: a 95% bootstrap interval (over chains) of
    that median (the order-statistic interval beyond 512 chains); ``chain_rates``: the per-chain slopes.
    ``mean_square_rate``: slope over the second half of ``log mean_chains ||u_t||²`` — a heavy-tailed Monte-Carlo
    estimate that under-estimates ``predicted_rate`` (see ``notes``). ``predicted_rate`` = ``log ρ(T)`` from
    :func:`sgdstab.stability`, the exact growth rate of ``E||u_t||²``; ``critical_lr`` the mean-square η*.
    ``log_norms``: ``log ||u_t||²`` per step (rows) and
    chain (columns) at the steps ``log_norm_steps`` (every step unless the record was subsampled).

    Example:
        >>> import torch, sgdstab
        >>> K = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> sim = sgdstab.simulate_linearized(K, 1.5, 1, steps=200, chains=16)  # 1.5 η*
        >>> sim.predicted_rate > 0, sim.typical_rate <= sim.predicted_rate, sim.chain_rates.shape
        (True, True, (16,))
    """

    typical_rate: float
    typical_rate_ci: tuple[float, float]
    mean_square_rate: float
    predicted_rate: float
    critical_lr: float
    lr_ratio: float
    lr: float
    batch_size: int
    sampling: str
    steps: int
    chains: int
    seed: int
    n: int
    k: int
    fit_start: int
    chain_rates: np.ndarray
    log_norm_steps: np.ndarray
    log_norms: np.ndarray
    seconds: float
    notes: tuple[str, ...] = ()


class TypicalRateSample(NamedTuple):
    """One simulation of the threshold search: the learning rate, the typical rate there and its 95% CI."""

    lr: float
    rate: float
    ci_low: float
    ci_high: float


@dataclass(frozen=True)
class TypicalThreshold(ResultMixin):
    """The learning rate where the *typical* (Lyapunov) rate of linearized SGD crosses zero — a second threshold,
    above the mean-square critical η* (THEORY.md §4). Between ``critical_lr`` and ``lr``, E L̃_t grows while typical
    runs still converge.

    ``lr``: the crossing (linear interpolation of the typical rate within the final bisection bracket);
    ``lr_ci``: (largest η tested whose 95% CI of the typical rate lies entirely below 0, or η* if none — where
    Jensen guarantees typical ≤ 0; smallest η tested whose CI lies entirely above 0). ``critical_lr``: mean-square
    η*; ``ratio`` = lr/η*. ``tested``: a :class:`TypicalRateSample` (η, typical rate, CI low, CI high) per
    simulation, in the order run.

    Example:
        >>> import torch, sgdstab
        >>> K = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> th = sgdstab.typical_critical_learning_rate(K, 1, steps=100, chains=8, tol=0.05)
        >>> th.tested[0].lr == th.critical_lr, th.evaluations == len(th.tested), th.ratio > 1
        (True, True, True)
    """

    lr: float
    lr_ci: tuple[float, float]
    critical_lr: float
    ratio: float
    batch_size: int
    sampling: str
    steps: int
    chains: int
    seed: int
    evaluations: int
    tested: tuple[TypicalRateSample, ...]
    seconds: float
    notes: tuple[str, ...] = ()


def _slopes(y: Tensor, t: Tensor) -> Tensor:
    """Least-squares slopes of the columns of y (len(t) × m) against t."""
    tc = t - t.mean()
    yc = y - y.mean(dim=0, keepdim=True)
    return (tc[:, None] * yc).sum(dim=0) / (tc * tc).sum()


def _draw(gen: torch.Generator, count: int, chains: int, n: int, b: int, with_replacement: bool) -> Tensor:
    """Batch indices for ``count`` steps: (count, chains, b)."""
    if with_replacement:
        return torch.randint(n, (count, chains, b), generator=gen)
    if b == n:
        return torch.arange(n).expand(count, chains, n)  # GD: every sample once (order is irrelevant)
    return torch.rand(count, chains, n, generator=gen, dtype=torch.float64).argsort(dim=-1)[..., :b]


def simulate_linearized(
    problem_or_kernel: KernelSource,
    lr: float,
    batch_size: int,
    steps: int,
    chains: int = 64,
    seed: int = 0,
    sampling: str = "with_replacement",
    u0: Tensor | np.ndarray | None = None,
    *,
    exact_rate: bool = True,
) -> Simulation:
    """Simulate ``chains`` independent runs of linearized SGD ``u ← (I − (η/B) K D_ξ) u`` for ``steps`` steps.

    With replacement the batch is B i.i.d. uniform indices; without, a uniform B-subset. Rates are fitted over the
    second half of the run (``t ≥ steps // 2``).

    Args:
        problem_or_kernel: as for :func:`sgdstab.stability`.
        lr: the learning rate on the half-MSE loss L.
        batch_size: B, in 1..n.
        steps: steps per chain (≥ 1).
        chains: independent chains (≥ 1).
        seed: fixes u0, the batches and the bootstrap (equal seeds: common random numbers across learning rates).
        sampling: ``"with_replacement"`` or ``"without_replacement"``.
        u0: the starting residual (n·k entries), the same for every chain; default ``K g/||K g||`` with g standard
            normal (seeded), a random unit vector in range(K).
        exact_rate: also solve for the exact ``log ρ(T)``, η* and η/η* (one :func:`sgdstab.stability` solve: at
            large n·k the dominant cost, e.g. a Galerkin solve to K's full rank); False leaves them NaN, for a
            caller that has them already.

    Returns:
        The :class:`Simulation`: typical and Monte-Carlo mean-square rates beside the exact ``log ρ(T)``.

    Raises:
        ConventionError: a bad learning rate, batch size or sampling scheme.
        StabilityError: a bad kernel, ``steps``, ``chains``, ``seed`` or ``u0``; K = 0; a record too large for memory.

    Example:
        >>> import torch, sgdstab
        >>> K = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> sim = sgdstab.simulate_linearized(K, 0.5, 1, steps=40, chains=8)
        >>> sim.log_norms.shape, sim.typical_rate < 0 < sim.lr_ratio < 1
        ((41, 8), True)
    """
    start = time.perf_counter()
    eta = check_learning_rate(lr)
    scheme = check_sampling(sampling)
    steps = check_positive_int(steps, "steps")
    chains = check_positive_int(chains, "chains")
    seed = check_seed(seed)
    ker = as_kernel(problem_or_kernel)
    n, k, nk = ker.n, ker.k, ker.nk
    b = check_batch_size(batch_size, n)
    # the record of log-norms, the chains' residuals and one step's product with K's batch rows, all float64
    check_allocation(
        8 * ((steps + 1) * chains + 3 * chains * nk),
        f"simulating {chains} chains of linearized SGD for {steps} steps (n·k = {nk}, B = {b})",
        "use fewer chains or steps",
    )
    gen = torch.Generator().manual_seed(seed)
    v = _start(ker.K, gen, u0)
    record = _run_chains(ker.K, v, _Chains(n, k, b, eta / b, scheme == "with_replacement", steps, chains), gen)
    fit = _fit(record, steps, chains)
    ci = _median_interval(fit.rates, chains, seed)
    st = stability(ker, eta, b, scheme, with_certificates=False) if exact_rate else None
    nan = math.nan
    kept, stride = _kept_steps(steps, chains)
    return Simulation(
        typical_rate=float(np.median(fit.rates)),
        typical_rate_ci=ci,
        mean_square_rate=fit.mean_square_rate,
        predicted_rate=st.escape_rate if st is not None else nan,
        critical_lr=st.critical_lr if st is not None else nan,
        lr_ratio=st.lr_ratio if st is not None else nan,
        lr=eta,
        batch_size=b,
        sampling=scheme,
        steps=steps,
        chains=chains,
        seed=seed,
        n=n,
        k=k,
        fit_start=fit.start,
        chain_rates=fit.rates,
        log_norm_steps=kept,
        log_norms=record.numpy()[kept],
        seconds=time.perf_counter() - start,
        notes=_simulation_notes(fit, steps, chains, stride),
    )


def _simulation_notes(fit: _Fit, steps: int, chains: int, stride: int) -> tuple[str, ...]:
    """What a reader of the rates should know: which rate is which, a chain that hit 0, too few chains or steps,
    a subsampled record."""
    notes = [HEAVY_TAIL_NOTE, *fit.notes]
    if chains == 1:
        notes.append("one chain: no confidence interval for the typical rate")
    if steps < 20:
        notes.append(f"only {steps} steps: the rates are fitted over {steps - fit.start + 1} points and are rough")
    if stride > 1:
        notes.append(f"log_norms subsampled every {stride} steps (see log_norm_steps)")
    return tuple(notes)


def _start(K: Tensor, gen: torch.Generator, u0: Tensor | np.ndarray | None) -> Tensor:
    """The starting residual (not yet normalized): ``u0`` checked, or ``K g/||K g||`` for a seeded normal g."""
    nk = K.shape[0]
    if u0 is None:
        g = torch.randn(nk, generator=gen, dtype=torch.float64)
        v = K @ g
        norm = float(torch.linalg.vector_norm(v))
        if norm == 0.0:
            raise StabilityError("K = 0: range(K) is empty, nothing to simulate")
        return v / norm
    v = torch.as_tensor(np.asarray(u0) if not isinstance(u0, Tensor) else u0).detach().to("cpu", torch.float64)
    v = v.reshape(-1)
    if v.shape[0] != nk:
        raise StabilityError(f"u0 must have n·k = {nk} entries, got {v.shape[0]}")
    if not bool(torch.isfinite(v).all()) or float(torch.linalg.vector_norm(v)) == 0.0:
        raise StabilityError("u0 must be finite and non-zero")
    return v


@dataclass(frozen=True)
class _Chains:
    """What one step of every chain needs: sizes, the step η/B, the scheme, and how long and how many."""

    n: int
    k: int
    b: int
    scale: float
    with_replacement: bool
    steps: int
    chains: int


def _run_chains(K: Tensor, v: Tensor, run: _Chains, gen: torch.Generator) -> Tensor:
    """``log ||u_t||²`` per step (rows 0..steps) and chain (columns), every chain started from ``v``: each step
    gathers the batch's rows of K only, and each chain is renormalized every step (its log-norm accumulated)."""
    norm0 = torch.linalg.vector_norm(v)
    u = (v / norm0).expand(run.chains, K.shape[0]).clone()
    log_norm = torch.full((run.chains,), float(torch.log(norm0)), dtype=torch.float64)
    record = torch.empty(run.steps + 1, run.chains, dtype=torch.float64)
    record[0] = 2.0 * log_norm
    offsets = torch.arange(run.k)
    chain_idx = torch.arange(run.chains)[:, None]
    width = run.b * run.k
    crow = torch.arange(0, run.chains * width + 1, width)
    t = 0
    while t < run.steps:
        count = min(_CHUNK, run.steps - t)
        idx = _draw(gen, count, run.chains, run.n, run.b, run.with_replacement)
        rows_all = (idx[..., None] * run.k + offsets).reshape(count, run.chains, width) if run.k > 1 else idx
        for j in range(count):
            rows = rows_all[j]  # (chains, B·k); repeated indices carry the multiplicity ξ_i
            ub = u[chain_idx, rows]  # (chains, B·k)
            u = u - run.scale * _batch_rows_product(crow, rows, ub, K)
            s = torch.linalg.vector_norm(u, dim=1)
            log_norm = log_norm + torch.log(s)
            u = u / torch.where(s > 0, s, torch.ones_like(s))[:, None]
            t += 1
            record[t] = 2.0 * log_norm
    return record


def _batch_rows_product(crow: Tensor, rows: Tensor, ub: Tensor, K: Tensor) -> Tensor:
    """Row c: Σ_j ub[c, j] K[rows[c, j]], i.e. (u restricted to chain c's batch) times the batch's rows of K.

    A sparse (chains × nk) matrix times K reads each needed row of K in place; gathering the rows into a dense
    (chains, B·k, nk) block first copied them (3.2 GB a step for 4000 chains at n·k = 10⁴, B = 1, k = 10: 4× slower,
    the same numbers). Repeated indices in a row are summed, as the multiplicity ξ_i requires."""
    with warnings.catch_warnings():  # torch calls its CSR support "beta"; the product is plain and tested
        warnings.simplefilter("ignore", UserWarning)
        M = torch.sparse_csr_tensor(
            crow, rows.reshape(-1), ub.reshape(-1), size=(ub.shape[0], K.shape[0]), check_invariants=False
        )
        return M @ K


@dataclass(frozen=True)
class _Fit:
    """Slopes over the second half of the run (from step ``start``): per chain, and of the chain-mean of ||u||²."""

    start: int
    rates: np.ndarray
    mean_square_rate: float
    notes: tuple[str, ...]


def _fit(record: Tensor, steps: int, chains: int) -> _Fit:
    fit_start = steps // 2
    tt = torch.arange(fit_start, steps + 1, dtype=torch.float64)
    tail = record[fit_start:]
    log_mean = torch.logsumexp(tail, dim=1) - math.log(chains)
    if bool(torch.isfinite(tail).all()):
        rates = _slopes(tail, tt)
        return _Fit(fit_start, rates.numpy(), float(_slopes(log_mean[:, None], tt)[0]), ())
    note = "some chain reached u = 0 exactly (e.g. η = n/λ on an eigenvector): its rate is −inf"
    rates = torch.where(torch.isfinite(tail).all(dim=0), _slopes(torch.nan_to_num(tail), tt), -math.inf)
    ms_rate = float(_slopes(log_mean[:, None], tt)[0]) if bool(torch.isfinite(log_mean).all()) else -math.inf
    return _Fit(fit_start, rates.numpy(), ms_rate, (note,))


def _median_interval(rates: np.ndarray, chains: int, seed: int) -> tuple[float, float]:
    """95% interval of the median chain rate: bootstrap over chains (seeded), the order-statistic interval beyond
    ``_BOOTSTRAP_MAX_CHAINS`` chains, unbounded for one chain."""
    rng = np.random.default_rng(seed)
    if chains > _BOOTSTRAP_MAX_CHAINS:  # order-statistic interval for the median (normal approximation)
        half = 1.96 * math.sqrt(chains) / 2
        order = np.sort(rates)
        lo_i = max(0, math.floor(chains / 2 - half) - 1)
        hi_i = min(chains - 1, math.ceil(chains / 2 + half))
        return (float(order[lo_i]), float(order[hi_i]))
    if chains > 1:
        boot = np.median(rates[rng.integers(0, chains, size=(_BOOTSTRAP, chains))], axis=1)
        return (float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975)))
    return (-math.inf, math.inf)


def _kept_steps(steps: int, chains: int) -> tuple[np.ndarray, int]:
    """The steps whose log-norms are kept (at most ``MAX_STORED_LOG_NORMS`` entries; the last step always), and
    the stride."""
    stride = max(1, math.ceil((steps + 1) * chains / MAX_STORED_LOG_NORMS))
    kept = np.arange(0, steps + 1, stride)
    if kept[-1] != steps:
        kept = np.append(kept, steps)
    return kept, stride


def typical_critical_learning_rate(
    problem_or_kernel: KernelSource,
    batch_size: int,
    sampling: str = "with_replacement",
    steps: int = 2000,
    chains: int = 64,
    seed: int = 0,
    tol: float = 0.01,
) -> TypicalThreshold:
    """The learning rate where the typical (Lyapunov) rate of linearized SGD crosses zero: a second threshold above
    the mean-square η* (THEORY.md §4), found by bisection on η in [η*, upper].

    At η* the typical rate is ≤ log ρ = 0 (Jensen); ``upper`` starts at 2η* and doubles until the 95% CI of the
    typical rate lies above 0. Every simulation uses the same ``seed`` (common random numbers), so the typical
    rate is a smooth function of η along the search.

    Args:
        problem_or_kernel: as for :func:`sgdstab.stability`.
        batch_size: B, in 1..n.
        sampling: ``"with_replacement"`` or ``"without_replacement"``.
        steps, chains, seed: of every simulation (:func:`simulate_linearized`).
        tol: relative width of the final bracket, in (0, 1).

    Returns:
        The :class:`TypicalThreshold`.

    Raises:
        ConventionError: a bad batch size or sampling scheme.
        StabilityError: a bad kernel, ``steps``, ``chains``, ``seed`` or ``tol``; K = 0 (η* infinite); a typical
            rate still not positive after 40 doublings of η.

    Example:
        >>> import torch, sgdstab
        >>> K = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> th = sgdstab.typical_critical_learning_rate(K, 1, steps=100, chains=8, tol=0.05)
        >>> th.critical_lr, th.lr_ci[0] <= th.lr <= th.lr_ci[1], th.ratio > 1
        (1.0, True, True)
    """
    start = time.perf_counter()
    tol = check_unit_interval(tol, "tol")
    scheme = check_sampling(sampling)
    steps = check_positive_int(steps, "steps")
    chains = check_positive_int(chains, "chains")
    ker = as_kernel(problem_or_kernel)
    b = check_batch_size(batch_size, ker.n)
    eta_star = critical_learning_rate(ker, b, scheme)
    if not math.isfinite(eta_star):
        raise StabilityError("η* is infinite (K = 0): there is no threshold")
    tested: list[TypicalRateSample] = []
    notes: list[str] = [
        "a second threshold above the mean-square η*: between critical_lr and lr, E L̃ grows like ρ(T)^t while "
        "typical runs still converge (THEORY.md §4)"
    ]

    def typical(eta: float) -> float:
        sim = simulate_linearized(ker, eta, b, steps, chains=chains, seed=seed, sampling=scheme)
        tested.append(TypicalRateSample(eta, sim.typical_rate, sim.typical_rate_ci[0], sim.typical_rate_ci[1]))
        return sim.typical_rate

    lo, f_lo = eta_star, typical(eta_star)
    if f_lo > 0:
        notes.append(f"typical rate at η* is {f_lo:.3g} > 0 (noise or too few steps); it should be ≤ 0")
    lo, f_lo, hi, f_hi = _bracket(typical, tested, lo, f_lo)
    crossing = _bisect(typical, lo, f_lo, hi, f_hi, tol)
    below = [sample.lr for sample in tested if sample.ci_high < 0]
    above = [sample.lr for sample in tested if sample.ci_low > 0]
    return TypicalThreshold(
        lr=crossing,
        lr_ci=(max([eta_star, *below]), min(above)),
        critical_lr=eta_star,
        ratio=crossing / eta_star,
        batch_size=b,
        sampling=scheme,
        steps=steps,
        chains=chains,
        seed=seed,
        evaluations=len(tested),
        tested=tuple(tested),
        seconds=time.perf_counter() - start,
        notes=tuple(notes),
    )


def _bracket(
    typical: Callable[[float], float], tested: list[TypicalRateSample], lo: float, f_lo: float
) -> tuple[float, float, float, float]:
    """From η* = ``lo``: double ``hi`` (from 2η*) until the typical rate's CI at ``hi`` lies above 0, moving ``lo``
    up to every η whose rate is still ≤ 0. Returns (lo, f(lo), hi, f(hi))."""
    hi = 2.0 * lo
    f_hi = typical(hi)
    doublings = 0
    while tested[-1].ci_low <= 0:
        if f_hi <= 0:
            lo, f_lo = hi, f_hi
        doublings += 1
        if doublings > 40:
            raise StabilityError("the typical rate never became positive while doubling η (40 doublings)")
        hi *= 2.0
        f_hi = typical(hi)
    return lo, f_lo, hi, f_hi


def _bisect(typical: Callable[[float], float], lo: float, f_lo: float, hi: float, f_hi: float, tol: float) -> float:
    """Bisect [lo, hi] down to a relative width ``tol``; the crossing by linear interpolation in the last bracket
    (its midpoint when the rates do not straddle 0)."""
    while hi - lo > tol * lo:
        mid = 0.5 * (lo + hi)
        f_mid = typical(mid)
        if f_mid > 0:
            hi, f_hi = mid, f_mid
        else:
            lo, f_lo = mid, f_mid
    if f_hi > f_lo and f_lo <= 0 < f_hi:
        return lo + (hi - lo) * (-f_lo) / (f_hi - f_lo)
    return 0.5 * (lo + hi)
