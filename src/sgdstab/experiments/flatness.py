"""``flatness``: the minima SGD reaches over a grid of (η, B) are as flat as the Frobenius certificate demands;
GD's only obey λ_max ≤ 2/η (THEORY.md §6 item 2).

For every η in ``lrs`` and B in ``batch_sizes``, a float64 MLP on the built-in Fashion-MNIST subset (two classes,
one ±1 output; same initialization for every run) is trained by SGD to L ≤ ``until_loss`` (at most ``max_steps``
steps); GD (B = n) at each η is the contrast. At the end of each run (:func:`solve`):

- **alignment** μ = Tr(ΣG)/(2L||G||_F²), exact through the NTK K at the point SGD reached (μ needs L > 0);
- **the minimum**: Gauss–Newton steps polish that point to the interpolating global minimum next to it
  (:func:`~sgdstab.experiments.minimum.polish`, θ moves by about 1e-3 of its norm), where H = G = JᵀJ/n, so
  ||H||_F = ||K||_F/n and λ_max(H) = λ_max(K)/n are exact, and so is the critical learning rate η*(B) (§4).

Certificates (§5), with c = 1/B with replacement, (n − B)/(B(n − 1)) without:

- Frobenius: ||H||_F ≤ sqrt(1/(cμ))/η at a minimum SGD can stay in (the paper's bound, μ measured);
- GD / edge of stability: λ_max(H) ≤ 2/η, for SGD and GD alike; GD at convergence sits at λ_max ≈ 2/η.

Claims: ``frobenius_bound`` (every SGD solution satisfies it; the largest ratio ||H||_F/bound is reported);
``gd_bound`` (λ_max ≤ (1 + tolerance)·2/η at every solution); ``linearly_stable`` (η ≤ (1 + tolerance)·η*(B) at
every SGD solution); ``gd_edge_of_stability`` (every GD solution has λ_max·η/2 in [1 − edge_band, 1 + tolerance]);
``sgd_flatter_than_gd`` (at every η the smallest-B SGD solution has a smaller ||H||_F than GD's). The tolerance
exists because a run stops at L ≤ until_loss, near but not at a minimum, and GD hovers at the boundary: the
polished minimum may sit just outside it. Runs that diverged, did not reach the loss or could not be polished to
an interpolating minimum are listed with the reason and excluded from the claims.

Nothing forms J (:mod:`sgdstab.experiments.minimum`), so the run scales to the paper's 784-500-500-500-10 MLP on
1000 images (``examples/experiments/paper/``). ``exact_stability = false`` skips what needs K's eigendecomposition
(η*(B), μ_∞, and with them the ``linearly_stable`` claim): minutes to hours at n·k = 10⁴ on a CPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from sgdstab.conventions import SAMPLING_SCHEMES, frobenius_bound, noise_scale, zero_predictor_loss
from sgdstab.experiments.base import Context, Experiment, Outcome
from sgdstab.experiments.config import check_device, fail, param
from sgdstab.experiments.io import new_figure, plain_log_ticks
from sgdstab.experiments.minimum import NetConfig, build_problem, describe_network, polish
from sgdstab.experiments.report import Claim, count_claim, fmt, markdown_table
from sgdstab.kernel.figures import gauss_newton_frobenius, gauss_newton_trace, largest_eigenvalue, noise_figures
from sgdstab.kernel.kernel import Kernel
from sgdstab.kernel.ntk import ntk
from sgdstab.linear_stability.certificates import kernel_curvature
from sgdstab.linear_stability.solver import critical_learning_rate
from sgdstab.problem.problem import Problem
from sgdstab.training.history import History
from sgdstab.training.trainer import train

INTERPOLATION = 1e-20  # L / (½ mean ||y||²) below which a polished point counts as a global minimum


@dataclass(frozen=True)
class FlatnessConfig(NetConfig):
    """The ``flatness`` experiment. Defaults: the full run (n = 64, 3 × 6 SGD runs and 3 GD runs)."""

    n: int = param(64, ge=4, le=1000, help="number of training samples (the kernel is nk × nk)")
    widths: tuple[int, ...] = param((32,), ge=1, min_len=1, help="hidden widths of the MLP (of the CNN's head)")
    lrs: tuple[float, ...] = param((0.01, 0.02, 0.04), gt=0, min_len=1, help="learning rates η on L")
    batch_sizes: tuple[int, ...] = param((1, 2, 4, 8, 16, 32), ge=1, min_len=1, help="SGD batch sizes B (< n)")
    sampling: str = param("with_replacement", choices=SAMPLING_SCHEMES, help="SGD sampling scheme")
    gd: bool = param(True, help="also train GD (B = n) at every η, for contrast")
    max_steps: int = param(20000, ge=1, help="most steps of one run")
    until_loss: float = param(1e-5, gt=0, lt=1e-2, help="a run has reached a solution when L ≤ until_loss")
    track_every: int = param(
        20, ge=1, help="steps between evaluations of the full-data L (and of L ≤ until_loss); each costs a forward pass"
    )
    polish_steps: int = param(6, ge=1, le=100, help="most Gauss–Newton steps from the solution to the minimum")
    tolerance: float = param(
        0.02,
        ge=0,
        lt=0.5,
        help="relative slack of the claims λ_max ≤ 2/η and η ≤ η* (runs stop near, not at, a minimum)",
    )
    edge_band: float = param(0.1, gt=0, lt=1, help="GD is 'at the edge of stability' when λ_max·η/2 ≥ 1 − edge_band")
    exact_stability: bool = param(
        True,
        help="η*(B) and μ_∞ at each solution (needs K's eigendecomposition; off: no linearly_stable claim)",
    )

    def check(self) -> None:
        check_common(self)
        if max(self.batch_sizes) >= self.n:
            fail(f"config field 'batch_sizes' holds {max(self.batch_sizes)} ≥ n = {self.n}; SGD batch sizes are < n")
        if len(set(self.batch_sizes)) != len(self.batch_sizes) or len(set(self.lrs)) != len(self.lrs):
            fail("config fields 'lrs' and 'batch_sizes' must not repeat a value")


def check_common(cfg: Any) -> None:
    check_device(cfg.device)
    if len(set(cfg.classes)) != len(cfg.classes):
        fail(f"config field 'classes' repeats a class: {list(cfg.classes)}; list distinct class ids")


def quick_config() -> FlatnessConfig:
    return FlatnessConfig(n=40, widths=(32,), lrs=(0.01, 0.03), batch_sizes=(1, 4, 16))


def solve(
    problem: Problem,
    lr: float,
    batch_size: int,
    sampling: str,
    *,
    max_steps: int,
    until_loss: float,
    polish_steps: int,
    seed: int,
    exact_stability: bool = True,
    track_every: int = 20,
    progress: bool = False,
    stage: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train ``problem`` in place by SGD(η, B) (GD when B = n without replacement) to L ≤ ``until_loss``, measure
    μ there, polish to the minimum next to it and measure it exactly. Returns one results row; ``status`` is
    ``"ok"`` or the reason the run is excluded (then the measured figures are NaN). Without ``exact_stability``
    η*(B) and μ_∞ are left NaN and K is never eigendecomposed (λ_max by Lanczos). ``progress``: a progress bar
    while training (on a terminal); ``stage``: called with a line at each later step (polishing, measuring)."""
    say = stage or (lambda _: None)
    c = noise_scale(batch_size, problem.n, sampling)
    hist = train(
        problem,
        lr,
        batch_size,
        sampling,
        max_steps,
        until_loss=until_loss,
        track_every=track_every,
        seed=seed,
        progress=progress,
    )
    row = _unmeasured_row(problem.n, lr, batch_size, sampling, c, hist)
    if hist.diverged_at is not None:
        row["status"] = f"diverged at step {hist.diverged_at}"
        return row
    if not hist.final_loss <= until_loss:
        row["status"] = f"did not reach L ≤ {until_loss:g} in {max_steps} steps (L = {fmt(hist.final_loss, 3)})"
        return row
    say(f"  trained: {hist.steps[-1]} steps to L = {fmt(hist.final_loss, 3)}; μ, then Gauss–Newton polishing")
    _measure_where_stopped(problem, row)
    if not _polish_to_minimum(problem, row, polish_steps):
        return row
    say(
        f"  polished: L = {fmt(row['min_loss'], 3)}, θ moved by {fmt(row['polish_relative'], 2)} of ||θ||; "
        "measuring the minimum"
    )
    return derived(row | _minimum_figures(ntk(problem), batch_size, sampling, exact_stability))


