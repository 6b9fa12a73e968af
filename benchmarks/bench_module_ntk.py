"""The NTK of any model (issue 15's scale targets): ``sgdstab.ntk`` on models that are not ``nn.Sequential`` chains.

Each case runs in a fresh subprocess, so the peak resident memory it adds (``ru_maxrss``) counts only its own work:

1. **the paper MLP written as a user would** — 784-500-500-500-10 ReLU as a custom ``nn.Module`` whose ``forward``
   calls ``F.relu`` — and a **residual MLP** of the same size, on 1000 Fashion-MNIST images (n·k = 10⁴,
   p ≈ 900k), against the same weights as an ``nn.Sequential`` (the layerwise route). Target: within 2× of it.
   The Jacobian route would need J = nk·p numbers (72 GB in float64).
2. **the CIFAR config's CNN** (``sgdstab.cnn((3, 32, 32), 10, channels=(8, 16), widths=(32,))``) on 500 images of
   CIFAR-10's shape (random stand-ins: CIFAR-10 is not on this machine; K's cost does not depend on the pixels),
   n·k = 5000: ``sgdstab.ntk`` (module by module) against a plain ``J @ J.T`` GEMM of the same shape. Target:
   within 1.3× of that GEMM; peak memory added ≤ 2× size(K) + the largest module's rows.

Float64 throughout (the experiments' dtype). Every K is checked: the chains against each other, the CNN against
``J @ J.T``.

    python benchmarks/bench_module_ntk.py [--quick] [--threads N]     (writes benchmarks/results/module_ntk.json)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

import sgdstab

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, clock_name, fmt_seconds, machine_state, now, set_clock, table, write_json

FULL = {"n_mlp": 1000, "width": 500, "n_cnn": 500}
QUICK = {"n_mlp": 200, "width": 100, "n_cnn": 100}


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class PaperMLP(nn.Module):
    """784-w-w-w-10 with ReLU from ``F``: not an ``nn.Sequential``, so not a layer chain."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(784, width), nn.Linear(width, width)
        self.l3, self.l4 = nn.Linear(width, width), nn.Linear(width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l4(F.relu(self.l3(F.relu(self.l2(F.relu(self.l1(x.flatten(1))))))))


class ResidualMLP(PaperMLP):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.l1(x.flatten(1)))
        h = h + F.relu(self.l2(h))
        h = h + F.relu(self.l3(h))
        return self.l4(h)


