"""One step of linearized SGD chains: the batch rows of K by a sparse product (what ``simulate_linearized`` does)
against gathering them into a dense block first (what it did before session 10), side by side, same numbers.

Each step of ``sgdstab.simulate_linearized`` updates every chain by ``u ← u − (η/B) Σ_j u[s_j] K[s_j]`` over its
batch rows s_j. Gathering ``K[rows]`` copies chains·B·k·n·k numbers a step (3.2 GB for 4000 chains at the paper
scale, n·k = 10⁴, B = 1, k = 10); a CSR matrix of the chains' batch entries times K reads those rows in place.
The shapes: the escape experiment's demo (n = 64, k = 1), a k = 4 case with B = 4 (repeated indices summed), and the
paper-scale escape (n = 1000, k = 10) with 1000 and 4000 chains. K is a random PSD matrix of full rank.

Then the user's call, ``simulate_linearized`` itself (n = 400, k = 10, 1000 chains, 40 steps; a smaller n·k than the
paper's because building a ``Kernel`` eigendecomposes K, 80 s at n·k = 10⁴), timed.

    .venv/bin/python benchmarks/bench_linearized.py [--threads 2]

Results: printed table and ``benchmarks/results/linearized.json``.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from _common import RESULTS_DIR, machine_state, median_time, progress, table, write_json

import sgdstab
from sgdstab.linear_stability.linearized import _batch_rows_product

SHAPES = ((64, 1, 4000, 1), (64, 4, 4000, 4), (1000, 10, 1000, 1), (1000, 10, 4000, 1))


def _gathered(u: torch.Tensor, rows: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """The previous step: the chains' batch rows of K copied into a (chains, B·k, nk) block, then one bmm."""
    ub = u[torch.arange(u.shape[0])[:, None], rows]
    return torch.bmm(ub.unsqueeze(1), K[rows]).squeeze(1)


def _case(n: int, k: int, chains: int, b: int) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    nk = n * k
    A = torch.randn(nk, nk, generator=gen, dtype=torch.float64)
    K = A @ A.T / nk
    del A
    u = torch.randn(chains, nk, generator=gen, dtype=torch.float64)
    idx = torch.randint(n, (chains, b), generator=gen)
    rows = (idx[..., None] * k + torch.arange(k)).reshape(chains, b * k)
    crow = torch.arange(0, chains * b * k + 1, b * k)
    ub = u[torch.arange(chains)[:, None], rows]
    before = _gathered(u, rows, K)
    after = _batch_rows_product(crow, rows, ub, K)
    difference = float((before - after).abs().max() / before.abs().max())
    t_gather = median_time(lambda: _gathered(u, rows, K), repeats=5)
    t_sparse = median_time(lambda: _batch_rows_product(crow, rows, ub, K), repeats=5)
    return {
        "n": n,
        "k": k,
        "chains": chains,
        "batch_size": b,
        "gathered_s": t_gather,
        "sparse_s": t_sparse,
        "speedup": t_gather / t_sparse,
        "max_relative_difference": difference,
    }


def _user_call() -> dict[str, Any]:
    gen = torch.Generator().manual_seed(1)
    A = torch.randn(4000, 4000, generator=gen, dtype=torch.float64)
    K = A @ A.T / 4000
    del A
    kernel = sgdstab.Kernel(K, n=400, k=10)
    start = time.perf_counter()
    sim = sgdstab.simulate_linearized(kernel, 0.001, 1, steps=40, chains=1000, exact_rate=False)
    seconds = time.perf_counter() - start
    return {
        "n": 400,
        "k": 10,
        "chains": 1000,
        "steps": 40,
        "seconds": seconds,
        "per_step_s": seconds / 40,
        "typical": sim.typical_rate,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    cases = []
    for shape in SHAPES:
        progress(f"n, k, chains, B = {shape}")
        cases.append(_case(*shape))
    call = _user_call()
    rows = [
        [
            f"{c['n']}",
            f"{c['k']}",
            f"{c['chains']}",
            f"{c['batch_size']}",
            f"{1000 * c['gathered_s']:.1f} ms",
            f"{1000 * c['sparse_s']:.1f} ms",
            f"{c['speedup']:.1f}×",
            f"{c['max_relative_difference']:.1e}",
        ]
        for c in cases
    ]
    headers = ["n", "k", "chains", "B", "gathered (before)", "sparse (now)", "speedup", "max rel. diff."]
    print(table(headers, rows, right=range(8)))
    print(f"simulate_linearized, n·k = 4000, 1000 chains, B = 1: {call['per_step_s']:.3f} s a step")
    write_json(
        RESULTS_DIR / "linearized.json",
        {"machine": machine_state(), "threads": args.threads, "cases": cases, "user_call": call},
    )


if __name__ == "__main__":
    main()
