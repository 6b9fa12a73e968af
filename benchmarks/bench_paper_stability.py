"""The exact η*(B) at the paper's Fashion-MNIST scale (issue 15): MLP 784-500-500-500-10 ReLU on 1000 images,
n·k = 10⁴, K of full rank, on this machine's cores.

1. the minimum: GD (400 full-batch steps at η = 0.1) from the seed-0 initialization, then
   ``sgdstab.polish_to_minimum`` to a global minimum (L ≈ 1e-31 in float64);
2. ``sgdstab.ntk`` and K's eigendecomposition (``Kernel.eigen``);
3. ``sgdstab.critical_learning_rate(K, B)`` with its defaults: Galerkin levels r = 64 … 4096, then the full rank
   10⁴, products in float32 from rank 2048 (with the progress lines a user sees);
4. the accuracy of float32 products where float64 also runs: λ_max(C⁻¹D) on the top-2048 subspace both ways.

Prints every time and writes benchmarks/results/paper_stability.json. Takes about 10 minutes on 2 cores.

    python benchmarks/bench_paper_stability.py [--batch-size 4] [--threads N] [--data fashion-mnist]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

import sgdstab

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, machine_state, write_json


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30


def _compare_products(ker: sgdstab.Kernel, c: float, rank: int) -> dict[str, float]:
    """λ_max(Ĉ^{-1/2} D̂ Ĉ^{-1/2}) on the top-``rank`` subspace with float64 and with float32 products."""
    from sgdstab.linear_stability import solver
    from sgdstab.linear_stability.operator import SymmetricForm

    lam, U = ker.range_basis(rank)
    out = {}
    runs = (("float64", torch.float64, 1e-10), ("float32", torch.float32, solver.FLOAT32_PRODUCTS_TOL))
    for name, dtype, tol in runs:
        start = time.perf_counter()
        form = SymmetricForm(lam, U, ker.n, ker.k, dtype)
        out[name] = solver._critical(form, c, "lanczos", tol, None).value
        out[f"seconds_{name}"] = time.perf_counter() - start
        del form
    out["relative_difference"] = abs(out["float32"] - out["float64"]) / out["float64"]
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    parser.add_argument("--data", default="fashion-mnist", help="fashion-mnist (Debian's) or fashion-mnist-small")
    parser.add_argument("--compare-rank", type=int, default=2048, help="rank of the float32/float64 comparison")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    record: dict = {"machine": machine_state(), "threads": torch.get_num_threads(), "batch_size": args.batch_size}

    X, Y = sgdstab.load_dataset(args.data, n=1000, classes=tuple(range(10)), subset="first")
    model = sgdstab.mlp(X.shape[1:], 10, widths=(500, 500, 500), activation="relu", seed=0)
    problem = sgdstab.Problem(model, X, Y, dtype=torch.float64)
    start = time.perf_counter()
    sgdstab.train(problem, lr=0.1, batch_size=problem.n, steps=400, progress=False)
    polished = sgdstab.polish_to_minimum(problem, max_kernel_builds=30)
    record["seconds_minimum"] = time.perf_counter() - start
    record["loss"] = polished.loss_after
    builds, seconds = polished.kernel_builds, record["seconds_minimum"]
    print(f"minimum: L = {polished.loss_after:.3g} ({builds} K builds), {seconds:.0f} s")

    start = time.perf_counter()
    K = sgdstab.ntk(problem)
    record["seconds_ntk"] = time.perf_counter() - start
    start = time.perf_counter()
    rank = K.rank
    record["seconds_eigh"] = time.perf_counter() - start
    record["rank"] = rank
    t_ntk, t_eigh = record["seconds_ntk"], record["seconds_eigh"]
    print(f"ntk ({K.route}) {t_ntk:.1f} s; eigendecomposition {t_eigh:.0f} s; rank {rank}")

    start = time.perf_counter()
    eta_star = sgdstab.critical_learning_rate(K, args.batch_size)
    record["seconds_critical_learning_rate"] = time.perf_counter() - start
    record["eta_star"] = eta_star
    total = record["seconds_ntk"] + record["seconds_eigh"] + record["seconds_critical_learning_rate"]
    record["seconds_from_minimum_to_eta_star"] = total
    record["peak_gib"] = _peak_gib()
    print(
        f"η*(B = {args.batch_size}) = {eta_star:.6g} in {record['seconds_critical_learning_rate']:.0f} s; from the "
        f"minimum (K, its eigendecomposition, η*) {total / 60:.1f} min (target ≤ 20 min); peak memory "
        f"{record['peak_gib']:.1f} GiB"
    )
    c = sgdstab.noise_scale(args.batch_size, problem.n)
    record["products"] = _compare_products(K, c, min(args.compare_rank, rank))
    p = record["products"]
    print(
        f"float32 products at rank {min(args.compare_rank, rank)}: λ_max(C⁻¹D) {p['float32']:.10g} against float64 "
        f"{p['float64']:.10g}, relative difference {p['relative_difference']:.1e} "
        f"({p['seconds_float32']:.0f} s against {p['seconds_float64']:.0f} s)"
    )
    out = RESULTS_DIR / "paper_stability.json"
    write_json(out, record)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
