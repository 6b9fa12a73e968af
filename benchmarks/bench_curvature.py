"""Hessian curvature figures side by side: sgdstab against PyHessian and curvlinops, in one run.

For each problem (an MLP trained briefly with SGD on the square loss L = (1/(2n)) Σ ||f(x_i) − y_i||²) it
measures the time (wall or, single-threaded, CPU seconds: ``--clock``) and the relative error, against a ground
truth, of λ_max(H), Tr H and ||H||_F, where H = ∇²L on the full data, for:

- sgdstab: ``sgdstab.curvature`` (one call gives every figure), its route ``auto`` and ``matrix_free``, the kernel
  route with ``at_minimum=True`` (which gives the Gauss–Newton G = JᵀJ/n, equal to H only at a global minimum),
  and its building blocks ``top_eigenpairs`` and ``hutchpp`` on the Hessian operator alone;
- PyHessian (``hessian(...).eigenvalues()`` / ``.trace()``; it has no Frobenius norm), with its defaults and
  tightened until the error is within 1% where that is reachable;
- curvlinops (``HessianLinearOperator`` with scipy's ``eigsh``, ``hutchinson_trace``, ``hutchpp_trace``,
  ``hutchinson_squared_fro``).

Stochastic estimators with a fixed budget get the number of probes that a 1% root-mean-square error needs
(predicted from a 64-probe pilot of the per-probe variance), capped at a budget shared by every library; above
the cap the table says how many probes 1% would need and how long that would take at the measured rate. The
same figures for the time split of sgdstab's call (products, seconds per stage), the cost of one Hessian-vector
product in each library, and the NTK kernel route (``bench_ntk.py``) follow.

Run it with the peers' environment (``bash benchmarks/setup_peers.sh`` once):

    benchmarks/.env/bin/python benchmarks/bench_curvature.py [--quick] [--threads N]

Results: printed tables and ``benchmarks/results/curvature.json`` (``curvature_quick.json`` with ``--quick``).
See ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, aslinearoperator, eigsh
from torch import Tensor, nn
from torch.func import hessian, vmap

import sgdstab
from sgdstab.estimators.matrix_free import EigenResult, hutchpp, top_eigenpairs
from sgdstab.measure.plan import MethodPlan
from sgdstab.operators.products import hessian_operator

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_ntk
from _common import (
    RESULTS_DIR,
    busy_warning,
    clock_name,
    fmt_percent,
    fmt_seconds,
    fmt_value,
    limit_blas_threads,
    machine_state,
    median_time,
    now,
    progress,
    set_clock,
    table,
    timed,
    write_json,
)

try:  # the peers live only in benchmarks/.env (setup_peers.sh)
    # The module itself: ``pyhessian.hessian`` as an attribute is the class, which shadows the module.
    pyhessian_module: Any = importlib.import_module("pyhessian.hessian")
except ImportError:
    pyhessian_module = None
try:
    import curvlinops
except ImportError:
    curvlinops = None

# sgdstab.curvature the module (the package attribute of that name is the function).
CURVATURE_MODULE = importlib.import_module("sgdstab.measure.routes")  # where the routes call the estimators
LANCZOS_TOL, LANCZOS_NCV = 1e-4, 10  # what curvature(rtol=1e-2, top=1) uses

LAMBDA, TRACE, FROB = "λ_max", "Tr H", "||H||_F"
FIGURES = (LAMBDA, TRACE, FROB)


# ---------------------------------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Spec:
    """One benchmark problem: data, MLP widths and the brief SGD run that moves it off its random init."""

    key: str
    dataset: str
    n: int
    classes: tuple[int, int] | None
    widths: tuple[int, ...]
    lr: float
    batch_size: int
    steps: int


@dataclass(frozen=True)
class Settings:
    target: float  # relative error that counts as "at 1%"
    rtol: float  # sgdstab's requested relative standard error
    cap: int  # Hessian-vector products any stochastic estimator may spend (the same for every library)
    pilot_probes: int  # Rademacher probes of the variance pilot that sizes the fixed-budget estimators
    frob_truth_probes: int  # Hutch++ probes of the ||H||_F ground truth when H is too large to form
    dense_max_p: int  # form H densely for the ground truth up to this many parameters


FULL_SPECS = (
    Spec("A", "fashion-mnist", 1000, (0, 6), (128, 128), lr=0.05, batch_size=100, steps=300),
    Spec("B", "digits", 500, None, (64, 64), lr=0.3, batch_size=50, steps=500),
)
QUICK_SPECS = (
    Spec("A", "fashion-mnist", 200, (0, 6), (16, 16), lr=0.05, batch_size=50, steps=150),
    Spec("B", "digits", 200, None, (16, 16), lr=0.3, batch_size=50, steps=150),
)
FULL_SETTINGS = Settings(target=1e-2, rtol=1e-2, cap=600, pilot_probes=64, frob_truth_probes=800, dense_max_p=10_000)
QUICK_SETTINGS = Settings(target=1e-2, rtol=1e-2, cap=300, pilot_probes=32, frob_truth_probes=300, dense_max_p=10_000)
TRUTH_CACHE = RESULTS_DIR / "ground_truth_cache.json"
TRUTH_VERSION = 1  # bump when the ground-truth recipe changes


# ---------------------------------------------------------------------------------------------------- problems
@dataclass
class Built:
    spec: Spec
    problem: sgdstab.Problem
    info: dict[str, Any]


def load_data(spec: Spec) -> tuple[Tensor, Tensor, str, str | None]:
    """The spec's data; full Fashion-MNIST falls back to the bundled subset (fewer images) when not installed."""
    try:
        X, Y = sgdstab.load_dataset(spec.dataset, n=spec.n, classes=spec.classes)
        return X, Y, spec.dataset, None
    except (sgdstab.SgdstabError, OSError) as exc:
        if spec.dataset != "fashion-mnist":
            raise
        X, Y = sgdstab.load_dataset("fashion-mnist-small", classes=spec.classes)
        note = f"full Fashion-MNIST unavailable ({exc}); used the bundled subset's first {min(spec.n, len(X))}"
        return X[: spec.n], Y[: spec.n], "fashion-mnist-small", note


def build(spec: Spec) -> Built:
    X, Y, dataset, note = load_data(spec)
    k = Y.shape[1]
    model = sgdstab.mlp(X.shape[1:], k, widths=spec.widths, activation="tanh", seed=0)
    problem = sgdstab.Problem(model, X, Y)
    loss0 = float(problem.loss())
    history = sgdstab.train(problem, lr=spec.lr, batch_size=spec.batch_size, steps=spec.steps, seed=0)
    if history.diverged_at is not None:
        raise RuntimeError(f"problem {spec.key}: SGD diverged at step {history.diverged_at}; lower its lr")
    arch = "-".join(str(d) for d in (math.prod(X.shape[1:]), *spec.widths, k))
    info = {
        "dataset": dataset,
        "classes": spec.classes,
        "n": problem.n,
        "k": k,
        "p": problem.p,
        "model": f"MLP {arch} tanh",
        "training": f"SGD lr={spec.lr} B={spec.batch_size}, {spec.steps} steps ({history.seconds:.1f} s)",
        "loss_init": loss0,
        "loss_trained": float(problem.loss()),
        "grad_norm": float(torch.linalg.vector_norm(problem.gradient())),
        "data_note": note,
    }
    return Built(spec, problem, info)


