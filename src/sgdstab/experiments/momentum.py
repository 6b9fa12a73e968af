"""``momentum``: ``torch.optim.SGD`` with momentum β next to a global minimum, on both sides of the exact
η*(B, β) — below it stays, above it escapes — and momentum lowers η*, heavy ball's although it raises GD's
threshold (docs/THEORY.md §9.1).

1. **A global minimum.** As in ``escape``: GD with a small η trains a float64 MLP on the built-in Fashion-MNIST subset
   (two classes, one ±1 output) to a small loss; Gauss–Newton steps polish it to an interpolating θ*
   (:mod:`sgdstab.experiments.minimum`). Its NTK K gives λ_max(H) = λ_max(K)/n and, exactly, the mean-square
   critical learning rates η*(B, 0) of plain SGD and η*(B, β) of heavy ball (and, with ``nesterov``, of Nesterov)
   with the same B (:func:`sgdstab.critical_learning_rate` with ``momentum=β``), beside GD's thresholds 2/λ_max,
   2(1 + β)/λ_max and (2 + 2β)/((1 + 2β)λ_max).
2. **Runs.** From θ* + δ (δ a seeded random direction with linearized loss ||Jδ||²/(2n) = ``start_loss``, the same
   for every run), ``torch.optim.SGD(lr, momentum=β, nesterov=…)`` itself steps on ``nn.MSELoss()`` of seeded
   batches (B, ``sampling``) for ``steps`` steps, its ``lr`` converted from η on L (MSELoss is (2/k)·L), at
   η = ``below``·η*(B, β) and η = ``above``·η*(B, β) for each optimizer. The full-data L is recorded every step;
   a run stops once L passes ``linear_cap``·½mean||y||² (it escaped). **Controls:** plain SGD (β = 0) with the same
   batches at each momentum run's escaping η, where that η is below η*(B, 0).
3. **Rates.** Each run's slope of log L (least squares, from a transient of a fifth of the linear phase to its end:
   the step before L passes the cap, or before it falls 8 decades below its start — near 1e-30 the fit would measure
   float64 rounding, not the dynamics) is shown against the mean-square rate log ρ(T) (:func:`sgdstab.stability`
   with ``momentum=β``). Reported, not claimed: one run grows at the typical rate, which is at most log ρ in the long
   run (THEORY.md §4) but over a finite window can land either side of it.

Claims: ``global_minimum``; ``momentum_lowers_threshold`` (η*(B, β) < η*(B, 0) for every momentum optimizer run, while
heavy ball's GD threshold 2(1 + β)/λ_max is above 2/λ_max); ``below_stayed`` (every run at ``below``·η* never rose
past ``stay_factor``× its start and ended below it); ``above_escaped`` (every run at ``above``·η* passed the cap);
``momentum_decides`` (where ``above``·η*(B, β) < η*(B, 0): the momentum run escaped while plain SGD at the same η with
the same batches stayed — the momentum, not the step size alone, made it leave; omitted, with a note, where no
momentum run's escaping η is below η*(B, 0)).

η is the step on L = (1/2n) Σ ||r_i||²; c = 1/B with replacement, (n − B)/(B(n − 1)) without.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sgdstab.conventions import (
    SAMPLING_SCHEMES,
    global_minimum_threshold,
    learning_rate_in_convention,
    noise_scale,
    zero_predictor_loss,
)
from sgdstab.experiments.base import Context, Experiment, Outcome
from sgdstab.experiments.config import check_device, fail, param
from sgdstab.experiments.io import new_figure
from sgdstab.experiments.minimum import NetConfig, build_problem, describe_network, find_minimum, perturbation
from sgdstab.experiments.report import Claim, count_claim, fmt, markdown_table
from sgdstab.kernel.kernel import Kernel
from sgdstab.kernel.ntk import ntk
from sgdstab.linear_stability.momentum import gd_momentum_threshold
from sgdstab.linear_stability.solver import critical_learning_rate, stability
from sgdstab.problem.problem import Problem

# the decay fit stops 8 decades below the start: L is then ~1e-22, far above the float64 floor of L near 1e-30
_DECAY_FIT_DECADES = 1e-8


@dataclass(frozen=True)
class MomentumConfig(NetConfig):
    """The ``momentum`` experiment. Defaults: the full run (n = 64, three optimizers, about 16 s of CPU)."""

    gd_lr: float = param(0.01, gt=0, help="GD learning rate on L that finds the minimum (small)")
    gd_max_steps: int = param(20000, ge=1, help="most GD steps")
    gd_until_loss: float = param(1e-5, gt=0, help="GD stops at this L, then Gauss–Newton polishes the point")
    polish_steps: int = param(6, ge=0, le=100, help="most Gauss–Newton polishing steps")
    batch_size: int = param(4, ge=1, help="SGD batch size B of every run")
    sampling: str = param("with_replacement", choices=SAMPLING_SCHEMES, help="SGD sampling scheme of every run")
    momentum: float = param(0.9, gt=0, le=0.99, help="β of the momentum runs (plain SGD, β = 0, always runs too)")
    nesterov: bool = param(True, help="also run Nesterov momentum with the same β")
    below: float = param(0.8, gt=0, le=1, help="the staying runs' η as a multiple of their own η*(B, β)")
    above: float = param(1.5, gt=1, help="the escaping runs' η as a multiple of their own η*(B, β)")
    steps: int = param(2000, ge=20, help="most SGD steps of each run, L recorded at every step")
    start_loss: float = param(1e-14, gt=0, lt=1e-3, help="linearized loss ||Jδ||²/(2n) of the perturbation δ")
    linear_cap: float = param(1e-6, gt=0, lt=1, help="a run escaped when L > linear_cap · ½ mean ||y||²")
    stay_factor: float = param(10.0, gt=1, help="a run stayed when L never passed stay_factor × its start")

    def check(self) -> None:
        check_device(self.device)
        if len(set(self.classes)) != len(self.classes):
            fail(f"config field 'classes' repeats a class: {list(self.classes)}; list distinct class ids")
        if self.batch_size > self.n:
            fail(f"config field 'batch_size' = {self.batch_size} exceeds n = {self.n}; choose 1 ≤ batch_size ≤ n")
        if self.start_loss >= self.linear_cap * 0.01:
            fail(
                f"config field 'start_loss' = {self.start_loss:g} must be below linear_cap/100 = "
                f"{self.linear_cap * 0.01:g} so that an escape spans some decades; lower start_loss"
            )


def quick_config() -> MomentumConfig:
    return MomentumConfig(n=32, widths=(32,), steps=800, start_loss=1e-12)


@dataclass(frozen=True)
class _Optimizer:
    """One ``torch.optim.SGD`` setting and its exact thresholds at the minimum."""

    name: str
    beta: float
    nesterov: bool
    eta_star: float  # η*(B, β), mean square
    gd_threshold: float  # the same optimizer's threshold with full batches (c = 0)


# a control takes a momentum run's η and batches but steps without momentum: whatever differs is the momentum's doing
_PLAIN = _Optimizer("SGD", 0.0, False, math.nan, math.nan)


@dataclass(frozen=True)
class _Minimum:
    theta: torch.Tensor
    loss: float
    gd_steps: int
    gd_loss: float
    polish_steps: int
    kernel: Kernel
    scale: float  # ½ mean ||y||², the zero predictor's loss
    lam: float  # λ_max(H)
    c: float


@dataclass
class _Run:
    optimizer: _Optimizer
    side: str  # "below", "above" or "control" (plain SGD at a momentum run's escaping η, same batches)
    lr: float
    seed: int
    log_rho: float
    losses: np.ndarray
    window: tuple[int, int]
    slope: float
    escaped: bool

    @property
    def label(self) -> str:
        if self.side == "control":
            return f"plain SGD at the η of {self.optimizer.name} above η*"
        return f"{self.optimizer.name} {self.side} η*"

    def stayed(self, factor: float) -> bool:
        start = self.losses[0]
        return bool(not self.escaped and self.losses.max() <= factor * start and self.losses[-1] < start)


def _slope(losses: np.ndarray, a: int, b: int) -> float:
    t = np.arange(a, b + 1, dtype=float)
    return float(np.polyfit(t, np.log(losses[a : b + 1]), 1)[0])


def _window(losses: np.ndarray, cap: float) -> tuple[int, int, bool]:
    """(first, last) steps of the fit — a transient of a fifth, then up to the step before L passes the cap or
    falls below the decay floor — and whether the cap was passed."""
    out = np.nonzero((losses > cap) | (losses < _DECAY_FIT_DECADES * losses[0]))[0]
    end = max(int(out[0]) - 1 if out.size else losses.size - 1, 2)
    return max(1, end // 5), end, bool((losses > cap).any())


def _sgd(
    problem: Problem, theta: torch.Tensor, lr: float, opt: _Optimizer, cfg: MomentumConfig, seed: int, cap: float
) -> np.ndarray:
    """Full-data L at every step of ``torch.optim.SGD`` from θ on ``nn.MSELoss`` (stops once L > cap)."""
    problem.set_parameters(theta)
    model, X, Y, n, b = problem.model, problem.X, problem.Y, problem.n, cfg.batch_size
    mse = torch.nn.MSELoss()  # (2/k)·L on a batch: the optimizer's lr is η converted to that convention
    sgd = torch.optim.SGD(
        model.parameters(),
        lr=learning_rate_in_convention(lr, "torch_mse", problem.k),
        momentum=opt.beta,
        nesterov=opt.nesterov,
    )
    gen = torch.Generator().manual_seed(seed)
    losses: list[float] = []
    for _ in range(cfg.steps + 1):
        with torch.no_grad():
            losses.append(0.5 * float(((model(X).reshape(n, -1) - Y) ** 2).sum()) / n)
        if losses[-1] > cap or not math.isfinite(losses[-1]):
            break
        if cfg.sampling == "with_replacement":
            idx = torch.randint(n, (b,), generator=gen)
        else:
            idx = torch.randperm(n, generator=gen)[:b]
        idx = idx.to(X.device)
        sgd.zero_grad()
        mse(model(X[idx]).reshape(b, -1), Y[idx]).backward()
        sgd.step()
    return np.asarray(losses, dtype=float)


def _run(
    problem: Problem, cfg: MomentumConfig, point: _Minimum, start: torch.Tensor, opt: _Optimizer, side: str, seed: int
) -> _Run:
    """One run from ``start``: ``opt`` at ``side``·η*(B, β), or (``side`` = "control") plain SGD at ``opt``'s
    escaping η with the same seed, hence the same batches."""
    lr = (cfg.below if side == "below" else cfg.above) * opt.eta_star
    runner = _PLAIN if side == "control" else opt
    st = stability(
        point.kernel,
        lr,
        cfg.batch_size,
        cfg.sampling,
        momentum=runner.beta,
        nesterov=runner.nesterov,
        with_certificates=False,
        progress=False,
    )
    cap = cfg.linear_cap * point.scale
    losses = _sgd(problem, start, lr, runner, cfg, seed, cap)
    a, b, escaped = _window(losses, cap)
    return _Run(opt, side, lr, seed, st.escape_rate, losses, (a, b), _slope(losses, a, b), escaped)


def _optimizers(cfg: MomentumConfig) -> list[tuple[str, float, bool]]:
    beta = cfg.momentum
    out = [("SGD", 0.0, False), (f"heavy ball β = {beta:g}", beta, False)]
    return out + ([(f"Nesterov β = {beta:g}", beta, True)] if cfg.nesterov else [])


def _minimum(problem: Problem, cfg: MomentumConfig, ctx: Context) -> tuple[_Minimum, list[_Optimizer]]:
    """GD then Gauss–Newton to θ* (``problem`` is left there), and each optimizer's exact thresholds there."""
    ctx.stage(f"GD at η = {cfg.gd_lr} to L ≤ {cfg.gd_until_loss:g}, then Gauss–Newton polishing")
    found, _ = find_minimum(problem, cfg.gd_lr, cfg.gd_max_steps, cfg.gd_until_loss, cfg.polish_steps, cfg.seed)
    kernel = ntk(problem)
    lam = max(float(kernel.eigen.values[-1]), 0.0) / problem.n
    b, scheme = cfg.batch_size, cfg.sampling
    point = _Minimum(
        problem.theta.clone(),
        found.loss,
        found.gd_steps,
        found.gd_loss,
        found.polish_steps,
        kernel,
        zero_predictor_loss(problem.Y),
        lam,
        noise_scale(b, problem.n, scheme),
    )
    opts = [
        _Optimizer(
            name,
            beta,
            nesterov,
            critical_learning_rate(kernel, b, scheme, momentum=beta, nesterov=nesterov, progress=False),
            gd_momentum_threshold(lam, beta, nesterov),
        )
        for name, beta, nesterov in _optimizers(cfg)
    ]
    ctx.stage(
        f"minimum: L = {found.loss:.2e}, λ_max(H) = {fmt(lam, 4)}; η*(B = {b}): "
        + ", ".join(f"{o.name} {fmt(o.eta_star, 4)}" for o in opts)
    )
    return point, opts


