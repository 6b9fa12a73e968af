"""ρ(T) and η*(B) at n·k = 3000 for every architecture of issue 15 (and cross-entropy's GGN kernel), in seconds.

For each model on 300 ten-class images (k = 10, n·k = 3000), float64, at its initialization (the solvers need a
kernel, not a minimum: away from one this is the Gauss–Newton linearization, which is what they are timed on):

- the paper MLP 784-500-500-500-10 ReLU as ``nn.Sequential`` (layerwise K), as a custom ``nn.Module`` calling
  ``F.relu`` and as a residual MLP (module-by-module K) — the classes of ``bench_module_ntk.py``;
- the CIFAR config's CNN on 300 CIFAR-shaped random images (K's cost does not depend on the pixels);
- the same ``nn.Sequential`` MLP with ``loss="cross_entropy"`` (the GGN kernel K_A, rank n(k − 1) = 2700).

Timed: K (``sgdstab.ntk`` / ``sgdstab.ggn_kernel``), η*(8) (``critical_learning_rate``, Galerkin above rank 1200),
ρ(T) at 0.9·η* and 1.1·η* (``stability``, with certificates). Checked: ρ(0.9 η*) ≤ 1 < ρ(1.1 η*).

    python benchmarks/bench_stability_architectures.py [--threads N]   (writes results/stability_architectures.json)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

import sgdstab

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS_DIR, clock_name, fmt_seconds, machine_state, now, set_clock, table, write_json
from bench_module_ntk import PaperMLP, ResidualMLP, _fashion

N, B = 300, 8


def _sequential(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
        nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10),
    )  # fmt: skip


def _cases(width: int) -> list[tuple[str, nn.Module, torch.Tensor, torch.Tensor, str]]:
    X, Y, _ = _fashion(N)
    torch.manual_seed(0)
    cifar = torch.randn(N, 3, 32, 32)
    cifar_y = nn.functional.one_hot(torch.arange(N) % 10, 10).float()
    cnn = sgdstab.cnn((3, 32, 32), 10, channels=(8, 16), widths=(32,), seed=0)
    torch.manual_seed(0)
    return [
        ("paper MLP, nn.Sequential", _sequential(width), X, Y, "half_mse"),
        ("paper MLP, custom forward", PaperMLP(width), X, Y, "half_mse"),
        ("residual MLP", ResidualMLP(width), X, Y, "half_mse"),
        ("CIFAR config CNN", cnn, cifar, cifar_y, "half_mse"),
        ("paper MLP, cross-entropy (K_A)", _sequential(width), X, Y.argmax(1), "cross_entropy"),
    ]


def _one(name: str, model: nn.Module, X: torch.Tensor, Y: torch.Tensor, loss: str) -> dict[str, Any]:
    problem = sgdstab.Problem(model.double(), X.double(), Y if loss == "cross_entropy" else Y.double(), loss=loss)
    start = now()
    kernel = sgdstab.ggn_kernel(problem)
    seconds_kernel = now() - start
    start = now()
    eta_star = sgdstab.critical_learning_rate(kernel, B, progress=False)
    seconds_eta = now() - start
    start = now()
    below = sgdstab.stability(kernel, 0.9 * eta_star, B, progress=False)
    above = sgdstab.stability(kernel, 1.1 * eta_star, B, progress=False)
    seconds_rho = (now() - start) / 2
    return {
        "model": name,
        "p": problem.p,
        "rank": kernel.rank,
        "route": kernel.route,
        "seconds_kernel": seconds_kernel,
        "seconds_eta_star": seconds_eta,
        "seconds_rho": seconds_rho,
        "eta_star": eta_star,
        "rho_below": below.rho,
        "rho_above": above.rho,
        "method": below.method,
        "galerkin_error": max(below.error, above.error),
        "agrees": below.rho <= 1 + 1e-9 < above.rho,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2: wall clock)")
    parser.add_argument("--width", type=int, default=500, help="MLP width (500: the paper's)")
    parser.add_argument("--out", type=Path, help="JSON output (default results/stability_architectures.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    set_clock("cpu" if args.threads == 1 else "wall")
    results = [_one(*case) for case in _cases(args.width)]
    print(f"\n=== ρ(T) and η*({B}) at n·k = {N * 10}, float64, {args.threads} thread(s), {clock_name()} clock")
    rows = [
        [
            r["model"], f"{r['p']:,}", str(r["rank"]), r["route"], fmt_seconds(r["seconds_kernel"]),
            fmt_seconds(r["seconds_eta_star"]), fmt_seconds(r["seconds_rho"]), f"{r['eta_star']:.4g}",
            f"{r['rho_below']:.6f} / {r['rho_above']:.4f}", r["method"], "yes" if r["agrees"] else "NO",
        ]
        for r in results
    ]  # fmt: skip
    headers = ["model", "p", "rank", "K route", "K", "η*", "ρ (each)", "η*", "ρ at 0.9/1.1 η*", "ρ route", "agrees"]
    print(table(headers, rows, right=(1, 2, 4, 5, 6, 7)))
    out = args.out or RESULTS_DIR / "stability_architectures.json"
    write_json(out, {"machine": machine_state(), "n": N, "batch_size": B, "results": results})
    print(f"\nwrote {out}")
    return 0 if all(r["agrees"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
