"""``alignment``: the SGD noise stays aligned with the curvature along training, for linear, random-feature, MLP and
CNN models on real data, and the alignment does not shrink as the width grows (THEORY.md §3 and §6 item 1).

Each model (float64, seeded) is trained by SGD(η, B) on n samples of the built-in Fashion-MNIST subset (two
classes give one ±1 output, more give one-hot targets) for ``steps`` steps, with η = ``lr_fraction``·2/λ_max(G)
at initialization (so every model trains at the same relative step). Every ``measure_every`` steps the NTK K is
built once and gives, exactly (:func:`sgdstab.alignment`, kernel route):

    μ = Tr(ΣG)/(2L||G||_F²) = rᵀAr/(||r||²||K||_F²),   A = n·bdiag(K²) − K²,

with Σ the (centred) per-sample gradient covariance, G = JᵀJ/n and L = (1/2n) Σ ||r_i||². μ ≈ 1 means
"noise magnitude ∝ loss, shape ∝ curvature". The linear net (one hidden linear layer) and the random-feature model
(frozen random ReLU features, trained readout) are also trained at every width in ``linear_widths`` and
``rf_widths``.

Claims: ``mu_bounded`` (μ stays bounded away from 0 along training for every model: its smallest value ≥
``mu_floor``; the range [min, max] of each model is reported); ``loglog_slope`` (for every model, the least-squares
slope of log Tr(ΣG) against log 2L||G||_F² over training is within ``slope_tolerance`` of 1: the two move together);
``width_no_shrink`` (for the linear and the random-feature model, the median μ along training at the largest
width is at least ``shrink_tolerance`` × the median at the smallest: μ does not shrink as the width grows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sgdstab.conventions import SAMPLING_SCHEMES
from sgdstab.data import DATASETS, DEFAULT_DATASET, load_dataset
from sgdstab.data.dataset import Dataset
from sgdstab.experiments.base import Context, Experiment, Outcome
from sgdstab.experiments.config import check_device, fail, param
from sgdstab.experiments.io import new_figure, plain_log_ticks
from sgdstab.experiments.minimum import SUBSET_RULES
from sgdstab.experiments.report import Claim, count_claim, fmt, markdown_table
from sgdstab.kernel.figures import largest_eigenvalue, noise_figures, uniform_alignment
from sgdstab.kernel.ntk import ntk
from sgdstab.models.architectures import cnn, linear_net, mlp, random_features
from sgdstab.problem.problem import Problem
from sgdstab.training.trainer import train

KINDS = ("linear_net", "random_features", "mlp", "cnn")
MU_INF_WHEN = ("every", "end", "never")
LABELS = {"linear_net": "linear net", "random_features": "random features", "mlp": "MLP", "cnn": "CNN"}


@dataclass(frozen=True)
class AlignmentConfig:
    """The ``alignment`` experiment. Defaults: the full run (n = 128, four models, two width sweeps)."""

    dataset: str = param(DEFAULT_DATASET, choices=tuple(DATASETS), help="data set (sgdstab.load_dataset name)")
    data_dir: str = param("", help="folder of the data files for fashion-mnist / cifar10 (empty: the default)")
    classes: tuple[int, ...] = param(
        (0, 6), ge=0, min_len=2, help="class ids; two classes give one ±1 output, more give one-hot targets"
    )
    n: int = param(128, ge=4, le=1000, help="number of training samples (the kernel is nk × nk)")
    subset: str = param("stratified", choices=SUBSET_RULES, help="which n samples: first in file order or stratified")
    seed: int = param(0, ge=0, help="seed of the data subset, the initializations and SGD's batches")
    device: str = param("cpu", help="torch device of the run: cpu, cuda or cuda:N (float64 throughout)")
    models: tuple[str, ...] = param(KINDS, choices=KINDS, min_len=1, help="models trained at their default width")
    linear_width: int = param(64, ge=1, help="hidden width of the linear net (one hidden linear layer, no bias)")
    rf_width: int = param(256, ge=1, help="number of random ReLU features")
    mlp_width: int = param(64, ge=1, help="hidden width of the MLP (tanh)")
    cnn_channels: tuple[int, ...] = param((4, 8), ge=1, min_len=1, help="channels of the CNN's conv blocks (ReLU)")
    cnn_width: int = param(32, ge=1, help="hidden width of the CNN's head")
    linear_widths: tuple[int, ...] = param((16, 50, 160), ge=1, help="widths of the linear net's sweep (empty: none)")
    rf_widths: tuple[int, ...] = param((64, 200, 640), ge=1, help="widths of the random-feature sweep (empty: none)")
    mu_inf: str = param(
        "every",
        choices=MU_INF_WHEN,
        help="where μ_∞ is computed (K's eigendecomposition, minutes at n·k = 10⁴): every measured point, the last, "
        "or never",
    )
    lr_fraction: float = param(0.5, gt=0, lt=1, help="η = lr_fraction · 2/λ_max(G) at initialization")
    batch_size: int = param(8, ge=1, help="SGD batch size B")
    sampling: str = param("with_replacement", choices=SAMPLING_SCHEMES, help="SGD sampling scheme")
    steps: int = param(2000, ge=1, help="SGD steps per model")
    measure_every: int = param(100, ge=1, help="μ is measured every this many steps (and at the first and last)")
    mu_floor: float = param(0.25, gt=0, help="claim: μ ≥ mu_floor at every measured point of every model")
    slope_tolerance: float = param(0.25, gt=0, lt=1, help="claim: |log-log slope − 1| ≤ slope_tolerance")
    shrink_tolerance: float = param(
        0.5, gt=0, le=1, help="claim: median μ at the largest width ≥ shrink_tolerance × at the smallest"
    )

    def check(self) -> None:
        check_device(self.device)
        if len(set(self.classes)) != len(self.classes):
            fail(f"config field 'classes' repeats a class: {list(self.classes)}; list distinct class ids")
        if len(set(self.models)) != len(self.models):
            fail(f"config field 'models' repeats a model: {list(self.models)}; list each model once")
        if self.batch_size > self.n:
            fail(f"config field 'batch_size' = {self.batch_size} exceeds n = {self.n}; choose 1 ≤ batch_size ≤ n")
        for name in ("linear_widths", "rf_widths"):
            values = getattr(self, name)
            if len(values) == 1 or len(set(values)) != len(values):
                fail(f"config field {name!r} = {list(values)} needs two or more distinct widths (or none)")


def quick_config() -> AlignmentConfig:
    return AlignmentConfig(
        n=48, steps=600, measure_every=100, linear_widths=(16, 160), rf_widths=(64, 640), cnn_channels=(4,)
    )


def build(kind: str, width: int, cfg: AlignmentConfig, data: Dataset) -> torch.nn.Module:
    shape, k, seed = data.input_shape, data.num_outputs, cfg.seed
    if kind == "linear_net":
        return linear_net(shape, k, widths=(width,), seed=seed)
    if kind == "random_features":
        return random_features(shape, k, width=width, seed=seed)
    if kind == "mlp":
        return mlp(shape, k, widths=(width,), activation="tanh", seed=seed)
    return cnn(shape, k, channels=cfg.cnn_channels, widths=(width,), activation="relu", seed=seed)


def default_width(kind: str, cfg: AlignmentConfig) -> int:
    return {"linear_net": cfg.linear_width, "random_features": cfg.rf_width, "mlp": cfg.mlp_width}.get(
        kind, cfg.cnn_width
    )


def trace_run(kind: str, width: int, cfg: AlignmentConfig, data: Dataset) -> list[dict[str, Any]]:
    """Train one model and return one row per measured step (μ exact through the NTK, built once per point)."""
    problem = Problem(build(kind, width, cfg, data).to(cfg.device), data.X, data.Y, dtype=torch.float64)
    n, k = problem.n, problem.k
    K0 = ntk(problem).matrix
    lam0 = largest_eigenvalue(K0) / n
    lr = cfg.lr_fraction * 2 / lam0
    measured: list[dict[str, Any]] = []

    def measure(p: Problem) -> float:
        K = K0 if not measured else ntk(p).matrix
        nf = noise_figures(K, p.residuals(), n, k)  # exact, from K and r: no eigendecomposition
        measured.append(
            {
                "loss": nf.loss,
                "mu": nf.mu,
                "mu_inf": uniform_alignment(K, n, k) if cfg.mu_inf == "every" else math.nan,
                "tr_sigma_g": nf.tr_sigma_g,
                "two_loss_gn_frob2": nf.two_loss_gn_frob2,
            }
        )
        return nf.mu

    hist = train(
        problem,
        lr,
        cfg.batch_size,
        cfg.sampling,
        cfg.steps,
        track_every=cfg.measure_every,
        track={"mu": measure},
        seed=cfg.seed,
        progress=False,
    )
    if cfg.mu_inf == "end" and measured and hist.diverged_at is None:
        measured[-1]["mu_inf"] = uniform_alignment(ntk(problem).matrix, n, k)  # the last point is the final θ
    base = {"model": kind, "width": width, "p": problem.p, "lr": lr, "lambda_max_init": lam0}
    status = "ok" if hist.diverged_at is None else f"diverged at step {hist.diverged_at}"
    return [
        {**base, "step": step, **m, "status": status}
        for step, m in zip(hist.steps, measured, strict=False)
        if math.isfinite(m["mu"])
    ]


def body(cfg: AlignmentConfig, ctx: Context) -> Outcome:
    data = load_dataset(
        cfg.dataset, n=cfg.n, classes=cfg.classes, seed=cfg.seed, data_dir=cfg.data_dir or None, subset=cfg.subset
    )
    ctx.stage(f"data: {data.description}; k = {data.num_outputs} output(s)")
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {}
    plan = [(kind, default_width(kind, cfg)) for kind in cfg.models]
    plan += [("linear_net", w) for w in cfg.linear_widths] + [("random_features", w) for w in cfg.rf_widths]
    for kind, width in dict.fromkeys(plan):
        rows = trace_run(kind, width, cfg, data)
        runs[(kind, width)] = rows
        mus = [r["mu"] for r in rows]
        ctx.stage(
            f"{LABELS[kind]}, width {width} (p = {rows[0]['p'] if rows else '?'}): L {_first_last(rows)}, "
            f"μ in [{fmt(min(mus, default=math.nan), 3)}, {fmt(max(mus, default=math.nan), 3)}]"
        )
    ctx.stage("checking the claims and drawing the figures")
    main = {kind: runs[(kind, default_width(kind, cfg))] for kind in cfg.models}
    sweeps = {
        kind: {w: runs[(kind, w)] for w in widths}
        for kind, widths in (("linear_net", cfg.linear_widths), ("random_features", cfg.rf_widths))
        if widths
    }
    claims = [_bounded_claim(main, cfg.mu_floor), _slope_claim(main, cfg.slope_tolerance)]
    if sweeps:
        claims.append(_width_claim(sweeps, cfg.shrink_tolerance))
    ctx.figure("alignment.png", _plot(main, sweeps, cfg, data.num_outputs), _CAPTION)
    rows = [
        {"role": "main" if runs[key] is main.get(key[0]) else "width sweep", **r} for key in runs for r in runs[key]
    ]
    numbers = {
        "n": cfg.n,
        "k": data.num_outputs,
        "models": {
            kind: {"width": rs[0]["width"], "p": rs[0]["p"], "lr": rs[0]["lr"], "mu_range": _range(rs)}
            for kind, rs in main.items()
            if rs
        },
        "width_sweeps": {kind: {str(w): _median(rs) for w, rs in by.items()} for kind, by in sweeps.items()},
    }
    intro = (
        f"Data: {data.description}.\n\n"
        f"Each model is trained by SGD (B = {cfg.batch_size}, {cfg.sampling.replace('_', ' ')}) for {cfg.steps} "
        f"steps at η = {cfg.lr_fraction:g}·2/λ_max(G) at initialization, in float64 on the square loss "
        "L = (1/2n) Σ ||f(x_i) − y_i||²; every "
        f"{cfg.measure_every} steps the NTK K is built once and gives μ = Tr(ΣG)/(2L||G||_F²) exactly (Σ the "
        "centred per-sample gradient covariance, G = JᵀJ/n). μ = 1 is the line Tr(ΣG) = 2L||G||_F². Models: "
        + "; ".join(f"{LABELS[k]} ({_model_text(k, cfg)})" for k in cfg.models)
        + "."
    )
    return Outcome(rows=rows, claims=claims, numbers=numbers, intro=intro, sections=[_table(main, sweeps)])


def _model_text(kind: str, cfg: AlignmentConfig) -> str:
    return {
        "linear_net": f"d → {cfg.linear_width} → k, no activation, no bias",
        "random_features": f"{cfg.rf_width} frozen N(0, 1/d) ReLU features, trained readout",
        "mlp": f"d → {cfg.mlp_width} → k, tanh",
        "cnn": f"conv 3×3 channels {list(cfg.cnn_channels)} with ReLU and 2×2 average pooling, head {cfg.cnn_width}",
    }[kind]


def _first_last(rows: list[dict[str, Any]]) -> str:
    return f"{fmt(rows[0]['loss'], 3)} → {fmt(rows[-1]['loss'], 3)}" if rows else "—"


def _range(rows: list[dict[str, Any]]) -> list[float]:
    mus = [r["mu"] for r in rows]
    return [min(mus), max(mus)] if mus else [math.nan, math.nan]


def _median(rows: list[dict[str, Any]]) -> float:
    return float(np.median([r["mu"] for r in rows])) if rows else math.nan


def _slope(rows: list[dict[str, Any]]) -> float:
    x = np.log([r["two_loss_gn_frob2"] for r in rows])
    y = np.log([r["tr_sigma_g"] for r in rows])
    if len(rows) < 2 or np.ptp(x) == 0:
        return math.nan
    return float(np.polyfit(x, y, 1)[0])


def _bounded_claim(main: dict[str, list[dict[str, Any]]], floor: float) -> Claim:
    ranges = {kind: _range(rs) for kind, rs in main.items()}
    claim = count_claim(
        "mu_bounded",
        f"μ stays bounded away from 0 along training for every model (μ ≥ {fmt(floor)} at every measured step)",
        [bool(rs) and ranges[kind][0] >= floor for kind, rs in main.items()],
        "models",
        ratio=[ranges[kind][0] for kind in main],
        ratio_name="smallest μ",
        worst="min",
        extra={"ranges": ranges, "points": sum(len(rs) for rs in main.values())},
    )
    parts = "; ".join(f"{LABELS[k]} [{fmt(lo, 3)}, {fmt(hi, 3)}]" for k, (lo, hi) in ranges.items())
    return replace(claim, detail=f"{claim.detail}; μ along training within: {parts}")


def _slope_claim(main: dict[str, list[dict[str, Any]]], tol: float) -> Claim:
    slopes = {kind: _slope(rs) for kind, rs in main.items()}
    claim = count_claim(
        "loglog_slope",
        f"Tr(ΣG) follows 2L||G||_F² along training: log-log slope within 1 ± {fmt(tol)} for every model",
        [abs(s - 1) <= tol for s in slopes.values()],
        "models",
        extra={"slopes": slopes},
    )
    parts = "; ".join(f"{LABELS[k]} {fmt(s, 3)}" for k, s in slopes.items())
    return replace(claim, detail=f"{claim.detail}; slopes: {parts}")


def _width_claim(sweeps: dict[str, dict[int, list[dict[str, Any]]]], tol: float) -> Claim:
    ratios, parts = {}, []
    for kind, by in sweeps.items():
        ws = sorted(by)
        lo, hi = _median(by[ws[0]]), _median(by[ws[-1]])
        ratios[kind] = hi / lo
        parts.append(
            f"{LABELS[kind]}: median μ {fmt(lo, 3)} at width {ws[0]}, {fmt(hi, 3)} at width {ws[-1]} "
            f"({fmt(ws[-1] / ws[0], 3)}× wider)"
        )
    claim = count_claim(
        "width_no_shrink",
        f"μ does not shrink as the width grows: median μ at the largest width ≥ {fmt(tol)} × at the smallest, for "
        "the linear net and random features",
        [r >= tol for r in ratios.values()],
        "models",
        ratio=list(ratios.values()),
        ratio_name="smallest ratio (largest/smallest width)",
        worst="min",
        extra={"ratios": ratios},
    )
    return replace(claim, detail=f"{claim.detail}; {'; '.join(parts)}")


def _table(main: dict[str, list[dict[str, Any]]], sweeps: dict[str, dict[int, list[dict[str, Any]]]]) -> str:
    rows = [
        {
            "model": LABELS[kind],
            "width": rs[0]["width"],
            "p": rs[0]["p"],
            "lr": rs[0]["lr"],
            "loss0": rs[0]["loss"],
            "loss1": rs[-1]["loss"],
            "mu_min": _range(rs)[0],
            "mu_median": _median(rs),
            "mu_max": _range(rs)[1],
            "mu_inf": rs[-1]["mu_inf"],
            "slope": _slope(rs),
        }
        for kind, rs in main.items()
        if rs
    ]
    text = "## Models\n\n" + markdown_table(
        rows,
        [
            ("model", "model"),
            ("width", "width"),
            ("p", "p"),
            ("lr", "η"),
            ("loss0", "L at start"),
            ("loss1", "L at end"),
            ("mu_min", "min μ"),
            ("mu_median", "median μ"),
            ("mu_max", "max μ"),
            ("mu_inf", "μ_inf at end"),
            ("slope", "log-log slope"),
        ],
    )
    sweep_rows = [
        {
            "model": LABELS[kind],
            "width": w,
            "p": rs[0]["p"],
            "mu_min": _range(rs)[0],
            "mu_median": _median(rs),
            "mu_max": _range(rs)[1],
        }
        for kind, by in sweeps.items()
        for w, rs in sorted(by.items())
        if rs
    ]
    if sweep_rows:
        text += "\n\n## Width sweeps\n\n" + markdown_table(
            sweep_rows,
            [
                ("model", "model"),
                ("width", "width"),
                ("p", "p"),
                ("mu_min", "min μ"),
                ("mu_median", "median μ"),
                ("mu_max", "max μ"),
            ],
        )
    return text


_CAPTION = (
    "Left: μ along SGD training (μ = 1: Tr(ΣG) = 2L||G||_F²). Middle: Tr(ΣG) against 2L||G||_F², one point per "
    "measured step (training runs from the upper right to the lower left). Right: μ against the width (median along "
    "training, bars from the smallest to the largest value)"
)


def _plot(
    main: dict[str, list[dict[str, Any]]],
    sweeps: dict[str, dict[int, list[dict[str, Any]]]],
    cfg: AlignmentConfig,
    k: int = 1,
) -> Any:
    """The three panels; with k > 1 outputs also the level μ = 1/k, where residuals spread evenly over the k
    outputs put Σ near 2L·G/k."""
    fig, (left, mid, right) = new_figure(1, 3, size=(17.0, 5.0))
    colors = {kind: f"C{i}" for i, kind in enumerate(KINDS)}
    for kind, rs in main.items():
        label = f"{LABELS[kind]} (width {rs[0]['width']})" if rs else LABELS[kind]
        left.plot([r["step"] for r in rs], [r["mu"] for r in rs], "o-", color=colors[kind], markersize=3, label=label)
        mid.scatter(
            [r["two_loss_gn_frob2"] for r in rs],
            [r["tr_sigma_g"] for r in rs],
            color=colors[kind],
            s=14,
            label=LABELS[kind],
        )
    left.axhline(1.0, color="black", linewidth=0.8, label="μ = 1")
    if k > 1:
        for ax in (left, right):
            ax.axhline(1 / k, color="gray", linewidth=0.8, linestyle=":", label=f"μ = 1/k (k = {k} outputs)")
    left.axhline(cfg.mu_floor, color="tab:red", linewidth=0.8, linestyle="--", label=f"claimed floor {cfg.mu_floor:g}")
    left.set_ylim(0, None)
    left.set_xlabel(f"SGD step (B = {cfg.batch_size}, η = {cfg.lr_fraction:g}·" + r"$2/\lambda_{\max}(G)$ at init)")
    left.set_ylabel(r"$\mu = \mathrm{Tr}(\Sigma G) / (2L\,\|G\|_F^2)$")
    left.set_title("Alignment along training")
    values = [v for rs in main.values() for r in rs for v in (r["two_loss_gn_frob2"], r["tr_sigma_g"]) if v > 0]
    if values:
        lo, hi = min(values) / 2, max(values) * 2
        mid.plot([lo, hi], [lo, hi], color="black", linewidth=1.0, label="y = x (μ = 1)")
        if k > 1:
            mid.plot([lo, hi], [lo / k, hi / k], color="gray", linewidth=0.8, linestyle=":", label="y = x/k (μ = 1/k)")
        mid.set_xlim(lo, hi)
        mid.set_ylim(lo, hi)
    mid.set_xscale("log")
    mid.set_yscale("log")
    mid.set_xlabel(r"$2L\,\|G\|_F^2$  ($L = \frac{1}{2n}\sum_i \|r_i\|^2$, $G = J^\top J/n$)")
    mid.set_ylabel(r"$\mathrm{Tr}(\Sigma G)$  (Σ: per-sample gradient covariance)")
    mid.set_title("Noise against loss × curvature")
    for kind, by in sweeps.items():
        ws = sorted(by)
        med = [_median(by[w]) for w in ws]
        lo_err = [m - _range(by[w])[0] for m, w in zip(med, ws, strict=True)]
        hi_err = [_range(by[w])[1] - m for m, w in zip(med, ws, strict=True)]
        right.errorbar(ws, med, yerr=[lo_err, hi_err], fmt="o-", color=colors[kind], capsize=3, label=LABELS[kind])
    right.axhline(1.0, color="black", linewidth=0.8, label="μ = 1")
    right.set_xscale("log")
    plain_log_ticks(right, "x")
    right.set_ylim(0, None)
    right.set_xlabel("width (linear net: hidden units; random features: features)")
    right.set_ylabel("μ along training (median, min–max)")
    right.set_title("Alignment against width")
    for ax in (left, mid, right):
        ax.grid(True, which="major", alpha=0.25)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, frameon=False)
    fig.tight_layout()
    return fig


EXPERIMENT = Experiment(
    name="alignment",
    title="Alignment: μ = Tr(ΣG)/(2L||G||_F²) along SGD training and against width",
    summary="μ along SGD training of linear, random-feature, MLP and CNN models; μ against width",
    config_type=AlignmentConfig,
    quick=quick_config,
    body=body,
    run_time="full (n = 128, 2000 steps, 10 runs): about 32 s; --quick (n = 48, 600 steps, 8 runs): about 6 s "
    "(CPU, one thread)",
)


def run(config: AlignmentConfig, out_dir: str | Path, quiet: bool = True) -> dict[str, Any]:
    """Run the experiment into ``out_dir``; returns the summary (see :mod:`sgdstab.experiments.base`)."""
    return EXPERIMENT.run(config, out_dir, quiet=quiet)


__all__ = ["EXPERIMENT", "AlignmentConfig", "body", "quick_config", "run", "trace_run"]