def body(cfg: MomentumConfig, ctx: Context) -> Outcome:
    ctx.stage(
        f"data and model: {cfg.dataset}, n = {cfg.n}, classes {list(cfg.classes)}, {cfg.network} {list(cfg.widths)}"
    )
    problem, data = build_problem(cfg)
    point, opts = _minimum(problem, cfg, ctx)
    delta, _ = perturbation(problem, cfg.start_loss, cfg.seed + 1)
    start = point.theta + delta
    runs: list[_Run] = []
    for i, opt in enumerate(opts):
        for j, side in enumerate(("below", "above")):
            ratio = getattr(cfg, side)
            ctx.stage(f"{opt.name}: η = {ratio:g}·η*(B, β) = {fmt(ratio * opt.eta_star, 4)}")
            runs.append(_run(problem, cfg, point, start, opt, side, cfg.seed + 100 + 2 * i + j))
    plain = opts[0]
    for run in [r for r in runs if r.side == "above" and r.optimizer.beta > 0 and r.lr < plain.eta_star]:
        ctx.stage(f"control: plain SGD at η = {fmt(run.lr, 4)} with the batches of {run.optimizer.name}")
        runs.append(_run(problem, cfg, point, start, run.optimizer, "control", run.seed))
    problem.set_parameters(point.theta)
    ctx.stage("checking the claims and drawing the figure")
    return _outcome(cfg, ctx, problem, data, point, opts, runs)