class HalfMeanSquare(nn.Module):
    """sgdstab's L = (1/(2n)) Σ ||f(x_i) − y_i||² as a torch criterion, for the whole data passed as one batch.

    ``reduction = "sum"`` makes curvlinops use the batch as it is (no batch-size weighting), so both peers see
    exactly L and their Hessian is sgdstab's H (checked on a product in :func:`hvp_costs`).
    """

    reduction = "sum"

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        return 0.5 * (prediction - target).square().sum() / self.n


# ---------------------------------------------------------------------------------------------------- ground truth
@dataclass
class Truth:
    sharpness: float
    sharpness_method: str
    trace: float
    trace_stderr: float
    trace_method: str
    frobenius: float
    frobenius_stderr: float
    frobenius_method: str
    seconds: float
    checks: dict[str, float] = field(default_factory=dict)

    def value(self, figure: str) -> float:
        return {LAMBDA: self.sharpness, TRACE: self.trace, FROB: self.frobenius}[figure]


def exact_mlp_trace(problem: sgdstab.Problem, chunk: int = 100) -> float:
    """Tr H exactly, for an MLP of Linear layers and elementwise activations (the benchmark's own route).

    For a Linear layer z = W a + b, ∂²ℓ_i/∂W_uv² = a_v² ∂²ℓ_i/∂z_u², so the layer's block of H has trace
    (1/n) Σ_i (||a_i||² + 1) Tr ∇²_z ℓ_i (the 1 for the bias). ∇²_z ℓ_i is a (width × width) Hessian of the
    part of the network after the layer: cheap, with no product through the input layer.
    """
    layers = list(problem.model.net)  # sgdstab's MLP: a Sequential of Linear layers and activations
    a = problem.X.flatten(1)
    Y = problem.Y
    total = 0.0
    for index, layer in enumerate(layers):
        if isinstance(layer, nn.Linear):
            with torch.no_grad():
                z = layer(a)
            rest = nn.Sequential(*layers[index + 1 :])

            def sample_loss(zi: Tensor, yi: Tensor, rest: nn.Module = rest) -> Tensor:
                r = rest(zi[None])[0] - yi
                return 0.5 * (r * r).sum()

            per_sample = torch.cat(
                [
                    torch.diagonal(vmap(hessian(sample_loss))(z[s : s + chunk], Y[s : s + chunk]), dim1=1, dim2=2)
                    .sum(1)
                    .detach()
                    for s in range(0, problem.n, chunk)
                ]
            ).double()
            weight = a.double().square().sum(1) + (1.0 if layer.bias is not None else 0.0)
            total += float((weight * per_sample).sum()) / problem.n
        with torch.no_grad():
            a = layer(a)
    return total


def compute_truth(problem: sgdstab.Problem, settings: Settings) -> Truth:
    start = time.perf_counter()
    op = hessian_operator(problem)
    formula_trace = exact_mlp_trace(problem)
    if problem.p <= settings.dense_max_p:
        D = op.to_dense()
        D = 0.5 * (D + D.T)
        lam = float(eigsh(D, k=1, which="LA", tol=1e-12, return_eigenvectors=False)[0])
        trace = float(np.trace(D))
        return Truth(
            sharpness=lam,
            sharpness_method="dense H (p sgdstab HVPs), eigsh to 1e-12",
            trace=trace,
            trace_stderr=0.0,
            trace_method="dense H",
            frobenius=float(np.linalg.norm(D)),
            frobenius_stderr=0.0,
            frobenius_method="dense H",
            seconds=time.perf_counter() - start,
            checks={"exact_mlp_trace_rel_diff_vs_dense": abs(formula_trace - trace) / abs(trace)},
        )
    top = top_eigenpairs(op, k=8, which="LA", tol=1e-8, seed=11)
    frob = hutchpp(op, rtol=1e-6, basis=top.eigenvectors, max_matvecs=settings.frob_truth_probes + 8, seed=12)
    return Truth(
        sharpness=float(top.eigenvalues[0]),
        sharpness_method=f"sgdstab Lanczos to 1e-8 (residual {top.residual_norms[0]:.1e})",
        trace=formula_trace,
        trace_stderr=0.0,
        trace_method="exact: per-layer formula (checked against dense H on the small problem)",
        frobenius=frob.frobenius,
        frobenius_stderr=frob.frobenius_stderr,
        frobenius_method=f"sgdstab Hutch++ deflated by the top 8 eigenvectors, {frob.probes} probes",
        seconds=time.perf_counter() - start,
    )


def truth_key(spec: Spec, problem: sgdstab.Problem, settings: Settings) -> str:
    digest = hashlib.sha256(problem.theta.detach().cpu().numpy().tobytes()).hexdigest()[:16]
    return f"v{TRUTH_VERSION}|{spec}|{settings.frob_truth_probes}|{settings.dense_max_p}|{digest}"


def ground_truth(built: Built, settings: Settings, fresh: bool) -> tuple[Truth, bool]:
    """The truth from the cache when this exact θ was measured before, else computed (and cached)."""
    key = truth_key(built.spec, built.problem, settings)
    cache: dict[str, Any] = json.loads(TRUTH_CACHE.read_text()) if TRUTH_CACHE.exists() else {}
    if not fresh and key in cache:
        return Truth(**cache[key]), True
    truth = compute_truth(built.problem, settings)
    cache[key] = asdict(truth)
    TRUTH_CACHE.parent.mkdir(parents=True, exist_ok=True)
    TRUTH_CACHE.write_text(json.dumps(cache, indent=1) + "\n")
    return truth, False


# ---------------------------------------------------------------------------------------------------- rows
@dataclass
class Row:
    """One figure from one call. A call that gives several figures has one row per figure, same ``call``."""

    library: str
    call: str
    figure: str
    value: float
    rel_error: float
    hvps: int | None
    seconds: float
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def rel_error(value: float, truth: float) -> float:
    return abs(value - truth) / abs(truth) if truth != 0 else math.inf


