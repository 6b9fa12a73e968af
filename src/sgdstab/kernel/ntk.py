"""The empirical NTK Gram matrix ``K = J Jᵀ ∈ R^{nk×nk}`` (THEORY.md §1–2), built block by block.

Row and column ``i·k + c`` belong to output ``c`` of sample ``i``; ``K_ij`` is the k×k block of samples i, j.

Four routes:

- **layerwise** (the default for chains of Linear layers and parameter-free maps, e.g. every :func:`sgdstab.mlp`):
  K as a sum over layers of Hadamard products of two small Gram matrices, J never formed
  (:mod:`sgdstab.kernel.layerwise`): the fan-in fewer flops and a fraction of the memory.
- **modules** (the default for every other model: residual blocks, convolutions, norms, attention, shared weights,
  a custom ``forward``): K as a sum over the modules that hold parameters, each from its inputs and the gradients
  with respect to its outputs (:mod:`sgdstab.kernel.modules`): Linear layers as above, any other module from its
  own rows only, J never formed whole. Checked against autograd's J on three samples; where the check fails (a
  parameter also used outside its module's call) K comes from the Jacobian route instead, with a note.
- **one Jacobian** (``method="jacobian"``, or the fallback, when ``J`` and ``K`` fit together): ``J`` is computed
  once in chunks and ``K`` is filled block by block from its upper triangle (``K_ab = J_a J_bᵀ`` for ``b ≥ a``,
  mirrored), i.e. half the flops of ``J @ J.T``. Peak memory ≈ ``size(K) + size(J)``.
- **recomputed blocks** (the Jacobian route when ``J`` does not fit, or ``chunk_size`` is given): for each row block
  ``a`` its Jacobian ``J_a`` is computed once, and every column block ``J_b`` (``b ≥ a``) is recomputed. Peak memory ≈
  ``size(K) + 2·chunk_size·k·p·itemsize`` plus one chunk's backward pass; compute grows with the number of
  blocks (each Jacobian chunk is rebuilt up to n/chunk_size times).
"""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
import torch
from torch import Tensor

from sgdstab.errors import MemoryBudgetError, NoModuleStructureError, NtkError, StabilityError
from sgdstab.kernel.kernel import Kernel
from sgdstab.kernel.layerwise import add_gram_, layerwise_ntk, symmetrize_diagonal_blocks_
from sgdstab.kernel.modules import module_ntk
from sgdstab.problem.chain import layer_chain
from sgdstab.problem.problem import Problem, check_chunk_size
from sgdstab.utils.memory import available_memory_bytes, format_bytes

KernelSource: TypeAlias = Problem | Kernel | Tensor | np.ndarray
"""What every consumer of K accepts and hands to :func:`as_kernel`: a :class:`~sgdstab.Problem` (its NTK at θ), a
:class:`~sgdstab.Kernel`, or a square symmetric PSD matrix as a tensor or array (k = 1)."""


def ntk_memory(problem: Problem, chunk_size: int | None = None) -> dict[str, int]:
    """Bytes needed by :func:`ntk`: ``kernel`` (K itself), ``jacobian`` (all of J) and ``blocked`` (peak of the
    recomputed-blocks route with ``chunk_size``)."""
    nk = problem.n * problem.k
    item = problem.itemsize
    chunk = problem.chunk_size if chunk_size is None else check_chunk_size(chunk_size)
    return {
        "kernel": nk * nk * item,
        "jacobian": nk * problem.p * item,
        "blocked": nk * nk * item + 2 * min(chunk, problem.n) * problem.k * problem.p * item,
    }


def _check_kernel_fits(problem: Problem, budget: int) -> None:
    """Refuse, before any work, a K that alone exceeds ``budget`` bytes."""
    need = ntk_memory(problem)["kernel"]
    if need > budget:
        raise MemoryBudgetError(
            f"the NTK Gram matrix (n·k = {problem.n * problem.k}) needs {format_bytes(need)} but only "
            f"{format_bytes(budget)} is available; use method='matrix_free' or fewer samples"
        )


