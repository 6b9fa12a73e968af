"""What a ``torch.optim`` optimizer does to the curvature it can bear: its hyperparameters, the edge-of-stability
threshold its sharpness is compared with, and the diagonal preconditioner P of an adaptive method (THEORY.md §9.2).

Recognized: ``torch.optim.SGD`` (plain, heavy ball, Nesterov, dampening), ``Adam`` and ``AdamW`` (amsgrad, coupled
or decoupled weight decay) and ``RMSprop`` (centered, momentum), and any subclass of them; anything else is
``"unknown"``: λ_max(H) and batch sharpness can still be measured, against no threshold.

The thresholds are those of full-batch steps with P frozen (THEORY.md §9.1 and §9.2): a quadratic with curvature λ
(of H, or of P⁻¹H for an adaptive method) along an eigenvector is stable iff λ < threshold.

=======================  =============================================================
SGD, plain               2/η
SGD, heavy ball β        2(1+β)/η
SGD, Nesterov β          (2+2β)/((1+2β)η)      (torch's Nesterov)
SGD, dampening d         η(1−d) in place of η  (with momentum; torch ignores d without)
Adam, AdamW (β₁, β₂)     (2+2β₁)/((1−β₁)η)     on λ_max(P⁻¹H) (Cohen et al. 2022)
RMSprop                  2/η, or 2(1+β)/η with momentum β, on λ_max(P⁻¹H)
=======================  =============================================================
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sgdstab.errors import MethodError
from sgdstab.utils.results import ResultMixin

__all__ = ["OptimizerView", "preconditioner", "read_optimizer"]

NO_THRESHOLD = "no single threshold"  # the words every note that leaves the threshold NaN for disagreement holds


@dataclass(frozen=True)
class OptimizerView(ResultMixin):
    """A ``torch.optim`` optimizer as the stability figures read it.

    ``name``: its type's name; ``kind``: ``"sgd"``, ``"adam"`` (Adam, AdamW), ``"rmsprop"`` or ``"unknown"``;
    ``lr``: η (NaN when its param groups disagree); ``momentum``: SGD's β, RMSprop's momentum, Adam's β₁;
    ``beta2``: Adam's β₂ or RMSprop's alpha (NaN for SGD); ``decoupled_weight_decay``: AdamW's decay θ ← (1 − ηw)θ;
    ``preconditioned``: an adaptive method (its threshold is on λ_max(P⁻¹H), not λ_max(H)); ``threshold``: the
    edge of stability for full-batch steps (module docstring), NaN when there is none; ``notes``: what the threshold
    leaves out or why it is NaN. A hyperparameter on which the param groups disagree is NaN.

    Example:
        >>> import torch
        >>> from sgdstab.tracking.optimizers import read_optimizer
        >>> w = torch.nn.Parameter(torch.zeros(3))
        >>> view = read_optimizer(torch.optim.SGD([w], lr=0.1, momentum=0.9))
        >>> view.kind, round(view.threshold, 6)
        ('sgd', 38.0)
    """

    name: str
    kind: str
    lr: float
    momentum: float
    nesterov: bool
    dampening: float
    weight_decay: float
    decoupled_weight_decay: bool
    beta2: float
    eps: float
    preconditioned: bool
    threshold: float
    notes: tuple[str, ...] = ()


def _values(optimizer: torch.optim.Optimizer, key: str, default: Any) -> list[Any]:
    """``key`` of every param group, a 1-element tensor read as a float (torch allows tensor lr and betas)."""
    values = []
    for group in optimizer.param_groups:
        value = group.get(key, default)
        if isinstance(value, Tensor):
            value = float(value)
        elif isinstance(value, tuple | list):
            value = tuple(float(v) if isinstance(v, Tensor) else v for v in value)
        values.append(value)
    return values


def _differs(optimizer: torch.optim.Optimizer, key: str) -> bool:
    values = _values(optimizer, key, None)
    return any(v != values[0] for v in values[1:])


def _common(optimizer: torch.optim.Optimizer, key: str, default: Any = math.nan) -> Any:
    """The param groups' common value of ``key``, NaN when they disagree (or have none)."""
    values = _values(optimizer, key, default)
    return values[0] if values and not _differs(optimizer, key) else math.nan