class CountingOperator(LinearOperator):
    """Counts the vectors a scipy operator is applied to (for eigsh on curvlinops' operator)."""

    def __init__(self, op: LinearOperator) -> None:
        super().__init__(dtype=np.dtype(np.float64), shape=op.shape)
        self.op = aslinearoperator(op)
        self.count = 0

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        self.count += 1
        return self.op.matvec(x)

    def _matmat(self, X: np.ndarray) -> np.ndarray:
        self.count += X.shape[1]
        return self.op.matmat(X)

    _rmatvec = _matvec
    _rmatmat = _matmat


@dataclass(frozen=True)
class Budgets:
    """Probes for a 1% RMS error of Rademacher Hutchinson estimators, from a pilot of the per-probe spread."""

    trace_needed: int
    frob_needed: int
    trace_sd: float  # standard deviation of zᵀHz
    frob2_sd: float  # standard deviation of ||Hz||²
    cap: int

    def use(self, needed: int) -> int:
        return int(min(max(needed, 30), self.cap))

    def predicted(self, figure: str, probes: int, truth: Truth) -> float:
        """Predicted RMS relative error of plain Hutchinson with ``probes`` probes."""
        if figure == TRACE:
            return self.trace_sd / math.sqrt(probes) / abs(truth.trace)
        return 0.5 * self.frob2_sd / math.sqrt(probes) / truth.frobenius**2


def pilot_budgets(problem: sgdstab.Problem, truth: Truth, settings: Settings) -> Budgets:
    gen = torch.Generator().manual_seed(5)
    Z = torch.randint(0, 2, (problem.p, settings.pilot_probes), generator=gen).to(problem.dtype) * 2 - 1
    HZ = hessian_operator(problem).matmat_torch(Z)
    t = (Z * HZ).sum(0).double()
    f = (HZ * HZ).sum(0).double()
    t_sd, f_sd = float(t.std()), float(f.std())
    eps = settings.target
    return Budgets(
        trace_needed=math.ceil((t_sd / (eps * abs(truth.trace))) ** 2),
        frob_needed=math.ceil((f_sd / (2 * eps * truth.frobenius**2)) ** 2),
        trace_sd=t_sd,
        frob2_sd=f_sd,
        cap=settings.cap,
    )


def budget_note(needed: int, used: int, seconds: float, target: float) -> str:
    if needed <= used:
        rms = 100 * target * math.sqrt(needed / used)
        return f"{used} probes (1% RMS needs ≈ {needed}; predicted RMS error {rms:.2g}%)"
    per_probe = seconds / used
    return (
        f"capped at {used} probes: {100 * target:g}% RMS needs ≈ {needed:,} probes ≈ "
        f"{fmt_seconds(per_probe * needed)} at this call's rate"
    )


# ---------------------------------------------------------------------------------------------------- sgdstab
def _skip_singular_gauss_newton_bottom(p: int) -> EigenResult:
    """λ_min(G) = 0 exactly when rank G ≤ n·k < p; returned without Lanczos (see :func:`profile_sgdstab`)."""
    return EigenResult(
        eigenvalues=np.zeros(1),
        eigenvectors=np.zeros((p, 0)),
        residual_norms=np.zeros(1),
        converged=True,
        matvecs=0,
        which="SA",
        method="skipped by the benchmark",
    )


WORKAROUND_NOTE = (
    "benchmark workaround: sgdstab's Lanczos for λ_min of the Gauss–Newton operator is skipped (λ_min(G) = 0 "
    "since rank G ≤ n·k < p). As shipped, that ARPACK call never converges (relative tolerance at a zero "
    "eigenvalue, default maxiter = 10·p restarts) and curvature(method='matrix_free') does not return; with a "
    "restart cap it returns no eigenvalue and _spectral_figures raises IndexError."
)


@contextmanager
def profile_sgdstab(problem: sgdstab.Problem) -> Iterator[list[dict[str, Any]]]:
    """Record the stages of ``sgdstab.curvature`` (Lanczos, Hutch++, NTK) with their seconds and products.

    Also applies the one workaround the benchmark needs (:data:`WORKAROUND_NOTE`): the bottom eigenvalue of a
    singular Gauss–Newton operator is supplied instead of computed; the stage is listed as skipped.
    """
    stages: list[dict[str, Any]] = []
    names = ("top_eigenpairs", "hutchpp", "ntk", "layerwise_traces")
    originals = {name: getattr(CURVATURE_MODULE, name) for name in names}
    singular_g = problem.n * problem.k < problem.p

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def inner(*args: Any, **kwargs: Any) -> Any:
            op = args[0]
            op_name = getattr(op, "name", "problem" if isinstance(op, sgdstab.Problem) else type(op).__name__)
            before = getattr(op, "matvecs", 0)
            label = name if "which" not in kwargs else f"{name} {kwargs['which']} k={kwargs.get('k', 1)}"
            start = now()
            if name == "top_eigenpairs" and kwargs.get("which") == "SA" and op_name.startswith("Gauss") and singular_g:
                out = _skip_singular_gauss_newton_bottom(problem.p)
                label += " [skipped: workaround]"
            else:
                out = fn(*args, **kwargs)
            stages.append(
                {
                    "stage": label,
                    "operator": op_name,
                    "seconds": now() - start,
                    "products": getattr(op, "matvecs", 0) - before,
                    "converged": getattr(out, "converged", None),
                }
            )
            return out

        return inner

    for name, fn in originals.items():
        setattr(CURVATURE_MODULE, name, wrap(name, fn))
    try:
        yield stages
    finally:
        for name, fn in originals.items():
            setattr(CURVATURE_MODULE, name, fn)


def sgdstab_rows(built: Built, truth: Truth, settings: Settings) -> tuple[list[Row], dict[str, Any]]:
    P = built.problem
    rows: list[Row] = []
    profiles: dict[str, Any] = {}
    plan = sgdstab.plan_method(P, settings.rtol)
    methods = ["auto"] + ([] if plan.method == "matrix_free" else ["matrix_free"])
    for method in methods:
        more, call, profile = _curvature_rows(P, truth, settings, method, plan)
        rows += more
        profiles[call] = profile
    more, call, profile = _kernel_at_minimum_rows(P, truth)
    rows += more
    profiles[call] = profile
    rows += _building_block_rows(P, truth, settings)
    return rows, profiles


