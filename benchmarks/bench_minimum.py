"""The default call at a global minimum — the paper's central case — side by side with the peers, in one run.

At an exact minimum of the square loss, in float32, for each problem:

- ``sgdstab.curvature(problem)`` with its defaults (the call a user makes): it decides the regime itself, takes
  G's figures exactly from the NTK and bounds the residual part R = H − G from one product of R;
- ``sgdstab.ntk(problem)`` alone (the floor: the default call should stay within 2× of it);
- ``sgdstab.curvature(problem, at_minimum=True)`` (asserted minimum, R not probed);
- PyHessian (λ_max by power iteration, Tr H by Hutchinson; no ||H||_F) and curvlinops (λ_max, Tr H, ||H||_F),
  each tightened until its error is within 1% of the ground truth, or extrapolated from its rate where its
  budget would not reach it (as in ``bench_curvature.py``, whose machinery this reuses).

Problems: ``M`` — MLP 64-256-256-1 tanh, n = 1000 Gaussian inputs, targets = the net's own outputs (L ≈ 1e-18);
``D`` — 500 scikit-learn digits, ten one-hot outputs (n·k = 5000), MLP 64-64-64-10 tanh (p = 8,970), trained by
SGD on the one-hot labels, then given its own outputs as targets (an exact minimum at trained weights).

    benchmarks/.env/bin/python benchmarks/bench_minimum.py --threads 1 [--quick]

Results: printed tables and ``benchmarks/results/minimum.json`` (``minimum_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

import sgdstab

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_curvature as bc
from _common import (
    RESULTS_DIR,
    busy_warning,
    clock_name,
    fmt_seconds,
    limit_blas_threads,
    machine_state,
    median_time,
    progress,
    set_clock,
    table,
    write_json,
)

FULL = {
    "M": bc.Spec("M", "gaussian-teacher", 1000, None, (256, 256), lr=0.0, batch_size=0, steps=0),
    "D": bc.Spec("D", "digits", 500, None, (64, 64), lr=0.3, batch_size=50, steps=500),
}
QUICK = {
    "M": bc.Spec("M", "gaussian-teacher", 300, None, (64, 64), lr=0.0, batch_size=0, steps=0),
    "D": bc.Spec("D", "digits", 200, None, (32, 32), lr=0.3, batch_size=50, steps=300),
}


def build(spec: bc.Spec) -> bc.Built:
    """The spec's problem at an exact minimum, in float32 (as a user's model usually is)."""
    if spec.dataset == "gaussian-teacher":
        model = sgdstab.mlp((64,), 1, widths=spec.widths, activation="tanh", seed=0)
        X = torch.randn(spec.n, 64, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            Y = model(X).clone()
        problem = sgdstab.Problem(model, X, Y)
        how = "targets = the net's own outputs"
    else:
        X, Y = sgdstab.load_dataset(spec.dataset, n=spec.n)
        model = sgdstab.mlp(X.shape[1:], Y.shape[1], widths=spec.widths, activation="tanh", seed=0)
        trainer = sgdstab.Problem(model, X, Y)
        sgdstab.train(trainer, lr=spec.lr, batch_size=spec.batch_size, steps=spec.steps, seed=0, progress=False)
        # the trained net's own outputs as targets: an exact minimum at these (trained) weights. Polishing from the
        # trained point does not reach one at this size (p / nk = 1.8: L stalls near 5e-6).
        with torch.no_grad():
            problem = sgdstab.Problem(model, X, model(X).clone())
        problem.set_parameters(trainer.theta)
        how = f"SGD {spec.steps} steps on the one-hot labels, then targets := the net's outputs"
    k = problem.k
    arch = "-".join(str(d) for d in (math.prod(problem.X.shape[1:]), *spec.widths, k))
    info = {
        "dataset": spec.dataset,
        "n": problem.n,
        "k": k,
        "p": problem.p,
        "model": f"MLP {arch} tanh, {str(problem.dtype).removeprefix('torch.')}",
        "training": how,
        "loss": float(problem.loss()),
        "grad_norm": float(torch.linalg.vector_norm(problem.gradient())),
    }
    return bc.Built(spec, problem, info)


def exact_minimum_truth(built: bc.Built, truth: bc.Truth) -> bc.Truth:
    """Where H is too large to form, the truth at an exact minimum from the float64 Jacobian (autograd, not the NTK
    code under test): ||G||_F = ||JJᵀ||_F / n, Tr G = ||J||_F² / n, λ_max(G) = λ_max(JJᵀ) / n, H = G up to the float32
    targets' rounding. The Lanczos/Hutch++ truth is kept beside it as a check."""
    if truth.frobenius_method.startswith("dense"):
        return truth
    start = time.perf_counter()
    P = built.problem
    P64 = sgdstab.Problem(P.model, P.X, P.Y, dtype=torch.float64)
    J = P64.jacobian()
    K = J @ J.T
    n = P64.n
    checks = dict(truth.checks) | {
        "lanczos_hutchpp_truth": {
            "sharpness": truth.sharpness,
            "frobenius": truth.frobenius,
            "frobenius_stderr": truth.frobenius_stderr,
        },
        "float64_loss": float(P64.loss()),
    }
    method = "float64 autograd Jacobian: G = JᵀJ/n (H = G at this minimum)"
    return bc.Truth(
        sharpness=float(torch.linalg.eigvalsh(K)[-1]) / n,
        sharpness_method=method,
        trace=float((J * J).sum()) / n,
        trace_stderr=0.0,
        trace_method=method,
        frobenius=float(torch.linalg.matrix_norm(K)) / n,
        frobenius_stderr=0.0,
        frobenius_method=method,
        seconds=truth.seconds + time.perf_counter() - start,
        checks=checks,
    )


