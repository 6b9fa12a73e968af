"""Dense float64 references built by plain autograd loops, independent of sgdstab's torch.func code."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from sgdstab import Problem


@dataclass(frozen=True)
class Dense:
    H: torch.Tensor  # Hessian of L (p × p)
    J: torch.Tensor  # (nk × p)
    G: torch.Tensor  # JᵀJ/n
    Sigma: torch.Tensor  # centred noise covariance
    grads: torch.Tensor  # per-sample gradients (n × p)
    loss: float
    r: torch.Tensor  # residuals (n, k)


def tiny_model(kind: str, k: int, seed: int = 0, activation: type[nn.Module] = nn.Tanh, width: int = 6) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(4, width), activation(), nn.Linear(width, k)).double()
    if kind == "cnn":
        channels = max(2, width // 3)
        return nn.Sequential(
            nn.Conv2d(1, channels, 3), activation(), nn.Flatten(), nn.Linear(channels * 3 * 3, k)
        ).double()
    raise ValueError(kind)


def tiny_inputs(kind: str, n: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (n, 4) if kind == "mlp" else (n, 1, 5, 5)
    return torch.randn(shape, dtype=torch.float64, generator=g)


def tiny_problem(kind: str, k: int, state: str, n: int = 7, seed: int = 0, width: int = 6, **kwargs) -> Problem:
    """``state``: "off" (random targets), "minimum" (targets = outputs: zero residual, a global minimum) or
    "near" (targets = outputs + 1e-3 noise)."""
    model = tiny_model(kind, k, seed, width=width)
    X = tiny_inputs(kind, n)
    with torch.no_grad():
        out = model(X)
    g = torch.Generator().manual_seed(seed + 100)
    if state == "off":
        Y = torch.randn(n, k, dtype=torch.float64, generator=g)
    elif state == "minimum":
        Y = out.clone()
    else:
        Y = out + 1e-3 * torch.randn(n, k, dtype=torch.float64, generator=g)
    return Problem(model, X, Y, **kwargs)


def dense(problem: Problem) -> Dense:
    model, X, Y = problem.model, problem.X, problem.Y
    params = [p for p in model.parameters() if p.requires_grad]
    shapes = [p.shape for p in params]
    n, k = problem.n, problem.k

    def unflat(theta):
        out, i = [], 0
        for s in shapes:
            m = s.numel()
            out.append(theta[i : i + m].view(s))
            i += m
        return out

    names = [name for name, p in model.named_parameters() if p.requires_grad]

    def loss_of(theta):
        ps = dict(zip(names, unflat(theta), strict=True))
        out = torch.func.functional_call(model, ps, (X,)).reshape(n, -1)
        return 0.5 * ((out - Y) ** 2).sum() / n

    theta0 = torch.cat([p.detach().reshape(-1) for p in params])
    H = torch.autograd.functional.hessian(loss_of, theta0)
    rows, grads = [], []
    for i in range(n):
        out = model(X[i : i + 1]).reshape(-1)
        for c in range(k):
            g = torch.autograd.grad(out[c], params, retain_graph=True)
            rows.append(torch.cat([t.reshape(-1) for t in g]))
        li = 0.5 * ((out - Y[i]) ** 2).sum()
        grads.append(torch.cat([t.reshape(-1) for t in torch.autograd.grad(li, params)]))
    J = torch.stack(rows)
    gs = torch.stack(grads)
    gbar = gs.mean(0)
    with torch.no_grad():
        r = model(X).reshape(n, -1) - Y
    return Dense(
        H=H,
        J=J,
        G=J.T @ J / n,
        Sigma=gs.T @ gs / n - torch.outer(gbar, gbar),
        grads=gs,
        loss=float(0.5 * (r**2).sum() / n),
        r=r,
    )