def _curvature_rows(
    P: sgdstab.Problem, truth: Truth, settings: Settings, method: str, plan: MethodPlan
) -> tuple[list[Row], str, dict[str, Any]]:
    """One timed ``sgdstab.curvature`` call: its three figures as rows, its call text and its stage profile."""
    with profile_sgdstab(P) as stages:

        def one_call(method: str = method, stages: list[dict[str, Any]] = stages) -> sgdstab.Curvature:
            stages.clear()  # keep the stages of the timed (last) run only
            return sgdstab.curvature(P, method=method, rtol=settings.rtol, max_matvecs=settings.cap, top=1)

        c, seconds = timed(one_call, f"sgdstab curvature {method}")
    call = f"curvature(method={method!r}, rtol={settings.rtol:g}, max_matvecs={settings.cap}, top=1)"
    if method == "auto":
        call = f"curvature(method='auto' → {c.method!r}, rtol={settings.rtol:g}, max_matvecs={settings.cap}, top=1)"
    values = {LAMBDA: c.sharpness, TRACE: c.trace, FROB: c.hessian_frobenius}
    stderr = {LAMBDA: c.sharpness_error_bound, TRACE: c.trace_stderr, FROB: c.hessian_frobenius_stderr}
    rows = []
    for figure in FIGURES:
        note = f"reported ± {stderr[figure]:.3g}" + ("" if c.converged else "; converged=False")
        if figure == TRACE and c.trace_stderr > settings.rtol * abs(c.trace):
            probes = sum(s["products"] for s in stages if s["stage"] == "hutchpp" and s["operator"] == "Hessian")
            needed = probes * (c.trace_stderr / (settings.rtol * abs(c.trace))) ** 2
            note += f"; rtol needs ≈ {needed:,.0f} Hutch++ probes"
        error = rel_error(values[figure], truth.value(figure))
        rows.append(Row("sgdstab", call, figure, values[figure], error, c.hessian_vector_products, seconds, note))
    profile = {
        "seconds": seconds,
        "stages": list(stages),
        "hessian_vector_products": c.hessian_vector_products,
        "converged": c.converged,
        "notes": list(c.notes),
        "plan_estimated_seconds": plan.estimated_seconds,
        "workaround": WORKAROUND_NOTE if any("workaround" in s["stage"] for s in stages) else None,
    }
    return rows, call, profile


def _kernel_at_minimum_rows(P: sgdstab.Problem, truth: Truth) -> tuple[list[Row], str, dict[str, Any]]:
    """The kernel route with at_minimum=True: exact figures of G = JᵀJ/n, which is H only at a global minimum."""
    with profile_sgdstab(P) as stages:

        def kernel_call(stages: list[dict[str, Any]] = stages) -> sgdstab.Curvature:
            stages.clear()
            return sgdstab.curvature(P, method="kernel", at_minimum=True)

        g, seconds = timed(kernel_call, "sgdstab curvature kernel at_minimum")
    call = "curvature(method='kernel', at_minimum=True)  → G = JᵀJ/n, not H off a minimum"
    values = {LAMBDA: g.sharpness, TRACE: g.trace, FROB: g.hessian_frobenius}
    note = f"exact G; L = {g.loss:.3g}, so G ≠ H: the error is H − G, not estimator error"
    rows = [
        Row("sgdstab", call, figure, values[figure], rel_error(values[figure], truth.value(figure)), 0, seconds, note)
        for figure in FIGURES
    ]
    return rows, call, {"seconds": seconds, "stages": list(stages)}


def _building_block_rows(P: sgdstab.Problem, truth: Truth, settings: Settings) -> list[Row]:
    """Building blocks on the Hessian operator alone (what a Hessian-only call would cost). The operator is made
    inside each timed call, so that its kept gradient graph is paid for every time (as PyHessian's constructor
    is added to its total)."""

    def lanczos() -> Any:
        op = hessian_operator(P)
        out = top_eigenpairs(op, k=1, which="LA", seed=0, tol=LANCZOS_TOL, ncv=LANCZOS_NCV)
        return out, op.matvecs

    (top, matvecs), seconds = timed(lanczos, "sgdstab top_eigenpairs")
    rows = [
        Row(
            "sgdstab",
            f"top_eigenpairs(hessian_operator, k=1, tol={LANCZOS_TOL:g}, ncv={LANCZOS_NCV})  [building block]",
            LAMBDA,
            float(top.eigenvalues[0]),
            rel_error(float(top.eigenvalues[0]), truth.sharpness),
            matvecs,
            seconds,
            f"residual {top.residual_norms[0]:.1e} (curvature's own settings at rtol = 1e-2)",
        )
    ]
    route = sgdstab.measure.traces.layerwise_route(P)
    if route is not None:
        tr_exact, seconds = timed(lambda: sgdstab.hessian_trace(P), "sgdstab hessian_trace")
        call = "hessian_trace(problem)  [building block: exact, layer by layer]"
        note = f"exact ({route} route, no HVPs)"
        rows.append(Row("sgdstab", call, TRACE, tr_exact, rel_error(tr_exact, truth.trace), 0, seconds, note))
    op = hessian_operator(P)

    def trace_frob() -> Any:
        return hutchpp(op, rtol=settings.rtol, max_matvecs=settings.cap, seed=0)

    tf, seconds = timed(trace_frob, "sgdstab hutchpp")
    call = f"hutchpp(hessian_operator, rtol={settings.rtol:g}, max_matvecs={settings.cap})  [building block]"
    for figure, value, se in ((TRACE, tf.trace, tf.trace_stderr), (FROB, tf.frobenius, tf.frobenius_stderr)):
        note = f"reported ± {se:.3g}" + ("" if tf.converged else "; converged=False")
        error = rel_error(value, truth.value(figure))
        rows.append(Row("sgdstab", call, figure, value, error, tf.matvecs, seconds, note))
    return rows


# ---------------------------------------------------------------------------------------------------- PyHessian
@contextmanager
def counting_pyhessian() -> Iterator[list[int]]:
    """Count PyHessian's Hessian-vector products (its module-level ``hessian_vector_product``)."""
    assert pyhessian_module is not None
    count = [0]
    original = pyhessian_module.hessian_vector_product

    def counted(*args: Any, **kwargs: Any) -> Any:
        count[0] += 1
        return original(*args, **kwargs)

    pyhessian_module.hessian_vector_product = counted
    try:
        yield count
    finally:
        pyhessian_module.hessian_vector_product = original


def pyhessian_rows(built: Built, truth: Truth, budgets: Budgets, settings: Settings) -> tuple[list[Row], float]:
    assert pyhessian_module is not None
    P = built.problem
    model = P.model
    criterion = HalfMeanSquare(P.n)

    def make() -> Any:
        for p in model.parameters():
            p.grad = None  # PyHessian's constructor calls backward(create_graph=True), which fills .grad
        return pyhessian_module.hessian(model, criterion, data=(P.X, P.Y), cuda=False)

    H, setup = timed(make, "PyHessian constructor")
    rows = _pyhessian_eigenvalue_rows(H, truth, settings) + _pyhessian_trace_rows(H, truth, budgets, settings)
    for p in model.parameters():
        p.grad = None
    return rows, setup


