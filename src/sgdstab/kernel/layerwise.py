"""The NTK Gram matrix ``K = J Jᵀ`` of a chain of Linear layers without forming J.

For a Linear layer ``z = W a + b`` the Jacobian rows of its parameters factor: ``∂f_c(x_i)/∂W = B_i[c] ⊗ a_i``
and ``∂f_c(x_i)/∂b = B_i[c]``, with ``B_i = ∂f(x_i)/∂z ∈ R^{k×w}`` (the output's Jacobian with respect to the
layer's pre-activation) and ``a_i`` the layer's input. So the layer's part of K is a Hadamard product

    K_layer[(i, c), (j, d)] = (a_i·a_j + [bias]) · (B_i[c]·B_j[d]),

and ``K = Σ_layers K_layer``. It costs ``(nk)² Σ_l w_l`` multiply-adds instead of ``(nk)² p`` — the fan-in of
a layer fewer — and holds ``nk·Σ_l w_l`` numbers instead of J's ``nk·p``: on a 784-500-500-500-10 MLP with
n = 1000 (p ≈ 900k), J would take 72 GB in float64; the layerwise route needs the 800 MB of K and 120 MB more.

The ``B`` of every layer come from one ``torch.func.jacrev`` per sample with respect to zero offsets added to the
pre-activations (``∂f/∂z_l = ∂f/∂e_l`` at ``e = 0``), so any chain :func:`sgdstab.problem.chain.layer_chain`
recognises is handled, whatever its parameter-free maps between the layers.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import jacrev, vmap

from sgdstab.errors import LayerChainError
from sgdstab.problem.chain import LayerChain, layer_chain
from sgdstab.problem.chain import (
    apply_step as _apply,
)
from sgdstab.problem.chain import (
    layer_widths as _widths,
)
from sgdstab.problem.problem import Problem
from sgdstab.utils.memory import available_memory_bytes, check_allocation

_GEMM_ROWS = 512  # rows of K per block (a multiple of k is taken): upper triangle only, near-peak GEMMs


def _jacobian_factors(chain: LayerChain, params: dict[str, Tensor], x: Tensor) -> tuple[list[Tensor], list[Tensor]]:
    """For a chunk of m samples: the inputs ``a`` (m, in_l) of every trained Linear layer and ``B`` (m, k, w_l)."""
    layers = chain.linear_indices

    def forward(offsets: tuple[Tensor, ...], xi: Tensor) -> Tensor:
        a = chain.prefix(xi[None])
        for step_index, step in enumerate(chain.steps):
            a = _apply(step, params, a)
            if step_index in layers:
                a = a + offsets[layers.index(step_index)]
        return a.reshape(-1)

    inputs = []
    a = chain.prefix(x)
    widths = []
    for step_index, step in enumerate(chain.steps):
        if step_index in layers:
            inputs.append(a.flatten(1))
        a = _apply(step, params, a)
        if step_index in layers:
            widths.append(int(a[0].numel()))
    zeros = tuple(torch.zeros(w, dtype=x.dtype, device=x.device) for w in widths)
    factors = vmap(jacrev(forward), in_dims=(None, 0))(zeros, x)  # tuple over layers of (m, k, w_l)
    return inputs, list(factors)


def layerwise_ntk_memory(problem: Problem) -> int:
    """Bytes :func:`layerwise_ntk` holds: K, every layer's B and input a, and one block of rows."""
    chain = layer_chain(problem)
    if chain is None:
        raise LayerChainError(f"{type(problem.model).__name__} is not a chain of Linear layers and parameter-free maps")
    return _memory(problem, chain)


def _memory(problem: Problem, chain: LayerChain) -> int:
    nk = problem.n * problem.k
    layers = _linears(chain)
    held = nk * sum(lin.out_features for lin in layers) + problem.n * sum(lin.in_features for lin in layers)
    return problem.itemsize * (nk * nk + held + 3 * min(_GEMM_ROWS, nk) * nk)


def _linears(chain: LayerChain) -> list[nn.Linear]:
    """The chain's trained Linear layers (their in/out features are the fan-ins and the widths w_l)."""
    return [chain.steps[i].module for i in chain.linear_indices]  # type: ignore[misc]


def layerwise_ntk_gemm_width(problem: Problem) -> int | None:
    """Σ_l w_l (the inner dimension of the layerwise GEMMs, where the Jacobian route has p); ``None`` without a
    chain."""
    chain = layer_chain(problem)
    return None if chain is None else sum(lin.out_features for lin in _linears(chain))


