"""SGD throughput of ``sgdstab.train`` against a bare torch loop and a ``torch.utils.data.DataLoader`` loop.

Problem: scikit-learn digits in memory (n = 1797, 64 inputs, one-hot k = 10), square loss
L = (1/(2n)) Σ ||f(x_i) − y_i||², an MLP with tanh, float32. Every loop takes the same SGD steps
θ ← θ − (η/B) Σ_{i∈batch} ∇ℓ_i(θ) from the same initial weights; the contenders:

- ``sgdstab.train`` with tracking sparse (``track_every = steps``: the full-data L at step 0 and at the end), with
  i.i.d. batches (``with_replacement``) and with epoch reshuffling (``reshuffle``), and with the loss evaluated
  every 100 steps (what an experiment's history costs);
- a bare hand-written loop doing the same arithmetic: ``torch.randint`` indices from a seeded generator, on-tensor
  indexing ``X[idx]``, the module's forward, ``0.5 * ((out − y)²).sum()``, ``backward()`` and a manual update
  ``p.add_(p.grad, alpha=−η/B)`` under ``no_grad`` — its final θ is checked to equal ``train``'s bit for bit;
- a ``DataLoader(TensorDataset(X, Y), batch_size=B, shuffle=True, drop_last=True)`` loop (num_workers=0: the data
  are in memory), otherwise the same step — the usual way to write it;
- (headline configuration only) the step ``train`` used before: a ``torch.func.grad`` of a ``functional_call``
  on the flat θ, then ``θ − η·g``.

A grid over widths × B (train, bare, DataLoader) follows; each grid run is calibrated to about half a second of
the bare loop. ``train`` always evaluates the full-data L at step 0 and at the end (its history's first and last
rows): that fixed cost is measured and the ratio without it is shown too.

Rounds are interleaved (each contender once per round, fresh model, one warm-up round not counted) and the median
steps per second over the rounds is reported, with the ratios of medians. Targets: ``train`` ≥ 0.8× the bare loop,
≥ 3× the DataLoader loop.

    .venv/bin/python benchmarks/bench_training.py [--quick] [--threads 1]

Results: printed tables and ``benchmarks/results/training.json`` (``training_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.func import grad
from torch.utils.data import DataLoader, TensorDataset

import sgdstab

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    RESULTS_DIR,
    busy_warning,
    clock_name,
    limit_blas_threads,
    machine_state,
    now,
    progress,
    set_clock,
    table,
    write_json,
)


@dataclass(frozen=True)
class Config:
    key: str
    widths: tuple[int, ...]
    batch_size: int
    lr: float
    steps: int  # 0: as many as take about TARGET_SECONDS in the bare loop (calibrated, then recorded)
    full_set: bool = False  # every contender, or only train / bare / DataLoader


HEADLINE = Config("headline", (128, 128), 32, 0.05, 2000, full_set=True)
GRID_WIDTHS, GRID_BATCHES = ((32,), (128, 128), (512, 512)), (8, 32, 128, 512)
GRID = tuple(Config(f"w{'x'.join(map(str, w))}-B{b}", w, b, 0.05, 0) for w in GRID_WIDTHS for b in GRID_BATCHES)
FULL = (HEADLINE, *GRID)
QUICK = (
    Config("headline", (128, 128), 32, 0.05, 300, full_set=True),
    Config("w32-B128", (32,), 128, 0.05, 300),
)
FULL_ROUNDS, QUICK_ROUNDS = 5, 3
TARGET_SECONDS = 0.5
SEED = 0

TRAIN, TRAIN_RESHUFFLE, TRAIN_TRACKED, BARE, LOADER, FUNC = (
    "sgdstab.train (with_replacement)",
    "sgdstab.train (reshuffle)",
    "sgdstab.train (L every 100 steps)",
    "bare torch loop",
    "DataLoader loop",
    "torch.func.grad step (previous train)",
)


def make_problem(data: tuple[Tensor, Tensor], config: Config) -> sgdstab.Problem:
    X, Y = data
    model = sgdstab.mlp(X.shape[1:], Y.shape[1], widths=config.widths, activation="tanh", seed=SEED)
    return sgdstab.Problem(model, X, Y)


def flat(problem: sgdstab.Problem) -> Tensor:
    return torch.cat([p.detach().reshape(-1) for p in problem.model.parameters()])


# ---------------------------------------------------------------------------------------------------- the loops
# Each takes a fresh problem and returns (seconds of the loop alone, final θ).
def run_train(problem: sgdstab.Problem, config: Config, sampling: str, track_every: int) -> tuple[float, Tensor]:
    start = now()
    sgdstab.train(
        problem, config.lr, config.batch_size, sampling, steps=config.steps, track_every=track_every, progress=False
    )
    return now() - start, flat(problem)


def run_bare(problem: sgdstab.Problem, config: Config) -> tuple[float, Tensor]:
    model, X, Y, n = problem.model, problem.X, problem.Y, problem.n
    params = list(model.parameters())
    b, scale = config.batch_size, -config.lr / config.batch_size
    start = now()
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(config.steps):
        idx = torch.randint(n, (b,), generator=gen)
        out = model(X[idx])
        loss = 0.5 * ((out - Y[idx]) ** 2).sum()
        for p in params:
            p.grad = None
        loss.backward()
        with torch.no_grad():
            for p in params:
                p.add_(p.grad, alpha=scale)
    return now() - start, flat(problem)


def run_loader(problem: sgdstab.Problem, config: Config) -> tuple[float, Tensor]:
    model = problem.model
    params = list(model.parameters())
    scale = -config.lr / config.batch_size
    start = now()
    loader = DataLoader(
        TensorDataset(problem.X, problem.Y),
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(SEED),
    )
    step = 0
    while step < config.steps:
        for x, y in loader:
            out = model(x)
            loss = 0.5 * ((out - y) ** 2).sum()
            for p in params:
                p.grad = None
            loss.backward()
            with torch.no_grad():
                for p in params:
                    p.add_(p.grad, alpha=scale)
            step += 1
            if step == config.steps:
                break
    return now() - start, flat(problem)


def run_func(problem: sgdstab.Problem, config: Config) -> tuple[float, Tensor]:
    grad_fn = grad(problem.batch_loss_sum)
    theta, b, lr = problem.theta.clone(), config.batch_size, config.lr
    start = now()
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(config.steps):
        idx = torch.randint(problem.n, (b,), generator=gen)
        theta = theta - lr * grad_fn(theta, problem.X[idx], problem.Y[idx]) / b
    return now() - start, theta


def contenders(config: Config) -> dict[str, Callable[[sgdstab.Problem], tuple[float, Tensor]]]:
    loops = {
        TRAIN: lambda P: run_train(P, config, "with_replacement", config.steps),
        TRAIN_RESHUFFLE: lambda P: run_train(P, config, "reshuffle", config.steps),
        TRAIN_TRACKED: lambda P: run_train(P, config, "with_replacement", 100),
        BARE: lambda P: run_bare(P, config),
        LOADER: lambda P: run_loader(P, config),
        FUNC: lambda P: run_func(P, config),
    }
    return loops if config.full_set else {k: loops[k] for k in (TRAIN, BARE, LOADER)}


def calibrate(config: Config, data: tuple[Tensor, Tensor]) -> Config:
    """Fix the step count of a grid configuration: about TARGET_SECONDS of the bare loop, 100 to 5000 steps."""
    if config.steps:
        return config
    probe = replace(config, steps=30)
    run_bare(make_problem(data, probe), probe)  # warm-up
    took, _ = run_bare(make_problem(data, probe), probe)
    return replace(config, steps=int(min(5000, max(100, TARGET_SECONDS / (took / probe.steps)))))


# ---------------------------------------------------------------------------------------------------- measuring
def measure(config: Config, rounds: int, data: tuple[Tensor, Tensor]) -> dict[str, Any]:
    config = calibrate(config, data)
    loops = contenders(config)
    seconds: dict[str, list[float]] = {name: [] for name in loops}
    finals: dict[str, Tensor] = {}
    for r in range(rounds + 1):  # round 0 warms caches and allocators up and is not counted
        for name, loop in loops.items():
            problem = make_problem(data, config)
            took, theta = loop(problem)
            if r > 0:
                seconds[name].append(took)
            finals[name] = theta
        if r > 0:
            progress(f"{config.key}: round {r}/{rounds}")
    rate = {name: config.steps / statistics.median(s) for name, s in seconds.items()}
    problem = make_problem(data, config)
    evaluations = []
    for _ in range(4):
        start = now()
        sgdstab.train(problem, config.lr, config.batch_size, steps=0, progress=False)  # one L evaluation
        evaluations.append(now() - start)
    # train evaluates the full-data L at step 0 and at the end (the history's first and last rows): a fixed cost
    # that the bare loop does not pay, and that a short run on a large model notices
    fixed = 2 * statistics.median(evaluations[1:])
    steps_only = config.steps / max(statistics.median(seconds[TRAIN]) - fixed, 1e-12)
    out = {
        "config": asdict(config),
        "n": problem.n,
        "k": problem.k,
        "p": problem.p,
        "seconds": seconds,
        "steps_per_second": rate,
        "ratio_train_over_bare": rate[TRAIN] / rate[BARE],
        "ratio_train_over_bare_per_round": [b / t for t, b in zip(seconds[TRAIN], seconds[BARE], strict=True)],
        "ratio_train_over_dataloader": rate[TRAIN] / rate[LOADER],
        "seconds_two_loss_evaluations": fixed,
        "ratio_train_steps_only_over_bare": steps_only / rate[BARE],
        "train_theta_equals_bare_bitwise": bool(torch.equal(finals[TRAIN], finals[BARE])),
        "train_theta_max_abs_diff_vs_bare": float((finals[TRAIN] - finals[BARE]).abs().max()),
    }
    if config.full_set:
        out["ratio_reshuffle_over_dataloader"] = rate[TRAIN_RESHUFFLE] / rate[LOADER]
        out["ratio_previous_step_over_bare"] = rate[FUNC] / rate[BARE]
    return out


def report_headline(r: dict[str, Any]) -> None:
    c = r["config"]
    print(
        f"\n=== digits n={r['n']}, k={r['k']}, MLP widths {tuple(c['widths'])} tanh (p = {r['p']:,}), "
        f"B = {c['batch_size']}, η = {c['lr']}, {c['steps']} steps per run, median of {len(r['seconds'][BARE])} rounds"
    )
    bare = r["steps_per_second"][BARE]
    rows = [
        [name, f"{rate:,.0f}", f"{rate / bare:.2f}×", f"{1e6 / rate:.0f} µs"]
        for name, rate in r["steps_per_second"].items()
    ]
    print(table(["loop", "steps/s", "vs bare", "per step"], rows, right=(1, 2, 3)))
    per_round = ", ".join(f"{x:.2f}" for x in r["ratio_train_over_bare_per_round"])
    print(
        f"  train / bare = {r['ratio_train_over_bare']:.2f}× ({_verdict(r['ratio_train_over_bare'], 0.8)} ≥ 0.8×; "
        f"per round {per_round}); train / DataLoader = {r['ratio_train_over_dataloader']:.2f}× "
        f"({_verdict(r['ratio_train_over_dataloader'], 3)} ≥ 3×); "
        f"reshuffle / DataLoader = {r['ratio_reshuffle_over_dataloader']:.2f}×"
    )
    same = "identical bit for bit" if r["train_theta_equals_bare_bitwise"] else "DIFFERENT"
    print(f"  final θ of train and the bare loop: {same} (max |Δ| = {r['train_theta_max_abs_diff_vs_bare']:.1e})")


def report_grid(results: list[dict[str, Any]]) -> None:
    print("\n=== grid: widths × B (train with_replacement, L at the start and end only; medians over the rounds)")
    rows = []
    for r in results:
        c, rate = r["config"], r["steps_per_second"]
        rows.append(
            [
                "-".join(map(str, c["widths"])),
                str(c["batch_size"]),
                f"{r['p']:,}",
                str(c["steps"]),
                f"{rate[TRAIN]:,.0f}",
                f"{rate[BARE]:,.0f}",
                f"{rate[LOADER]:,.0f}",
                f"{r['ratio_train_over_bare']:.2f}×",
                f"{1e3 * r['seconds_two_loss_evaluations']:.0f} ms",
                f"{r['ratio_train_steps_only_over_bare']:.2f}×",
                f"{r['ratio_train_over_dataloader']:.2f}×",
                "yes" if r["train_theta_equals_bare_bitwise"] else "NO",
            ]
        )
    headers = ["widths", "B", "p", "steps", "train/s", "bare/s", "DataLoader/s", "÷ bare", "2 L evals", "÷ bare, steps"]
    headers += ["÷ DataLoader", "θ equal"]
    print(table(headers, rows, right=tuple(range(1, 11))))
    print("  (2 L evals: train's full-data loss at step 0 and at the end, twice train(steps=0); '÷ bare, steps': the")
    print("  ratio without them)")
    below = [r["config"]["key"] for r in results if r["ratio_train_over_bare"] < 0.8]
    over3 = [r["config"]["key"] for r in results if r["ratio_train_over_dataloader"] >= 3]
    print(f"  train ≥ 0.8× bare in {len(results) - len(below)}/{len(results)} configurations {below or ''}")
    print(f"  train ≥ 3× DataLoader in {len(over3)}/{len(results)}: {', '.join(over3) or 'none'}")


def _verdict(ratio: float, target: float) -> str:
    return "meets" if ratio >= target else "MISSES"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small configuration, 3 rounds (seconds)")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (default 1)")
    parser.add_argument("--rounds", type=int, default=0, help="timed rounds (default 5, or 3 with --quick)")
    parser.add_argument("--clock", choices=("wall", "cpu"), help="timing clock (default: cpu with --threads 1)")
    parser.add_argument("--out", type=Path, help="JSON path (default results/training.json, training_quick.json)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    blas_limit = limit_blas_threads(args.threads)  # noqa: F841 (kept alive)
    set_clock(args.clock or ("cpu" if args.threads == 1 else "wall"))
    configs = QUICK if args.quick else FULL
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else FULL_ROUNDS)
    start = time.perf_counter()
    state = machine_state()
    print(f"sgdstab {sgdstab.__version__}; {state}")
    if clock_name() == "cpu":
        print("Times are CPU seconds of this single-threaded process (time.process_time), robust to other load.")
    if (warning := busy_warning()) is not None:
        print(f"WARNING: {warning}")
    data = sgdstab.load_dataset("digits")
    results = [measure(c, rounds, (data.X, data.Y)) for c in configs]
    for r in results:
        if r["config"]["full_set"]:
            report_headline(r)
    report_grid(results)
    out = args.out or RESULTS_DIR / ("training_quick.json" if args.quick else "training.json")
    total = time.perf_counter() - start
    write_json(
        out,
        {
            "mode": "quick" if args.quick else "full",
            "rounds": rounds,
            "machine_start": state,
            "machine_end": machine_state(),
            "configs": results,
            "total_seconds": total,
        },
    )
    print(f"\nwrote {out} (total {total:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