# the figures measured after training, NaN until measured (and in the row of an excluded run)
_MEASURED = (
    "mu",
    "lambda_max_stop",
    "mu_inf",
    "polish_relative",
    "min_loss",
    "hessian_frobenius",
    "lambda_max",
    "trace",
    "critical_lr",
)


def _unmeasured_row(n: int, lr: float, batch_size: int, sampling: str, c: float, hist: History) -> dict[str, Any]:
    """The run's results row before any measurement: the setting, how training went, NaN figures."""
    gd = batch_size == n and sampling == "without_replacement"
    row: dict[str, Any] = {
        "method": "GD" if gd else "SGD",
        "lr": lr,
        "batch_size": batch_size,
        "sampling": sampling,
        "c": c,
        "steps": hist.steps[-1],
        "final_loss": hist.final_loss,
        "status": "ok",
    }
    return row | dict.fromkeys(_MEASURED, math.nan)


def _measure_where_stopped(problem: Problem, row: dict[str, Any]) -> None:
    """μ and λ_max(G) at the point where training stopped, into ``row``."""
    # exact μ from K and r alone (no eigendecomposition: at n·k = 10⁴ that would be minutes)
    K_stop = ntk(problem).matrix
    row["mu"] = noise_figures(K_stop, problem.residuals(), problem.n, problem.k).mu
    # λ_max(G) where the run stopped, beside the minimum's: GD at the edge of stability is not at a minimum, and the
    # exact minimum next to its iterate can be sharper than the iterate
    row["lambda_max_stop"] = max(largest_eigenvalue(K_stop), 0.0) / problem.n