def _pyhessian_eigenvalue_rows(H: Any, truth: Truth, settings: Settings) -> list[Row]:
    """λ_max by PyHessian's power iteration: its defaults, then the loosest tolerance that reaches the target."""

    def eig(tol: float, max_iter: int) -> tuple[float, int]:
        with counting_pyhessian() as count:
            torch.manual_seed(0)
            values, _ = H.eigenvalues(maxIter=max_iter, tol=tol, top_n=1)
        return float(values[0]), count[0]

    (lam, hvps), seconds = timed(lambda: eig(1e-3, 100), "PyHessian eigenvalues defaults")
    err = rel_error(lam, truth.sharpness)
    call = "eigenvalues(top_n=1)  [defaults: power iteration, tol=1e-3, maxIter=100]"
    rows = [Row("PyHessian", call, LAMBDA, lam, err, hvps, seconds)]
    if err > settings.target:
        for tol in (1e-4, 1e-5, 1e-6):
            (lam, hvps), seconds = timed(lambda tol=tol: eig(tol, 1000), f"PyHessian eigenvalues tol={tol}")
            err = rel_error(lam, truth.sharpness)
            if err <= settings.target or tol == 1e-6:
                call = f"eigenvalues(top_n=1, tol={tol:g}, maxIter=1000)  [tightened]"
                note = "loosest tol of 1e-4, 1e-5, 1e-6 within 1%"
                rows.append(Row("PyHessian", call, LAMBDA, lam, err, hvps, seconds, note))
                break
    return rows


def _pyhessian_trace_rows(H: Any, truth: Truth, budgets: Budgets, settings: Settings) -> list[Row]:
    """Tr H by PyHessian's Hutchinson: its defaults, then the probes the pilot asks for (within the shared cap)."""

    def trace(max_iter: int, tol: float) -> tuple[float, int, list[float]]:
        with counting_pyhessian() as count:
            torch.manual_seed(0)
            samples = H.trace(maxIter=max_iter, tol=tol)
        return float(np.mean(samples)), count[0], samples

    (tr, hvps, samples), seconds = timed(lambda: trace(100, 1e-3), "PyHessian trace defaults")
    note = f"stopped after {len(samples)} probes"
    if len(samples) < 100 and min(np.cumsum(samples)[:-1], default=1.0) < 0:
        note += " (its relative-change test divides by a negative running mean: it stops at once)"
    call = "trace()  [defaults: Hutchinson, tol=1e-3, maxIter=100]"
    rows = [Row("PyHessian", call, TRACE, tr, rel_error(tr, truth.trace), hvps, seconds, note)]
    m = budgets.use(budgets.trace_needed)
    # tol=-inf runs exactly maxIter probes (tol=0 would still stop when the running mean turns negative).
    (tr, hvps, _), seconds = timed(lambda: trace(m, -math.inf), f"PyHessian trace {m}")
    rows.append(
        Row(
            "PyHessian",
            f"trace(maxIter={m}, tol=-inf)  [Hutchinson, {m} probes]",
            TRACE,
            tr,
            rel_error(tr, truth.trace),
            hvps,
            seconds,
            budget_note(budgets.trace_needed, m, seconds, settings.target),
            {"predicted_rms_error": budgets.predicted(TRACE, m, truth)},
        )
    )
    return rows


# ---------------------------------------------------------------------------------------------------- curvlinops
def curvlinops_rows(built: Built, truth: Truth, budgets: Budgets, settings: Settings) -> tuple[list[Row], float]:
    assert curvlinops is not None
    P = built.problem
    model = P.model
    params = [p for p in model.parameters() if p.requires_grad]
    criterion = HalfMeanSquare(P.n)
    H, setup = timed(
        lambda: curvlinops.HessianLinearOperator(model, criterion, params, [(P.X, P.Y)]), "curvlinops constructor"
    )
    rows = _curvlinops_eigenvalue_rows(H, P.p, truth, settings) + _curvlinops_norm_rows(H, truth, budgets, settings)
    return rows, setup


def _curvlinops_eigenvalue_rows(H: Any, p: int, truth: Truth, settings: Settings) -> list[Row]:
    """λ_max by scipy's eigsh on curvlinops' operator: scipy's default tol=0, then the loosest reaching the target."""

    def eig(tol: float) -> tuple[float, int]:
        op = CountingOperator(H.to_scipy())
        v0 = np.random.default_rng(0).standard_normal(p)
        value = eigsh(op, k=1, which="LA", tol=tol, v0=v0, return_eigenvectors=False)
        return float(value[0]), op.count

    (lam, hvps), seconds = timed(lambda: eig(0.0), "curvlinops eigsh tol=0")
    call = "eigsh(H.to_scipy(), k=1, which='LA')  [scipy default tol=0]"
    rows = [Row("curvlinops", call, LAMBDA, lam, rel_error(lam, truth.sharpness), hvps, seconds)]
    for tol in (1e-2, 1e-3, 1e-4):
        (lam, hvps), seconds = timed(lambda tol=tol: eig(tol), f"curvlinops eigsh tol={tol}")
        err = rel_error(lam, truth.sharpness)
        if err <= settings.target or tol == 1e-4:
            note = "loosest tol of 1e-2, 1e-3, 1e-4 within 1%"
            rows.append(Row("curvlinops", f"eigsh(..., tol={tol:g})", LAMBDA, lam, err, hvps, seconds, note))
            break
    return rows


def _curvlinops_norm_rows(H: Any, truth: Truth, budgets: Budgets, settings: Settings) -> list[Row]:
    """Tr H (Hutchinson, Hutch++) and ||H||_F (Hutchinson on ||H||_F²) at the probes the pilot asks for."""

    def seeded(fn: Callable[[], Tensor]) -> float:
        torch.manual_seed(0)
        return float(fn())

    m = budgets.use(budgets.trace_needed)
    tr, seconds = timed(lambda: seeded(lambda: curvlinops.hutchinson_trace(H, m)), "curvlinops hutchinson_trace")
    rows = [
        Row(
            "curvlinops",
            f"hutchinson_trace(H, {m})",
            TRACE,
            tr,
            rel_error(tr, truth.trace),
            m,
            seconds,
            budget_note(budgets.trace_needed, m, seconds, settings.target),
            {"predicted_rms_error": budgets.predicted(TRACE, m, truth)},
        )
    ]
    m3 = 3 * max(1, round(m / 3))
    tr, seconds = timed(lambda: seeded(lambda: curvlinops.hutchpp_trace(H, m3)), "curvlinops hutchpp_trace")
    note = "same budget as Hutchinson (no variance estimate to size it)"
    rows.append(Row("curvlinops", f"hutchpp_trace(H, {m3})", TRACE, tr, rel_error(tr, truth.trace), m3, seconds, note))
    mf = budgets.use(budgets.frob_needed)
    fro2, seconds = timed(lambda: seeded(lambda: curvlinops.hutchinson_squared_fro(H, mf)), "curvlinops squared_fro")
    fro = math.sqrt(max(fro2, 0.0))
    rows.append(
        Row(
            "curvlinops",
            f"hutchinson_squared_fro(H, {mf}) ** 0.5",
            FROB,
            fro,
            rel_error(fro, truth.frobenius),
            mf,
            seconds,
            budget_note(budgets.frob_needed, mf, seconds, settings.target),
            {"predicted_rms_error": budgets.predicted(FROB, mf, truth)},
        )
    )
    return rows


