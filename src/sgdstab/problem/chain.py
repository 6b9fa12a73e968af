"""A model as a chain of Linear layers and parameter-free maps, the structure the layerwise routes run on.

``f(x) = steps[-1](… steps[0](prefix(x)))``. :func:`layer_chain` recognises :func:`sgdstab.mlp` /
:func:`sgdstab.linear_net` models, :func:`sgdstab.random_features` models (the frozen feature map is the prefix)
and any ``nn.Sequential`` (nested ones flattened) whose trainable parameters all live in ``nn.Linear`` modules,
and checks the chain against the model's own output before it is used.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from sgdstab.models.architectures import MLP, RandomFeatures
from sgdstab.problem.problem import Problem


@dataclass(frozen=True)
class Step:
    module: nn.Module
    weight: str | None  # names of the Linear's trainable parameters in the problem's layout (None: not trained)
    bias: str | None


@dataclass(frozen=True)
class LayerChain:
    """``f(x) = steps[-1](… steps[0](prefix(x)))``; ``steps`` are Linear layers or parameter-free modules."""

    prefix: Callable[[Tensor], Tensor]
    steps: tuple[Step, ...]

    def apply(self, params: dict[str, Tensor], a: Tensor, start: int = 0) -> Tensor:
        """Run ``steps[start:]`` on ``a`` with the Linear layers' parameters taken from ``params``."""
        for step in self.steps[start:]:
            a = apply_step(step, params, a)
        return a

    @property
    def linear_indices(self) -> tuple[int, ...]:
        return tuple(i for i, s in enumerate(self.steps) if s.weight is not None or s.bias is not None)


def apply_step(step: Step, params: dict[str, Tensor], a: Tensor) -> Tensor:
    if step.weight is None and step.bias is None:
        return step.module(a)
    lin = step.module
    assert isinstance(lin, nn.Linear)
    w = params[step.weight] if step.weight is not None else lin.weight
    b = params[step.bias] if step.bias is not None else lin.bias
    return F.linear(a, w, b)


def _leaves(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    if isinstance(module, nn.Sequential):
        out: list[tuple[str, nn.Module]] = []
        for name, child in module.named_children():
            out += _leaves(child, f"{prefix}{name}.")
        return out
    return [(prefix.rstrip("."), module)]


def layer_chain(problem: Problem) -> LayerChain | None:
    """The model of ``problem`` as a :class:`LayerChain`, or ``None`` when it is not one (or does not match its
    own output on the first samples)."""
    model = problem.model
    if isinstance(model, MLP):
        prefix: Callable[[Tensor], Tensor] = lambda x: x.flatten(1)  # noqa: E731
        leaves = _leaves(model.net, "net.")
    elif isinstance(model, RandomFeatures):
        prefix = lambda x: model.act(x.flatten(1) @ model.feature_weight.T)  # noqa: E731
        leaves = [("readout", model.readout)]
    elif isinstance(model, nn.Sequential):
        prefix = lambda x: x  # noqa: E731
        leaves = _leaves(model, "")
    else:
        return None
    trainable = set(problem.layout.names)
    steps: list[Step] = []
    covered: set[str] = set()
    for name, module in leaves:
        own = {n for n, p in module.named_parameters() if p.requires_grad}
        if not own:
            steps.append(Step(module, None, None))
            continue
        if not isinstance(module, nn.Linear):
            return None
        w = f"{name}.weight" if "weight" in own else None
        b = f"{name}.bias" if "bias" in own else None
        steps.append(Step(module, w, b))
        covered |= {x for x in (w, b) if x is not None}
    if covered != trainable:
        return None
    chain = LayerChain(prefix, tuple(steps))
    m = min(problem.n, 8)
    params = problem.layout.unflatten(problem.theta)
    with torch.no_grad():
        mine = chain.apply(params, prefix(problem.X[:m])).reshape(m, -1)
        theirs = problem.outputs()[:m] if problem.n <= 8 else problem.forward(params, problem.X[:m])
    tol = 1e-4 if problem.dtype == torch.float32 else 1e-10
    if mine.shape != theirs.shape or not torch.allclose(mine, theirs, rtol=tol, atol=tol * float(theirs.abs().max())):
        return None
    return chain


def layer_widths(chain: LayerChain, problem: Problem) -> list[int]:
    """Output width of every step, from one sample."""
    params = problem.layout.unflatten(problem.theta)
    with torch.no_grad():
        a = chain.prefix(problem.X[:1])
        out = []
        for step in chain.steps:
            a = apply_step(step, params, a)
            out.append(int(a[0].numel()))
    return out