def sgdstab_rows(built: bc.Built, truth: bc.Truth) -> tuple[list[bc.Row], dict[str, Any]]:
    P = built.problem
    rows: list[bc.Row] = []
    ntk_seconds = median_time(lambda: sgdstab.ntk(P))
    calls = {
        "curvature(problem)  [the defaults]": lambda: sgdstab.curvature(P),
        "curvature(problem, at_minimum=True)": lambda: sgdstab.curvature(P, at_minimum=True),
    }
    details: dict[str, Any] = {"ntk_seconds": ntk_seconds}
    for call, fn in calls.items():
        seconds = median_time(fn)
        c = fn()
        values = {bc.LAMBDA: c.sharpness, bc.TRACE: c.trace, bc.FROB: c.hessian_frobenius}
        bounds = {bc.LAMBDA: c.sharpness_error_bound, bc.TRACE: c.trace_stderr, bc.FROB: c.hessian_frobenius_stderr}
        for figure in bc.FIGURES:
            note = f"± {bounds[figure]:.2g}; exact={c.exact}, converged={c.converged}, route {c.method}"
            rows.append(
                bc.Row(
                    "sgdstab",
                    call,
                    figure,
                    values[figure],
                    bc.rel_error(values[figure], truth.value(figure)),
                    c.hessian_vector_products,
                    seconds,
                    note,
                )
            )
        details[call] = {
            "seconds": seconds,
            "seconds_over_ntk": seconds / ntk_seconds,
            "result": c.to_dict(),
        }
    return rows, details


def summary(rows: list[bc.Row], setups: dict[str, float], budgets: bc.Budgets, details: dict[str, Any]) -> list[str]:
    target = 1e-2
    default = [r for r in rows if r.library == "sgdstab" and "[the defaults]" in r.call]
    sg_time = default[0].seconds
    ok = all(r.rel_error <= target for r in default)
    lines = [
        f"sgdstab.curvature(problem) {fmt_seconds(sg_time)} vs sgdstab.ntk(problem) "
        f"{fmt_seconds(details['ntk_seconds'])}: {sg_time / details['ntk_seconds']:.2f}× ntk's time (target ≤ 2×); "
        f"its three figures within 1%: {'yes' if ok else 'NO'} (largest error "
        f"{max(r.rel_error for r in default):.1e})"
    ]
    if "PyHessian" in setups:
        lam = bc.best_within(rows, "PyHessian", bc.LAMBDA, target)
        tr = bc._pyhessian_trace_time(rows, budgets, target)
        if lam is not None and tr is not None:
            ph = setups["PyHessian"] + lam.seconds + tr[0]
            lines.append(
                f"λ_max + Tr H at ≤1%: PyHessian {fmt_seconds(ph)} (setup + λ_max + Tr H, the trace {tr[1]}; it has "
                f"no ||H||_F) vs sgdstab.curvature(problem) {fmt_seconds(sg_time)} for all three: "
                f"{bc.speed(ph, sg_time)} (target: ≥ 10× faster)"
            )
        else:
            lines.append("PyHessian did not reach 1% on λ_max or Tr H within its budget (see the table)")
    if "curvlinops" in setups:
        best = {f: bc.best_within(rows, "curvlinops", f, target) for f in bc.FIGURES}
        if all(best.values()):
            cl = setups["curvlinops"] + sum(r.seconds for r in best.values() if r is not None)
            lines.append(
                f"λ_max + Tr H + ||H||_F at ≤1%: curvlinops {fmt_seconds(cl)} vs sgdstab.curvature(problem) "
                f"{fmt_seconds(sg_time)}: {bc.speed(cl, sg_time)}"
            )
        else:
            missing = [f for f, r in best.items() if r is None]
            lines.append(f"curvlinops did not reach 1% on {', '.join(missing)} within its budget (see the table)")
    return lines