def _outcome(
    cfg: MomentumConfig,
    ctx: Context,
    problem: Problem,
    data: Any,
    point: _Minimum,
    opts: list[_Optimizer],
    runs: list[_Run],
) -> Outcome:
    controls = [r for r in runs if r.side == "control"]
    claims = [
        _claim_global_minimum(cfg, point, problem),
        _claim_threshold(opts),
        _claim_below(cfg, [r for r in runs if r.side == "below"]),
        _claim_above(cfg, [r for r in runs if r.side == "above"]),
    ]
    if controls:
        claims.append(_claim_decides(cfg, runs, controls, opts[0]))
    rows = [_row(r, cfg, problem.k, opts[0]) for r in runs]
    ctx.table(
        "trajectories.csv",
        [{"run": r.label, "step": t, "loss": x} for r in runs for t, x in enumerate(r.losses.tolist())],
    )
    ctx.figure(
        "momentum.png",
        _plot(runs, cfg.linear_cap * point.scale, cfg.stay_factor),
        _caption(cfg),
    )
    numbers = {
        "n": problem.n,
        "p": problem.p,
        "batch_size": cfg.batch_size,
        "sampling": cfg.sampling,
        "c": point.c,
        "gd_steps": point.gd_steps,
        "minimum_loss": point.loss,
        "lambda_max": point.lam,
        "gd_bound": 2 / point.lam,
        "thresholds": {
            o.name: {"beta": o.beta, "nesterov": o.nesterov, "critical_lr": o.eta_star, "gd_threshold": o.gd_threshold}
            for o in opts
        },
        "runs": rows,
    }
    sections = [_threshold_table(opts), _runs_table(rows, cfg)]
    if not controls:
        sections.append(
            "No momentum run's escaping η was below plain SGD's η*(B, 0), so the control (plain SGD at that η) and "
            "the claim `momentum_decides` do not apply to this config."
        )
    intro = _intro(cfg, data, problem, point)
    return Outcome(rows=rows, claims=claims, numbers=numbers, intro=intro, sections=sections)