def _ratio(numerator: float, denominator: float) -> float:
    """numerator/denominator with η = 0 (no step: any curvature is stable) as +inf and NaN kept."""
    if math.isnan(numerator) or math.isnan(denominator):
        return math.nan
    return numerator / denominator if denominator > 0 else math.inf


def _shared_notes(optimizer: torch.optim.Optimizer, keys: tuple[str, ...]) -> list[str]:
    notes = []
    if _differs(optimizer, "lr"):
        notes.append(f"param groups have different learning rates: {NO_THRESHOLD}")
    differ = [k for k in keys if _differs(optimizer, k)]
    if differ:
        notes.append(f"param groups have different {', '.join(differ)}: {NO_THRESHOLD}")
    if any(_values(optimizer, "maximize", False)):
        notes.append(f"maximize=True: the optimizer ascends L, {NO_THRESHOLD} for descent")
    return notes


def _coupled_decay_note(w: float, preconditioned: bool) -> list[str]:
    if not w > 0:
        return []
    if preconditioned:
        return [f"coupled weight decay w = {w:g} adds w·I to H: the threshold is on λ_max(P⁻¹(H + w·I))"]
    return [f"coupled weight decay w = {w:g} adds w·I to H: the threshold on λ_max(H) itself is threshold − w"]


def _sgd(optimizer: torch.optim.SGD) -> OptimizerView:
    lr, beta, d = _common(optimizer, "lr"), _common(optimizer, "momentum"), _common(optimizer, "dampening")
    nesterov, w = _common(optimizer, "nesterov"), _common(optimizer, "weight_decay")
    notes = _shared_notes(optimizer, ("momentum", "dampening", "nesterov", "weight_decay"))
    if nesterov is True and d != 0:
        notes.append(f"Nesterov with dampening (torch refuses it when built): {NO_THRESHOLD}")
    if beta == 0:
        threshold = _ratio(2.0, lr)  # torch applies dampening only to a momentum buffer
    elif nesterov is True:
        threshold = _ratio(2.0 + 2.0 * beta, (1.0 + 2.0 * beta) * lr * (1.0 - d))
    else:
        threshold = _ratio(2.0 + 2.0 * beta, lr * (1.0 - d))
    notes += _coupled_decay_note(w, preconditioned=False)
    nan = math.nan
    if any(NO_THRESHOLD in n for n in notes):
        threshold = nan
    return OptimizerView(
        name=type(optimizer).__name__,
        kind="sgd",
        lr=lr,
        momentum=beta,
        nesterov=nesterov is True,
        dampening=d,
        weight_decay=w,
        decoupled_weight_decay=False,
        beta2=nan,
        eps=nan,
        preconditioned=False,
        threshold=threshold,
        notes=tuple(notes),
    )


def _adam(optimizer: torch.optim.Adam) -> OptimizerView:
    lr, w, eps = _common(optimizer, "lr"), _common(optimizer, "weight_decay"), _common(optimizer, "eps")
    betas = _common(optimizer, "betas")
    beta1, beta2 = betas if isinstance(betas, tuple) else (math.nan, math.nan)
    decoupled = _common(optimizer, "decoupled_weight_decay", isinstance(optimizer, torch.optim.AdamW)) is True
    notes = _shared_notes(optimizer, ("betas", "eps", "weight_decay", "decoupled_weight_decay", "amsgrad"))
    if _common(optimizer, "amsgrad", False) is True:
        notes.append("amsgrad: P from max_exp_avg_sq")
    if decoupled and w > 0:
        notes.append(
            f"AdamW's decoupled decay (w = {w:g}) is not in the preconditioned sharpness: the threshold ignores the "
            "factor 1 − η·w by which it shrinks θ each step"
        )
    elif not decoupled:
        notes += _coupled_decay_note(w, preconditioned=True)
    threshold = _ratio(2.0 + 2.0 * beta1, (1.0 - beta1) * lr)
    if any(NO_THRESHOLD in n for n in notes):
        threshold = math.nan
    return OptimizerView(
        name=type(optimizer).__name__,
        kind="adam",
        lr=lr,
        momentum=beta1,
        nesterov=False,
        dampening=0.0,
        weight_decay=w,
        decoupled_weight_decay=decoupled,
        beta2=beta2,
        eps=eps,
        preconditioned=True,
        threshold=threshold,
        notes=tuple(notes),
    )


