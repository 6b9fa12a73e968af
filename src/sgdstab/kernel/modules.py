"""The NTK Gram matrix ``K = J Jᵀ`` of any ``nn.Module``, built module by module without forming J.

J's columns split by parameter, so ``K = Σ_m J_m J_mᵀ`` over the modules m that hold trainable parameters (a
parameter shared by several modules counts once, its rows summed over them). Each term comes from what one
forward pass with hooks and k backward passes per chunk of samples record about the module:

- its inputs ``a`` at every call, and ``g_c = ∂(Σ_i f_c(x_i))/∂z``, the gradient of output c with respect to its
  output z: sample i's slice of ``g_c`` is ``∂f_c(x_i)/∂z_i`` because samples do not interact (a model that couples
  them is refused by :class:`~sgdstab.Problem`);
- an ``nn.Linear`` called once per forward on inputs of shape (m, fan_in), whose parameters no other module
  holds, needs no rows at all: ``∂f_c(x_i)/∂W = g_ic ⊗ a_i``, so its term is the Hadamard product
  ``(a_i·a_j + [bias]) (g_ic·g_jd)`` of two small Gram matrices (as :mod:`sgdstab.kernel.layerwise`);
- any other module (a convolution, a Linear applied at every position, the affine part of a norm, attention, a
  module called twice, a parent module's own ``nn.Parameter``): its own rows ``∂f_c(x_i)/∂θ_m``, the pull-back of
  ``g_ic`` through that module alone (``torch.func.vjp``, vectorized over samples and outputs), multiplied
  ``R Rᵀ`` by blocks of rows: memory of one module's rows, never of J;
- a parameter the hooks cannot attribute (its module is never called, or its call does not keep the sample
  axis first): its rows from the whole model's per-sample Jacobian restricted to it (stated in the notes).

The result is checked against autograd's J on three samples (first, middle, last: their k×k blocks and those
between them); a model whose parameters are also used outside their module's call (``F.linear(h, emb.weight)``)
would fail the check, and K is then rebuilt from J's rows by the caller (:func:`sgdstab.ntk`), with a note.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vjp, vmap

from sgdstab.errors import NoModuleStructureError
from sgdstab.kernel.layerwise import add_gram_, assemble_hadamard, symmetrize_diagonal_blocks_
from sgdstab.problem.problem import Problem
from sgdstab.utils.memory import available_memory_bytes, check_allocation, release_freed_memory


@dataclass
class _Owner:
    """A module holding trainable parameters directly: its name, its local → layout names (``params``: its own;
    ``subtree``: every trainable parameter its forward reads, its children's included)."""

    name: str
    module: nn.Module
    params: dict[str, str]
    subtree: dict[str, str]


@dataclass
class _Call:
    """One call of an owner during one chunk: its inputs (detached), which of them carry the sample axis, its
    outputs (in the graph) and, after the backward passes, their gradients ``(m, k, *shape)``."""

    owner: _Owner
    m: int
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    batched: tuple[bool, ...]
    outputs: list[Tensor]
    grads: list[Any] = field(default_factory=list)


@dataclass
class ModuleNtk:
    """K and how it was built: ``hadamard`` (Linear modules from two Gram matrices), ``rows`` (modules from
    their own rows), ``jacobian`` (parameters from the whole model's Jacobian rows), and the notes."""

    matrix: Tensor
    hadamard: tuple[str, ...]
    rows: tuple[str, ...]
    jacobian: tuple[str, ...]
    notes: tuple[str, ...]
    check_error: float


def owners(problem: Problem) -> list[_Owner]:
    """Every module of the model that holds trainable parameters directly, with their layout names."""
    layout = {id(p): name for name, p in problem.model.named_parameters() if p.requires_grad}
    found = []
    for name, module in problem.model.named_modules(remove_duplicate=False):
        own = {
            local: layout[id(p)]
            for local, p in module.named_parameters(recurse=False, remove_duplicate=False)
            if id(p) in layout
        }
        if own:
            subtree = {
                local: layout[id(p)] for local, p in module.named_parameters(remove_duplicate=False) if id(p) in layout
            }
            found.append(_Owner(name, module, own, subtree))
    unique: dict[int, _Owner] = {}
    for o in found:  # a module reachable under two names is one owner
        unique.setdefault(id(o.module), o)
    return list(unique.values())


# ------------------------------------------------------------------------------------------------- capture
def _tensors(output: Any) -> list[Tensor] | None:
    """The tensors of a module's output (a tensor, or a tuple/list of tensors and Nones); None for anything else."""
    if isinstance(output, Tensor):
        return [output]
    if isinstance(output, tuple | list) and all(o is None or isinstance(o, Tensor) for o in output):
        return [o for o in output if o is not None]
    return None


def _cloned(output: Any) -> Any:
    """The output with its tensors cloned: what follows the module may change them in place, and the gradient
    must be the one with respect to the module's own output."""
    if isinstance(output, Tensor):
        return output.clone()
    return type(output)(o.clone() if isinstance(o, Tensor) else o for o in output)


@contextmanager
def _hooks(owned: list[_Owner], m: int, calls: list[_Call]) -> Iterator[None]:
    def record(owner: _Owner) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            outs = _tensors(output)
            if outs is None:
                return None
            outs = [o for o in outs if o.requires_grad]
            batched = tuple(isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == m for a in args)
            kept = tuple(a.detach().clone() if isinstance(a, Tensor) else a for a in args)
            calls.append(_Call(owner, m, kept, dict(kwargs), batched, outs))
            return _cloned(output)

        return hook

    handles = [o.module.register_forward_hook(record(o), with_kwargs=True) for o in owned]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _capture(problem: Problem, params: dict[str, Tensor], x: Tensor, owned: list[_Owner]) -> list[_Call]:
    """The calls of the owners on the chunk ``x``, with the gradients of every output f_c with respect to their
    outputs (k backward passes through one recorded graph)."""
    calls: list[_Call] = []
    leaves = {name: t.detach().requires_grad_(True) for name, t in params.items()}
    with torch.enable_grad(), _hooks(owned, x.shape[0], calls):
        f = problem.forward(leaves, x)
    targets = [t for call in calls for t in call.outputs]
    for call in calls:  # (m, k, *shape) per output, filled one output f_c at a time: no stacked copies
        call.grads = [o.new_zeros((o.shape[0], problem.k, *o.shape[1:])) if o.dim() else o for o in call.outputs]
    for c in range(problem.k):
        if not targets:
            break
        grads = iter(torch.autograd.grad(f[:, c].sum(), targets, retain_graph=c < problem.k - 1, allow_unused=True))
        for call in calls:
            for out, g in zip(call.grads, [next(grads) for _ in call.outputs], strict=True):
                if g is not None and out.dim() >= 2 and g.shape[0] == out.shape[0]:
                    out[:, c] = g
    for call in calls:
        call.outputs = []  # the graph is not kept: only what the rows need
    return calls


# ------------------------------------------------------------------------------------------------- rows
def _split_parameters(owner: _Owner, params: dict[str, Tensor]) -> tuple[dict, dict]:
    """The owner's own trainable parameters and the other trainable ones its forward reads, under its local
    names, at θ (frozen parameters and buffers are the module's own)."""
    own = {local: params[name] for local, name in owner.params.items()}
    return own, {local: params[name] for local, name in owner.subtree.items() if local not in own}


def _call_rows(problem: Problem, call: _Call, params: dict[str, Tensor]) -> dict[str, Tensor]:
    """``∂f_c(x_i)/∂θ`` for the owner's parameters through this call alone: layout name → (m·k, numel)."""
    module, locals_ = call.owner.module, call.owner.params
    own, rest = _split_parameters(call.owner, params)

    def outputs(P: dict[str, Tensor], args: tuple) -> tuple[Tensor, ...]:
        full = tuple(a.unsqueeze(0) if b else a for a, b in zip(args, call.batched, strict=True))
        outs = _tensors(functional_call(module, (P, rest), full, call.kwargs))
        assert outs is not None
        return tuple(o[0] for o in outs if o.requires_grad)

    def per_sample(P: dict[str, Tensor], args: tuple, grads: tuple[Tensor, ...]) -> dict[str, Tensor]:
        _, pull = vjp(lambda Q: outputs(Q, args), P)
        return vmap(pull)(grads)[0]  # name → (k, *shape)

    in_dims = tuple(0 if b else None for b in call.batched)
    with torch.enable_grad():
        rows = vmap(per_sample, in_dims=(None, in_dims, 0))(own, call.args, tuple(call.grads))
    return {locals_[local]: r.reshape(r.shape[0] * r.shape[1], -1).detach() for local, r in rows.items()}


def _jacobian_rows(problem: Problem, names: list[str], params: dict[str, Tensor], x: Tensor) -> dict[str, Tensor]:
    """``∂f_c(x_i)/∂θ`` for the parameters ``names`` from the whole model's per-sample Jacobian."""
    rest = {n: v for n, v in params.items() if n not in names}

    def f(sub: dict[str, Tensor], xi: Tensor) -> Tensor:
        return problem.forward({**rest, **sub}, xi.unsqueeze(0))[0]

    rows = vmap(jacrev(f), in_dims=(None, 0))({n: params[n] for n in names}, x)  # name → (m, k, *shape)
    return {n: r.reshape(r.shape[0] * r.shape[1], -1) for n, r in rows.items()}


# ------------------------------------------------------------------------------------------------- plan
def _is_hadamard(call: _Call, calls_of_owner: int, shared: set[str]) -> bool:
    """A Linear called once on (m, fan_in) inputs whose parameters no other module holds."""
    module = call.owner.module
    return (
        isinstance(module, nn.Linear)
        and calls_of_owner == 1
        and not call.kwargs
        and len(call.args) == 1
        and call.batched == (True,)
        and call.args[0].dim() == 2
        and len(call.grads) == 1
        and not (set(call.owner.params.values()) & shared)
    )


@dataclass
class _Plan:
    hadamard: list[_Owner]
    rows: list[_Owner]
    jacobian: list[str]
    notes: list[str]


def _plan(problem: Problem, owned: list[_Owner], probe: list[_Call]) -> _Plan:
    """Which route each owner takes, decided on the first chunk's calls."""
    called = {id(c.owner) for c in probe}
    owned = _adopt_uncalled(owned, called)
    holders: dict[str, int] = {}
    for o in owned:
        for name in o.params.values():
            holders[name] = holders.get(name, 0) + 1
    shared = {n for n, c in holders.items() if c > 1}
    plan = _Plan([], [], [], [])
    for o in owned:
        mine = [c for c in probe if c.owner is o]
        label = o.name or "the model's own parameters"
        if not mine:
            plan.jacobian += list(o.params.values())
            plan.notes.append(f"{label}: not called as a module (used directly?), its rows from J")
        elif any(not c.grads or any(g.dim() < 2 or g.shape[0] != c.m for g in c.grads) for c in mine):
            plan.jacobian += list(o.params.values())
            plan.notes.append(f"{label}: its output does not keep the sample axis first, its rows from J")
        elif _is_hadamard(mine[0], len(mine), shared):
            plan.hadamard.append(o)
        else:
            plan.rows.append(o)
    grown = True
    while grown:  # a module sharing a parameter with one whose rows come from J takes that route too
        tangled = [o for o in plan.rows if set(o.params.values()) & set(plan.jacobian)]
        plan.rows = [o for o in plan.rows if o not in tangled]
        plan.jacobian += [name for o in tangled for name in o.params.values()]
        grown = bool(tangled)
    plan.jacobian = sorted(set(plan.jacobian), key=problem.layout.names.index)
    return plan


def _adopt_uncalled(owned: list[_Owner], called: set[int]) -> list[_Owner]:
    """A module never called itself whose parameters its parent's forward reads (``nn.MultiheadAttention`` uses
    ``out_proj.weight`` so): its parameters join the rows of the nearest called ancestor that holds parameters
    (exact when they are read only inside that ancestor's call, which the final check confirms)."""
    kept = []
    for o in owned:
        if id(o) in called or not o.name:
            kept.append(o)
            continue
        ancestors = [a for a in owned if id(a) in called and (not a.name or o.name.startswith(a.name + "."))]
        if not ancestors:
            kept.append(o)
            continue
        parent = max(ancestors, key=lambda a: len(a.name))
        relative = o.name[len(parent.name) + 1 :] if parent.name else o.name
        parent.params.update({f"{relative}.{local}": name for local, name in o.params.items()})
    return kept


# ------------------------------------------------------------------------------------------------- assembly
def _row_groups(plan: _Plan) -> list[list[_Owner]]:
    """Owners that share a parameter are one group: their rows are summed before the product."""
    groups: list[list[_Owner]] = []
    for o in plan.rows:
        joined = [g for g in groups if any(set(o.params.values()) & set(x.params.values()) for x in g)]
        merged = [o] + [x for g in joined for x in g]
        groups = [g for g in groups if g not in joined] + [merged]
    return groups


def module_ntk(problem: Problem, theta: Tensor | None = None, chunk_size: int | None = None) -> ModuleNtk:
    """``K = J Jᵀ`` (nk × nk, row ``i·k + c``) of any model, module by module (see the module docstring)."""
    nk = problem.n * problem.k
    params = problem.layout.unflatten(problem.parameters_or(theta).detach())
    owned = owners(problem)
    m = chunk_size or _chunk(problem, params, owned)
    chunks = [slice(s, min(s + m, problem.n)) for s in range(0, problem.n, m)]
    first = _capture(problem, params, problem.X[chunks[0]], owned)
    plan = _plan(problem, owned, first)
    if not plan.hadamard and not plan.rows:
        raise NoModuleStructureError(
            f"no module of {type(problem.model).__name__} is called with its own parameters: nothing to build K from "
            "module by module"
        )
    groups = [_Group(problem, g) for g in _row_groups(plan)]
    eager = [g for g in groups if g.rows_are_smaller(first, problem)]
    for g in eager:  # rows smaller than what their calls record: built chunk by chunk, the calls dropped
        g.allocate(problem)
    kept_ids = {id(o) for o in plan.hadamard} | {id(o) for g in groups if g not in eager for o in g.owners}
    kept: list[list[_Call]] = []
    for index, s in enumerate(chunks):
        calls = first if index == 0 else _capture(problem, params, problem.X[s], owned)
        for g in eager:
            g.add_rows(problem, calls, params, s)
        kept.append([c for c in calls if id(c.owner) in kept_ids])
        del calls
        release_freed_memory()
    del first
    release_freed_memory()
    K = torch.zeros((nk, nk), dtype=problem.dtype, device=problem.device)
    _add_hadamard_(K, problem, plan, kept)
    release_freed_memory()
    for g in groups:
        if g not in eager:
            g.allocate(problem)
            for index, s in enumerate(chunks):
                g.add_rows(problem, kept[index], params, s)
        add_gram_(K, g.release())
        release_freed_memory()
    if plan.jacobian:
        width = sum(problem.layout.numels[problem.layout.names.index(n)] for n in plan.jacobian)
        check_allocation(
            nk * width * problem.itemsize,
            f"the Jacobian rows of {len(plan.jacobian)} parameter(s) no module call covers ({nk} × {width})",
            "use method='jacobian' with a chunk_size, or fewer samples",
        )
        add_gram_(K, torch.cat([_jac_block(problem, plan.jacobian, params, s) for s in chunks]))
    symmetrize_diagonal_blocks_(K)
    return ModuleNtk(
        K,
        tuple(o.name for o in plan.hadamard),
        tuple(o.name or "(model)" for o in plan.rows),
        tuple(plan.jacobian),
        tuple(plan.notes),
        check_against_jacobian(problem, K, theta),
    )


def _jac_block(problem: Problem, names: list[str], params: dict[str, Tensor], s: slice) -> Tensor:
    rows = _jacobian_rows(problem, names, params, problem.X[s])
    return torch.cat([rows[n] for n in names], dim=1)


class _Group:
    """Owners that share parameters, and the rows ``R`` (nk × Σ numel) of those parameters."""

    def __init__(self, problem: Problem, owners_: list[_Owner]) -> None:
        self.owners = owners_
        names = {name for o in owners_ for name in o.params.values()}
        self.names = sorted(names, key=problem.layout.names.index)
        self.widths = {n: problem.layout.numels[problem.layout.names.index(n)] for n in self.names}
        self.offsets, at = {}, 0
        for name in self.names:
            self.offsets[name], at = at, at + self.widths[name]
        self.total = at
        self.R: Tensor | None = None

    def rows_are_smaller(self, calls: list[_Call], problem: Problem) -> bool:
        """Whether the group's rows take less memory than its calls' inputs and output gradients."""
        mine = [c for c in calls if any(c.owner is o for o in self.owners)]
        m = max((c.m for c in mine), default=1)
        recorded = sum(
            sum(a.numel() for a, b in zip(c.args, c.batched, strict=True) if b) + sum(g.numel() for g in c.grads)
            for c in mine
        )
        return m * problem.k * self.total <= recorded

    def allocate(self, problem: Problem) -> None:
        check_allocation(
            problem.n * problem.k * self.total * problem.itemsize,
            f"the Jacobian rows of {', '.join(o.name or '(model)' for o in self.owners)} "
            f"({problem.n * problem.k} × {self.total})",
            "use method='jacobian' with a chunk_size, or fewer samples",
        )
        self.R = torch.zeros((problem.n * problem.k, self.total), dtype=problem.dtype, device=problem.device)

    def add_rows(self, problem: Problem, calls: list[_Call], params: dict[str, Tensor], s: slice) -> None:
        assert self.R is not None
        here = self.R[s.start * problem.k : s.stop * problem.k]
        for call in calls:
            if any(call.owner is o for o in self.owners):
                for name, r in _call_rows(problem, call, params).items():
                    here[:, self.offsets[name] : self.offsets[name] + self.widths[name]] += r

    def release(self) -> Tensor:
        R, self.R = self.R, None
        assert R is not None
        return R


def _add_hadamard_(K: Tensor, problem: Problem, plan: _Plan, per_chunk: list[list[_Call]]) -> None:
    if not plan.hadamard:
        return
    grams, rows = [], []
    for o in plan.hadamard:
        calls = [c for calls in per_chunk for c in calls if c.owner is o]
        a = torch.cat([c.args[0] for c in calls])  # (n, fan_in)
        S = torch.zeros((problem.n, problem.n), dtype=problem.dtype, device=problem.device)
        if "weight" in o.params:
            S += a @ a.T
        if "bias" in o.params:
            S += 1.0
        grams.append(S)
        rows.append(torch.cat([c.grads[0] for c in calls]).reshape(problem.n * problem.k, -1))
    assemble_hadamard(problem, grams, rows, out=K)


def _chunk(problem: Problem, params: dict[str, Tensor], owned: list[_Owner]) -> int:
    """Samples per captured chunk, sized from what two samples record (their modules' inputs and k output
    gradients, twice over for the graph held meanwhile): a chunk records about an eighth of K's size (at least
    16 MiB, at most 5% of the available memory)."""
    probe = _capture(problem, params, problem.X[: min(problem.n, 2)], owned)
    m = min(problem.n, 2)
    recorded = sum(
        sum(a.numel() for a, b in zip(c.args, c.batched, strict=True) if b) + sum(g.numel() for g in c.grads)
        for c in probe
    )
    per_sample = 2 * problem.itemsize * max(recorded // m, problem.k)
    nk = problem.n * problem.k
    target = min(max(nk * nk * problem.itemsize // 8, 16 * 2**20), 0.05 * available_memory_bytes())
    return int(max(1, min(problem.n, target // per_sample)))


def module_ntk_gemm_width(problem: Problem) -> int:
    """The inner dimension of the module route's GEMMs, where the Jacobian route has p: the widths of the Linear
    layers taken as Hadamard products plus the parameters of every other module (planned on three samples)."""
    params = problem.layout.unflatten(problem.theta)
    owned = owners(problem)
    plan = _plan(problem, owned, _capture(problem, params, problem.X[: min(problem.n, 3)], owned))
    width = sum(o.module.out_features for o in plan.hadamard)  # type: ignore[misc]
    width += sum(problem.layout.numels[problem.layout.names.index(n)] for o in plan.rows for n in o.params.values())
    return width + sum(problem.layout.numels[problem.layout.names.index(n)] for n in plan.jacobian)


def check_against_jacobian(problem: Problem, K: Tensor, theta: Tensor | None = None) -> float:
    """Largest difference, relative to the largest entry, between K's blocks of three samples (first, middle,
    last) and the same blocks of ``J Jᵀ`` from autograd."""
    idx = sorted({0, problem.n // 2, problem.n - 1})
    th = problem.parameters_or(theta)
    J = torch.cat([next(problem.jacobian_blocks(1, th, start=i))[1] for i in idx])  # (3k, p)
    rows = torch.tensor([i * problem.k + c for i in idx for c in range(problem.k)], device=K.device)
    mine = K[rows][:, rows]
    ref = J @ J.T
    scale = float(ref.abs().max().clamp(min=torch.finfo(ref.dtype).tiny))
    return float((mine - ref).abs().max()) / scale


__all__ = ["ModuleNtk", "check_against_jacobian", "module_ntk", "module_ntk_gemm_width", "owners"]