# ---------------------------------------------------------------------------------------------------- HVP costs
def hvp_costs(built: Built) -> dict[str, Any]:
    """Seconds of one Hessian-vector product in each library (single vector, and per column of a 32-block)."""
    P = built.problem
    model = P.model
    criterion = HalfMeanSquare(P.n)
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(P.p, generator=gen, dtype=P.dtype)
    V = torch.randn(P.p, 32, generator=gen, dtype=P.dtype)
    op = hessian_operator(P)
    out: dict[str, Any] = {}
    hv_ref = op.matvec_torch(v)
    out["sgdstab_single"] = median_time(lambda: op.matvec_torch(v))
    out["sgdstab_block32_per_column"] = median_time(lambda: op.matmat_torch(V), repeats=3) / 32

    def forward_backward() -> None:
        model.zero_grad(set_to_none=True)
        criterion(model(P.X), P.Y).backward()

    out["forward_backward"] = median_time(forward_backward)
    for p in model.parameters():
        p.grad = None
    if pyhessian_module is not None:
        H = pyhessian_module.hessian(model, criterion, data=(P.X, P.Y), cuda=False)
        vs = [t.view_as(p) for t, p in zip(torch.split(v, [p.numel() for p in H.params]), H.params, strict=True)]
        hv = torch.cat([t.reshape(-1) for t in pyhessian_module.hessian_vector_product(H.gradsH, H.params, vs)])
        out["pyhessian_single"] = median_time(lambda: pyhessian_module.hessian_vector_product(H.gradsH, H.params, vs))
        out["pyhessian_vs_sgdstab_rel_diff"] = float((hv - hv_ref).norm() / hv_ref.norm())
        for p in model.parameters():
            p.grad = None
        del H
    if curvlinops is not None:
        params = [p for p in model.parameters() if p.requires_grad]
        Hc = curvlinops.HessianLinearOperator(model, criterion, params, [(P.X, P.Y)], check_deterministic=False)
        out["curvlinops_single"] = median_time(lambda: Hc @ v)
        out["curvlinops_block32_per_column"] = median_time(lambda: Hc @ V, repeats=3) / 32
        out["curvlinops_vs_sgdstab_rel_diff"] = float(((Hc @ v) - hv_ref).norm() / hv_ref.norm())
    return out


def blas_diagnostic(built: Built, settings: Settings) -> dict[str, Any] | None:
    """sgdstab's ``hutchpp`` with numpy's BLAS pool at its default size and at one thread (wall and CPU seconds).

    The estimators alternate numpy BLAS calls (float64 orthogonalization, projections) with torch products; idle
    OpenBLAS threads spin after each numpy call and take the cores from torch. Run on small problems only.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return None
    op = hessian_operator(built.problem)
    out: dict[str, Any] = {}
    for label, limit in (("default", os.cpu_count() or 1), ("one", 1)):
        with threadpool_limits(limits=limit, user_api="blas"):
            wall, cpu = time.perf_counter(), time.process_time()
            hutchpp(op, rtol=settings.rtol, max_matvecs=settings.cap, seed=0)
            out[f"blas_threads_{label}"] = {
                "threads": limit,
                "wall": time.perf_counter() - wall,
                "cpu": time.process_time() - cpu,
            }
    progress(f"BLAS-thread diagnostic: {out}")
    return out


# ---------------------------------------------------------------------------------------------------- summary
def best_within(rows: list[Row], library: str, figure: str, target: float) -> Row | None:
    ok = [r for r in rows if r.library == library and r.figure == figure and r.rel_error <= target]
    return min(ok, key=lambda r: r.seconds) if ok else None


def speed(peer_seconds: float, sgdstab_seconds: float) -> str:
    """'sgdstab is r× faster' or 'sgdstab is r× slower', r ≥ 1."""
    r = peer_seconds / sgdstab_seconds
    return f"sgdstab is {r:.3g}× faster" if r >= 1 else f"sgdstab is {1 / r:.3g}× SLOWER"


def _pyhessian_trace_time(rows: list[Row], budgets: Budgets, target: float) -> tuple[float, str] | None:
    """PyHessian's time to Tr H at the target: measured when a row reached it, else its fixed-budget Hutchinson
    row's per-probe rate times the probes the pilot predicts (an extrapolation, labelled so)."""
    best = best_within(rows, "PyHessian", TRACE, target)
    if best is not None:
        return best.seconds, "measured"
    capped = [r for r in rows if r.library == "PyHessian" and r.figure == TRACE and "tol=-inf" in r.call]
    if not capped or capped[0].hvps == 0:
        return None
    row = capped[0]
    return row.seconds / row.hvps * budgets.trace_needed, f"extrapolated: {budgets.trace_needed:,} probes"


def ratios(
    rows: list[Row], setups: dict[str, float], hvp: dict[str, Any], target: float, budgets: Budgets
) -> list[str]:
    """Speed ratios peer / sgdstab at equal accuracy, where both reach the target; otherwise what each reached."""
    lines = _exact_trace_ratio(rows, setups, target, budgets)
    lines += _peer_ratios(rows, setups, target)
    lines += _lambda_ratios(rows, setups, target)
    if "pyhessian_single" in hvp:
        ph, single, block = hvp["pyhessian_single"], hvp["sgdstab_single"], hvp["sgdstab_block32_per_column"]
        lines.append(
            f"one HVP: PyHessian {fmt_seconds(ph)} vs sgdstab {fmt_seconds(single)} for a single vector "
            f"({speed(ph, single)}), {fmt_seconds(block)} per column in blocks of 32 ({speed(ph, block)})"
        )
    return lines


def _exact_trace_ratio(rows: list[Row], setups: dict[str, float], target: float, budgets: Budgets) -> list[str]:
    """PyHessian's λ_max + Tr H against sgdstab's Lanczos building block and its exact layerwise Tr H."""
    lam_sg = next(
        (r for r in rows if r.library == "sgdstab" and r.figure == LAMBDA and "[building block" in r.call), None
    )
    exact_trace = next((r for r in rows if r.library == "sgdstab" and "hessian_trace" in r.call), None)
    lam_ph = best_within(rows, "PyHessian", LAMBDA, target)
    tr_ph = _pyhessian_trace_time(rows, budgets, target)
    if not ("PyHessian" in setups and exact_trace and lam_sg and lam_ph and tr_ph and lam_sg.rel_error <= target):
        return []
    ph = setups["PyHessian"] + lam_ph.seconds + tr_ph[0]
    sg = lam_sg.seconds + exact_trace.seconds
    return [
        f"λ_max + Tr H at ≤{100 * target:g}%: PyHessian {fmt_seconds(ph)} (setup + λ_max + Tr H, the trace "
        f"{tr_ph[1]}) vs sgdstab top_eigenpairs + hessian_trace (exact) {fmt_seconds(sg)}: {speed(ph, sg)} "
        "(target: ≥ 10× faster)"
    ]