def run_problem(spec: bc.Spec, settings: bc.Settings, fresh: bool) -> dict[str, Any]:
    progress(f"problem {spec.key}: building the minimum")
    built = build(spec)
    progress(f"problem {spec.key}: ground truth")
    truth, cached = bc.ground_truth(built, settings, fresh)
    truth = exact_minimum_truth(built, truth)
    progress(f"problem {spec.key}: sgdstab")
    rows, details = sgdstab_rows(built, truth)
    progress(f"problem {spec.key}: variance pilot and peers")
    budgets = bc.pilot_budgets(built.problem, truth, settings)
    setups: dict[str, float] = {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*create_graph=True.*")
        if bc.pyhessian_module is not None:
            more, setups["PyHessian"] = bc.pyhessian_rows(built, truth, budgets, settings)
            rows += more
        if bc.curvlinops is not None:
            more, setups["curvlinops"] = bc.curvlinops_rows(built, truth, budgets, settings)
            rows += more
    lines = summary(rows, setups, budgets, details)
    print(
        f"\n=== problem {spec.key}: {built.info['model']}, n = {built.info['n']}, k = {built.info['k']}, "
        f"p = {built.info['p']:,}; {built.info['training']}; L = {built.info['loss']:.3g}"
    )
    print(
        f"ground truth ({'cached' if cached else f'{truth.seconds:.0f} s'}): λ_max {truth.sharpness:.8g} "
        f"[{truth.sharpness_method}], Tr H {truth.trace:.8g} [{truth.trace_method}], ||H||_F "
        f"{truth.frobenius:.8g} [{truth.frobenius_method}]"
    )
    print(f"peer setup: {', '.join(f'{k} {fmt_seconds(v)}' for k, v in setups.items()) or 'no peers installed'}")
    print(
        table(
            ["library", "call", "figure", "value", "error", "HVPs", clock_name(), "note"],
            [
                [
                    r.library,
                    r.call,
                    r.figure,
                    f"{r.value:.8g}",
                    f"{r.rel_error:.1e}",
                    str(r.hvps or 0),
                    fmt_seconds(r.seconds),
                    r.note,
                ]
                for r in rows
            ],
            right=(3, 4, 5, 6),
        )
    )
    print("\n".join(f"  → {line}" for line in lines))
    return {
        "spec": asdict(spec),
        "info": built.info,
        "truth": asdict(truth) | {"cached": cached},
        "budgets": asdict(budgets),
        "rows": [asdict(r) for r in rows],
        "peer_setup_seconds": setups,
        "sgdstab": details,
        "summary": lines,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller problems, about a minute")
    parser.add_argument("--threads", type=int, default=0, help="torch and BLAS threads (default: their own choice)")
    parser.add_argument("--problems", default="M,D", help="comma-separated problem keys (default M,D)")
    parser.add_argument("--fresh-truth", action="store_true", help="recompute the ground truth, ignore the cache")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    blas = limit_blas_threads(args.threads) if args.threads > 0 else None  # noqa: F841 (kept alive)
    set_clock("cpu" if args.threads == 1 else "wall")
    specs = QUICK if args.quick else FULL
    settings = bc.QUICK_SETTINGS if args.quick else bc.FULL_SETTINGS
    start = time.perf_counter()
    state = machine_state()
    print(f"sgdstab {sgdstab.__version__} (source sha256 {bc.source_digest()}); {state}")
    if clock_name() == "cpu":
        print("Times are CPU seconds of this single-threaded process (time.process_time), robust to other load.")
    if (warning := busy_warning()) is not None:
        print(f"WARNING: {warning}")
    results = {
        "mode": "quick" if args.quick else "full",
        "machine_start": state,
        "problems": [run_problem(specs[key], settings, args.fresh_truth) for key in args.problems.split(",")],
        "machine_end": machine_state(),
        "total_seconds": time.perf_counter() - start,
    }
    out = RESULTS_DIR / ("minimum_quick.json" if args.quick else "minimum.json")
    write_json(out, results)
    print(f"\nwrote {out} (total {results['total_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