def _claim_global_minimum(cfg: MomentumConfig, point: _Minimum, problem: Problem) -> Claim:
    threshold = global_minimum_threshold(problem.Y, problem.dtype)
    return Claim(
        "global_minimum",
        "the minimum interpolates (L is zero to float64 rounding, so H = G and every η* is exact there)",
        bool(point.loss <= threshold),
        f"L = {fmt(point.loss, 3)} ≤ {fmt(threshold, 3)} after GD at η = {cfg.gd_lr} ({point.gd_steps} steps to "
        f"{fmt(point.gd_loss, 3)}) and {point.polish_steps} Gauss–Newton steps",
        {"loss": point.loss, "threshold": threshold},
    )


def _claim_threshold(opts: list[_Optimizer]) -> Claim:
    plain, moms = opts[0], opts[1:]
    heavy = moms[0]
    passed = all(o.eta_star < plain.eta_star for o in moms) and heavy.gd_threshold > plain.gd_threshold
    detail = f"η*(B, 0) = {fmt(plain.eta_star, 4)} (GD: 2/λ_max = {fmt(plain.gd_threshold, 4)}); " + "; ".join(
        f"{o.name}: η*(B, β) = {fmt(o.eta_star, 4)} = {fmt(o.eta_star / plain.eta_star, 3)}·η*(B, 0), GD's "
        f"threshold {fmt(o.gd_threshold, 4)} = {fmt(o.gd_threshold / plain.gd_threshold, 3)}·2/λ_max"
        for o in moms
    )
    return Claim(
        "momentum_lowers_threshold",
        "momentum lowers SGD's exact critical learning rate, η*(B, β) < η*(B, 0) for every momentum optimizer — for "
        "heavy ball although its GD threshold 2(1 + β)/λ_max is above 2/λ_max",
        passed,
        detail,
        {o.name: {"critical_lr": o.eta_star, "gd_threshold": o.gd_threshold} for o in opts},
    )