def _polish_to_minimum(problem: Problem, row: dict[str, Any], polish_steps: int) -> bool:
    """Gauss–Newton from where training stopped to the interpolating minimum next to it; whether it got there
    (if not, ``row``'s status says why)."""
    norm = float(problem.theta.norm())
    scale = zero_predictor_loss(problem.Y)
    # stop 8 orders of magnitude below the interpolation threshold (float64 rounding is ~1e-32 relative)
    _, moved = polish(problem, polish_steps, target=1e-8 * INTERPOLATION * scale)
    loss = float(problem.loss())
    row["polish_relative"] = moved / norm if norm > 0 else math.nan
    row["min_loss"] = loss
    if not loss <= INTERPOLATION * scale:
        row["status"] = f"Gauss–Newton polishing stopped at L = {fmt(loss, 3)}, not an interpolating minimum"
        return False
    return True


def _minimum_figures(kernel: Kernel, batch_size: int, sampling: str, exact_stability: bool) -> dict[str, float]:
    """||H||_F, λ_max(H) and Tr H at the minimum (H = G: exact from K), with μ_∞ and η*(B) when ``exact_stability``
    (which eigendecomposes K)."""
    n = kernel.n
    if not exact_stability:
        K = kernel.matrix
        return {
            "hessian_frobenius": gauss_newton_frobenius(K, n),
            "lambda_max": max(largest_eigenvalue(K), 0.0) / n,
            "trace": gauss_newton_trace(K, n),
        }
    kc = kernel_curvature(kernel)
    return {
        "mu_inf": kc.mu_inf,
        "hessian_frobenius": kc.frobenius,
        "lambda_max": kc.lambda_max,
        "trace": kc.trace,
        "critical_lr": critical_learning_rate(kernel, batch_size, sampling),
    }


def derived(row: dict[str, Any]) -> dict[str, Any]:
    """Add the certificate figures to a measured row: the Frobenius bound sqrt(1/(cμ))/η and its ratio, the GD
    ratio λ_max·η/2, η/η*(B) and the normalized flatness ψ = η||H||_F sqrt(c)."""
    lr, c, mu, frob = row["lr"], row["c"], row["mu"], row["hessian_frobenius"]
    bound = frobenius_bound(lr, c, mu)
    return row | {
        "frobenius_bound": bound,
        "frobenius_ratio": frob / bound,
        "gd_ratio": row["lambda_max"] * lr / 2,
        "lr_ratio": lr / row["critical_lr"],
        "psi": lr * frob * math.sqrt(c),
    }


def body(cfg: FlatnessConfig, ctx: Context) -> Outcome:
    ctx.stage(
        f"data and model: {cfg.dataset}, n = {cfg.n}, classes {list(cfg.classes)}, {cfg.network} {list(cfg.widths)}"
    )
    problem, data = build_problem(cfg)
    rows = _run_grid(problem, cfg, ctx)
    ctx.stage("checking the claims and drawing the figures")
    claims = flatness_claims(rows, cfg.tolerance, cfg.edge_band, cfg.exact_stability)
    claims += [sgd_flatter_claim(rows)] if cfg.gd else []
    ctx.figure("flatness.png", plot_certificates(rows, "(η, B) grid"), CERTIFICATES_CAPTION)
    slopes = batch_slopes(rows)
    ctx.figure("batch_size.png", _plot_batch(rows, cfg.n, slopes), batch_caption(slopes))
    numbers = _numbers(problem, rows, slopes)
    sections = [_batch_section(slopes), solutions_section(rows)]
    return Outcome(rows=rows, claims=claims, numbers=numbers, intro=_intro(cfg, data, problem), sections=sections)


