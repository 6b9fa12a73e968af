"""``cross_entropy``: GD and SGD on the softmax cross-entropy, tracked through the generalized Gauss–Newton
(docs/THEORY.md §9).

One MLP (tanh, float64, seeded) is trained twice from the same initialization on n samples of the built-in
Fashion-MNIST subset (k ≥ 3 classes, labels as class indices) with ``nn.CrossEntropyLoss``'s loss: by GD (B = n) and
by SGD(B, without replacement), both at η = ``lr_fraction``·2/λ_max(H) at initialization. Every ``measure_every``
steps, at the current θ:

- λ_max(H) of the true Hessian (Lanczos on Hessian-vector products) against GD's bound 2/η;
- the GGN kernel K_A = A^{1/2}KA^{1/2} once, and from it exactly: λ_max(G), the alignment
  μ = Tr(ΣG)/(s||G||_F²) (s the mean χ² of the labels from the predictions) and the exact mean-square critical
  learning rate η*(B) of SGD's linearization at θ (cross-entropy has no finite minimum: this is the stability of
  the quadratic model there).

Claims: ``gd_below_edge`` (after the first ``warmup`` fraction of steps, GD's λ_max(H)·η/2 ≤ ``gd_tolerance`` at
every measured point: the mean iterate cannot sit above 2/η); ``sgd_ends_linearly_stable`` (at SGD's last measured
point η ≤ η*(B): where SGD ends, its linearization is mean-square stable); ``sgd_flatter_than_gd`` (SGD ends with a
smaller λ_max(H) than GD at the same η and step count); ``mu_bounded`` (μ ≥ ``mu_floor`` at every measured point of
both runs). The report also gives GD's largest λ_max(H)·η/2 after the warm-up (how close it came to the edge of
stability) and μ against the value expected if the labels were drawn from the model itself, (1 − 1/n)/(k − 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sgdstab.data import DATASETS, DEFAULT_DATASET, load_dataset
from sgdstab.estimators.matrix_free import top_eigenpairs
from sgdstab.experiments.base import Context, Experiment, Outcome
from sgdstab.experiments.config import check_device, fail, param
from sgdstab.experiments.io import new_figure
from sgdstab.experiments.minimum import SUBSET_RULES
from sgdstab.experiments.report import Claim, fmt, markdown_table
from sgdstab.kernel.figures import noise_figures
from sgdstab.kernel.ntk import ggn_kernel
from sgdstab.linear_stability.solver import critical_learning_rate
from sgdstab.models.architectures import mlp
from sgdstab.operators.products import hessian_operator
from sgdstab.problem.problem import Problem
from sgdstab.training.trainer import train

SAMPLING = "without_replacement"


@dataclass(frozen=True)
class CrossEntropyConfig:
    """The ``cross_entropy`` experiment. Defaults: the full run (n = 100, four classes, 1500 steps)."""

    dataset: str = param(DEFAULT_DATASET, choices=tuple(DATASETS), help="data set (sgdstab.load_dataset name)")
    data_dir: str = param("", help="folder of the data files for fashion-mnist / cifar10 (empty: the default)")
    classes: tuple[int, ...] = param((0, 1, 2, 3), ge=0, min_len=3, help="class ids (three or more: one logit each)")
    n: int = param(100, ge=4, le=1000, help="number of training samples (the kernel is nk × nk)")
    subset: str = param("stratified", choices=SUBSET_RULES, help="which n samples: first in file order or stratified")
    width: int = param(32, ge=1, help="hidden width of the MLP (one tanh layer)")
    seed: int = param(0, ge=0, help="seed of the data subset, the initialization and SGD's batches")
    device: str = param("cpu", help="torch device of the run: cpu, cuda or cuda:N (float64 throughout)")
    lr_fraction: float = param(1.5, gt=0, help="η = lr_fraction · 2/λ_max(H) at initialization, for GD and SGD")
    batch_size: int = param(8, ge=1, help="SGD batch size B (without replacement)")
    steps: int = param(1500, ge=2, help="steps of each run")
    measure_every: int = param(100, ge=1, help="the figures are measured every this many steps (and at step 0)")
    warmup: float = param(0.1, ge=0, lt=1, help="fraction of the steps before GD's edge is checked")
    gd_tolerance: float = param(1.1, ge=1, help="claim: GD's λ_max(H)·η/2 ≤ gd_tolerance after the warm-up")
    mu_floor: float = param(0.1, gt=0, help="claim: μ ≥ mu_floor at every measured point of both runs")

    def check(self) -> None:
        check_device(self.device)
        if len(set(self.classes)) != len(self.classes):
            fail(f"config field 'classes' repeats a class: {list(self.classes)}; list distinct class ids")
        if self.batch_size >= self.n:
            fail(f"config field 'batch_size' = {self.batch_size} must be below n = {self.n} (B = n is the GD run)")
        if self.measure_every >= self.steps:
            fail(f"config field 'measure_every' = {self.measure_every} must be below steps = {self.steps}")


def quick_config() -> CrossEntropyConfig:
    return CrossEntropyConfig(n=60, classes=(0, 1, 2), steps=600, measure_every=100)


def _problem(cfg: CrossEntropyConfig, X: torch.Tensor, labels: torch.Tensor) -> Problem:
    model = mlp(tuple(X.shape[1:]), len(cfg.classes), widths=(cfg.width,), activation="tanh", seed=cfg.seed)
    return Problem(model.to(cfg.device), X, labels, loss="cross_entropy", dtype=torch.float64)


def _sharpness(problem: Problem, seed: int) -> float:
    return float(top_eigenpairs(hessian_operator(problem), k=1, which="LA", seed=seed).eigenvalues[0])


def _measure(problem: Problem, batch_size: int, seed: int) -> dict[str, float]:
    """λ_max(H) from its products; λ_max(G), μ and η*(B) exactly through the GGN kernel, built once."""
    kernel = ggn_kernel(problem)
    n, k = problem.n, problem.k
    nf = noise_figures(kernel.matrix, problem.kernel_residuals(), n, k)
    top = float(kernel.eigen.values[-1])
    if batch_size == n:  # GD: η* = 2/λ_max(G) (c = 0)
        eta_star = 2 * n / top if top > 0 else math.inf
    else:
        eta_star = critical_learning_rate(kernel, batch_size, SAMPLING, progress=False)
    return {
        "loss": float(problem.loss()),
        "sharpness": _sharpness(problem, seed),
        "ggn_sharpness": top / n,
        "mu": nf.mu,
        "critical_lr": eta_star,
    }


def _run(cfg: CrossEntropyConfig, X: torch.Tensor, labels: torch.Tensor, batch_size: int, lr: float) -> list[dict]:
    problem = _problem(cfg, X, labels)
    measured: list[dict[str, float]] = []

    def track(p: Problem) -> float:
        measured.append(_measure(p, batch_size, cfg.seed))
        return measured[-1]["sharpness"]

    hist = train(
        problem,
        lr,
        batch_size,
        SAMPLING,
        cfg.steps,
        track_every=cfg.measure_every,
        track={"sharpness": track},
        seed=cfg.seed,
        progress=False,
    )
    run = "GD" if batch_size == problem.n else f"SGD (B = {batch_size})"
    status = "ok" if hist.diverged_at is None else f"diverged at step {hist.diverged_at}"
    return [
        {"run": run, "batch_size": batch_size, "step": step, "lr": lr, **m, "lr_over_critical": lr / m["critical_lr"]}
        | {"edge_ratio": m["sharpness"] * lr / 2, "status": status}
        for step, m in zip(hist.steps, measured, strict=False)
    ]


def body(cfg: CrossEntropyConfig, ctx: Context) -> Outcome:
    data = load_dataset(
        cfg.dataset, n=cfg.n, classes=cfg.classes, seed=cfg.seed, data_dir=cfg.data_dir or None, subset=cfg.subset
    )
    X, labels = data.X.reshape(len(data.X), -1), data.Y.argmax(1)
    ctx.stage(f"data: {data.description}; k = {len(cfg.classes)} classes (cross-entropy on logits)")
    lam0 = _sharpness(_problem(cfg, X, labels), cfg.seed)
    lr = cfg.lr_fraction * 2 / lam0
    ctx.stage(f"λ_max(H) at initialization {fmt(lam0, 4)}: η = {fmt(lr, 4)} (2/η = {fmt(2 / lr, 4)}) for both runs")
    gd = _run(cfg, X, labels, cfg.n, lr)
    ctx.stage(f"GD: L {fmt(gd[0]['loss'], 3)} → {fmt(gd[-1]['loss'], 3)}, λ_max(H) → {fmt(gd[-1]['sharpness'], 3)}")
    sgd = _run(cfg, X, labels, cfg.batch_size, lr)
    ctx.stage(
        f"SGD: L {fmt(sgd[0]['loss'], 3)} → {fmt(sgd[-1]['loss'], 3)}, η/η*(B) → {fmt(sgd[-1]['lr_over_critical'], 3)}"
    )
    k = len(cfg.classes)
    model_labels_mu = (1 - 1 / cfg.n) / (k - 1)
    after = [r for r in gd if r["step"] >= cfg.warmup * cfg.steps]
    claims = [
        _gd_claim(after, cfg),
        _sgd_stable_claim(sgd),
        _flatter_claim(gd, sgd),
        _mu_claim(gd, sgd, cfg.mu_floor),
    ]
    ctx.figure("cross_entropy.png", _plot(gd, sgd, lr, model_labels_mu), _caption(lr, cfg, model_labels_mu))
    numbers = {
        "n": cfg.n,
        "k": k,
        "lr": lr,
        "sharpness_init": lam0,
        "gd_peak_edge_ratio": max((r["edge_ratio"] for r in after), default=math.nan),
        "mu_model_labels": model_labels_mu,
        "final": {run[-1]["run"]: {key: run[-1][key] for key in _KEYS} for run in (gd, sgd)},
    }
    intro = (
        f"Data: {data.description}.\n\n"
        f"An MLP {X.shape[1]} → {cfg.width} → {k} (tanh) is trained from one initialization by GD and by SGD "
        f"(B = {cfg.batch_size}, without replacement) for {cfg.steps} steps at η = {fmt(cfg.lr_fraction)}·2/λ_max(H₀) "
        f"= {fmt(lr, 4)} on the mean softmax cross-entropy (nn.CrossEntropyLoss). Every {cfg.measure_every} steps: "
        "λ_max(H) by Lanczos on Hessian-vector products; through the GGN kernel K_A = A^{1/2}KA^{1/2} (built once per "
        "point) λ_max(G), μ = Tr(ΣG)/(s||G||_F²) and the exact η*(B) of SGD's linearization at θ (docs/THEORY.md §9). "
        f"μ for labels drawn from the model itself would be (1 − 1/n)/(k − 1) = {fmt(model_labels_mu, 3)}."
    )
    return Outcome(
        rows=gd + sgd, claims=claims, numbers=numbers, intro=intro, sections=[_edge(gd, after), _table(gd, sgd)]
    )


def _edge(gd: list[dict[str, Any]], after: list[dict[str, Any]]) -> str:
    """Where GD stood against the edge of stability, in words (a measurement, not a claim)."""
    peak = max(after, key=lambda r: r["edge_ratio"]) if after else None
    if peak is None:
        return ""
    reached = peak["edge_ratio"] >= 0.8
    verdict = (
        "GD reached the edge of stability: λ_max(H) came within 20% of 2/η"
        if reached
        else "GD did not reach the edge of stability on these data: with cross-entropy the curvature falls as the "
        "margins grow (A_i = diag(p_i) − p_i p_iᵀ → 0 as the predictions become confident), faster than the "
        "sharpening"
    )
    return (
        "### GD and the edge of stability\n\n"
        f"{verdict}. After the warm-up GD's largest λ_max(H)·η/2 was {fmt(peak['edge_ratio'], 3)} (step "
        f"{peak['step']}, L = {fmt(peak['loss'], 3)}); at initialization it was {fmt(gd[0]['edge_ratio'], 3)} and at "
        f"the end {fmt(gd[-1]['edge_ratio'], 3)} (L = {fmt(gd[-1]['loss'], 3)})."
    )


_KEYS = ("step", "loss", "sharpness", "ggn_sharpness", "edge_ratio", "mu", "critical_lr", "lr_over_critical")


def _gd_claim(after: list[dict[str, Any]], cfg: CrossEntropyConfig) -> Claim:
    peak = max((r["edge_ratio"] for r in after), default=math.nan)
    return Claim(
        "gd_below_edge",
        f"after the first {fmt(cfg.warmup * 100)}% of steps GD's λ_max(H)·η/2 ≤ {fmt(cfg.gd_tolerance)} at every "
        "measured point (2/η bounds the sharpness GD can sit at)",
        bool(after) and peak <= cfg.gd_tolerance,
        f"largest λ_max(H)·η/2 {fmt(peak, 3)} over {len(after)} points",
        {"peak_edge_ratio": peak, "points": len(after)},
    )


def _sgd_stable_claim(sgd: list[dict[str, Any]]) -> Claim:
    last = sgd[-1]
    return Claim(
        "sgd_ends_linearly_stable",
        "where SGD ends, η ≤ η*(B): its linearization there is mean-square stable",
        last["lr_over_critical"] <= 1,
        f"η/η*(B) = {fmt(last['lr_over_critical'], 3)} at step {last['step']} (largest along the run "
        f"{fmt(max(r['lr_over_critical'] for r in sgd), 3)})",
        {"final_ratio": last["lr_over_critical"], "largest_ratio": max(r["lr_over_critical"] for r in sgd)},
    )


def _flatter_claim(gd: list[dict[str, Any]], sgd: list[dict[str, Any]]) -> Claim:
    a, b = gd[-1], sgd[-1]
    return Claim(
        "sgd_flatter_than_gd",
        "at the same η and step count SGD ends flatter than GD: smaller λ_max(H)",
        b["sharpness"] <= a["sharpness"],
        f"λ_max(H) {fmt(b['sharpness'], 4)} (SGD, L = {fmt(b['loss'], 3)}) against {fmt(a['sharpness'], 4)} "
        f"(GD, L = {fmt(a['loss'], 3)})",
        {"sgd": b["sharpness"], "gd": a["sharpness"]},
    )


def _mu_claim(gd: list[dict[str, Any]], sgd: list[dict[str, Any]], floor: float) -> Claim:
    ranges = {run[0]["run"]: [min(r["mu"] for r in run), max(r["mu"] for r in run)] for run in (gd, sgd)}
    return Claim(
        "mu_bounded",
        f"μ stays bounded away from 0 along both runs (μ ≥ {fmt(floor)} at every measured point)",
        all(lo >= floor for lo, _ in ranges.values()),
        "; ".join(f"{name}: μ in [{fmt(lo, 3)}, {fmt(hi, 3)}]" for name, (lo, hi) in ranges.items()),
        {"ranges": ranges},
    )


def _table(gd: list[dict[str, Any]], sgd: list[dict[str, Any]]) -> str:
    columns = [
        ("run", "run"),
        ("step", "step"),
        ("loss", "L"),
        ("sharpness", "λ_max(H)"),
        ("edge_ratio", "λ_max(H)·η/2"),
        ("ggn_sharpness", "λ_max(G)"),
        ("mu", "μ"),
        ("critical_lr", "η*(B)"),
        ("lr_over_critical", "η/η*(B)"),
    ]
    return "### Along training\n\n" + markdown_table(gd + sgd, columns)


def _caption(lr: float, cfg: CrossEntropyConfig, mu_model: float) -> str:
    return (
        f"Left: λ_max(H) along GD and SGD (B = {cfg.batch_size}) with cross-entropy, against GD's bound 2/η = "
        f"{fmt(2 / lr, 4)} (dashed). Middle: η/η*(B), the learning rate over the exact critical learning rate of each "
        "run's linearization (1: the mean-square edge; GD's η* is 2/λ_max(G)). Right: the alignment μ, with "
        f"(1 − 1/n)/(k − 1) = {fmt(mu_model, 3)} (dotted), its value for labels drawn from the model."
    )


def _plot(gd: list[dict[str, Any]], sgd: list[dict[str, Any]], lr: float, mu_model: float) -> Any:
    fig, axes = new_figure(1, 3, size=(13.0, 4.0))
    for run, color in ((gd, "tab:blue"), (sgd, "tab:orange")):
        steps = np.array([r["step"] for r in run])
        label = run[0]["run"]
        axes[0].semilogy(steps, [r["sharpness"] for r in run], "o-", color=color, label=label)
        axes[1].semilogy(steps, [r["lr_over_critical"] for r in run], "o-", color=color, label=label)
        axes[2].semilogy(steps, [r["mu"] for r in run], "o-", color=color, label=label)
    axes[0].axhline(2 / lr, color="k", ls="--", lw=1, label="2/η")
    axes[1].axhline(1.0, color="k", ls="--", lw=1, label="η = η*")
    axes[2].axhline(mu_model, color="k", ls=":", lw=1, label="labels from the model")
    for ax, ylabel in zip(axes, ("λ_max(H)", "η / η*(B)", "μ"), strict=True):
        ax.set_xlabel("step")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


EXPERIMENT = Experiment(
    name="cross_entropy",
    title="GD and SGD with cross-entropy, tracked through the generalized Gauss–Newton",
    summary="GD and SGD on cross-entropy: λ_max(H) against 2/η, the exact η*(B) and μ along training",
    config_type=CrossEntropyConfig,
    quick=quick_config,
    body=body,
    run_time="full (n = 100, k = 4, 1500 steps): about 7 s; --quick (n = 60, k = 3, 600 steps): about 5 s",
)


def run(config: CrossEntropyConfig, out_dir: str, quiet: bool = True) -> dict[str, Any]:
    return EXPERIMENT.run(config, out_dir, quiet=quiet)
