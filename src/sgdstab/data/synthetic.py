"""Synthetic regression data sets, deterministic from ``seed`` via local ``torch.Generator`` streams.

``gaussian-linear`` (options ``dim=20, outputs=1, noise=0.0``):
    X ~ N(0, I_d) of shape (n, d); W* ~ N(0, 1/d) of shape (k, d); Y = X W*ᵀ + noise · N(0, 1).
``teacher`` (options ``dim=20, outputs=1, teacher_width=32, noise=0.0``):
    X ~ N(0, I_d); W1 ~ N(0, 1/d) of shape (m, d); W2 ~ N(0, 1/m) of shape (k, m);
    Y = tanh(X W1ᵀ) W2ᵀ + noise · N(0, 1) (no biases).

The teacher (W*, or W1 and W2) depends only on ``seed`` and the shape options, so the ``"train"`` and
``"test"`` splits share it; inputs and noise come from separate streams per split. Everything is float32,
the global torch RNG is never touched. No normalization is applied (inputs are already standard normal).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from sgdstab.data.dataset import Dataset
from sgdstab.data.targets import check_int
from sgdstab.errors import DataError
from sgdstab.utils.memory import check_allocation

DEFAULT_N = 1000
OPTIONS: dict[str, dict[str, Any]] = {
    "gaussian-linear": {"dim": 20, "outputs": 1, "noise": 0.0},
    "teacher": {"dim": 20, "outputs": 1, "teacher_width": 32, "noise": 0.0},
}
_STREAMS = {"teacher": 0, "train-inputs": 1, "test-inputs": 2, "train-noise": 3, "test-noise": 4}


def generator(seed: int, stream: str) -> torch.Generator:
    """A fresh ``torch.Generator`` for one named stream, seeded from ``(seed, stream)``."""
    state = np.random.SeedSequence([seed, _STREAMS[stream]]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & (2**63 - 1))


def check_options(name: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Merge ``options`` into the defaults of ``name``; reject unknown keys and invalid values."""
    defaults = OPTIONS[name]
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise DataError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for {name}; "
            f"it accepts {', '.join(f'{k}={v!r}' for k, v in defaults.items())}"
        )
    merged = {**defaults, **options}
    for key in ("dim", "outputs", "teacher_width"):
        if key in merged:
            merged[key] = check_int(merged[key], f"{name} option {key}", minimum=1)
    noise = merged["noise"]
    if isinstance(noise, bool) or not isinstance(noise, int | float | np.integer | np.floating):
        raise DataError(f"{name} option noise must be a number, got {noise!r}")
    if not math.isfinite(float(noise)) or float(noise) < 0:
        raise DataError(f"{name} option noise must be a finite number >= 0, got {noise!r}")
    merged["noise"] = float(noise)
    return merged


def _inputs_and_noise(
    n: int, dim: int, outputs: int, noise: float, seed: int, split: str
) -> tuple[torch.Tensor, torch.Tensor | None]:
    X = torch.randn(n, dim, generator=generator(seed, f"{split}-inputs"))
    eps = None
    if noise > 0:
        eps = noise * torch.randn(n, outputs, generator=generator(seed, f"{split}-noise"))
    return X, eps


def gaussian_linear(
    n: int, *, dim: int = 20, outputs: int = 1, noise: float = 0.0, seed: int = 0, split: str = "train"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return ``(X, Y, W_star)`` with ``Y = X @ W_star.T (+ noise)``; see the module docstring."""
    W = torch.randn(outputs, dim, generator=generator(seed, "teacher")) / math.sqrt(dim)
    X, eps = _inputs_and_noise(n, dim, outputs, noise, seed, split)
    Y = X @ W.T
    return X, (Y if eps is None else Y + eps), W


def teacher(
    n: int,
    *,
    dim: int = 20,
    outputs: int = 1,
    teacher_width: int = 32,
    noise: float = 0.0,
    seed: int = 0,
    split: str = "train",
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Return ``(X, Y, {"W1": W1, "W2": W2})`` with ``Y = tanh(X W1ᵀ) W2ᵀ (+ noise)``."""
    g = generator(seed, "teacher")
    W1 = torch.randn(teacher_width, dim, generator=g) / math.sqrt(dim)
    W2 = torch.randn(outputs, teacher_width, generator=g) / math.sqrt(teacher_width)
    X, eps = _inputs_and_noise(n, dim, outputs, noise, seed, split)
    Y = torch.tanh(X @ W1.T) @ W2.T
    return X, (Y if eps is None else Y + eps), {"W1": W1, "W2": W2}


def load(name: str, n: int | None, seed: int, split: str, options: Mapping[str, Any]) -> Dataset:
    """Build the synthetic data set ``name`` (``n`` defaults to 1000)."""
    opts = check_options(name, options)
    n = DEFAULT_N if n is None else n
    # float32 X, Y, the noise and the teacher's hidden layer (m × n for teacher)
    width = opts.get("teacher_width", 0)
    check_allocation(
        4 * (n * (opts["dim"] + 2 * opts["outputs"] + width) + opts["dim"] * (width + opts["outputs"])),
        f"synthetic {name} data (n = {n}, dim = {opts['dim']})",
        "ask for fewer samples or a smaller dim",
    )
    if name == "gaussian-linear":
        X, Y, _ = gaussian_linear(n, seed=seed, split=split, **opts)
        rule = f"X ~ N(0, I_{opts['dim']}), Y = X W*ᵀ with W* ~ N(0, 1/d) of shape ({opts['outputs']}, {opts['dim']})"
    else:
        X, Y, _ = teacher(n, seed=seed, split=split, **opts)
        rule = (
            f"X ~ N(0, I_{opts['dim']}), Y = tanh(X W1ᵀ) W2ᵀ with W1 ~ N(0, 1/d) of shape "
            f"({opts['teacher_width']}, {opts['dim']}), W2 ~ N(0, 1/m) of shape "
            f"({opts['outputs']}, {opts['teacher_width']})"
        )
    noise_text = f" + {opts['noise']:g}·N(0, 1) noise" if opts["noise"] > 0 else ", no noise"
    return Dataset(
        X=X.contiguous(),
        Y=Y.contiguous(),
        labels=None,
        name=name,
        classes=None,
        description=f"synthetic {name} {split} split, n={n}, {rule}{noise_text}, seed {seed}, no normalization",
        split=split,
        indices=None,
        params={"n": n, "seed": seed, "subset": "first", "options": opts},
    )
