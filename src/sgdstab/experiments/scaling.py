"""``scaling``: the flatness SGD tolerates does not depend on the sample size n or the width (THEORY.md §6 item 3).

For every n in ``ns`` and hidden width w in ``widths``, a one-hidden-layer float64 MLP (same seed) on n samples of
the built-in Fashion-MNIST subset (two classes, ±1 targets) is trained by SGD(η, B) — one η, one B for the whole
grid — and by GD (B = n) at the same η, each to L ≤ ``until_loss``; every solution is measured as in ``flatness``
(:func:`sgdstab.experiments.flatness.solve`: μ exact where the run stopped, then ||H||_F, λ_max and η*(B) exact at
the interpolating minimum next to it).

The Frobenius bound sqrt(1/(cμ))/η involves neither n nor p (c = 1/B with replacement): if μ stays bounded, the
flatness SGD allows does not grow with the data or the model. GD's λ_max ≤ 2/η bounds ||H||_F only up to
sqrt(rank H) ≤ sqrt(nk), so GD's ||H||_F may grow with n.

Claims: those of ``flatness`` (``frobenius_bound``, ``gd_bound``, ``linearly_stable``, ``gd_edge_of_stability``)
over the (n, width) grid, and ``bound_does_not_grow``: for every width the bound at the largest n is at most
``growth_tolerance`` × the bound at the smallest n, and for every n the bound at the largest width at most
``growth_tolerance`` × the one at the smallest width (the bound moves only through μ). GD's ||H||_F against n and
width is reported, not claimed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sgdstab.conventions import SAMPLING_SCHEMES
from sgdstab.data import DATASETS, DEFAULT_DATASET
from sgdstab.experiments.base import Context, Experiment, Outcome
from sgdstab.experiments.config import fail, param
from sgdstab.experiments.flatness import (
    METHOD_NOTE,
    check_common,
    flatness_claims,
    plot_certificates,
    solutions_section,
    solve,
)
from sgdstab.experiments.io import new_figure, plain_log_ticks
from sgdstab.experiments.minimum import SUBSET_RULES, NetConfig, build_problem
from sgdstab.experiments.report import Claim, count_claim, fmt
from sgdstab.models.architectures import ACTIVATIONS


@dataclass(frozen=True)
class ScalingConfig:
    """The ``scaling`` experiment. Defaults: the full run (3 sample sizes × 3 widths, SGD and GD: 18 runs)."""

    dataset: str = param(DEFAULT_DATASET, choices=tuple(DATASETS), help="data set (sgdstab.load_dataset name)")
    data_dir: str = param("", help="folder of the data files for fashion-mnist / cifar10 (empty: the default)")
    classes: tuple[int, ...] = param(
        (0, 6), ge=0, min_len=2, help="class ids; two classes give one ±1 output, more give one-hot targets"
    )
    subset: str = param("stratified", choices=SUBSET_RULES, help="which n samples: first in file order or stratified")
    activation: str = param("tanh", choices=ACTIVATIONS, help="activation of the MLP")
    seed: int = param(0, ge=0, help="seed of the data subsets, the initialization and SGD's batches")
    device: str = param("cpu", help="torch device of the run: cpu, cuda or cuda:N (float64 throughout)")
    ns: tuple[int, ...] = param((32, 64, 128), ge=4, le=1000, min_len=2, help="sample sizes n")
    widths: tuple[int, ...] = param((16, 64, 256), ge=1, min_len=2, help="hidden widths of the one-hidden-layer MLP")
    lr: float = param(0.02, gt=0, help="learning rate η on L, for every run")
    batch_size: int = param(4, ge=1, help="SGD batch size B (< every n)")
    sampling: str = param("with_replacement", choices=SAMPLING_SCHEMES, help="SGD sampling scheme")
    gd: bool = param(True, help="also train GD (B = n) at every grid point, for contrast")
    max_steps: int = param(20000, ge=1, help="most steps of one run")
    until_loss: float = param(1e-5, gt=0, lt=1e-2, help="a run has reached a solution when L ≤ until_loss")
    polish_steps: int = param(6, ge=1, le=100, help="most Gauss–Newton steps from the solution to the minimum")
    tolerance: float = param(
        0.02,
        ge=0,
        lt=0.5,
        help="relative slack of the claims λ_max ≤ 2/η and η ≤ η* (runs stop near, not at, a minimum)",
    )
    edge_band: float = param(0.1, gt=0, lt=1, help="GD is 'at the edge of stability' when λ_max·η/2 ≥ 1 − edge_band")
    growth_tolerance: float = param(
        1.5, ge=1, help="the bound 'does not grow' when it rises by at most this factor from the smallest n (width)"
    )

    def check(self) -> None:
        check_common(self)
        if self.batch_size >= min(self.ns):
            fail(f"config field 'batch_size' = {self.batch_size} must be below the smallest n = {min(self.ns)}")
        if len(set(self.ns)) != len(self.ns) or len(set(self.widths)) != len(self.widths):
            fail("config fields 'ns' and 'widths' must not repeat a value")


def quick_config() -> ScalingConfig:
    return ScalingConfig(ns=(24, 48), widths=(16, 64))


def net_config(cfg: ScalingConfig, n: int, width: int) -> NetConfig:
    return NetConfig(
        dataset=cfg.dataset,
        data_dir=cfg.data_dir,
        classes=cfg.classes,
        n=n,
        subset=cfg.subset,
        widths=(width,),
        activation=cfg.activation,
        seed=cfg.seed,
        device=cfg.device,
    )


def body(cfg: ScalingConfig, ctx: Context) -> Outcome:
    ns, widths = sorted(cfg.ns), sorted(cfg.widths)
    rows, description = _run_grid(cfg, ctx, ns, widths)
    ctx.stage("checking the claims and drawing the figures")
    claims = flatness_claims(rows, cfg.tolerance, cfg.edge_band)
    claims.append(_growth_claim(rows, ns, widths, cfg.growth_tolerance))
    ctx.figure(
        "flatness.png",
        plot_certificates(rows, "(n, width) grid", color=("n", "n"), marker=("width", "width"), gd_panel=False),
        "||H||_F of each SGD solution against its Frobenius bound sqrt(1/(cμ))/η, colour: n, marker: width "
        "(below the line y = x: the bound holds)",
    )
    ctx.figure("scaling.png", _plot_scaling(rows, ns, widths, cfg), _SCALING_CAPTION)
    ok = [r for r in rows if r["status"] == "ok"]
    gd = [r for r in ok if r["method"] == "GD"]
    sgd = [r for r in ok if r["method"] == "SGD"]
    numbers = {
        "ns": ns,
        "widths": widths,
        "runs": len(rows),
        "solutions": len(ok),
        "sgd_frobenius_range": _range([r["hessian_frobenius"] for r in sgd]),
        "sgd_bound_range": _range([r["frobenius_bound"] for r in sgd]),
        "gd_frobenius_range": _range([r["hessian_frobenius"] for r in gd]),
        "excluded": [
            {"n": r["n"], "width": r["width"], "method": r["method"], "reason": r["status"]}
            for r in rows
            if r["status"] != "ok"
        ],
    }
    intro = _intro(cfg, description, ns, widths)
    sections = [_gd_section(rows, sgd, gd), solutions_section(rows, extra=(("n", "n"), ("width", "width"), ("p", "p")))]
    return Outcome(rows=rows, claims=claims, numbers=numbers, intro=intro, sections=sections)


def _run_grid(cfg: ScalingConfig, ctx: Context, ns: list[int], widths: list[int]) -> tuple[list[dict[str, Any]], str]:
    """One results row per (n, width, SGD or GD), n-major; and the data's description (of the last subset)."""
    rows: list[dict[str, Any]] = []
    description = ""
    total = len(ns) * len(widths) * (2 if cfg.gd else 1)
    for n in ns:
        for w in widths:
            problem, data = build_problem(net_config(cfg, n, w))
            description = data.description
            theta0 = problem.theta.clone()
            settings = [(cfg.batch_size, cfg.sampling)] + ([(n, "without_replacement")] if cfg.gd else [])
            for b, scheme in settings:
                problem.set_parameters(theta0)
                row = solve(
                    problem,
                    cfg.lr,
                    b,
                    scheme,
                    max_steps=cfg.max_steps,
                    until_loss=cfg.until_loss,
                    polish_steps=cfg.polish_steps,
                    seed=cfg.seed + len(rows),
                )
                rows.append({"n": n, "width": w, "p": problem.p, **row})
                ctx.stage(f"run {len(rows)}/{total}: n = {n}, width {w}, {row['method']}: {_progress(row)}")
    return rows, description