def _peer_ratios(rows: list[Row], setups: dict[str, float], target: float) -> list[str]:
    """Each peer's fastest call per figure at the target (setup included) against sgdstab's one curvature call."""
    lines: list[str] = []
    main = [r for r in rows if r.library == "sgdstab" and r.call.startswith("curvature(method='auto'")]
    sg_time = main[0].seconds
    sg_ok = {r.figure: r.rel_error <= target for r in main}
    for peer, figures in (("PyHessian", (LAMBDA, TRACE)), ("curvlinops", FIGURES)):
        if peer not in setups:
            continue
        best = {f: best_within(rows, peer, f, target) for f in figures}
        missing = [f for f, r in best.items() if r is None]
        sg_missing = [f for f in figures if not sg_ok[f]]
        what = " + ".join(figures)
        if missing or sg_missing:
            lines += _no_equal_accuracy(peer, what, figures, best, missing, sg_missing, setups[peer], sg_time, target)
            continue
        peer_time = setups[peer] + sum(r.seconds for r in best.values() if r is not None)
        lines.append(
            f"{what} at ≤{100 * target:g}%: {peer} {fmt_seconds(peer_time)} (setup + fastest call per figure) vs "
            f"sgdstab.curvature {fmt_seconds(sg_time)} (all three figures): {speed(peer_time, sg_time)}"
            + (" (target: ≥ 10× faster)" if peer == "PyHessian" else "")
        )
    return lines


def _no_equal_accuracy(
    peer: str,
    what: str,
    figures: tuple[str, ...],
    best: dict[str, Row | None],
    missing: list[str],
    sg_missing: list[str],
    setup: float,
    sg_time: float,
    target: float,
) -> list[str]:
    """What each side reached when one of them missed the target on some figure (no equal-accuracy ratio)."""
    parts = []
    if missing:
        parts.append(f"{peer} did not reach {100 * target:g}% on {', '.join(missing)}")
    if sg_missing:
        parts.append(f"sgdstab's one call did not reach it on {', '.join(sg_missing)}")
    lines = [f"{what}: no equal-accuracy ratio ({'; '.join(parts)})."]
    reached = [f for f in figures if best[f] is not None and f not in sg_missing]
    if reached:
        peer_time = setup + sum(best[f].seconds for f in reached)  # type: ignore[union-attr]
        lines.append(
            f"  on the figures both reached ({', '.join(reached)}): {peer} {fmt_seconds(peer_time)} "
            f"(setup included) vs sgdstab's whole call {fmt_seconds(sg_time)}: {speed(peer_time, sg_time)}"
        )
    return lines


def _lambda_ratios(rows: list[Row], setups: dict[str, float], target: float) -> list[str]:
    """λ_max alone: each peer's fastest call at the target against sgdstab's Lanczos building block."""
    lam_peer = {peer: best_within(rows, peer, LAMBDA, target) for peer in setups}
    block = [r for r in rows if r.library == "sgdstab" and r.figure == LAMBDA and "top_eigenpairs" in r.call]
    if not (block and block[0].rel_error <= target):
        return []
    lines = []
    for peer, row in lam_peer.items():
        if row is not None:
            t = setups[peer] + row.seconds
            lines.append(
                f"λ_max alone at ≤{100 * target:g}%: {peer} {fmt_seconds(t)} ({row.hvps} HVPs) vs sgdstab "
                f"top_eigenpairs {fmt_seconds(block[0].seconds)} ({block[0].hvps} HVPs) → "
                f"{speed(t, block[0].seconds)}"
            )
    return lines


def print_problem(
    built: Built,
    truth: Truth,
    cached: bool,
    rows: list[Row],
    setups: dict[str, float],
    hvp: dict[str, Any],
    profiles: dict[str, Any],
    budgets: Budgets,
    summary: list[str],
) -> None:
    _print_header(built, truth, cached, budgets)
    print()
    print(
        table(
            ["library", "call", "figure", "value", "rel.err", "≤1%", "HVPs", "seconds", "note"],
            _row_table(rows) + _setup_table(setups),
            right=(3, 4, 6, 7),
        )
    )
    print("\n  one Hessian-vector product (median):")
    hv_rows = [[k, fmt_seconds(v) if "diff" not in k else f"{v:.1e}"] for k, v in hvp.items()]
    print("    " + table(["what", "value"], hv_rows, right=(1,)).replace("\n", "\n    "))
    _print_profiles(profiles)
    if any(prof.get("workaround") for prof in profiles.values()):
        print(f"\n  NOTE: {WORKAROUND_NOTE}")
    print("\n  ratios:")
    for line in summary:
        print(f"    {line}")


def _print_header(built: Built, truth: Truth, cached: bool, budgets: Budgets) -> None:
    i = built.info
    print(
        f"\n=== Problem {built.spec.key}: {i['dataset']} classes={i['classes']}, n={i['n']}, k={i['k']}, {i['model']},"
        f" p={i['p']:,}"
    )
    print(
        f"    trained: {i['training']}; L {i['loss_init']:.4f} → {i['loss_trained']:.4f}, ||∇L|| = {i['grad_norm']:.3g}"
    )
    if i["data_note"]:
        print(f"    note: {i['data_note']}")
    src = "cached" if cached else f"computed in {truth.seconds:.1f} s"
    print(f"    truth ({src}): λ_max = {truth.sharpness:.6g} [{truth.sharpness_method}]")
    print(f"                   Tr H  = {truth.trace:.6g} [{truth.trace_method}]")
    frob_se = f" ± {truth.frobenius_stderr:.2g}" if truth.frobenius_stderr else ""
    print(f"                   ||H||_F = {truth.frobenius:.6g}{frob_se} [{truth.frobenius_method}]")
    for name, value in truth.checks.items():
        print(f"                   check {name} = {value:.1e}")
    print(
        f"    Hutchinson probes for 1% RMS (Rademacher pilot): Tr H ≈ {budgets.trace_needed:,}, "
        f"||H||_F ≈ {budgets.frob_needed:,}; shared cap {budgets.cap}"
    )