def layerwise_ntk(problem: Problem, theta: Tensor | None = None, chunk_size: int | None = None) -> Tensor:
    """``K = J Jᵀ`` (shape (n·k, n·k), row ``i·k + c`` = output c of sample i) for a chain of Linear layers,
    layer by layer without J (see the module docstring). Equal to :func:`sgdstab.ntk`'s Jacobian route up to
    rounding; :class:`LayerChainError` for models that are not such a chain."""
    chain = layer_chain(problem)
    if chain is None:
        raise LayerChainError(
            f"{type(problem.model).__name__} is not a chain of Linear layers and parameter-free maps; "
            "its NTK needs the Jacobian (sgdstab.ntk)"
        )
    n, k = problem.n, problem.k
    nk = n * k
    check_allocation(
        _memory(problem, chain), f"the layerwise NTK (n·k = {nk})", "use method='matrix_free' or fewer samples"
    )
    grams, rows = _layer_factors(problem, chain, problem.parameters_or(theta), chunk_size)
    return assemble_hadamard(problem, grams, rows)


def _layer_factors(
    problem: Problem, chain: LayerChain, theta: Tensor, chunk_size: int | None
) -> tuple[list[Tensor], list[Tensor]]:
    """Per trained layer: ``S = a aᵀ·[weight trained] + [bias trained]`` (n × n) and ``M = B`` as (nk × w_l)."""
    n, k = problem.n, problem.k
    params = problem.layout.unflatten(theta)
    steps = [chain.steps[i] for i in chain.linear_indices]
    widths = _widths(chain, problem)
    per_sample = problem.itemsize * k * max(widths) * (len(widths) + 4)
    m = chunk_size or max(1, min(n, int(0.05 * available_memory_bytes() // max(per_sample, 1))))
    inputs: list[list[Tensor]] = [[] for _ in steps]
    factors: list[list[Tensor]] = [[] for _ in steps]
    with torch.no_grad():
        for s in range(0, n, m):
            a_chunk, b_chunk = _jacobian_factors(chain, params, problem.X[s : s + m])
            for layer in range(len(steps)):
                inputs[layer].append(a_chunk[layer])
                factors[layer].append(b_chunk[layer])
    grams: list[Tensor] = []
    rows: list[Tensor] = []
    for layer, step in enumerate(steps):
        a = torch.cat(inputs[layer])
        S = torch.zeros((n, n), dtype=problem.dtype, device=problem.device)
        if step.weight is not None:
            S += a @ a.T
        if step.bias is not None:
            S += 1.0
        grams.append(S)
        rows.append(torch.cat(factors[layer]).reshape(n * k, -1))
        inputs[layer] = factors[layer] = []
    return grams, rows


def add_gram_(K: Tensor, R: Tensor) -> None:
    """``K += R Rᵀ`` by blocks of ``_GEMM_ROWS`` rows: the upper triangle computed, mirrored (the diagonal blocks
    are left as their GEMM gave them: :func:`symmetrize_diagonal_blocks_` once at the end)."""
    nk = R.shape[0]
    for a in range(0, nk, _GEMM_ROWS):
        b = min(a + _GEMM_ROWS, nk)
        block = R[a:b] @ R[a:].T
        K[a:b, a:] += block
        K[b:, a:b] += block[:, b - a :].T


def symmetrize_diagonal_blocks_(K: Tensor) -> None:
    """Make the diagonal blocks of :func:`add_gram_` exactly symmetric (a GEMM's R_a R_aᵀ can differ from its
    transpose in the last bit; the mirrored blocks are exact)."""
    for a in range(0, K.shape[0], _GEMM_ROWS):
        block = K[a : a + _GEMM_ROWS, a : a + _GEMM_ROWS]
        block.copy_((block + block.T) / 2)


def assemble_hadamard(problem: Problem, grams: list[Tensor], rows: list[Tensor], out: Tensor | None = None) -> Tensor:
    """``K = Σ_layers (S ⊗ 1_{k×k}) ∘ (M Mᵀ)``, by blocks of rows: the upper triangle computed, mirrored; added
    into ``out`` when given (no second nk × nk matrix)."""
    n, k = problem.n, problem.k
    nk = n * k
    K = torch.zeros((nk, nk), dtype=problem.dtype, device=problem.device) if out is None else out
    block_rows = max(k, (_GEMM_ROWS // k) * k)
    for r0 in range(0, nk, block_rows):
        r1 = min(r0 + block_rows, nk)
        s0, s1 = r0 // k, r1 // k
        block = torch.zeros((r1 - r0, nk - r0), dtype=problem.dtype, device=problem.device)
        product = torch.empty_like(block)
        for S, M in zip(grams, rows, strict=True):
            torch.matmul(M[r0:r1], M[r0:].T, out=product)
            # (S ⊗ 1_{k×k}) as a broadcast over the k×k blocks, not a materialized repeat
            product.view(s1 - s0, k, n - s0, k).mul_(S[s0:s1, s0:, None, None].transpose(1, 2))
            block += product
        del product
        K[r0:r1, r0:] += block
        K[r1:, r0:r1] += block[:, r1 - r0 :].T
        diagonal = K[r0:r1, r0:r1]
        diagonal.copy_((diagonal + diagonal.T) / 2)
    return K


__all__ = [
    "add_gram_",
    "assemble_hadamard",
    "layerwise_ntk",
    "layerwise_ntk_gemm_width",
    "layerwise_ntk_memory",
    "symmetrize_diagonal_blocks_",
]