def _intro(cfg: ScalingConfig, description: str, ns: list[int], widths: list[int]) -> str:
    return (
        f"Data: {description} (one subset per n).\n\n"
        f"Models: MLP d → w → 1 ({cfg.activation}) for w ∈ {{{', '.join(map(str, widths))}}}, float64, the same "
        f"seed; n ∈ {{{', '.join(map(str, ns))}}}. SGD at η = {cfg.lr:g}, B = {cfg.batch_size} "
        f"({cfg.sampling.replace('_', ' ')})"
        + (", and GD (B = n) at the same η" if cfg.gd else "")
        + ". "
        + METHOD_NOTE.format(until=cfg.until_loss, steps=cfg.max_steps)
    )


_SCALING_CAPTION = (
    "Top: ||H||_F at the minimum reached against n (left) and the parameter count p (right), SGD (filled) with its "
    "Frobenius bound sqrt(1/(cμ))/η (dashed, same colour) and GD (hollow), which that bound does not constrain. "
    "Bottom: λ_max(H) of the same minima against GD's bound 2/η (the only bound GD obeys; GD sits at it)"
)


def _range(values: list[float]) -> list[float]:
    finite = [v for v in values if math.isfinite(v)]
    return [min(finite), max(finite)] if finite else [math.nan, math.nan]


