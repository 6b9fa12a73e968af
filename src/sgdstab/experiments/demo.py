"""``sgdstab demo``: the main job on the built-in data, in a couple of minutes on 2 cores.

Trains one small MLP on the built-in Fashion-MNIST subset (two classes, ±1 targets) with GD and with SGD at a few
batch sizes, measures every solution exactly (curvature through the NTK, the true Hessian by Hutch++, the
alignment μ), and checks the two necessary conditions of THEORY.md §5 on each:

- GD / edge of stability: ``λ_max(H) ≤ 2/η``;
- the Frobenius certificate: ``||H||_F ≤ sqrt(1/(c μ))/η`` (= sqrt(B/μ)/η with replacement).

It writes ``report.md``, ``summary.json`` and PNG figures into the output directory, each file through a
temporary name and a rename, so a killed run leaves no half-written file.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from sgdstab.alignment import alignment
from sgdstab.conventions import noise_scale
from sgdstab.curvature import curvature
from sgdstab.data import DEFAULT_DATASET, load_dataset
from sgdstab.experiments.io import atomic_write, prepare_output_dir
from sgdstab.models import mlp
from sgdstab.problem import Problem
from sgdstab.results import ResultMixin
from sgdstab.stability import stability
from sgdstab.training import train

DEMO_CLASSES = (0, 6)  # T-shirt/top against shirt: the hardest pair of Fashion-MNIST, so curvature matters


@dataclass(frozen=True)
class DemoRun(ResultMixin):
    label: str
    lr: float
    batch_size: int
    sampling: str
    steps: int
    final_loss: float
    diverged: bool
    hessian_frobenius: float
    hessian_frobenius_stderr: float
    gauss_newton_frobenius: float
    sharpness: float
    mu: float
    mu_inf: float
    c: float
    frobenius_bound: float
    gd_bound: float
    rho: float
    critical_lr: float
    seconds: float


def _measure(problem: Problem, label: str, lr: float, batch: int, sampling: str, hist, seed: int) -> DemoRun:
    curv = curvature(problem, method="kernel", rtol=2e-2, seed=seed, top=1)
    align = alignment(problem, method="kernel", hessian=False)
    c = noise_scale(batch, problem.n, sampling)
    bound = math.sqrt(1.0 / (c * align.mu)) / lr if c > 0 and align.mu > 0 else math.inf
    # the exact linear stability of SGD(η, B) at the point reached, treating it as the minimum (L is reported)
    stab = stability(problem, lr, batch, sampling, with_certificates=False)
    return DemoRun(
        label=label,
        lr=lr,
        batch_size=batch,
        sampling=sampling,
        steps=hist.steps[-1],
        final_loss=hist.final_loss,
        diverged=hist.diverged_at is not None,
        hessian_frobenius=curv.hessian_frobenius,
        hessian_frobenius_stderr=curv.hessian_frobenius_stderr,
        gauss_newton_frobenius=curv.gauss_newton_frobenius,
        sharpness=curv.sharpness,
        mu=align.mu,
        mu_inf=align.mu_inf,
        c=c,
        frobenius_bound=bound,
        gd_bound=2.0 / lr,
        rho=stab.rho,
        critical_lr=stab.critical_lr,
        seconds=curv.seconds + align.seconds + hist.seconds + stab.seconds,
    )


def run_demo(
    out: str | None = None, n: int | None = None, seed: int = 0, quiet: bool = False, steps: int = 3000
) -> Path:
    """Run the demo and return the path of its report (``steps`` caps each training run)."""
    console = Console(stderr=True, quiet=quiet)
    out_dir = Path(out or "sgdstab-demo")
    prepare_output_dir(out_dir)
    n = n or 300
    start = time.perf_counter()
    data = load_dataset(DEFAULT_DATASET, n=n, classes=DEMO_CLASSES, subset="stratified", seed=seed)
    console.print(f"[bold]sgdstab demo[/bold]: {data.description}")
    lr = 0.05
    large, small = min(50, max(1, n // 2)), min(10, max(1, n // 4))
    settings = [
        ("GD", n, "without_replacement"),
        (f"SGD B={large}", large, "with_replacement"),
        (f"SGD B={small}", small, "with_replacement"),
    ]
    runs: list[DemoRun] = []
    histories = {}
    for label, batch, sampling in settings:
        model = mlp(data.input_shape, data.num_outputs, widths=(64,), activation="tanh", seed=seed)
        problem = Problem(model, data.X, data.Y)
        console.print(f"  training {label} (η = {lr}) …")
        hist = train(
            problem, lr, batch, sampling, steps=steps, until_loss=2e-3, track_every=50, seed=seed, progress=not quiet
        )
        histories[label] = hist
        console.print(f"  measuring {label} at L = {hist.final_loss:.2e} …")
        runs.append(_measure(problem, label, lr, batch, sampling, hist, seed))
    summary = _summary(runs, data.description, time.perf_counter() - start, steps)
    atomic_write(out_dir / "summary.json", lambda p: p.write_text(json.dumps(summary, indent=2, allow_nan=True)))
    atomic_write(out_dir / "loss.png", lambda p: _plot_losses(histories, p))
    atomic_write(out_dir / "flatness.png", lambda p: _plot_frobenius(runs, p))
    report = out_dir / "report.md"
    atomic_write(report, lambda p: p.write_text(_report(summary)))
    console.print(f"report: {report}")
    print(report)
    return report


def _summary(runs: list[DemoRun], description: str, seconds: float, steps: int) -> dict:
    sgd = [r for r in runs if r.c > 0]
    frob_ok = [r.hessian_frobenius <= r.frobenius_bound for r in sgd]
    gd_ok = [r.sharpness <= r.gd_bound for r in runs]
    # GD does not converge to a minimum at the edge of stability: it hovers with λ_max ≈ 2/η, a little above
    # or below. Such runs are named, not hidden, and the claim is reported as failed for them.
    edge = [r.label for r in runs if r.gd_bound < r.sharpness <= 1.02 * r.gd_bound]
    return {
        "data": description,
        "max_steps": steps,
        "runs": [r.to_dict() for r in runs],
        "claims": {
            "frobenius_certificate": {
                "statement": "||H||_F <= sqrt(1/(c mu))/eta at every SGD solution",
                "holds": all(frob_ok),
                "count": f"{sum(frob_ok)}/{len(sgd)}",
                "largest_ratio": max((r.hessian_frobenius / r.frobenius_bound for r in sgd), default=math.nan),
            },
            "linear_stability": {
                "statement": "rho(T) <= 1 for SGD(eta, B) at every point SGD settled in (exact, THEORY.md §4)",
                "holds": all(r.rho <= 1 + 1e-9 for r in runs),
                "count": f"{sum(r.rho <= 1 + 1e-9 for r in runs)}/{len(runs)}",
                "largest_ratio": max(r.lr / r.critical_lr for r in runs),
            },
            "gd_bound": {
                "statement": "lambda_max(H) <= 2/eta at every solution",
                "holds": all(gd_ok),
                "count": f"{sum(gd_ok)}/{len(runs)}",
                "largest_ratio": max(r.sharpness / r.gd_bound for r in runs),
                "at_edge_of_stability": edge,
            },
        },
        "seconds": seconds,
    }


def _report(summary: dict) -> str:
    lines = [
        "# sgdstab demo",
        "",
        f"Data: {summary['data']}. Model: MLP with one tanh hidden layer of 64 units, square loss",
        "L = (1/2n) Σ ||f(x_i) − y_i||². Each run trains from the same initialization to L ≤ 2e-3 "
        f"(or {summary['max_steps']} steps).",
        "||H||_F is the true Hessian's (Hutch++, ± one standard error); ||G||_F and μ are exact through the NTK.",
        "",
        "| run | η | B | c | steps | final L | ‖H‖_F | ‖G‖_F | λ_max | 2/η | μ | μ_inf | sqrt(1/(cμ))/η | ρ(T) | η* |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in summary["runs"]:
        lines.append(
            f"| {r['label']} | {r['lr']:g} | {r['batch_size']} | {r['c']:.3g} | {r['steps']} | {r['final_loss']:.2e} "
            f"| {r['hessian_frobenius']:.4g} ± {r['hessian_frobenius_stderr']:.1g} | {r['gauss_newton_frobenius']:.4g} "
            f"| {r['sharpness']:.4g} | {r['gd_bound']:.4g} | {r['mu']:.3g} | {r['mu_inf']:.3g} "
            f"| {r['frobenius_bound']:.4g} | {r['rho']:.6f} | {r['critical_lr']:.4g} |"
        )
    lines += ["", "## Claims checked", ""]
    for claim in summary["claims"].values():
        verdict = "holds" if claim["holds"] else "FAILS"
        lines.append(
            f"- {claim['statement']}: **{verdict}** ({claim['count']}; largest ratio {claim['largest_ratio']:.4g})"
        )
        if claim.get("at_edge_of_stability"):
            lines.append(
                f"  - within 2% above 2/η: {', '.join(claim['at_edge_of_stability'])}. GD at this η runs at the edge "
                "of stability (THEORY.md §5): it has not settled in a minimum, and λ_max oscillates around 2/η."
            )
    lines += ["", "![loss](loss.png)", "", "![flatness](flatness.png)", "", f"Run time: {summary['seconds']:.0f} s."]
    return "\n".join(lines) + "\n"


def _plot_losses(histories: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for label, h in histories.items():
        ax.semilogy(h.steps, h.losses, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("L (full data)")
    ax.legend()
    ax.set_title("Training loss")
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)


def _plot_frobenius(runs: list[DemoRun], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    x = list(range(len(runs)))
    labels = [r.label for r in runs]
    left.bar([i - 0.2 for i in x], [r.hessian_frobenius for r in runs], width=0.4, label="||H||_F")
    bounds = [r.frobenius_bound if math.isfinite(r.frobenius_bound) else 0.0 for r in runs]
    left.bar([i + 0.2 for i in x], bounds, width=0.4, label="sqrt(1/(cμ))/η")
    for i, r in enumerate(runs):
        if not math.isfinite(r.frobenius_bound):
            left.annotate("no bound\n(c = 0)", (i + 0.2, 0), ha="center", va="bottom", fontsize=8)
    left.set_xticks(x, labels)
    left.set_title("Frobenius certificate (SGD)")
    left.legend(loc="upper left", fontsize=8)
    right.bar([i - 0.2 for i in x], [r.sharpness for r in runs], width=0.4, label="λ_max(H)")
    right.bar([i + 0.2 for i in x], [r.gd_bound for r in runs], width=0.4, label="2/η")
    right.set_xticks(x, labels)
    right.set_title("GD bound (edge of stability)")
    right.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)