def _rmsprop(optimizer: torch.optim.RMSprop) -> OptimizerView:
    lr, beta, alpha = _common(optimizer, "lr"), _common(optimizer, "momentum"), _common(optimizer, "alpha")
    w, eps = _common(optimizer, "weight_decay"), _common(optimizer, "eps")
    notes = _shared_notes(optimizer, ("momentum", "alpha", "eps", "weight_decay", "centered"))
    if _common(optimizer, "centered", False) is True:
        notes.append("centered RMSprop: P from v − m² (square_avg − grad_avg²)")
    notes += _coupled_decay_note(w, preconditioned=True)
    threshold = _ratio(2.0 + 2.0 * beta, lr) if beta > 0 else _ratio(2.0, lr)
    if any(NO_THRESHOLD in n for n in notes):
        threshold = math.nan
    return OptimizerView(
        name=type(optimizer).__name__,
        kind="rmsprop",
        lr=lr,
        momentum=beta,
        nesterov=False,
        dampening=0.0,
        weight_decay=w,
        decoupled_weight_decay=False,
        beta2=alpha,
        eps=eps,
        preconditioned=True,
        threshold=threshold,
        notes=tuple(notes),
    )


def _unknown(optimizer: torch.optim.Optimizer) -> OptimizerView:
    name = type(optimizer).__name__
    lr = _common(optimizer, "lr")
    lr = float(lr) if isinstance(lr, int | float) and not isinstance(lr, bool) else math.nan
    note = f"unknown optimizer {name}: λ_max(H) and batch sharpness can still be measured, against no threshold"
    nan = math.nan
    return OptimizerView(name, "unknown", lr, nan, False, nan, nan, False, nan, nan, False, nan, (note,))


def read_optimizer(optimizer: torch.optim.Optimizer) -> OptimizerView:
    """Read a ``torch.optim`` optimizer's hyperparameters and its edge-of-stability threshold (module docstring).

    Args:
        optimizer: a ``torch.optim.Optimizer``; SGD, Adam, AdamW, RMSprop and their subclasses are recognized, any
            other is ``kind="unknown"`` with a note.

    Returns:
        An :class:`OptimizerView` (read again after a scheduler changes the learning rate).

    Raises:
        MethodError: ``optimizer`` is not a ``torch.optim.Optimizer``.

    Example:
        >>> import torch
        >>> from sgdstab.tracking.optimizers import read_optimizer
        >>> w = torch.nn.Parameter(torch.zeros(3))
        >>> view = read_optimizer(torch.optim.Adam([w], lr=1e-3, betas=(0.9, 0.999)))
        >>> view.kind, view.preconditioned, round(view.threshold)  # (2 + 2·0.9)/(0.1·η) = 38/η
        ('adam', True, 38000)
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise MethodError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    if isinstance(optimizer, torch.optim.SGD):
        return _sgd(optimizer)
    if isinstance(optimizer, torch.optim.Adam):  # AdamW is a subclass of Adam
        return _adam(optimizer)
    if isinstance(optimizer, torch.optim.RMSprop):
        return _rmsprop(optimizer)
    return _unknown(optimizer)


def _state_tensor(state: dict[str, Any], key: str, index: int) -> Tensor:
    if key not in state:
        raise MethodError(f"parameter {index} has optimizer state without {key!r}; it was not written by torch.optim")
    return state[key]


def _adam_diagonal(state: dict[str, Any], group: dict[str, Any], index: int) -> Tensor:
    """P = (1 − β₁^t)·(sqrt(v)/sqrt(1 − β₂^t) + ε), so that torch's step is θ ← θ − η·m/P: torch divides by
    ``(sqrt(v)/sqrt(1 − β₂^t)).add_(eps)`` and scales the step by η/(1 − β₁^t); the same operations here, so P
    is torch's denominator to rounding."""
    beta1, beta2 = (float(b) for b in group["betas"])
    step = float(_state_tensor(state, "step", index))
    v = _state_tensor(state, "max_exp_avg_sq" if group.get("amsgrad", False) else "exp_avg_sq", index)
    return (v.sqrt() / (1.0 - beta2**step) ** 0.5 + float(group["eps"])) * (1.0 - beta1**step)