def _progress(row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return f"excluded ({row['status']})"
    text = f"{row['steps']} steps, ||H||_F = {fmt(row['hessian_frobenius'], 4)}, λ_max = {fmt(row['lambda_max'], 4)}"
    if row["method"] == "SGD":
        text += f", bound {fmt(row['frobenius_bound'], 4)} (μ = {fmt(row['mu'], 3)})"
    return text


def _growth_claim(rows: list[dict[str, Any]], ns: list[int], widths: list[int], tol: float) -> Claim:
    bound = {(r["n"], r["width"]): r["frobenius_bound"] for r in rows if r["method"] == "SGD" and r["status"] == "ok"}
    pairs = [((ns[0], w), (ns[-1], w)) for w in widths] + [((n, widths[0]), (n, widths[-1])) for n in ns]
    ratios = [bound[b] / bound[a] for a, b in pairs if a in bound and b in bound]
    parts = [
        f"n {a[0]}→{b[0]} at width {a[1]}: {fmt(bound[b] / bound[a], 3)}"
        if a[1] == b[1]
        else f"width {a[1]}→{b[1]} at n = {a[0]}: {fmt(bound[b] / bound[a], 3)}"
        for a, b in pairs
        if a in bound and b in bound
    ]
    claim = count_claim(
        "bound_does_not_grow",
        f"the SGD bound sqrt(1/(cμ))/η does not grow with n or width (rises by at most {fmt(tol)}× from the "
        "smallest to the largest)",
        [x <= tol for x in ratios],
        "comparisons",
        ratio=ratios,
        ratio_name="largest growth factor",
    )
    return replace(claim, detail=f"{claim.detail} ({'; '.join(parts)})")


def _gd_section(rows: list[dict[str, Any]], sgd: list[dict[str, Any]], gd: list[dict[str, Any]]) -> str:
    if not gd or not sgd:
        return "## GD for contrast\n\nNo GD solution to compare."
    bound = {(r["n"], r["width"]): r["frobenius_bound"] for r in sgd}
    above = [r for r in gd if (r["n"], r["width"]) in bound and r["hessian_frobenius"] > bound[(r["n"], r["width"])]]
    lo, hi = _range([r["hessian_frobenius"] for r in gd])
    slo, shi = _range([r["hessian_frobenius"] for r in sgd])
    return (
        "## GD for contrast\n\n"
        f"GD's ||H||_F ranges over [{fmt(lo)}, {fmt(hi)}] (SGD's over [{fmt(slo)}, {fmt(shi)}]); it exceeds the SGD "
        f"bound of the same grid point at {len(above)}/{len(gd)} points. GD is bounded only through λ_max ≤ 2/η, "
        "which allows ||H||_F up to sqrt(nk)·2/η (reported, not claimed)."
    )


_FROB = r"$\|H\|_F$"
_LMAX = r"$\lambda_{\max}(H)$"


def _panel(
    ax: Any,
    ok: list[dict[str, Any]],
    group: str,
    values: list[int],
    x: str,
    y: str,
    marker: str,
    label: str,
    offset: int,
) -> None:
    """``y`` of SGD (solid) and GD (dotted) against ``x``, one colour per ``group`` value; on the ||H||_F panels
    also SGD's Frobenius bound (dashed, same colour)."""
    for i, value in enumerate(values):
        color = f"C{(i + offset) % 10}"
        for method, face in (("SGD", color), ("GD", "none")):
            mine = sorted((r for r in ok if r[group] == value and r["method"] == method), key=lambda r: r[x])
            if mine:
                ax.plot(
                    [r[x] for r in mine],
                    [r[y] for r in mine],
                    "-" if method == "SGD" else ":",
                    color=color,
                    marker=marker,
                    markerfacecolor=face,
                    label=f"{method}, {label.format(value)}",
                )
        mine = sorted((r for r in ok if r[group] == value and r["method"] == "SGD"), key=lambda r: r[x])
        if mine and y == "hessian_frobenius":
            ax.plot([r[x] for r in mine], [r["frobenius_bound"] for r in mine], "--", color=color, linewidth=1.0)


def _plot_scaling(rows: list[dict[str, Any]], ns: list[int], widths: list[int], cfg: ScalingConfig) -> Any:
    """Top: ||H||_F with SGD's Frobenius bound (the bound that constrains ||H||_F). Bottom: λ_max(H) with GD's
    bound 2/η (the bound that constrains λ_max) — each bound only on the axis of the quantity it bounds."""
    ok = [r for r in rows if r["status"] == "ok"]
    fig, axes = new_figure(2, 2, size=(13.0, 9.6))
    (top_n, top_p), (low_n, low_p) = axes
    for y, row_axes in (("hessian_frobenius", (top_n, top_p)), ("lambda_max", (low_n, low_p))):
        left, right = row_axes
        _panel(left, ok, "width", widths, "n", y, "o", "width {}", 0)
        _panel(right, ok, "n", ns, "p", y, "s", "n = {}", len(widths))
        for ax in row_axes:
            if y == "lambda_max":
                ax.axhline(2 / cfg.lr, color="black", linewidth=1.4, label=r"GD's bound $2/\eta$")
                lo, hi = ax.get_ylim()  # headroom: GD sits on the line, which must not hide under the frame
                ax.set_ylim(lo, max(hi, 2 / cfg.lr) * 1.15)
                ax.set_ylabel(_LMAX + " at the minimum reached (exact)")
            else:
                ax.plot([], [], "--", color="gray", linewidth=1.0, label=r"SGD bound $\sqrt{1/(c\mu)}/\eta$")
                ax.set_ylabel(_FROB + " at the minimum reached (exact)")
            ax.set_xscale("log")
            ax.set_yscale("log")
            plain_log_ticks(ax)
            ax.grid(True, which="major", alpha=0.25)
            ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
        left.set_xticks(ns, [str(n) for n in ns])
        left.set_xticks([], minor=True)
        left.set_xlabel("number of samples n")
        right.set_xlabel("number of parameters p (width varied)")
    top_n.set_title(f"{_FROB} against n (SGD η = {cfg.lr:g}, B = {cfg.batch_size}; GD same η)")
    top_p.set_title(f"{_FROB} against the model size")
    low_n.set_title(f"{_LMAX} against n: GD's bound $2/\\eta$ = {2 / cfg.lr:g}")
    low_p.set_title(f"{_LMAX} against the model size")
    fig.tight_layout()
    return fig


EXPERIMENT = Experiment(
    name="scaling",
    title="Scaling: the flatness SGD tolerates does not grow with n or width",
    summary="the same over n and width: the SGD bound does not grow with them",
    config_type=ScalingConfig,
    quick=quick_config,
    body=body,
    run_time="full (n up to 128, width up to 256, 18 runs): about 96 s; --quick (8 runs): about 7 s (CPU, one thread)",
)


def run(config: ScalingConfig, out_dir: str | Path, quiet: bool = True) -> dict[str, Any]:
    """Run the experiment into ``out_dir``; returns the summary (see :mod:`sgdstab.experiments.base`)."""
    return EXPERIMENT.run(config, out_dir, quiet=quiet)


__all__ = ["EXPERIMENT", "ScalingConfig", "body", "quick_config", "run"]
