"""The cost of ``sgdstab.Tracker`` on a real training run, side by side with the same run untracked.

Run: a small CNN (``sgdstab.cnn``, channels (8, 16), head 64, ReLU, float32) trained with ``torch.optim.SGD`` (lr
0.05, momentum 0.9) and ``nn.CrossEntropyLoss`` on Fashion-MNIST (the full 60 000-image training set when Debian's
``dataset-fashion-mnist`` is installed, else the bundled 2000-image subset), B = 128, reshuffled each epoch, for
``--epochs`` epochs. The contenders, from the same initialization and the same batches:

- untracked: the bare loop;
- ``every = one epoch`` (and five): the tracker measures once per epoch (per five; schedules that resolve a sharpening
  over tens of epochs, as in Cohen et al. 2021), on its defaults otherwise (evaluation subset 512, batch sharpness to
  5% or 32 batches; no kernel figures: the default kernel subset, 25 samples at k = 10 with momentum, is not above B);
- ``overhead = 0.1``: the tracker's default adaptive schedule.

The overhead is (tracked − untracked)/untracked wall time, measured here, beside the tracker's own accounting
(measuring time over training time). Target: ≤ 10% at a schedule that still resolves the edge of stability.

    .venv/bin/python benchmarks/bench_tracker.py [--quick] [--threads 2]

Results: printed table and ``benchmarks/results/tracker.json`` (``tracker_quick.json`` with ``--quick``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
import warnings
from typing import Any

import torch
from _common import RESULTS_DIR, machine_state, progress, table, write_json
from torch import nn

import sgdstab


def _data(quick: bool) -> tuple[torch.Tensor, torch.Tensor, str]:
    try:
        data = sgdstab.load_dataset("fashion-mnist", n=6000 if quick else 60000)
    except sgdstab.DataError:
        data = sgdstab.load_dataset("fashion-mnist-small")
    return data.X.float(), data.Y.argmax(1), data.description


def _run(X: torch.Tensor, labels: torch.Tensor, epochs: int, schedule: dict[str, Any] | None) -> dict[str, Any]:
    model = sgdstab.cnn(tuple(X.shape[1:]), 10, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(0)
    B, n = 128, len(X)
    with tempfile.TemporaryDirectory() as out, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        start = time.perf_counter()
        tracker = None
        if schedule is not None:
            tracker = sgdstab.Tracker(model, X, labels, opt, loss="cross_entropy", out=out, batch_size=B, **schedule)
        for _ in range(epochs):
            for idx in torch.randperm(n, generator=gen).split(B)[: n // B]:
                opt.zero_grad()
                loss = loss_fn(model(X[idx]), labels[idx])
                loss.backward()
                opt.step()
                if tracker is not None:
                    tracker.step(loss)
        if tracker is not None:
            tracker.close()
        seconds = time.perf_counter() - start
    result: dict[str, Any] = {"seconds": seconds, "final_loss": float(loss.detach())}
    if tracker is not None:
        last = tracker.rows[-1]
        result |= {
            "rows": len(tracker.rows),
            "own_overhead": tracker.overhead,
            "measure_seconds": tracker.clock.measure_seconds,
            "sharpness": last["sharpness"],
            "batch_sharpness": last["batch_sharpness"],
            "threshold": last["threshold"],
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="6000 images, 2 epochs")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    X, labels, description = _data(args.quick)
    epochs = args.epochs or (2 if args.quick else 20)
    per_epoch = len(X) // 128
    progress(f"data: {description}; {epochs} epochs of {per_epoch} steps")
    runs: dict[str, dict[str, Any]] = {}
    for name, schedule in (
        ("untracked", None),
        ("every epoch", {"every": per_epoch}),
        ("every 5 epochs", {"every": 5 * per_epoch}),
        ("overhead = 0.1", {"overhead": 0.1}),
    ):
        runs[name] = _run(X, labels, epochs, schedule)
        progress(f"{name}: {runs[name]['seconds']:.1f} s")
    base = runs["untracked"]["seconds"]
    rows = []
    for name, r in runs.items():
        r["overhead"] = r["seconds"] / base - 1
        rows.append(
            [
                name,
                f"{r['seconds']:.1f} s",
                f"{100 * r['overhead']:.1f}%",
                str(r.get("rows", "-")),
                f"{100 * r['own_overhead']:.1f}%" if "own_overhead" in r else "-",
            ]
        )
    print(table(["run", "wall", "overhead (measured)", "rows", "tracker's own accounting"], rows, right=(1, 2, 3, 4)))
    name = "tracker_quick.json" if args.quick else "tracker.json"
    write_json(
        RESULTS_DIR / name,
        {"data": description, "epochs": epochs, "steps_per_epoch": per_epoch, "runs": runs, "machine": machine_state()},
    )


if __name__ == "__main__":
    main()