def _settings(cfg: FlatnessConfig) -> list[tuple[float, int, str]]:
    """(η, B, sampling) of every run: the SGD grid, η-major, then GD at every η."""
    settings = [(lr, b, cfg.sampling) for lr in cfg.lrs for b in sorted(cfg.batch_sizes)]
    if cfg.gd:
        settings += [(lr, cfg.n, "without_replacement") for lr in cfg.lrs]
    return settings


def _run_grid(problem: Problem, cfg: FlatnessConfig, ctx: Context) -> list[dict[str, Any]]:
    """One results row per setting, every run from the same initialization."""
    theta0 = problem.theta.clone()
    settings = _settings(cfg)
    rows = []
    for index, (lr, b, scheme) in enumerate(settings):
        label = "GD" if b == cfg.n and scheme == "without_replacement" else f"SGD B = {b}"
        problem.set_parameters(theta0)
        ctx.stage(f"run {index + 1}/{len(settings)}: {label}, η = {lr:g}")
        row = solve(
            problem,
            lr,
            b,
            scheme,
            max_steps=cfg.max_steps,
            until_loss=cfg.until_loss,
            polish_steps=cfg.polish_steps,
            seed=cfg.seed + index,
            exact_stability=cfg.exact_stability,
            track_every=cfg.track_every,
            progress=ctx.progress,
            stage=ctx.stage,
        )
        ctx.stage(f"  run {index + 1}/{len(settings)} done: {_progress(row)}")
        rows.append({"run": index, **row})
    return rows


def _numbers(problem: Problem, rows: list[dict[str, Any]], slopes: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if r["status"] == "ok"]
    return {
        "n": problem.n,
        "p": problem.p,
        "runs": len(rows),
        "solutions": len(ok),
        "excluded": [
            {"method": r["method"], "lr": r["lr"], "batch_size": r["batch_size"], "reason": r["status"]}
            for r in rows
            if r["status"] != "ok"
        ],
        "largest_frobenius_ratio": max((r["frobenius_ratio"] for r in ok if r["method"] == "SGD"), default=math.nan),
        "batch_slopes": slopes,
    }


def _intro(cfg: FlatnessConfig, data: Any, problem: Problem) -> str:
    return (
        f"Data: {data.description}.\n\n"
        f"Model: {describe_network(cfg, data, problem)}, p = {problem.p} parameters, float64, "
        f"square loss L = (1/2n) Σ ||f(x_i) − y_i||², the "
        f"same initialization for every run.\n\n"
        f"Grid: η ∈ {{{', '.join(f'{x:g}' for x in cfg.lrs)}}} × "
        f"B ∈ {{{', '.join(map(str, sorted(cfg.batch_sizes)))}}} "
        f"({cfg.sampling.replace('_', ' ')})" + (", and GD (B = n) at every η" if cfg.gd else "") + ". "
        f"{METHOD_NOTE.format(until=cfg.until_loss, steps=cfg.max_steps)}"
        + (
            ""
            if cfg.exact_stability
            else " This run skips η*(B) and μ_∞ (`exact_stability = false`: K is never eigendecomposed, λ_max(H) "
            "comes from Lanczos on K), so it checks no linear-stability claim."
        )
    )


