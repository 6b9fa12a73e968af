"""The NTK kernel route: GEMM throughput of ``sgdstab.ntk`` against a plain ``J @ J.T``, its peak memory, and the
layerwise route (MLPs: K without J) against the Jacobian route.

Everything runs in a fresh subprocess, so that the peak resident memory (``ru_maxrss``) counts only this work:

1. ``K = sgdstab.ntk(problem)`` is timed and the peak memory it added is read (against the sizes of K and J);
2. inside that call, the time spent producing the Jacobian blocks is measured, so K's assembly (concatenating J
   and the GEMMs) is the rest; ``J = problem.jacobian()`` is also timed on its own, for reference;
3. a plain ``J @ J.T`` of the same shape is timed, and K is checked against it.

sgdstab fills K from its upper triangle in row blocks, so its *useful* flops are (nk)²·p against the plain
product's 2(nk)²·p; the flops its blocks actually execute are counted too. Target: useful GFLOP/s ≥ 70% of the
plain product's.

4. ``sgdstab.ntk(problem, method="layerwise")`` (the default for MLPs) is timed first, with the memory it adds,
   and compared with the Jacobian route above (``method="jacobian"``); ``--paper`` also times it on the
   784-500-500-500-10 ReLU MLP over 1000 Fashion-MNIST images (n·k = 10⁴, p = 898,510), where J (72 GB) cannot
   be formed at all.

    python benchmarks/bench_ntk.py [--quick] [--paper] [--threads N]      (writes benchmarks/results/ntk.json)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import sgdstab

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    RESULTS_DIR,
    clock_name,
    fmt_seconds,
    limit_blas_threads,
    machine_state,
    now,
    set_clock,
    table,
    write_json,
)

# digits, k = 10 outputs: n·k = 5000 rows of J with p ≈ 100k (full), or n·k = 2000, p ≈ 9k (quick).
FULL = {"n": 500, "widths": [280, 280]}
QUICK = {"n": 200, "widths": [64, 64]}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux


def executed_flops(nk: int, p: int, rows: int | None) -> float:
    """Flops of sgdstab's row-block loop: block a (rows a..a+r) times columns a..nk."""
    if rows is None:
        return 2.0 * nk * nk * p
    return sum(2.0 * (min(a + rows, nk) - a) * (nk - a) * p for a in range(0, nk, rows))