def _plan(problem: Problem, chunk_size: int | None) -> tuple[str, int]:
    mem = ntk_memory(problem, chunk_size)
    budget = int(available_memory_bytes() * 0.8)
    if chunk_size is None and mem["kernel"] + mem["jacobian"] <= budget:
        return "one_jacobian", problem.chunk_size
    _check_kernel_fits(problem, budget)
    chunk = problem.chunk_size if chunk_size is None else check_chunk_size(chunk_size)
    # Shrink the chunk until two chunk Jacobians fit beside K.
    while chunk > 1 and ntk_memory(problem, chunk)["blocked"] > budget:
        chunk //= 2
    if ntk_memory(problem, chunk)["blocked"] > budget:
        raise MemoryBudgetError(
            f"the NTK needs {format_bytes(mem['kernel'])} for K plus two Jacobian rows of "
            f"{format_bytes(2 * problem.k * problem.p * problem.itemsize)}, more than the "
            f"{format_bytes(budget)} available; use method='matrix_free'"
        )
    return "blocked", chunk


def _symmetrize_(block: Tensor) -> None:
    """Make a diagonal block exactly symmetric (a GEMM's J_a J_aᵀ can differ from its transpose in the last bit)."""
    block.copy_((block + block.T) / 2)


def _symmetrize_by_blocks_(K: Tensor, size: int = 2048) -> None:
    """K ← (K + Kᵀ)/2 in place, one pair of blocks at a time (no second nk × nk matrix)."""
    m = K.shape[0]
    for a in range(0, m, size):
        for b in range(a, m, size):
            mean = (K[a : a + size, b : b + size] + K[b : b + size, a : a + size].T) / 2
            K[a : a + size, b : b + size] = mean
            K[b : b + size, a : a + size] = mean.T


NTK_METHODS = ("auto", "layerwise", "modules", "jacobian")


def ntk(problem: Problem, chunk_size: int | None = None, theta: Tensor | None = None, method: str = "auto") -> Kernel:
    """The :class:`~sgdstab.Kernel` ``K = J Jᵀ`` at θ (default: the problem's parameters); its
    :attr:`~sgdstab.Kernel.matrix` has shape (n·k, n·k), in the problem's dtype and on its device.

    ``method``: ``"layerwise"`` (chains of Linear layers, J never formed), ``"modules"`` (any model, module by
    module, J never formed whole), ``"jacobian"`` (any model, from J's rows) or ``"auto"`` (layerwise where it
    applies, else modules; the Jacobian route when ``chunk_size`` is given). The kernel's ``route`` and ``notes``
    say which route built it and what fell back. On the Jacobian route
    ``chunk_size`` (samples per block) forces the recomputed-blocks variant with bounded memory:
    peak ≈ ``(nk)²·itemsize + 2·chunk_size·k·p·itemsize``; without it, the faster one-Jacobian variant is used
    whenever ``J`` and ``K`` fit in memory together.

    Args:
        problem: the problem whose Jacobian J (rows ``i·k + c``) is used.
        chunk_size: samples per Jacobian block (Jacobian route only); None picks the fastest variant that fits.
        theta: the parameters (default: the problem's).
        method: ``"auto"``, ``"layerwise"``, ``"modules"`` or ``"jacobian"``.

    Returns:
        The :class:`~sgdstab.Kernel` (its eigendecomposition is computed only when first asked for).

    Raises:
        NtkError: an unknown method, or ``"layerwise"`` for a model that is not a chain of Linear layers.
        MemoryBudgetError: K (and J, on the one-Jacobian route) cannot fit in memory.
        ProblemError: a bad ``chunk_size``.

    Example:
        >>> import sgdstab
        >>> X, Y = sgdstab.load_dataset("fashion-mnist-small", n=8, classes=(0, 6))
        >>> problem = sgdstab.Problem(sgdstab.mlp(X.shape[1:], 1, widths=(4,), seed=0).double(), X.double(), Y.double())
        >>> K = sgdstab.ntk(problem)
        >>> K.n, K.k, tuple(K.matrix.shape), K.rank
        (8, 1, (8, 8), 8)
    """
    K, route, notes = _gram(problem, chunk_size, theta, method)
    return Kernel.from_gram(K, problem.n, problem.k, route, notes)