METHOD_NOTE = (
    "Each run trains to L ≤ {until:g} (at most {steps} steps); μ is measured there (exact, through the NTK), then "
    "Gauss–Newton steps polish the point to the interpolating minimum next to it, where H = G and ||H||_F, λ_max(H) "
    "and the critical learning rate η*(B) are exact. η is on L; c = 1/B with replacement, (n − B)/(B(n − 1)) "
    "without; the Frobenius bound is sqrt(1/(cμ))/η."
)
CERTIFICATES_CAPTION = (
    "Left: ||H||_F of each SGD solution against its Frobenius bound sqrt(1/(cμ))/η (below the line y = x: the "
    "bound holds). Right: λ_max(H) against 2/η for SGD and GD (GD sits on the line: the edge of stability)"
)


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log y on log x (NaN with fewer than two distinct x): y ∝ x^slope."""
    if len(set(xs)) < 2:
        return math.nan
    lx, ly = np.log(np.asarray(xs, dtype=float)), np.log(np.asarray(ys, dtype=float))
    lx = lx - lx.mean()
    return float((lx * (ly - ly.mean())).sum() / (lx * lx).sum())


def batch_slopes(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per η with SGD solutions at two or more B: the log-log slope of η||H||_F on B (least squares, and between
    consecutive B, where bending shows) and the slope of the Frobenius bound η·sqrt(1/(cμ))/η = sqrt(1/(cμ)),
    which is ½ exactly when μ does not change with B (c = 1/B). ||H||_F ∝ sqrt(B) is what the bound allows, not a
    prediction for ||H||_F (THEORY.md §6 item 2): the slope is measured and stated, not claimed."""
    ok = [r for r in rows if r["status"] == "ok" and r["method"] == "SGD"]
    out = []
    for lr in sorted({r["lr"] for r in ok}):
        mine = sorted((r for r in ok if r["lr"] == lr), key=lambda r: r["batch_size"])
        bs = [float(r["batch_size"]) for r in mine]
        if len(set(bs)) < 2:
            continue
        flat = [lr * r["hessian_frobenius"] for r in mine]
        out.append(
            {
                "lr": lr,
                "batch_sizes": [r["batch_size"] for r in mine],
                "slope": loglog_slope(bs, flat),
                "pairwise": [
                    loglog_slope(bs[i : i + 2], flat[i : i + 2]) for i in range(len(bs) - 1) if bs[i] != bs[i + 1]
                ],
                "bound_slope": loglog_slope(bs, [lr * r["frobenius_bound"] for r in mine]),
            }
        )
    return out


def _slope_text(s: dict[str, Any]) -> str:
    pair = s["pairwise"]
    bend = f" (between consecutive B: {', '.join(fmt(x, 2) for x in pair)})" if len(pair) > 1 else ""
    return f"η = {s['lr']:g}: {fmt(s['slope'], 2)}{bend}"


def batch_caption(slopes: list[dict[str, Any]]) -> str:
    """The batch-size figure's caption, with the slopes measured in this run."""
    text = (
        "η·||H||_F at the minimum reached against the batch size B (solid; GD at B = n: stars), and the Frobenius "
        "bound times η, sqrt(1/(cμ)) (dashed)."
    )
    if not slopes:
        return text + " Fewer than two batch sizes per η: no slope measured."
    bound = [s["bound_slope"] for s in slopes]
    return (
        f"{text} Measured log-log slopes of η·||H||_F on B: {'; '.join(_slope_text(s) for s in slopes)}. "
        f"The bound's slopes: {fmt(min(bound), 2)}–{fmt(max(bound), 2)}; ∝ sqrt(B) would be 0.5"
    )


def _batch_section(slopes: list[dict[str, Any]]) -> str:
    if not slopes:
        return "## Flatness against batch size\n\nFewer than two batch sizes per η: no slope measured."
    lines = [
        "## Flatness against batch size",
        "",
        "Log-log slope of η·||H||_F on B at each η (least squares over the SGD solutions, and between consecutive "
        "batch sizes in B order, where bending shows), against that of the Frobenius bound η·sqrt(1/(cμ))/η, which "
        "is ½ with replacement where μ does not change with B. Measured, not claimed: the bound allows "
        "||H||_F ∝ sqrt(B)/η, it does not predict it.",
        "",
        "| η | batch sizes | slope of η·\\|\\|H\\|\\|_F | between consecutive B | slope of the bound |",
        "|---|---|---|---|---|",
    ]
    for s in slopes:
        pair = ", ".join(fmt(x, 2) for x in s["pairwise"])
        sizes = ", ".join(map(str, s["batch_sizes"]))
        lines.append(f"| {s['lr']:g} | {sizes} | {fmt(s['slope'], 3)} | {pair} | {fmt(s['bound_slope'], 3)} |")
    return "\n".join(lines)