def _claim_below(cfg: MomentumConfig, runs: list[_Run]) -> Claim:
    claim = count_claim(
        "below_stayed",
        f"every run at {fmt(cfg.below)}·η*(B, β) stayed: L never rose past {fmt(cfg.stay_factor)}× its start and "
        "ended below it",
        [r.stayed(cfg.stay_factor) for r in runs],
        "runs stayed",
        ratio=[float(r.losses[-1] / r.losses[0]) for r in runs],
        ratio_name="largest final L / start L",
        extra={"largest_rise": [float(r.losses.max() / r.losses[0]) for r in runs]},
    )
    each = ", ".join(
        f"{r.optimizer.name}: × {fmt(r.losses.max() / r.losses[0], 3)} at most, × {fmt(r.losses[-1] / r.losses[0], 3)}"
        f" at step {r.losses.size - 1}"
        for r in runs
    )
    return Claim(claim.name, claim.statement, claim.passed, f"{claim.detail} ({each})", claim.numbers)


def _claim_above(cfg: MomentumConfig, runs: list[_Run]) -> Claim:
    claim = count_claim(
        "above_escaped",
        f"every run at {fmt(cfg.above)}·η*(B, β) escaped: L passed {cfg.linear_cap:g}·½mean||y||² within "
        f"{cfg.steps} steps (from {cfg.start_loss:g})",
        [r.escaped for r in runs],
        "runs escaped",
        extra={"escape_step": [r.losses.size - 1 if r.escaped else None for r in runs]},
    )
    each = ", ".join(
        f"{r.optimizer.name}: step {r.losses.size - 1}" if r.escaped else f"{r.optimizer.name}: stayed" for r in runs
    )
    return Claim(claim.name, claim.statement, claim.passed, f"{claim.detail} ({each})", claim.numbers)


def _claim_decides(cfg: MomentumConfig, runs: list[_Run], controls: list[_Run], plain: _Optimizer) -> Claim:
    pairs = [(next(r for r in runs if r.side == "above" and r.optimizer == c.optimizer), c) for c in controls]
    oks = [m.escaped and c.stayed(cfg.stay_factor) and c.lr < plain.eta_star for m, c in pairs]
    claim = count_claim(
        "momentum_decides",
        "at the same η < η*(B, 0) and with the same batches, the momentum run escaped while plain SGD stayed: the "
        "momentum, not the step size alone, decides",
        oks,
        "pairs as stated",
        ratio=[c.lr / plain.eta_star for _, c in pairs],
        ratio_name="largest η/η*(B, 0)",
    )
    each = "; ".join(
        f"{m.optimizer.name}: η = {fmt(c.lr, 4)} = {fmt(c.lr / plain.eta_star, 3)}·η*(B, 0), "
        + (f"escaped at step {m.losses.size - 1}" if m.escaped else "stayed")
        + f", plain SGD ended at × {fmt(c.losses[-1] / c.losses[0], 3)} of its start"
        for m, c in pairs
    )
    return Claim(claim.name, claim.statement, claim.passed, f"{claim.detail} ({each})", claim.numbers)