def _rmsprop_diagonal(state: dict[str, Any], group: dict[str, Any], index: int) -> Tensor:
    """P = sqrt(v) + ε, centered sqrt(v − ḡ²) + ε (torch has no bias correction and adds ε after the root)."""
    v = _state_tensor(state, "square_avg", index)
    if group.get("centered", False):
        g = _state_tensor(state, "grad_avg", index)
        return v.addcmul(g, g, value=-1).sqrt_() + float(group["eps"])
    return v.sqrt() + float(group["eps"])


def _groups_of(optimizer: torch.optim.Optimizer, parameters: Sequence[Tensor]) -> list[dict[str, Any]]:
    """Each parameter's param group (by identity), else MethodError naming the first stranger."""
    owner = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    groups = []
    for index, p in enumerate(parameters):
        if not isinstance(p, Tensor):
            raise MethodError(f"parameters[{index}] must be a tensor (a model parameter), got {type(p).__name__}")
        if id(p) not in owner:
            raise MethodError(
                f"parameters[{index}] (shape {tuple(p.shape)}) is in none of the optimizer's param groups; pass the "
                "parameters the optimizer was built with"
            )
        groups.append(owner[id(p)])
    return groups


def preconditioner(optimizer: torch.optim.Optimizer, parameters: Sequence[torch.nn.Parameter]) -> Tensor | None:
    """The diagonal preconditioner P of an adaptive optimizer as it stands after its last step, as one flat tensor
    over ``parameters`` (each flattened, in that order), such that that step was θ ← θ − η·P⁻¹·m (THEORY.md §9.2).

    - Adam, AdamW at step t: P = (1 − β₁^t)·(sqrt(v_t/(1 − β₂^t)) + ε), with v_t = ``exp_avg_sq`` (amsgrad:
      ``max_exp_avg_sq``) and m = ``exp_avg``: torch divides m by 1 − β₁^t and v by 1 − β₂^t, so the factor
      1 − β₁^t belongs to P (as in Cohen et al. 2022);
    - RMSprop: P = sqrt(v) + ε with v = ``square_avg`` (centered: sqrt(v − ḡ²) + ε, ḡ = ``grad_avg``); m is the
      gradient (with momentum β, torch's buffer is b ← βb + P⁻¹g and θ ← θ − ηb).

    Args:
        optimizer: the optimizer, after at least one ``step()``.
        parameters: the parameters to cover, each in one of the optimizer's param groups.

    Returns:
        P as a flat tensor on the state's device and dtype (strictly positive when ε > 0); None for a
        non-adaptive or unknown optimizer, or while a parameter has no state yet (before its first step).

    Raises:
        MethodError: ``optimizer`` is not a ``torch.optim.Optimizer``; a parameter is not a tensor or is in none of
            its param groups; a state lacks the tensors torch writes.

    Example:
        >>> import torch
        >>> from sgdstab.tracking.optimizers import preconditioner
        >>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
        >>> opt = torch.optim.RMSprop([w], lr=0.01, alpha=0.9, eps=1e-8)
        >>> preconditioner(opt, [w]) is None  # no step yet
        True
        >>> (w**2).sum().backward(); opt.step()
        >>> preconditioner(opt, [w])  # sqrt(0.1·g²) + ε with g = 2w
        tensor([0.6325, 1.2649], dtype=torch.float64)
    """
    kind = read_optimizer(optimizer).kind
    groups = _groups_of(optimizer, parameters)
    if kind not in ("adam", "rmsprop"):
        return None
    diagonal = _adam_diagonal if kind == "adam" else _rmsprop_diagonal
    parts = []
    for index, (p, group) in enumerate(zip(parameters, groups, strict=True)):
        state = optimizer.state.get(p)
        if not state:
            return None
        parts.append(diagonal(state, group, index).detach().reshape(-1))
    return torch.cat(parts) if parts else None