def ggn_kernel(
    problem: Problem, chunk_size: int | None = None, theta: Tensor | None = None, method: str = "auto"
) -> Kernel:
    """The kernel of the generalized Gauss–Newton, ``K_A = A^{1/2} K A^{1/2}`` (THEORY.md §9), at θ: its n×n blocks
    are ``A_i^{1/2} K_ij A_j^{1/2}`` with ``A_i = ∇²_f ℓ(f_i, y_i)``. ``G = (1/n) J_AᵀJ_A`` for ``J_A = A^{1/2}J``, so
    every kernel identity of §2–§4 holds with K_A in place of K (and the kernel residuals
    :meth:`~sgdstab.Problem.kernel_residuals` in place of r). For the square loss (A = I) it is :func:`ntk` itself.

    Args:
        problem: the problem.
        chunk_size, theta, method: as for :func:`ntk`, which builds K first.

    Returns:
        The :class:`~sgdstab.Kernel` K_A (K weighted in place: no second nk × nk matrix); its notes say it is K_A.

    Raises:
        As :func:`ntk`.

    Example:
        >>> import torch, sgdstab
        >>> X = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(4, 3)
        >>> model = sgdstab.mlp(3, 3, widths=(4,), seed=0).double()
        >>> problem = sgdstab.Problem(model, X, torch.tensor([0, 1, 2, 1]), loss="cross_entropy")
        >>> KA = sgdstab.ggn_kernel(problem)
        >>> KA.n, KA.k, KA.rank  # softmax: A_i has rank k − 1, so K_A has rank ≤ n(k − 1)
        (4, 3, 8)
    """
    K, route, notes = _gram(problem, chunk_size, theta, method)
    if problem.square_loss:
        return Kernel.from_gram(K, problem.n, problem.k, route, notes)
    n, k = problem.n, problem.k
    roots = problem.output_hessian_roots(theta).to(K.dtype)
    rows = max(1, (64 * 1024**2) // max(1, k * n * k * K.element_size()))  # ~64 MiB of K per step
    by_sample = K.view(n, k, n * k)
    for b in range(0, n, rows):  # A_i^{1/2} K_i,: for each sample's block row
        by_sample[b : b + rows] = torch.bmm(roots[b : b + rows], by_sample[b : b + rows])
    by_column = K.view(n * k, n, k)
    for b in range(0, n * k, rows * k):  # … then K_:,j A_j^{1/2} (A_j^{1/2} symmetric)
        by_column[b : b + rows * k] = torch.einsum("rjc,jcd->rjd", by_column[b : b + rows * k], roots)
    _symmetrize_by_blocks_(K)
    weighted = f"GGN kernel A^(1/2) K A^(1/2) of the {problem.loss_convention} loss (THEORY.md §9)"
    return Kernel.from_gram(K, n, k, route, (*notes, weighted))


# the modules route agrees with J's rows to rounding; beyond this (relative to the largest entry), a parameter is
# used outside its module's call and that route does not apply
_MODULES_CHECK = {torch.float64: 1e-9, torch.float32: 1e-3}


def _gram(
    problem: Problem, chunk_size: int | None, theta: Tensor | None, method: str
) -> tuple[Tensor, str, tuple[str, ...]]:
    if method not in NTK_METHODS:
        raise NtkError(f"unknown NTK method {method!r}; choose one of {', '.join(NTK_METHODS)}")
    wants_chain = method == "layerwise" or (method == "auto" and chunk_size is None)
    chain = layer_chain(problem) if wants_chain else None
    if method == "layerwise" and chain is None:
        raise NtkError(
            f"method='layerwise' needs a chain of Linear layers and parameter-free maps; "
            f"{type(problem.model).__name__} is not one (use method='modules')"
        )
    if chain is not None:
        return layerwise_ntk(problem, theta=theta), "layerwise", ()
    notes: tuple[str, ...] = ()
    if method == "modules" or (method == "auto" and chunk_size is None):
        _check_kernel_fits(problem, int(available_memory_bytes() * 0.8))
        try:
            built = module_ntk(problem, theta)
        except NoModuleStructureError as exc:
            if method == "modules":
                raise
            notes = (f"{exc}; K from J's rows",)
        else:
            if built.check_error <= _MODULES_CHECK.get(problem.dtype, 1e-3):
                return built.matrix, "modules", built.notes
            notes = (
                f"the module-by-module K differed from J's rows by {built.check_error:.2g} (relative) on three "
                "samples: a parameter is used outside its module's call; K from J's rows instead",
            )
            del built
    return _jacobian_gram(problem, chunk_size, theta), "jacobian", notes


def _jacobian_gram(problem: Problem, chunk_size: int | None, theta: Tensor | None) -> Tensor:
    route, chunk = _plan(problem, chunk_size)
    if route == "one_jacobian":
        return _gram_one_jacobian(problem, chunk, theta)
    return _gram_recomputed_blocks(problem, chunk, theta)


def _gram_one_jacobian(problem: Problem, chunk: int, theta: Tensor | None) -> Tensor:
    """K from all of J, computed once: the upper triangle by row blocks, mirrored."""
    nk = problem.n * problem.k
    K = torch.zeros((nk, nk), dtype=problem.dtype, device=problem.device)
    # filled in place: peak memory is J plus one chunk's block, not the blocks and a concatenated copy
    J = torch.empty((nk, problem.p), dtype=problem.dtype, device=problem.device)
    for s, block in problem.jacobian_blocks(chunk, theta):
        J[s.start * problem.k : s.stop * problem.k] = block
        del block
    add_gram_(K, J)
    symmetrize_diagonal_blocks_(K)
    return K


def _gram_recomputed_blocks(problem: Problem, chunk: int, theta: Tensor | None) -> Tensor:
    """K block by block when J does not fit: each row block's Jacobian once, every later column block's again."""
    nk, k = problem.n * problem.k, problem.k
    K = torch.empty((nk, nk), dtype=problem.dtype, device=problem.device)
    blocks = list(problem.chunks(chunk))
    for ia, sa in enumerate(blocks):
        Ja = next(problem.jacobian_blocks(chunk, theta, start=sa.start))[1]
        ra = slice(sa.start * k, sa.stop * k)
        K[ra, ra] = Ja @ Ja.T
        _symmetrize_(K[ra, ra])
        for sb in blocks[ia + 1 :]:
            Jb = next(problem.jacobian_blocks(chunk, theta, start=sb.start))[1]
            rb = slice(sb.start * k, sb.stop * k)
            Kab = Ja @ Jb.T
            K[ra, rb] = Kab
            K[rb, ra] = Kab.T
    return K


def as_kernel(obj: KernelSource) -> Kernel:
    """A :class:`Kernel` from a ``Kernel`` (returned as is), a :class:`~sgdstab.Problem` (its NTK at θ; for a loss of
    THEORY.md §9 the GGN kernel K_A, :func:`ggn_kernel`) or a plain
    square tensor/array (k = 1, n = its size).

    Args:
        obj: a Kernel, a Problem (meant to be at a global minimum) or a square, symmetric PSD tensor or array.

    Returns:
        The Kernel.

    Raises:
        StabilityError: anything else, or a matrix that is not square, finite, symmetric and PSD.

    Example:
        >>> import torch, sgdstab
        >>> sgdstab.as_kernel(torch.eye(3, dtype=torch.float64))
        Kernel(n=3, k=1, rank=3, λ_max=1)
    """
    if isinstance(obj, Kernel):
        return obj
    if isinstance(obj, Problem):
        return ggn_kernel(obj)
    if isinstance(obj, Tensor | np.ndarray):
        if obj.ndim != 2 or obj.shape[0] != obj.shape[1]:
            raise StabilityError(f"K must be a square matrix, got shape {tuple(obj.shape)}")
        return Kernel(obj if isinstance(obj, Tensor) else torch.from_numpy(np.asarray(obj)), int(obj.shape[0]), 1)
    raise StabilityError(f"expected a Problem, a Kernel or a square tensor, got {type(obj).__name__}")