def _progress(row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return f"excluded ({row['status']})"
    text = f"{row['steps']} steps, ||H||_F = {fmt(row['hessian_frobenius'], 4)}, λ_max = {fmt(row['lambda_max'], 4)}"
    if row["method"] == "SGD":
        text += f", bound {fmt(row['frobenius_bound'], 4)} (μ = {fmt(row['mu'], 3)})"
    return text


def flatness_claims(
    rows: list[dict[str, Any]], tolerance: float, edge_band: float, stability: bool = True
) -> list[Claim]:
    """The claims shared by ``flatness`` and ``scaling`` over measured rows (excluded runs are named, not used);
    ``linearly_stable`` only with ``stability`` (η*(B) measured)."""
    ok = [r for r in rows if r["status"] == "ok"]
    sgd = [r for r in ok if r["method"] == "SGD"]
    gd = [r for r in ok if r["method"] == "GD"]
    excluded = [r for r in rows if r["status"] != "ok"]
    note = ""
    if excluded:
        note = f"; excluded {len(excluded)} run(s): " + "; ".join(
            f"{r['method']} η = {r['lr']:g}, B = {r['batch_size']}: {r['status']}" for r in excluded
        )
    claims = []
    claim = count_claim(
        "frobenius_bound",
        "every SGD solution satisfies ||H||_F ≤ sqrt(1/(cμ))/η (the Frobenius certificate)",
        [r["hessian_frobenius"] <= r["frobenius_bound"] for r in sgd],
        "SGD solutions satisfy ||H||_F ≤ sqrt(1/(cμ))/η",
        ratio=[r["frobenius_ratio"] for r in sgd],
        extra={"excluded": len(excluded)},
    )
    claims.append(replace(claim, detail=claim.detail + note))
    claims.append(
        count_claim(
            "gd_bound",
            f"every solution (SGD and GD) satisfies λ_max(H) ≤ 2/η, within {fmt(tolerance)} relative",
            [r["gd_ratio"] <= 1 + tolerance for r in ok],
            "solutions satisfy λ_max·η/2 ≤ " + fmt(1 + tolerance),
            ratio=[r["gd_ratio"] for r in ok],
            ratio_name="largest λ_max·η/2",
        )
    )
    if stability:
        claims.append(
            count_claim(
                "linearly_stable",
                f"SGD can stay at every SGD solution: η ≤ η*(B) (exact, THEORY.md §4), within {fmt(tolerance)} "
                "relative",
                [r["lr_ratio"] <= 1 + tolerance for r in sgd],
                "SGD solutions have η/η*(B) ≤ " + fmt(1 + tolerance),
                ratio=[r["lr_ratio"] for r in sgd],
                ratio_name="largest η/η*",
            )
        )
    if gd:
        claims.append(
            count_claim(
                "gd_edge_of_stability",
                f"GD solutions sit at the edge of stability: λ_max·η/2 within [{fmt(1 - edge_band)}, "
                f"{fmt(1 + tolerance)}]",
                [1 - edge_band <= r["gd_ratio"] <= 1 + tolerance for r in gd],
                "GD solutions at the edge",
                ratio=[r["gd_ratio"] for r in gd],
                ratio_name="smallest λ_max·η/2",
                worst="min",
            )
        )
    return claims


def sgd_flatter_claim(rows: list[dict[str, Any]]) -> Claim:
    """At every η with a GD solution: the smallest-B SGD solution there is flatter (||H||_F) than GD's."""
    ok = [r for r in rows if r["status"] == "ok"]
    oks, ratios, parts = [], [], []
    for lr in sorted({r["lr"] for r in ok}):
        gd = [r for r in ok if r["lr"] == lr and r["method"] == "GD"]
        sgd = sorted((r for r in ok if r["lr"] == lr and r["method"] == "SGD"), key=lambda r: r["batch_size"])
        if not gd or not sgd:
            continue
        ratio = sgd[0]["hessian_frobenius"] / gd[0]["hessian_frobenius"]
        oks.append(ratio < 1)
        ratios.append(ratio)
        parts.append(f"η = {lr:g}: B = {sgd[0]['batch_size']} {fmt(ratio, 3)}")
    claim = count_claim(
        "sgd_flatter_than_gd",
        "at every η, the SGD solution with the smallest batch is flatter than GD's (smaller ||H||_F)",
        oks,
        "learning rates",
        ratio=ratios,
        ratio_name="largest ||H||_F ratio SGD/GD",
    )
    return replace(claim, detail=claim.detail + (f" ({'; '.join(parts)})" if parts else ""))


def solutions_section(rows: list[dict[str, Any]], extra: tuple[tuple[str, str], ...] = ()) -> str:
    columns = [
        *extra,
        ("method", "run"),
        ("lr", "η"),
        ("batch_size", "B"),
        ("c", "c"),
        ("steps", "steps"),
        ("mu", "μ"),
        ("hessian_frobenius", "||H||_F"),
        ("frobenius_bound", "sqrt(1/(cμ))/η"),
        ("frobenius_ratio", "ratio"),
        ("lambda_max_stop", "λ_max(G) at stop"),
        ("lambda_max", "λ_max(H)"),
        ("gd_ratio", "λ_max·η/2"),
        ("lr_ratio", "η/η*(B)"),
    ]
    ok = [r for r in rows if r["status"] == "ok"]
    excluded = [r for r in rows if r["status"] != "ok"]
    # figures a run did not measure (η* without exact_stability; λ_max at the stop in older runs) are left out
    columns = [(key, name) for key, name in columns if any(_measured(r.get(key)) for r in ok) or not ok]
    text = "## Solutions\n\n" + markdown_table(ok, columns)
    if excluded:
        text += "\n\n## Excluded runs\n\n" + markdown_table(
            excluded, [*extra, ("method", "run"), ("lr", "η"), ("batch_size", "B"), ("status", "reason")]
        )
    return text


def _measured(value: Any) -> bool:
    return not (isinstance(value, float) and math.isnan(value)) and value is not None


def plot_certificates(
    rows: list[dict[str, Any]],
    what: str,
    color: tuple[str, str] = ("batch_size", "B"),
    marker: tuple[str, str] = ("lr", "η"),
    gd_panel: bool = True,
) -> Any:
    """Left: ||H||_F against sqrt(1/(cμ))/η for SGD (y = x line); right (``gd_panel``): λ_max against 2/η for SGD
    and GD. ``color``/``marker``: (row key, its name in the legend) that the colours and marker shapes encode."""
    ok = [r for r in rows if r["status"] == "ok"]
    sgd = [r for r in ok if r["method"] == "SGD"]
    gd = [r for r in ok if r["method"] == "GD"]
    fig, axes = new_figure(1, 2 if gd_panel else 1, size=(12.5, 5.0) if gd_panel else (6.8, 5.2))
    left, right = (axes[0], axes[1]) if gd_panel else (axes, None)
    styles = _Markers(sgd, ok, color, marker)
    styles.scatter_sgd(left, right, sgd)
    panels = [(left, [r["frobenius_bound"] for r in sgd], [r["hessian_frobenius"] for r in sgd])]
    if right is not None:
        styles.scatter_gd(right, gd)
        panels.append((right, [2 / r["lr"] for r in ok], [r["lambda_max"] for r in ok]))
    for ax, xs, ys in panels:
        _square_log_panel(ax, xs, ys, columns=2 if ax is left else 1)
    _label_certificate_axes(left, right, what)
    fig.tight_layout()
    return fig


_SHAPES = ("o", "s", "^", "D", "v", "P", "X", "*")


class _Markers:
    """The colour (one per value of the ``color`` key, over the SGD rows) and marker shape (one per value of the
    ``marker`` key, over every row) of each point of :func:`plot_certificates`, with their legend entries."""

    def __init__(
        self,
        sgd: list[dict[str, Any]],
        ok: list[dict[str, Any]],
        color: tuple[str, str],
        marker: tuple[str, str],
    ) -> None:
        (self.ckey, self.cname), (self.mkey, self.mname) = color, marker
        self.ckeys = sorted({r[self.ckey] for r in sgd})
        self.mkeys = sorted({r[self.mkey] for r in ok})
        self.palette = dict(zip(self.ckeys, _colors(len(self.ckeys)), strict=True))

    def shape(self, r: dict[str, Any]) -> str:
        return _SHAPES[self.mkeys.index(r[self.mkey]) % len(_SHAPES)]

    def scatter_sgd(self, left: Any, right: Any | None, sgd: list[dict[str, Any]]) -> None:
        """SGD solutions on both panels, with a legend entry per colour and (when several) per marker shape."""
        for r in sgd:
            style = {"color": self.palette[r[self.ckey]], "marker": self.shape(r), "s": 40, "zorder": 3}
            left.scatter(r["frobenius_bound"], r["hessian_frobenius"], **style)
            if right is not None:
                right.scatter(2 / r["lr"], r["lambda_max"], **style)
        for key in self.ckeys:
            left.scatter([], [], color=self.palette[key], marker="o", label=f"SGD {self.cname} = {key}")
        if len(self.mkeys) > 1:
            for i, key in enumerate(self.mkeys):
                left.scatter([], [], color="gray", marker=_SHAPES[i % len(_SHAPES)], label=f"{self.mname} = {key:g}")

    def scatter_gd(self, right: Any, gd: list[dict[str, Any]]) -> None:
        """GD solutions (hollow, black) on the λ_max panel."""
        for r in gd:
            right.scatter(
                2 / r["lr"], r["lambda_max"], facecolor="none", edgecolor="black", marker=self.shape(r), s=90, zorder=4
            )
        if gd:
            right.scatter([], [], facecolor="none", edgecolor="black", marker="o", s=90, label="GD (B = n)")


def _square_log_panel(ax: Any, xs: list[float], ys: list[float], columns: int) -> None:
    """Equal log axes around the points, the line y = x and the region above it (the bound violated) shaded."""
    values = [v for v in xs + ys if math.isfinite(v) and v > 0] or [1.0]
    lo, hi = min(values) / 1.5, max(values) * 1.5
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=1.0, label="y = x")
    ax.fill_between([lo, hi], [lo, hi], [hi, hi], color="tab:red", alpha=0.07, label="bound violated")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain_log_ticks(ax)
    ax.grid(True, which="major", alpha=0.25)
    ax.legend(fontsize=8, loc="upper left", ncol=columns)