def _fashion(n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    try:
        X, Y = sgdstab.load_dataset("fashion-mnist", n=n, classes=tuple(range(10)), subset="first")
        return X, Y, "fashion-mnist"
    except sgdstab.errors.DataError:  # Debian's dataset-fashion-mnist not installed: the shipped subset
        X, Y = sgdstab.load_dataset("fashion-mnist-small", n=n, classes=tuple(range(10)), subset="first")
        return X, Y, "fashion-mnist-small"


def _timed_ntk(problem: sgdstab.Problem) -> tuple[sgdstab.Kernel, float, int]:
    rss = _rss_bytes()
    start = now()
    K = sgdstab.ntk(problem)
    return K, now() - start, _maxrss_bytes() - rss


def mlp_worker(config: dict[str, Any]) -> dict[str, Any]:
    X, Y, data = _fashion(config["n_mlp"])
    torch.manual_seed(0)
    custom = PaperMLP(config["width"])
    which = config["case"]
    if which == "sequential":
        model: nn.Module = nn.Sequential(
            nn.Flatten(), custom.l1, nn.ReLU(), custom.l2, nn.ReLU(), custom.l3, nn.ReLU(), custom.l4
        )
    elif which == "custom":
        model = custom
    else:
        model = ResidualMLP(config["width"])
    problem = sgdstab.Problem(model, X, Y, dtype=torch.float64)
    K, seconds, peak = _timed_ntk(problem)
    out = {"case": which, "data": data, "n": problem.n, "k": problem.k, "p": problem.p, "route": K.route}
    out |= {"notes": list(K.notes), "seconds": seconds, "peak_added": peak, "bytes_K": K.matrix.numel() * 8}
    out["bytes_J"] = problem.n * problem.k * problem.p * 8
    if which != "residual":  # the same weights: K must agree with the layerwise route's
        torch.save(K.matrix[:200, :200].clone(), Path(config["scratch"]) / f"{which}.pt")
    return out


def cnn_worker(config: dict[str, Any]) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(0)
    n = config["n_cnn"]
    X, Y = torch.randn(n, 3, 32, 32, generator=gen), torch.randn(n, 10, generator=gen)
    model = sgdstab.cnn((3, 32, 32), 10, channels=(8, 16), widths=(32,), seed=0)
    problem = sgdstab.Problem(model, X, Y, dtype=torch.float64)
    from sgdstab.kernel.modules import owners

    K, seconds, peak = _timed_ntk(problem)
    # a Linear applied once per sample needs no rows (its term is a Hadamard product): the largest rows are the
    # other modules'
    largest = max(
        sum(p.numel() for p in o.module.parameters(recurse=False))
        for o in owners(problem)
        if not isinstance(o.module, nn.Linear)
    )
    start = now()
    J = problem.jacobian()
    t_jacobian = now() - start
    start = now()
    plain = J @ J.T
    t_gemm = now() - start
    diff = float((K.matrix - plain).abs().max() / plain.abs().max())
    nk = problem.n * problem.k
    return {
        "case": "cnn",
        "n": problem.n,
        "k": problem.k,
        "p": problem.p,
        "route": K.route,
        "notes": list(K.notes),
        "seconds": seconds,
        "seconds_jacobian": t_jacobian,
        "seconds_plain_gemm": t_gemm,
        "max_rel_diff_vs_plain": diff,
        "peak_added": peak,
        "bytes_K": nk * nk * 8,
        "bytes_largest_rows": nk * largest * 8,
        "bytes_J": nk * problem.p * 8,
    }


def _run(config: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(config)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"worker {config['case']} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _mib(x: float) -> str:
    return f"{x / 2**20:,.0f} MiB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="n = 200, width 100; CNN n = 100")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: CPU-time comparable)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help="JSON output (default results/module_ntk[_quick].json)")
    args = parser.parse_args(argv)
    if args.worker:
        config = json.loads(args.worker)
        torch.set_num_threads(config["threads"])
        set_clock(config["clock"])
        print(json.dumps(cnn_worker(config) if config["case"] == "cnn" else mlp_worker(config)))
        return 0
    set_clock("cpu" if args.threads == 1 else "wall")
    scratch = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_module_ntk_{os.getpid()}"
    scratch.mkdir(exist_ok=True)
    base = dict(QUICK if args.quick else FULL, threads=args.threads, clock="cpu" if args.threads == 1 else "wall")
    base["scratch"] = str(scratch)
    results = {case: _run(dict(base, case=case)) for case in ("sequential", "custom", "residual", "cnn")}
    a, b = torch.load(scratch / "sequential.pt"), torch.load(scratch / "custom.pt")
    agree = float((a - b).abs().max() / a.abs().max())
    for f in scratch.iterdir():
        f.unlink()
    scratch.rmdir()

    seq, cnn = results["sequential"], results["cnn"]
    print(
        f"\n=== the paper MLP 784-{base['width']}×3-10 ReLU on {seq['data']} n = {seq['n']} (n·k = {seq['n'] * 10}), "
        f"p = {seq['p']:,}, float64, {args.threads} thread(s), {clock_name()} clock"
    )
    rows = []
    for case in ("sequential", "custom", "residual"):
        r = results[case]
        ratio = r["seconds"] / seq["seconds"]
        rows.append([case, r["route"], fmt_seconds(r["seconds"]), f"{ratio:.2f}×", _mib(r["peak_added"])])
    print(table(["model", "route", "ntk", "vs nn.Sequential", "peak added"], rows, right=(2, 3, 4)))
    print(f"  custom vs nn.Sequential, same weights: max |ΔK| / max |K| = {agree:.1e} (first 200 rows)")
    print(f"  the Jacobian route would need J = {_mib(seq['bytes_J'])}; target: within 2× of nn.Sequential")
    gemm_ratio = cnn["seconds"] / cnn["seconds_plain_gemm"]
    budget = 2 * cnn["bytes_K"] + cnn["bytes_largest_rows"]
    print(
        f"\n=== CIFAR config CNN on {cnn['n']} CIFAR-shaped images, n·k = {cnn['n'] * cnn['k']}, p = {cnn['p']:,}\n"
        f"  sgdstab.ntk ({cnn['route']}) {fmt_seconds(cnn['seconds'])}; plain J @ J.T GEMM alone "
        f"{fmt_seconds(cnn['seconds_plain_gemm'])} (J itself {fmt_seconds(cnn['seconds_jacobian'])}): "
        f"{gemm_ratio:.2f}× the GEMM (target ≤ 1.3×); max |K − JJᵀ| / max |JJᵀ| = {cnn['max_rel_diff_vs_plain']:.1e}\n"
        f"  peak memory added {_mib(cnn['peak_added'])} against 2·size(K) + the largest module's rows = "
        f"{_mib(budget)} (K {_mib(cnn['bytes_K'])}, J would be {_mib(cnn['bytes_J'])})"
    )
    record = {"machine": machine_state(), "config": base, "results": results, "custom_vs_sequential": agree}
    out = args.out or RESULTS_DIR / ("module_ntk_quick.json" if args.quick else "module_ntk.json")
    write_json(out, record)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