def worker(config: dict[str, Any]) -> dict[str, Any]:
    """The measurements, in this (fresh) process."""
    if config["threads"] > 0:
        torch.set_num_threads(config["threads"])
    blas_limit = limit_blas_threads(config["blas_threads"]) if config["blas_threads"] > 0 else None  # noqa: F841
    set_clock(config["clock"])
    X, Y = sgdstab.load_dataset("digits", n=config["n"])
    model = sgdstab.mlp(X.shape[1:], Y.shape[1], widths=tuple(config["widths"]), activation="tanh", seed=0)
    problem = sgdstab.Problem(model, X, Y)
    sgdstab.Problem(model, X[:4], Y[:4]).jacobian()  # warm torch.func up on a tiny problem
    n, k, p = problem.n, problem.k, problem.p
    nk = n * k
    item = problem.itemsize
    ntk_module = sys.modules["sgdstab.kernel.ntk"]
    route = ntk_module._plan(problem, None)[0] if hasattr(ntk_module, "_plan") else "unknown"
    gemm_rows = getattr(sys.modules["sgdstab.kernel.layerwise"], "_GEMM_ROWS", None)

    # Time the Jacobian blocks that ntk draws, inside ntk itself: the rest of ntk is the K assembly.
    blocks = problem.jacobian_blocks
    inside = [0.0]

    def timed_blocks(*args: Any, **kwargs: Any) -> Iterator[tuple[slice, Tensor]]:
        it = blocks(*args, **kwargs)
        while True:
            start = now()
            item = next(it, None)
            inside[0] += now() - start
            if item is None:
                return
            yield item

    # the layerwise route first: the process's peak memory only grows, so its own peak is read before J exists
    rss_before_layerwise = _rss_bytes()
    start = now()
    K_layerwise = sgdstab.ntk(problem, method="layerwise").matrix
    t_layerwise = now() - start
    peak_layerwise = _maxrss_bytes() - rss_before_layerwise

    problem.jacobian_blocks = timed_blocks  # type: ignore[method-assign]
    rss_before, maxrss_before = _rss_bytes(), _maxrss_bytes()
    start = now()
    K = sgdstab.ntk(problem, method="jacobian").matrix
    t_ntk = now() - start
    maxrss_after = _maxrss_bytes()
    problem.jacobian_blocks = blocks  # type: ignore[method-assign]

    start = now()
    J = problem.jacobian()
    t_jac = now() - start
    start = now()
    K_plain = J @ J.T
    t_plain = now() - start
    diff = float((K - K_plain).abs().max() / K_plain.abs().max())
    diff_layerwise = float((K_layerwise - K_plain).abs().max() / K_plain.abs().max())
    t_gemm = max(t_ntk - inside[0], 1e-9)
    useful = float(nk) * nk * p
    return {
        "n": n,
        "k": k,
        "p": p,
        "nk": nk,
        "dtype": str(problem.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "clock": clock_name(),
        "ntk_route": route,
        "gemm_rows": gemm_rows,
        "chunk_size": problem.chunk_size,
        "seconds_ntk": t_ntk,
        "seconds_jacobian_inside_ntk": inside[0],
        "seconds_jacobian": t_jac,
        "seconds_k_assembly": t_gemm,
        "seconds_plain_matmul": t_plain,
        "gflops_sgdstab_useful": useful / t_gemm / 1e9,
        "gflops_sgdstab_executed": executed_flops(nk, p, gemm_rows) / t_gemm / 1e9,
        "gflops_plain": 2 * useful / t_plain / 1e9,
        "useful_throughput_ratio": (useful / t_gemm) / (2 * useful / t_plain),
        "time_ratio_plain_over_assembly": t_plain / t_gemm,
        "max_rel_diff_vs_plain": diff,
        "bytes_K": nk * nk * item,
        "bytes_J": nk * p * item,
        "rss_before": rss_before,
        "maxrss_before": maxrss_before,
        "maxrss_after_ntk": maxrss_after,
        "peak_added_by_ntk": maxrss_after - rss_before,
        "ntk_memory_estimate": ntk_module.ntk_memory(problem) if hasattr(ntk_module, "ntk_memory") else None,
        "seconds_layerwise": t_layerwise,
        "peak_added_by_layerwise": peak_layerwise,
        "layerwise_speedup": t_ntk / t_layerwise,
        "max_rel_diff_layerwise_vs_plain": diff_layerwise,
    }


def paper_worker(config: dict[str, Any]) -> dict[str, Any]:
    """The layerwise NTK of the paper-scale MLP (the Jacobian route would need 72 GB for J)."""
    if config["threads"] > 0:
        torch.set_num_threads(config["threads"])
    set_clock(config["clock"])
    X, Y = sgdstab.load_dataset("fashion-mnist", n=1000, classes=tuple(range(10)), subset="first")
    model = sgdstab.mlp(X.shape[1:], 10, widths=(500, 500, 500), activation="relu", seed=0)
    problem = sgdstab.Problem(model, X, Y, dtype=torch.float64)
    rss_before = _rss_bytes()
    start = now()
    K = sgdstab.ntk(problem).matrix
    seconds = now() - start
    peak = _maxrss_bytes() - rss_before
    # spot check: the first 3 samples' block against their own Jacobian rows
    J3 = sgdstab.Problem(model, X[:3], Y[:3], dtype=torch.float64).jacobian()
    diff = float(((J3 @ J3.T) - K[:30, :30]).abs().max() / K[:30, :30].abs().max())
    return {
        "n": problem.n,
        "k": problem.k,
        "p": problem.p,
        "nk": problem.n * problem.k,
        "threads": torch.get_num_threads(),
        "clock": clock_name(),
        "seconds_layerwise": seconds,
        "peak_added_by_layerwise": peak,
        "bytes_K": K.numel() * K.element_size(),
        "bytes_J": problem.n * problem.k * problem.p * 8,
        "max_rel_diff_first_block": diff,
    }


def run(
    quick: bool = False, threads: int = 0, blas_threads: int = 0, clock: str = "wall", paper: bool = False
) -> dict[str, Any]:
    """Run :func:`worker` (or :func:`paper_worker`) in a fresh interpreter and return its measurements."""
    config = dict(QUICK if quick else FULL, threads=threads, blas_threads=blas_threads, clock=clock, paper=paper)
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"NTK worker failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _mib(x: float) -> str:
    return f"{x / 2**20:,.0f} MiB"


def print_report(r: dict[str, Any]) -> None:
    print(
        f"\n=== NTK kernel route: digits n={r['n']}, k={r['k']} (n·k = {r['nk']}), p = {r['p']:,}, {r['dtype']}, "
        f"{r['threads']} thread(s), {r['clock']} clock; route {r['ntk_route']!r}, GEMM row block {r['gemm_rows']}"
    )
    useful, executed = f"{r['gflops_sgdstab_useful']:.1f}", f"{r['gflops_sgdstab_executed']:.1f}"
    rows = [
        ["sgdstab.ntk (Jacobian + K)", fmt_seconds(r["seconds_ntk"]), "", ""],
        ["  its Jacobian blocks", fmt_seconds(r["seconds_jacobian_inside_ntk"]), "", ""],
        ["  K assembly = the rest (cat + GEMMs)", fmt_seconds(r["seconds_k_assembly"]), useful, executed],
        ["problem.jacobian() alone, for reference", fmt_seconds(r["seconds_jacobian"]), "", ""],
        [
            "plain J @ J.T",
            fmt_seconds(r["seconds_plain_matmul"]),
            f"{r['gflops_plain']:.1f}",
            f"{r['gflops_plain']:.1f}",
        ],
    ]
    print(table(["what", "seconds", "useful GFLOP/s", "executed GFLOP/s"], rows, right=(1, 2, 3)))
    print(
        f"  useful throughput / plain matmul throughput = {100 * r['useful_throughput_ratio']:.0f}% (target ≥ 70%);"
        f" time plain / K assembly = {r['time_ratio_plain_over_assembly']:.2f}×; "
        f"max |K − JJᵀ| / max |JJᵀ| = {r['max_rel_diff_vs_plain']:.1e}"
    )
    print(
        f"  layerwise route (J never formed): {fmt_seconds(r['seconds_layerwise'])}, "
        f"{r['layerwise_speedup']:.1f}× faster than the Jacobian route; peak memory added "
        f"{_mib(r['peak_added_by_layerwise'])}; max |K − JJᵀ| / max |JJᵀ| = {r['max_rel_diff_layerwise_vs_plain']:.1e}"
    )
    print(
        f"  peak memory added by sgdstab.ntk(method='jacobian'): {_mib(r['peak_added_by_ntk'])} = "
        f"{r['peak_added_by_ntk'] / r['bytes_K']:.1f}× size(K) ({_mib(r['bytes_K'])}) = "
        f"{r['peak_added_by_ntk'] / r['bytes_J']:.2f}× size(J) ({_mib(r['bytes_J'])}); "
        f"sgdstab's own estimate K + J = {_mib(r['bytes_K'] + r['bytes_J'])}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="n·k = 2000, p ≈ 9k instead of n·k = 5000, p ≈ 100k")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's own choice)")
    parser.add_argument("--paper", action="store_true", help="also the layerwise NTK of the paper-scale MLP (10⁴ rows)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="JSON output path (default results/ntk.json or ntk_quick.json)")
    args = parser.parse_args(argv)
    if args.worker:
        config = json.loads(args.worker)
        print(json.dumps(paper_worker(config) if config.get("paper") else worker(config)))
        return 0
    clock = "cpu" if args.threads == 1 else "wall"
    result = run(args.quick, args.threads, args.threads, clock)
    print_report(result)
    record: dict[str, Any] = {"machine": machine_state(), "ntk": result}
    if args.paper:
        paper = run(threads=args.threads, blas_threads=args.threads, clock=clock, paper=True)
        record["paper"] = paper
        print(
            f"\n=== paper scale: 784-500-500-500-10 ReLU MLP, Fashion-MNIST n = {paper['n']}, k = {paper['k']} "
            f"(n·k = {paper['nk']}), p = {paper['p']:,}, float64, {paper['threads']} thread(s)\n"
            f"  layerwise NTK {fmt_seconds(paper['seconds_layerwise'])}, peak memory added "
            f"{_mib(paper['peak_added_by_layerwise'])} (K itself {_mib(paper['bytes_K'])}; the Jacobian route would "
            f"need J = {_mib(paper['bytes_J'])}); first block vs J₃J₃ᵀ: {paper['max_rel_diff_first_block']:.1e}"
        )
    out = args.out or RESULTS_DIR / ("ntk_quick.json" if args.quick else "ntk.json")
    write_json(out, record)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