def _row_table(rows: list[Row]) -> list[list[str]]:
    """The rows as table lines; a call's library, text, products and seconds only on its first figure."""
    body = []
    last_call = None
    for r in rows:
        same = r.call == last_call
        body.append(
            [
                "" if same else r.library,
                "" if same else r.call,
                r.figure,
                fmt_value(r.value),
                fmt_percent(r.rel_error),
                "yes" if r.rel_error <= 1e-2 else "NO",
                "" if same else ("-" if r.hvps is None else str(r.hvps)),
                "〃" if same else fmt_seconds(r.seconds),
                r.note,
            ]
        )
        last_call = r.call
    return body


def _setup_table(setups: dict[str, float]) -> list[list[str]]:
    """Each peer's constructor time, as table lines."""
    return [
        [
            peer,
            "constructor (once per problem, not in the rows above)",
            "",
            "",
            "",
            "",
            "",
            fmt_seconds(s),
            "PyHessian: forward+backward with create_graph"
            if peer == "PyHessian"
            else "curvlinops: counts the data and checks determinism",
        ]
        for peer, s in setups.items()
    ]


def _print_profiles(profiles: dict[str, Any]) -> None:
    """Where each profiled sgdstab call spends its time, stage by stage."""
    for call, prof in profiles.items():
        if not prof.get("stages"):
            continue
        print(f"\n  where sgdstab's {call.split('  ')[0]} spends its {fmt_seconds(prof['seconds'])}:")
        st = [
            [
                s["stage"],
                s["operator"],
                str(s["products"]),
                fmt_seconds(s["seconds"]),
                fmt_seconds(s["seconds"] / s["products"]) if s["products"] else "-",
            ]
            for s in prof["stages"]
        ]
        other = prof["seconds"] - sum(s["seconds"] for s in prof["stages"])
        st.append(["rest (loss, gradient, setup, kernel figures)", "", "", fmt_seconds(other), ""])
        print(
            "    "
            + table(["stage", "operator", "products", "seconds", "per product"], st, right=(2, 3, 4)).replace(
                "\n", "\n    "
            )
        )


def run_problem(spec: Spec, settings: Settings, fresh_truth: bool) -> dict[str, Any]:
    progress(f"problem {spec.key}: building and training")
    built = build(spec)
    progress(f"problem {spec.key}: ground truth")
    truth, cached = ground_truth(built, settings, fresh_truth)
    progress(f"problem {spec.key}: variance pilot")
    budgets = pilot_budgets(built.problem, truth, settings)
    rows, profiles = sgdstab_rows(built, truth, settings)
    setups: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*create_graph=True.*")
        if pyhessian_module is not None:
            more, setups["PyHessian"] = pyhessian_rows(built, truth, budgets, settings)
            rows += more
        if curvlinops is not None:
            more, setups["curvlinops"] = curvlinops_rows(built, truth, budgets, settings)
            rows += more
        progress(f"problem {spec.key}: cost of one HVP")
        hvp = hvp_costs(built)
    blas = blas_diagnostic(built, settings) if built.problem.p <= settings.dense_max_p else None
    summary = ratios(rows, setups, hvp, settings.target, budgets)
    if blas is not None:
        d, o = blas["blas_threads_default"], blas["blas_threads_one"]
        summary.append(
            f"numpy BLAS threads: sgdstab's hutchpp takes {fmt_seconds(d['wall'])} wall / {fmt_seconds(d['cpu'])} CPU "
            f"with OpenBLAS at {d['threads']} threads, {fmt_seconds(o['wall'])} / {fmt_seconds(o['cpu'])} at 1"
        )
    print_problem(built, truth, cached, rows, setups, hvp, profiles, budgets, summary)
    return {
        "spec": asdict(spec),
        "info": built.info,
        "truth": asdict(truth) | {"cached": cached},
        "budgets": asdict(budgets),
        "rows": [asdict(r) for r in rows],
        "peer_setup_seconds": setups,
        "hvp_seconds": hvp,
        "sgdstab_profiles": profiles,
        "blas_thread_diagnostic": blas,
        "ratios": summary,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small problems, under a minute")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    parser.add_argument("--problems", default="A,B", help="comma-separated problem keys (default A,B)")
    parser.add_argument("--no-ntk", action="store_true", help="skip the NTK kernel-route section")
    parser.add_argument("--fresh-truth", action="store_true", help="recompute the ground truth, ignore the cache")
    parser.add_argument(
        "--out", type=Path, help="JSON output path (default results/curvature.json, or curvature_quick.json)"
    )
    parser.add_argument(
        "--blas-threads", type=int, default=0, help="numpy/scipy BLAS threads (default: as --threads, if given)"
    )
    parser.add_argument(
        "--clock", choices=("wall", "cpu"), help="timing clock (default: cpu with --threads 1, else wall)"
    )
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    blas_threads = args.blas_threads or args.threads
    blas_limit = limit_blas_threads(blas_threads) if blas_threads > 0 else None  # noqa: F841 (kept alive)
    clock = args.clock or ("cpu" if args.threads == 1 else "wall")
    set_clock(clock)
    specs = QUICK_SPECS if args.quick else FULL_SPECS
    settings = QUICK_SETTINGS if args.quick else FULL_SETTINGS
    wanted = set(args.problems.split(","))
    start = time.perf_counter()
    state = machine_state()
    peers = {
        "pyhessian": _version("pyhessian") if pyhessian_module else None,
        "curvlinops-for-pytorch": _version("curvlinops-for-pytorch") if curvlinops else None,
    }
    print(f"sgdstab {sgdstab.__version__} (source sha256 {source_digest()}); peers {peers}; {state}")
    if None in peers.values():
        print("NOTE: a peer is missing; run `bash benchmarks/setup_peers.sh` and use benchmarks/.env/bin/python")
    if clock_name() == "cpu":
        print("Times are CPU seconds of this single-threaded process (time.process_time), robust to other load.")
    if (warning := busy_warning()) is not None:
        print(f"WARNING: {warning}")
    results: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "settings": asdict(settings),
        "machine_start": state,
        "versions": {"sgdstab": sgdstab.__version__, "sgdstab_source_sha256": source_digest(), **peers},
        "problems": [run_problem(s, settings, args.fresh_truth) for s in specs if s.key in wanted],
    }
    if not args.no_ntk:
        progress("NTK section (fresh subprocess)")
        results["ntk"] = bench_ntk.run(quick=args.quick, threads=args.threads, blas_threads=blas_threads, clock=clock)
        bench_ntk.print_report(results["ntk"])
    results["machine_end"] = machine_state()
    results["total_seconds"] = time.perf_counter() - start
    out = args.out or RESULTS_DIR / ("curvature_quick.json" if args.quick else "curvature.json")
    write_json(out, results)
    print(f"\nwrote {out} (total {results['total_seconds']:.0f} s)")
    return 0


def source_digest() -> str:
    """sha256 of sgdstab's source files as measured (the package is edited concurrently; this names the state)."""
    root = Path(sgdstab.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


if __name__ == "__main__":
    raise SystemExit(main())