def _row(run: _Run, cfg: MomentumConfig, k: int, plain: _Optimizer) -> dict[str, Any]:
    control = run.side == "control"
    runner = _PLAIN if control else run.optimizer
    eta_star = plain.eta_star if control else run.optimizer.eta_star
    start = float(run.losses[0])
    return {
        "run": run.label,
        "optimizer": "SGD" if control else run.optimizer.name,
        "momentum": runner.beta,
        "nesterov": runner.nesterov,
        "side": run.side,
        "lr": run.lr,
        "torch_mse_lr": learning_rate_in_convention(run.lr, "torch_mse", k),
        "critical_lr": eta_star,
        "lr_ratio": {"below": cfg.below, "above": cfg.above}.get(run.side, run.lr / eta_star),  # exact, as set
        "log_rho": run.log_rho,
        "slope": run.slope,
        "window_start": run.window[0],
        "window_end": run.window[1],
        "escaped": run.escaped,
        "escape_step": run.losses.size - 1 if run.escaped else None,
        "stayed": run.stayed(cfg.stay_factor),
        "steps_run": run.losses.size - 1,
        "seed": run.seed,
        "start_loss": start,
        "final_loss": float(run.losses[-1]),
        "max_loss": float(run.losses.max()),
        "final_over_start": float(run.losses[-1]) / start,
        "max_over_start": float(run.losses.max()) / start,
    }


def _threshold_table(opts: list[_Optimizer]) -> str:
    plain = opts[0]
    rows = [
        {
            "name": o.name,
            "beta": o.beta,
            "eta": o.eta_star,
            "ratio": o.eta_star / plain.eta_star,
            "effective": o.eta_star / (1 - o.beta),
            "gd": o.gd_threshold,
            "gd_ratio": o.gd_threshold / plain.gd_threshold,
        }
        for o in opts
    ]
    columns = [
        ("name", "optimizer"),
        ("beta", "β"),
        ("eta", "η*(B, β)"),
        ("ratio", "η*(B, β)/η*(B, 0)"),
        ("effective", "η*(B, β)/(1 − β)"),
        ("gd", "GD's threshold"),
        ("gd_ratio", "GD's threshold/(2/λ_max)"),
    ]
    return (
        "## Thresholds at the minimum\n\nη*(B, β) is the exact mean-square critical learning rate on L; η/(1 − β) is "
        "the effective step of momentum on slow directions; GD's threshold is the same optimizer's with full batches "
        "(c = 0).\n\n" + markdown_table(rows, columns)
    )


def _runs_table(rows: list[dict[str, Any]], cfg: MomentumConfig) -> str:
    columns = [
        ("run", "run"),
        ("lr_ratio", "η/η*"),
        ("lr", "η (on L)"),
        ("torch_mse_lr", "lr (MSELoss)"),
        ("log_rho", "log ρ(T)"),
        ("slope", "measured slope"),
        ("escape_step", "escape step"),
        ("max_over_start", "max L / start"),
        ("final_over_start", "final L / start"),
    ]
    return (
        f"## Runs\n\nEach run: `torch.optim.SGD` on `nn.MSELoss()` for at most {cfg.steps} steps from the same "
        "perturbed minimum. Rates are per step, of log L (natural log): log ρ(T) is the mean-square rate, the measured "
        "slope one run's, fitted after a transient of a fifth of the linear phase (reported, not claimed: a single run "
        "grows at the typical rate, at most log ρ in the long run, either side of it over a short window). A control "
        "is plain SGD at the η of a momentum run above its η*, with that run's batches; its η/η* is against "
        "η*(B, 0).\n\n" + markdown_table(rows, columns)
    )


def _intro(cfg: MomentumConfig, data: Any, problem: Problem, point: _Minimum) -> str:
    return (
        f"Data: {data.description}.\n\n"
        f"Model: {describe_network(cfg, data, problem)}, p = {problem.p} parameters, float64, square loss "
        "L = (1/2n) Σ ||f(x_i) − y_i||².\n\n"
        f"Minimum: GD at η = {cfg.gd_lr} for {point.gd_steps} steps to L = {fmt(point.gd_loss, 3)}, then "
        f"{point.polish_steps} Gauss–Newton steps to L = {fmt(point.loss, 3)}; λ_max(H) = {fmt(point.lam, 4)}. "
        f"SGD: B = {cfg.batch_size}, {cfg.sampling.replace('_', ' ')} (c = {fmt(point.c, 4)}); the exact η*(B, β) "
        "of each optimizer comes from the lifted second moment of docs/THEORY.md §9.1.\n\n"
        f"Every run starts at θ* + δ with linearized loss {cfg.start_loss:g} (the same δ for every run) and is "
        f"`torch.optim.SGD(lr, momentum=β, nesterov=…)` itself on `nn.MSELoss()` (lr = k·η/2, MSELoss being "
        f"(2/k)·L), at {fmt(cfg.below)}·η*(B, β) and {fmt(cfg.above)}·η*(B, β) of its own optimizer."
    )


