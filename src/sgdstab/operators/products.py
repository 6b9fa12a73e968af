"""Matrix-free curvature and noise products, and the ``LinearOperator`` views the estimators work on.

Conventions (THEORY.md §1–3): ``L(θ) = (1/(2n)) Σ_i ||r_i||²``, ``H = ∇²L``, ``G = (1/n) JᵀJ`` (Gauss–Newton),
``Σ = (1/n) Σ_i ∇ℓ_i ∇ℓ_iᵀ − ∇L ∇Lᵀ`` (centred SGD noise) with ``∇ℓ_i = J_iᵀ r_i``, ``K = J Jᵀ`` (empirical NTK).

Every product acts on flat vectors of length p (or blocks of shape (p, m), one probe per column) on the problem's
device and dtype, at θ = ``theta`` (default ``problem.theta``). Sums run over the problem's sample chunks and are
divided by the true n once, so an unequal last chunk is weighted correctly.

- ``H v``: forward-over-reverse, ``jvp(grad(loss_chunk), (θ,), (v,))`` per chunk, vmapped over blocks of probes;
  a single vector goes by double backward, which is faster for one vector.
- ``R v`` with ``R = H − G = (1/n) Σ_i Σ_c r_ic ∇²f_ic``: the Hessian-vector product of ``φ(θ) = (1/n) Σ r̄_ic f_ic(θ)``
  with the residuals ``r̄`` held fixed at θ — exact, not ``Hv − Gv``, so that at a minimum (r ≈ 0) the small R is
  not lost to cancellation between two large products.
- ``G v = (1/n) Jᵀ(J v)``: one JVP of the batched outputs and one VJP per chunk; J is never materialized.
- ``Σ v = (1/n) Jᵀ(r ⊙ a) − ∇L (∇Lᵀv)``, ``a_i = r_iᵀ (J v)_i``: one JVP and one VJP per chunk. ∇Lᵀv = mean(a)
  comes for free; the vector ∇L is computed once per operator (or, in the free function, in the same pass).

Blocks of probes use ``torch.func.vmap`` over the probe dimension; a model that vmap cannot batch falls back to a
loop over columns (same results, slower). :class:`JacobianOperators` is the fast route when a dense J (nk × p)
fits in memory: ``K·u = J(Jᵀu)`` and ``G v = Jᵀ(Jv)/n`` cost 2·nk·p flops each (THEORY.md §8).

The ``*_operator`` functions return a :class:`TorchLinearOperator`: a ``scipy.sparse.linalg.LinearOperator``
(float64 numpy in and out, symmetric, ``matvec``/``matmat``) that converts to the problem's device and dtype, also
offers ``matvec_torch``/``matmat_torch`` (tensor in, tensor out), and counts the products applied in ``.matvecs``
(one per vector; a matmat counts its columns).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator
from torch import Tensor
from torch.func import grad, jvp, vjp, vmap

from sgdstab.errors import OperatorError
from sgdstab.problem.problem import Problem
from sgdstab.utils.memory import available_memory_bytes

__all__ = [
    "JacobianOperators",
    "OperatorError",
    "TorchLinearOperator",
    "gauss_newton_matmat",
    "gauss_newton_operator",
    "gauss_newton_vector_product",
    "hessian_matmat",
    "hessian_operator",
    "hessian_vector_product",
    "jacobian_transpose_vector_product",
    "jacobian_vector_product",
    "noise_covariance_matmat",
    "noise_covariance_operator",
    "noise_covariance_vector_product",
    "residual_curvature_matmat",
    "vmap_supported",
]

DEFAULT_BLOCK_SIZE = 32
GRAPH_CACHE_FRACTION = 0.1  # of free memory, for the kept gradient graph of single-vector Hessian products
"""Probe columns handed to one vmapped product by the operators (bounds the extra activation memory)."""

# Errors that mean "vmap cannot batch this model", after which the loop over columns is used. A genuine error of
# the model is raised again by the loop.
_VMAP_ERRORS = (RuntimeError, NotImplementedError, ValueError, TypeError)


# ---------------------------------------------------------------------------------------------------- helpers
def _as_vector(problem: Problem, v: Tensor) -> Tensor:
    if not isinstance(v, Tensor):
        raise OperatorError(f"v must be a torch tensor of shape ({problem.p},), got {type(v).__name__}")
    if v.shape != (problem.p,):
        raise OperatorError(f"v must have shape ({problem.p},) (one entry per parameter), got {tuple(v.shape)}")
    return v.detach().to(device=problem.device, dtype=problem.dtype)


def _as_block(problem: Problem, V: Tensor) -> Tensor:
    if not isinstance(V, Tensor):
        raise OperatorError(f"V must be a torch tensor of shape ({problem.p}, m), got {type(V).__name__}")
    if V.ndim != 2 or V.shape[0] != problem.p:
        raise OperatorError(f"V must have shape ({problem.p}, m) (one probe per column), got {tuple(V.shape)}")
    return V.detach().to(device=problem.device, dtype=problem.dtype)


def _theta(problem: Problem, theta: Tensor | None) -> Tensor:
    return problem.parameters_or(theta).detach()


def _outputs_fn(problem: Problem, x: Tensor) -> Callable[[Tensor], Tensor]:
    """θ ↦ f(x_batch; θ), shape (m, k)."""

    def fn(t: Tensor) -> Tensor:
        return problem.batch_outputs(t, x)

    return fn


# Problems (by identity) and product kinds for which vmap has failed once: they go straight to the loop.
_NO_VMAP: weakref.WeakKeyDictionary[Problem, set[str]] = weakref.WeakKeyDictionary()


def _with_vmap_fallback(
    problem: Problem,
    kind: str,
    batched: Callable[[Tensor], Tensor],
    single: Callable[[Tensor], Tensor],
    W: Tensor,
) -> Tensor:
    """Apply ``batched`` to the rows of W (m, ...); if vmap fails for this model, loop ``single`` over the rows."""
    if W.shape[0] == 1:
        return single(W[0])[None]
    failed = _NO_VMAP.get(problem)
    if failed is None or kind not in failed:
        try:
            return batched(W)
        except _VMAP_ERRORS:
            _NO_VMAP.setdefault(problem, set()).add(kind)
    return torch.stack([single(w) for w in W])


def vmap_supported(problem: Problem) -> dict[str, bool]:
    """Which batched products have fallen back to a loop for this problem so far (False = vmap failed)."""
    failed = _NO_VMAP.get(problem, set())
    return {kind: kind not in failed for kind in ("hvp", "ggn", "noise_jvp", "noise_vjp")}


# ---------------------------------------------------------------------------------------------------- Hessian
def _hvp_single(problem: Problem, th: Tensor, w: Tensor) -> Tensor:
    """H w by reverse-over-reverse (double backward): for ONE vector it is about 2.5× faster than torch.func's
    forward-over-reverse here (1.6 ms against 3.9 ms on an MLP, n = 500, p = 8970), which matters to Lanczos, whose
    products come one vector at a time. Blocks of vectors use the vmapped forward-over-reverse below."""
    out = torch.zeros_like(w)
    for s in problem.chunks():
        with torch.enable_grad():
            t = th.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(problem.batch_loss_sum(t, problem.X[s], problem.Y[s]), t, create_graph=True)
            (hw,) = torch.autograd.grad(g @ w, t)
        out += hw
    return out / problem.n


class _GradientGraph:
    """∇L(θ) with its autograd graph kept, so that each single-vector H w is one backward pass through it (no
    forward and first backward per product: ≈ 2× faster, what PyHessian does). Chunks whose saved tensors would
    push the cache past ``budget_bytes`` are recomputed per product instead."""

    def __init__(self, problem: Problem, th: Tensor, budget_bytes: float) -> None:
        self.problem, self.th, self.budget = problem, th, budget_bytes
        self.graphs: list[tuple[Tensor, Tensor]] | None = None
        self.bytes = 0

    def _build(self) -> None:
        self.graphs = []
        saved: list[int] = [0]

        def pack(x: Tensor) -> Tensor:
            saved[0] += x.numel() * x.element_size()
            return x

        for s in self.problem.chunks():
            saved[0] = 0
            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
                t = self.th.detach().requires_grad_(True)
                loss = self.problem.batch_loss_sum(t, self.problem.X[s], self.problem.Y[s])
                (g,) = torch.autograd.grad(loss, t, create_graph=True)
            if self.bytes + saved[0] > self.budget:
                break  # the remaining chunks are recomputed per product
            self.bytes += saved[0]
            self.graphs.append((t, g))

    def hvp(self, w: Tensor) -> Tensor:
        if self.graphs is None:
            self._build()
        assert self.graphs is not None
        out = torch.zeros_like(w)
        for index, s in enumerate(self.problem.chunks()):
            if index < len(self.graphs):
                t, g = self.graphs[index]
                (hw,) = torch.autograd.grad(g, t, grad_outputs=w, retain_graph=True)
            else:
                with torch.enable_grad():
                    t = self.th.detach().requires_grad_(True)
                    loss = self.problem.batch_loss_sum(t, self.problem.X[s], self.problem.Y[s])
                    (g,) = torch.autograd.grad(loss, t, create_graph=True)
                    (hw,) = torch.autograd.grad(g @ w, t)
            out += hw
        return out / self.problem.n


def _hvp_rows(problem: Problem, th: Tensor, W: Tensor) -> Tensor:
    """H applied to each row of W (m, p) → (m, p)."""
    if W.shape[0] == 1:
        return _hvp_single(problem, th, W[0])[None]
    out = torch.zeros_like(W)
    for s in problem.chunks():
        x, y = problem.X[s], problem.Y[s]

        def loss_chunk(t: Tensor, x: Tensor = x, y: Tensor = y) -> Tensor:
            return problem.batch_loss_sum(t, x, y)

        g = grad(loss_chunk)

        def one(w: Tensor, g: Callable[[Tensor], Tensor] = g) -> Tensor:
            return jvp(g, (th,), (w,))[1]

        out += _with_vmap_fallback(problem, "hvp", vmap(one), one, W)
    return out / problem.n


def hessian_vector_product(problem: Problem, v: Tensor, theta: Tensor | None = None) -> Tensor:
    """H v with H = ∇²L(θ), forward-over-reverse over the sample chunks. Shape (p,) → (p,)."""
    return _hvp_rows(problem, _theta(problem, theta), _as_vector(problem, v)[None])[0]


def hessian_matmat(problem: Problem, V: Tensor, theta: Tensor | None = None) -> Tensor:
    """H V for a block of probes, shape (p, m) → (p, m) (vmap over the columns, loop if vmap fails)."""
    V = _as_block(problem, V)
    if V.shape[1] == 0:
        return V.clone()
    return _hvp_rows(problem, _theta(problem, theta), V.T.contiguous()).T


def _residual_weights(problem: Problem, th: Tensor, s: slice) -> Tensor:
    """e_i = ∇_f ℓ_i on the chunk ``s`` (the residuals r_i for the square loss)."""
    with torch.no_grad():
        return problem.output_loss.output_gradient(problem.batch_outputs(th, problem.X[s]), problem.Y[s]).detach()


def _rvp_single(problem: Problem, th: Tensor, w: Tensor) -> Tensor:
    """R w by double backward (faster than forward-over-reverse for one vector, as for H)."""
    out = torch.zeros_like(w)
    for s in problem.chunks():
        with torch.enable_grad():
            t = th.detach().requires_grad_(True)
            f = problem.batch_outputs(t, problem.X[s])
            weights = problem.output_loss.output_gradient(f.detach(), problem.Y[s])
            (g,) = torch.autograd.grad((f * weights).sum(), t, create_graph=True)
            (rw,) = torch.autograd.grad(g @ w, t)
        out += rw
    return out / problem.n


def residual_curvature_matmat(problem: Problem, V: Tensor, theta: Tensor | None = None) -> Tensor:
    """R V with ``R = H − G = (1/n) Σ_i Σ_c e_ic ∇²f_ic(θ)``, shape (p, m) → (p, m); e_i = ∇_f ℓ_i (the residual
    r_i for the square loss).

    R is the Hessian of ``φ(t) = (1/n) Σ_ic ē_ic f_ic(t)`` with ``ē = e(θ)`` fixed at θ
    (forward-over-reverse per chunk, vmapped over the columns; double backward for one column): a product costs
    about one Hessian-vector product and scales with r, so it stays accurate at a minimum where ``Hv − Gv`` would
    cancel to rounding noise."""
    V = _as_block(problem, V)
    if V.shape[1] == 0:
        return V.clone()
    th = _theta(problem, theta)
    W = V.T.contiguous()
    if W.shape[0] == 1:
        return _rvp_single(problem, th, W[0])[:, None]
    out = torch.zeros_like(W)
    for s in problem.chunks():
        f = _outputs_fn(problem, problem.X[s])
        weights = _residual_weights(problem, th, s)

        def phi(t: Tensor, f: Callable[[Tensor], Tensor] = f, weights: Tensor = weights) -> Tensor:
            return (f(t) * weights).sum()

        g = grad(phi)

        def one(w: Tensor, g: Callable[[Tensor], Tensor] = g) -> Tensor:
            return jvp(g, (th,), (w,))[1]

        out += _with_vmap_fallback(problem, "rvp", vmap(one), one, W)
    return (out / problem.n).T


# ---------------------------------------------------------------------------------------------------- Jacobian
def jacobian_vector_product(problem: Problem, v: Tensor, theta: Tensor | None = None) -> Tensor:
    """J v: the change of every output along the parameter direction v, one JVP per chunk. Shape (p,) → (n, k)."""
    th, w = _theta(problem, theta), _as_vector(problem, v)
    return torch.cat([jvp(_outputs_fn(problem, problem.X[s]), (th,), (w,))[1] for s in problem.chunks()])


def jacobian_transpose_vector_product(problem: Problem, c: Tensor, theta: Tensor | None = None) -> Tensor:
    """Jᵀ c = Σ_i J_iᵀ c_i for one cotangent per output, one VJP per chunk (J never formed). Shape (n, k) or
    (n·k,) → (p,)."""
    th = _theta(problem, theta)
    if not isinstance(c, Tensor) or c.numel() != problem.n * problem.k or c.dim() > 2:
        got = tuple(c.shape) if isinstance(c, Tensor) else type(c).__name__
        shapes = f"({problem.n}, {problem.k}) or ({problem.n * problem.k},)"
        raise OperatorError(f"c must be a tensor of shape {shapes} (one entry per output), got {got}")
    cot = c.detach().reshape(problem.n, problem.k).to(device=problem.device, dtype=problem.dtype)
    out = torch.zeros_like(th)
    for s in problem.chunks():
        out += vjp(_outputs_fn(problem, problem.X[s]), th)[1](cot[s])[0]
    return out


# ---------------------------------------------------------------------------------------------------- Gauss–Newton
def _ggn_rows(problem: Problem, th: Tensor, W: Tensor) -> Tensor:
    out = torch.zeros_like(W)
    for s in problem.chunks():
        fn = _outputs_fn(problem, problem.X[s])
        f, vjp_fn = vjp(fn, th)
        # the output Hessians A_i between J and Jᵀ (THEORY.md §9); the square loss has A_i = I
        A = None if problem.square_loss else problem.output_loss.output_hessian(f.detach())

        def one(w: Tensor, fn: Callable[[Tensor], Tensor] = fn, vjp_fn=vjp_fn, A: Tensor | None = A) -> Tensor:
            jw = jvp(fn, (th,), (w,))[1]
            return vjp_fn(jw if A is None else (A @ jw[..., None])[..., 0])[0]

        out += _with_vmap_fallback(problem, "ggn", vmap(one), one, W)
    return out / problem.n


def gauss_newton_vector_product(problem: Problem, v: Tensor, theta: Tensor | None = None) -> Tensor:
    """G v = (1/n) Jᵀ A (J v) (A = I for the square loss): one JVP + one VJP of the batched outputs per chunk.
    Shape (p,) → (p,)."""
    return _ggn_rows(problem, _theta(problem, theta), _as_vector(problem, v)[None])[0]


def gauss_newton_matmat(problem: Problem, V: Tensor, theta: Tensor | None = None) -> Tensor:
    """G V for a block of probes, shape (p, m) → (p, m)."""
    V = _as_block(problem, V)
    if V.shape[1] == 0:
        return V.clone()
    return _ggn_rows(problem, _theta(problem, theta), V.T.contiguous()).T


# ---------------------------------------------------------------------------------------------------- noise Σ
def _noise_rows(problem: Problem, th: Tensor, W: Tensor, gradient: Tensor | None) -> Tensor:
    """Σ applied to each row of W (m, p). If ``gradient`` (∇L) is None it is accumulated in the same pass."""
    m = W.shape[0]
    acc = torch.zeros_like(W)  # Σ_i J_iᵀ r_i a_i
    a_sum = torch.zeros(m, dtype=W.dtype, device=W.device)  # Σ_i a_i = n ∇Lᵀw
    g_sum = torch.zeros_like(th) if gradient is None else None
    for s in problem.chunks():
        fn = _outputs_fn(problem, problem.X[s])
        out, vjp_fn = vjp(fn, th)
        r = problem.output_loss.output_gradient(out.detach(), problem.Y[s])  # (c, k): e_i, r_i for the square loss

        def jv(w: Tensor, fn: Callable[[Tensor], Tensor] = fn) -> Tensor:
            return jvp(fn, (th,), (w,))[1]

        def jtv(c: Tensor, vjp_fn=vjp_fn) -> Tensor:
            return vjp_fn(c)[0]

        JW = _with_vmap_fallback(problem, "noise_jvp", vmap(jv), jv, W)  # (m, c, k)
        a = (JW * r).sum(-1)  # (m, c): a_i = r_iᵀ (J w)_i
        a_sum += a.sum(-1)
        cot = r * a[..., None]  # (m, c, k)
        if g_sum is not None:
            cot = torch.cat([cot, r[None]])
        back = _with_vmap_fallback(problem, "noise_vjp", vmap(jtv), jtv, cot)
        if g_sum is not None:
            g_sum += back[-1]
            back = back[:-1]
        acc += back
    n = problem.n
    g = g_sum / n if g_sum is not None else gradient
    return acc / n - (a_sum / n)[:, None] * g[None, :]


def _check_gradient(problem: Problem, gradient: Tensor | None) -> Tensor | None:
    if gradient is None:
        return None
    if not isinstance(gradient, Tensor) or gradient.shape != (problem.p,):
        raise OperatorError(f"gradient must be ∇L as a tensor of shape ({problem.p},)")
    return gradient.detach().to(device=problem.device, dtype=problem.dtype)


def noise_covariance_vector_product(
    problem: Problem, v: Tensor, theta: Tensor | None = None, *, gradient: Tensor | None = None
) -> Tensor:
    """Σ v = (1/n) Jᵀ(r ⊙ a) − ∇L(∇Lᵀv), a_i = r_iᵀ(Jv)_i (centred SGD noise, THEORY.md §3). Shape (p,) → (p,).

    ``gradient``: ∇L(θ) if already known (the operators compute it once); otherwise it is accumulated in the same
    pass over the data as one more VJP column.
    """
    g = _check_gradient(problem, gradient)
    return _noise_rows(problem, _theta(problem, theta), _as_vector(problem, v)[None], g)[0]


def noise_covariance_matmat(
    problem: Problem, V: Tensor, theta: Tensor | None = None, *, gradient: Tensor | None = None
) -> Tensor:
    """Σ V for a block of probes, shape (p, m) → (p, m)."""
    V = _as_block(problem, V)
    if V.shape[1] == 0:
        return V.clone()
    g = _check_gradient(problem, gradient)
    return _noise_rows(problem, _theta(problem, theta), V.T.contiguous(), g).T


# ---------------------------------------------------------------------------------------------------- operators
class TorchLinearOperator(LinearOperator):
    """A symmetric square operator backed by a torch block product, seen as a float64 scipy ``LinearOperator``.

    Args:
        matmat: ``V (size, m) ↦ A V (size, m)`` on ``device``/``torch_dtype``.
        size: the dimension.
        matvec: optional faster single-vector product ``(size,) ↦ (size,)`` (default: ``matmat`` on one column).
        block_size: columns per call of ``matmat`` (bounds memory); a larger matmat is split.

    ``matvecs`` counts the vectors the operator has been applied to (numpy or torch side, a matmat counts its
    columns); reset it with ``op.matvecs = 0``.
    """

    def __init__(
        self,
        matmat: Callable[[Tensor], Tensor],
        size: int,
        *,
        device: torch.device,
        torch_dtype: torch.dtype,
        matvec: Callable[[Tensor], Tensor] | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        name: str = "operator",
    ) -> None:
        super().__init__(dtype=np.dtype(np.float64), shape=(size, size))
        if block_size < 1:
            raise OperatorError(f"block_size must be at least 1, got {block_size}")
        self._torch_matmat = matmat
        self._torch_matvec = matvec
        self.device = torch.device(device)
        self.torch_dtype = torch_dtype
        self.block_size = int(block_size)
        self.name = name
        self.matvecs = 0

    # -------------------------------------------------------------- torch side
    def matvec_torch(self, v: Tensor) -> Tensor:
        """A v for a tensor of shape (size,), on the operator's device and dtype."""
        n = self.shape[0]
        if v.shape != (n,):
            raise OperatorError(f"{self.name}: expected a vector of shape ({n},), got {tuple(v.shape)}")
        v = v.detach().to(device=self.device, dtype=self.torch_dtype)
        self.matvecs += 1
        if self._torch_matvec is not None:
            return self._torch_matvec(v)
        return self._torch_matmat(v[:, None])[:, 0]

    def matmat_torch(self, V: Tensor) -> Tensor:
        """A V for a tensor of shape (size, m), in blocks of ``block_size`` columns."""
        n = self.shape[0]
        if V.ndim != 2 or V.shape[0] != n:
            raise OperatorError(f"{self.name}: expected a block of shape ({n}, m), got {tuple(V.shape)}")
        V = V.detach().to(device=self.device, dtype=self.torch_dtype)
        m = V.shape[1]
        self.matvecs += m
        if m == 0:
            return V.clone()
        if m == 1 and self._torch_matvec is not None:
            return self._torch_matvec(V[:, 0])[:, None]
        parts = [self._torch_matmat(V[:, j : j + self.block_size]) for j in range(0, m, self.block_size)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    # -------------------------------------------------------------- numpy side (scipy protocol)
    def _to_torch(self, x: np.ndarray) -> Tensor:
        x = np.asarray(x)
        if np.iscomplexobj(x):
            raise OperatorError(f"{self.name}: complex vectors are not supported")
        return torch.as_tensor(np.ascontiguousarray(x, dtype=np.float64)).to(self.device, self.torch_dtype)

    @staticmethod
    def _to_numpy(t: Tensor) -> np.ndarray:
        return t.detach().to(device="cpu", dtype=torch.float64).numpy()

    def _matvec(self, x: np.ndarray) -> np.ndarray:
        return self._to_numpy(self.matvec_torch(self._to_torch(x).reshape(-1)))

    def _matmat(self, X: np.ndarray) -> np.ndarray:
        return self._to_numpy(self.matmat_torch(self._to_torch(X)))

    _rmatvec = _matvec
    _rmatmat = _matmat

    def _adjoint(self) -> TorchLinearOperator:
        return self

    def to_dense(self) -> np.ndarray:
        """The matrix itself (A applied to the identity; costs ``size`` products). For small operators only."""
        return self.matmat(np.eye(self.shape[0]))

    def __repr__(self) -> str:
        n = self.shape[0]
        return f"<{n}x{n} {self.name} on {self.device} ({self.torch_dtype}), {self.matvecs} products so far>"


def hessian_operator(
    problem: Problem, theta: Tensor | None = None, *, block_size: int = DEFAULT_BLOCK_SIZE
) -> TorchLinearOperator:
    """H = ∇²L(θ) as a symmetric ``LinearOperator`` (θ is copied now; later moves of the problem do not affect it)."""
    th = _theta(problem, theta).clone()
    graph = _GradientGraph(problem, th, GRAPH_CACHE_FRACTION * available_memory_bytes())
    return TorchLinearOperator(
        lambda V: _hvp_rows(problem, th, V.T.contiguous()).T,
        problem.p,
        device=problem.device,
        torch_dtype=problem.dtype,
        matvec=graph.hvp,
        block_size=block_size,
        name="Hessian",
    )


def gauss_newton_operator(
    problem: Problem,
    theta: Tensor | None = None,
    *,
    jacobian: Tensor | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> TorchLinearOperator:
    """G = (1/n) Jᵀ A J (A = I for the square loss) as a ``LinearOperator``; with a dense ``jacobian`` (nk × p) at
    θ, the fast J_Aᵀ(J_A v)/n route."""
    th = _theta(problem, theta).clone()
    if jacobian is not None:
        J, _ = kernel_coordinates(problem, jacobian, th)
        return JacobianOperators(J, problem.n, problem.k).gauss_newton(block_size=block_size)
    return TorchLinearOperator(
        lambda V: _ggn_rows(problem, th, V.T.contiguous()).T,
        problem.p,
        device=problem.device,
        torch_dtype=problem.dtype,
        matvec=lambda v: _ggn_rows(problem, th, v[None])[0],
        block_size=block_size,
        name="Gauss-Newton",
    )


def noise_covariance_operator(
    problem: Problem,
    theta: Tensor | None = None,
    *,
    jacobian: Tensor | None = None,
    block_size: int = DEFAULT_BLOCK_SIZE,
) -> TorchLinearOperator:
    """Σ(θ) (centred SGD noise) as a ``LinearOperator``; ∇L is computed once here, not per product.

    With a dense ``jacobian`` (nk × p) at θ, products use it: Σv = (1/n) Jᵀ(r ⊙ (a − ā)), no pass over the model.
    """
    th = _theta(problem, theta).clone()
    if jacobian is not None:
        J, u = kernel_coordinates(problem, jacobian, th)
        ops = JacobianOperators(J, problem.n, problem.k, residuals=u)
        return ops.noise_covariance(block_size=block_size)
    g = problem.gradient(th)
    return TorchLinearOperator(
        lambda V: _noise_rows(problem, th, V.T.contiguous(), g).T,
        problem.p,
        device=problem.device,
        torch_dtype=problem.dtype,
        matvec=lambda v: _noise_rows(problem, th, v[None], g)[0],
        block_size=block_size,
        name="noise covariance",
    )


def kernel_coordinates(problem: Problem, jacobian: Tensor, theta: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(J_A, u): the rows A_i^{1/2} J_i and the kernel residuals u_i (THEORY.md §9), with which every product of
    G and Σ takes the square loss's form (G = J_AᵀJ_A/n, ∇ℓ_i = J_A,iᵀ u_i); (J, r) for the square loss."""
    th = _theta(problem, theta)
    if problem.square_loss:
        return jacobian, problem.residuals(th)
    n, k = problem.n, problem.k
    if not isinstance(jacobian, Tensor) or jacobian.shape != (n * k, problem.p):
        raise OperatorError(f"jacobian must have shape ({n * k}, {problem.p})")
    roots = problem.output_hessian_roots(th).to(jacobian.dtype)
    weighted = torch.bmm(roots, jacobian.detach().reshape(n, k, -1)).reshape(n * k, -1)
    return weighted, problem.kernel_residuals(th)


class JacobianOperators:
    """Products from a dense Jacobian J ∈ R^{nk×p} (row i·k + c = ∂f_c(x_i)/∂θ), the fast route of THEORY.md §8.

    - ``gauss_newton_matmat(V)`` = Jᵀ(J V)/n (p × p),
    - ``kernel_matmat(U)`` = J(Jᵀ U) (the NTK Gram matrix K, nk × nk),
    - ``noise_covariance_matmat(V)`` = (1/n) Jᵀ(r ⊙ (a − ā)), a_i = r_iᵀ(JV)_i (needs ``residuals``); this is the
      centred Σ of §1 without forming ∇L, since ∇L(∇Lᵀv) = (1/n) Jᵀ(r ā).

    Each accepts a vector or a block (columns are vectors). ``gauss_newton()``, ``kernel()`` and
    ``noise_covariance()`` wrap them as :class:`TorchLinearOperator`.
    """

    def __init__(self, jacobian: Tensor, n: int, k: int, residuals: Tensor | None = None) -> None:
        if not isinstance(jacobian, Tensor) or jacobian.ndim != 2:
            raise OperatorError("jacobian must be a 2-D tensor of shape (n·k, p)")
        if jacobian.shape[0] != n * k:
            raise OperatorError(f"jacobian has {jacobian.shape[0]} rows, expected n·k = {n}·{k} = {n * k}")
        self.J = jacobian.detach()
        self.n = int(n)
        self.k = int(k)
        self.p = int(jacobian.shape[1])
        self.residuals: Tensor | None = None
        if residuals is not None:
            r = residuals.detach().to(device=self.J.device, dtype=self.J.dtype)
            if r.ndim == 1 and self.k == 1:
                r = r[:, None]
            if r.shape != (self.n, self.k):
                raise OperatorError(f"residuals must have shape ({self.n}, {self.k}), got {tuple(r.shape)}")
            self.residuals = r

    @classmethod
    def from_problem(
        cls, problem: Problem, theta: Tensor | None = None, chunk_size: int | None = None
    ) -> JacobianOperators:
        """Materialize J (and the residuals) of a problem at θ."""
        th = _theta(problem, theta)
        J, u = kernel_coordinates(problem, problem.jacobian(chunk_size, th), th)
        return cls(J, problem.n, problem.k, residuals=u)

    def _cast(self, V: Tensor, rows: int) -> tuple[Tensor, bool]:
        if not isinstance(V, Tensor) or V.shape[0] != rows or V.ndim not in (1, 2):
            raise OperatorError(f"expected a tensor of shape ({rows},) or ({rows}, m), got {tuple(V.shape)}")
        V = V.detach().to(device=self.J.device, dtype=self.J.dtype)
        return (V[:, None], True) if V.ndim == 1 else (V, False)

    def gauss_newton_matmat(self, V: Tensor) -> Tensor:
        V, vec = self._cast(V, self.p)
        out = self.J.T @ (self.J @ V) / self.n
        return out[:, 0] if vec else out

    def kernel_matmat(self, U: Tensor) -> Tensor:
        U, vec = self._cast(U, self.n * self.k)
        out = self.J @ (self.J.T @ U)
        return out[:, 0] if vec else out

    def noise_covariance_matmat(self, V: Tensor) -> Tensor:
        if self.residuals is None:
            raise OperatorError("the noise covariance needs the residuals: pass residuals= (or use from_problem)")
        V, vec = self._cast(V, self.p)
        m = V.shape[1]
        r = self.residuals
        JV = (self.J @ V).reshape(self.n, self.k, m)
        a = (JV * r[:, :, None]).sum(1)  # (n, m)
        a = a - a.mean(0, keepdim=True)
        out = self.J.T @ (r[:, :, None] * a[:, None, :]).reshape(self.n * self.k, m) / self.n
        return out[:, 0] if vec else out

    def _op(self, fn: Callable[[Tensor], Tensor], size: int, name: str, block_size: int) -> TorchLinearOperator:
        return TorchLinearOperator(
            fn, size, device=self.J.device, torch_dtype=self.J.dtype, block_size=block_size, name=name
        )

    def gauss_newton(self, *, block_size: int = 256) -> TorchLinearOperator:
        return self._op(self.gauss_newton_matmat, self.p, "Gauss-Newton (dense J)", block_size)

    def kernel(self, *, block_size: int = 256) -> TorchLinearOperator:
        return self._op(self.kernel_matmat, self.n * self.k, "NTK Gram K = JJᵀ (dense J)", block_size)

    def noise_covariance(self, *, block_size: int = 256) -> TorchLinearOperator:
        if self.residuals is None:
            raise OperatorError("the noise covariance needs the residuals: pass residuals= (or use from_problem)")
        return self._op(self.noise_covariance_matmat, self.p, "noise covariance (dense J)", block_size)