def _label_certificate_axes(left: Any, right: Any | None, what: str) -> None:
    left.set_xlabel(r"Frobenius bound $\sqrt{1/(c\mu)}/\eta$  (c = 1/B with replacement; μ measured)")
    left.set_ylabel(r"$\|H\|_F$ at the minimum SGD reached (exact, H = G)")
    left.set_title(f"Frobenius certificate, SGD solutions over the {what}")
    if right is not None:
        right.set_xlabel(r"$2/\eta$  (η on $L = \frac{1}{2n}\sum_i \|r_i\|^2$)")
        right.set_ylabel(r"$\lambda_{\max}(H)$ at the minimum reached (exact)")
        right.set_title(r"GD bound $\lambda_{\max} \leq 2/\eta$ (GD on the line: edge of stability)")


def _colors(count: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(x) for x in np.linspace(0.0, 0.85, max(count, 1))][:count]


def _plot_batch(rows: list[dict[str, Any]], n: int, slopes: list[dict[str, Any]]) -> Any:
    ok = [r for r in rows if r["status"] == "ok"]
    fig, ax = new_figure(1, 1, size=(7.0, 4.8))
    if not ok:  # nothing to draw on log axes: say so in the figure rather than fail the whole run
        ax.text(0.5, 0.5, "no run reached a solution\n(see the excluded runs in report.md)", ha="center", va="center")
        ax.set_axis_off()
        return fig
    slope_of = {s["lr"]: s["slope"] for s in slopes}
    for i, lr in enumerate(sorted({r["lr"] for r in ok})):
        color = f"C{i % 10}"
        sgd = sorted((r for r in ok if r["lr"] == lr and r["method"] == "SGD"), key=lambda r: r["batch_size"])
        if sgd:
            slope = f" (slope {fmt(slope_of[lr], 2)})" if lr in slope_of else ""
            bs = [r["batch_size"] for r in sgd]
            ax.plot(bs, [lr * r["hessian_frobenius"] for r in sgd], "o-", color=color, label=f"SGD η = {lr:g}{slope}")
            ax.plot(bs, [lr * r["frobenius_bound"] for r in sgd], "--", color=color, linewidth=0.9)
        for r in (r for r in ok if r["lr"] == lr and r["method"] == "GD"):
            ax.scatter([n], [lr * r["hessian_frobenius"]], color=color, marker="*", s=120, zorder=3)
    ax.scatter([], [], color="gray", marker="*", s=120, label=f"GD (B = n = {n})")
    ax.plot([], [], "--", color="gray", linewidth=0.9, label=r"Frobenius bound × η: $\sqrt{1/(c\mu)}$")
    ax.set_xscale("log")
    ax.set_yscale("log")
    plain_log_ticks(ax)
    ax.set_xlabel("batch size B (with replacement; GD: B = n)")
    ax.set_ylabel(r"$\eta\,\|H\|_F$ at the minimum reached")
    ax.set_title("Flatness against batch size (slopes: log-log least squares)")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


EXPERIMENT = Experiment(
    name="flatness",
    title="Flatness: SGD solutions over a grid of (η, B) against the Frobenius and GD certificates",
    summary="SGD solutions over an (η, B) grid satisfy ||H||_F ≤ sqrt(1/(cμ))/η; GD only λ_max ≤ 2/η",
    config_type=FlatnessConfig,
    quick=quick_config,
    body=body,
    run_time="full (n = 64, 21 runs): about 33 s; --quick (n = 40, 8 runs): about 8 s (CPU, one thread)",
)


def run(config: FlatnessConfig, out_dir: str | Path, quiet: bool = True) -> dict[str, Any]:
    """Run the experiment into ``out_dir``; returns the summary (see :mod:`sgdstab.experiments.base`)."""
    return EXPERIMENT.run(config, out_dir, quiet=quiet)


__all__ = [
    "EXPERIMENT",
    "FlatnessConfig",
    "batch_caption",
    "batch_slopes",
    "body",
    "derived",
    "flatness_claims",
    "loglog_slope",
    "plot_certificates",
    "quick_config",
    "run",
    "solutions_section",
    "solve",
]