def _caption(cfg: MomentumConfig) -> str:
    return (
        f"Full-data L (log scale) of torch.optim.SGD from the same perturbed minimum. Left: each optimizer at "
        f"{fmt(cfg.above)}·η*(B, β), until L passes the cap (solid black). Right: at {fmt(cfg.below)}·η*(B, β), and "
        "plain SGD at each momentum run's escaping η with that run's batches (dotted), under the stay bound "
        f"{fmt(cfg.stay_factor)}× the start (dash-dot). Dashed: the mean-square rate log ρ(T) of each run, anchored "
        "at the start of its fit window."
    )


_COLORS = {"SGD": "C0", "heavy ball": "C1", "Nesterov": "C2"}
_CONTROL_COLORS = {"heavy ball": "C3", "Nesterov": "C4"}  # plain SGD, but not to be mistaken for the SGD run


def _color(run: _Run) -> str:
    kind = run.optimizer.name.split(" β")[0]
    return _CONTROL_COLORS[kind] if run.side == "control" else _COLORS[kind]


def _predicted(ax: Any, run: _Run, color: str, cap: float) -> None:
    """The mean-square line log ρ(T) over the run's fit window, anchored at its first step (cut above 100× the cap:
    the mean square outruns any single run)."""
    a, b = run.window
    t = np.arange(a, b + 1)
    line = run.losses[a] * np.exp(run.log_rho * (t - a))
    keep = (line <= 100 * cap) & (line >= 1e-300)
    ax.semilogy(t[keep], line[keep], color=color, linestyle="--", linewidth=1.0)


def _plot(runs: list[_Run], cap: float, stay_factor: float) -> Any:
    fig, (left, right) = new_figure(1, 2, size=(13.0, 5.0))
    for run in runs:
        ax = left if run.side == "above" else right
        color = _color(run)
        style = ":" if run.side == "control" else "-"
        label = f"{run.label}: η = {fmt(run.lr, 3)}, log ρ = {run.log_rho:+.3g}"
        ax.semilogy(np.arange(run.losses.size), run.losses, color=color, linestyle=style, linewidth=1.4, label=label)
        _predicted(ax, run, color, cap)
    left.axhline(cap, color="black", linewidth=0.8, alpha=0.6, label="escape cap")
    stay = stay_factor * float(runs[0].losses[0])
    right.axhline(stay, color="black", linewidth=0.8, alpha=0.6, linestyle="-.", label=f"{fmt(stay_factor)}× the start")
    left.set_title("above η*(B, β): escapes")
    right.set_title("below η*(B, β): stays")
    for ax in (left, right):
        ax.plot([], [], color="gray", linestyle="--", label="slope log ρ(T) (mean square)")
        ax.set_xlabel("step")
        ax.set_ylabel(r"$L = \frac{1}{2n}\sum_i \|r_i\|^2$ (full data, log scale)")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=1, frameon=False)
    fig.tight_layout()
    return fig


EXPERIMENT = Experiment(
    name="momentum",
    title=(
        "Momentum: SGD with momentum stays below its exact η*(B, β) and escapes above it; momentum lowers η*, "
        "heavy ball's although it raises GD's threshold"
    ),
    summary="SGD with momentum β ∈ {0, 0.9} near the exact η*(B, β): stays below, escapes above",
    config_type=MomentumConfig,
    quick=quick_config,
    body=body,
    run_time="full (n = 64, three optimizers, 2000 steps): about 16 s; --quick (n = 32, 800 steps): about 6 s (CPU)",
)


def run(config: MomentumConfig, out_dir: str | Path, quiet: bool = True) -> dict[str, Any]:
    """Run the experiment into ``out_dir``; returns the summary (see :mod:`sgdstab.experiments.base`)."""
    return EXPERIMENT.run(config, out_dir, quiet=quiet)


__all__ = ["EXPERIMENT", "MomentumConfig", "body", "quick_config", "run"]
