"""The square-loss finite-sum problem: a model, its data, and the derivatives every measurement is built on.

Conventions (THEORY.md §1): residual ``r_i = f(x_i; θ) − y_i ∈ R^k``, per-sample loss ``ℓ_i = ½||r_i||²``,
``L(θ) = (1/n) Σ_i ℓ_i``. θ is the flat vector of the model's *trainable* parameters (``requires_grad=True``), in
``model.named_parameters()`` order; frozen parameters and buffers are constants. The stacked Jacobian
``J ∈ R^{nk×p}`` has row ``i·k + c`` equal to ``∂f_c(x_i)/∂θ``.

Derivatives come from ``torch.func`` (``grad``, ``jacrev``, ``vmap``) on a functional view of the model, in
chunks of samples so that peak memory stays bounded.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jacrev, vmap

from sgdstab.conventions import check_loss_convention, half_mse_learning_rate, loss_scale
from sgdstab.errors import ProblemError
from sgdstab.problem.losses import OutputLoss, output_loss
from sgdstab.problem.targets import checked_targets
from sgdstab.utils.memory import check_allocation, format_bytes
from sgdstab.utils.validation import check_int

_FLOAT_DTYPES = (torch.float32, torch.float64)
_INT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


@dataclass(frozen=True)
class ParameterLayout:
    """How the trainable parameters of a model map to a flat vector θ ∈ R^p."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]

    @property
    def numels(self) -> tuple[int, ...]:
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def size(self) -> int:
        return sum(self.numels)

    def flatten(self, tensors: dict[str, Tensor]) -> Tensor:
        return torch.cat([tensors[name].reshape(-1) for name in self.names])

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        chunks = torch.split(theta, list(self.numels))
        return {name: c.view(shape) for name, c, shape in zip(self.names, chunks, self.shapes, strict=True)}


def _refuse_stochastic_modules(model: nn.Module) -> None:
    for name, module in model.named_modules():
        label = name or type(model).__name__
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and (module.training or module.running_mean is None):
            # without running statistics (track_running_stats=False) BatchNorm normalizes by the batch even in
            # eval mode: torch then failed on a single sample with an untyped error
            why = "in training mode" if module.training else "without running statistics (track_running_stats=False)"
            fix = (
                "call model.eval() to measure with its running statistics"
                if module.running_mean is not None
                else "use a BatchNorm with running statistics, or fold it into the layer before"
            )
            raise ProblemError(
                f"module {label!r} is BatchNorm {why}, which couples the samples of a batch and breaks the "
                f"finite-sum structure; {fix}"
            )
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.training and module.p > 0:
            raise ProblemError(
                f"module {label!r} is dropout in training mode, which makes the loss random; call model.eval()"
            )


def _refuse_tensors_without_data(model: nn.Module) -> None:
    """Meta parameters or buffers (a model built under ``torch.device("meta")``) have a shape but no values:
    torch failed on them later with an untyped error."""
    for kind, named in (("parameter", model.named_parameters()), ("buffer", model.named_buffers())):
        for name, t in named:
            if t.is_meta:
                raise ProblemError(
                    f"model {kind} {name!r} is a meta tensor (a shape without values); load real weights first "
                    "(model.to_empty(device='cpu') then load_state_dict)"
                )
            if t.layout != torch.strided:
                raise ProblemError(f"model {kind} {name!r} has layout {t.layout}; use dense tensors (to_dense())")


def _check_exact_integers(t: Tensor, name: str, dtype: torch.dtype) -> None:
    """Integer data converted to ``dtype`` must keep their values: float32 holds every integer only up to 2**24,
    float64 up to 2**53 (a larger one was silently rounded)."""
    if t.dtype not in (torch.int32, torch.int64) or t.numel() == 0:
        return  # uint8, int8 and int16 values are exact in either dtype
    bits = 24 if dtype == torch.float32 else 53
    beyond = (t > 2**53) | (t < -(2**53))  # compared as integers: converting first would round them
    if not bool(beyond.any()):
        wide = t.to(torch.float64)  # exact below 2**53
        beyond = wide.to(dtype).to(torch.float64) != wide
    if bool(beyond.any()):
        example = int(t[beyond].reshape(-1)[0])
        raise ProblemError(
            f"{name} holds integers that {dtype} cannot represent exactly (e.g. {example}; beyond 2**{bits} they "
            "are rounded); pass dtype=torch.float64 or rescale the data"
        )


def check_chunk_size(chunk_size: object) -> int:
    """``chunk_size`` as an int ≥ 1 (samples per vectorized chunk), else :class:`ProblemError`."""
    # a chunk size ≤ 0 would make range() yield no chunks at all, and every sum over chunks silently zero
    return check_int(chunk_size, "chunk_size", minimum=1, error=ProblemError)


def _check_finite(t: Tensor, what: str) -> None:
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).sum())
        raise ProblemError(f"{what} contains {bad} non-finite value(s) (NaN or inf); clean or drop them first")


def _model_in_dtype(model: nn.Module, dtype: torch.dtype | None) -> tuple[nn.Module, torch.dtype, torch.device]:
    """``(model, dtype, device)``: dtype defaults to the model's; a model in another dtype is copied, never changed."""
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ProblemError("model has no trainable parameters (every parameter has requires_grad=False)")
    model_dtype = trainable[0][1].dtype
    if dtype is None:
        dtype = model_dtype
    if dtype not in _FLOAT_DTYPES:
        raise ProblemError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if any(p.dtype != dtype for _, p in model.named_parameters()) or any(
        b.is_floating_point() and b.dtype != dtype for b in model.buffers()
    ):
        model = copy.deepcopy(model).to(dtype)
    return model, dtype, trainable[0][1].device


def _checked_data(X: Tensor, Y: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """X and Y (as (n, k)) once their shapes agree and their values are real, dense and exact in ``dtype``."""
    if X.ndim == 0 or X.shape[0] == 0:
        raise ProblemError("data are empty: X needs at least one sample along its first dimension")
    if Y.ndim == 1:
        Y = Y[:, None]
    if Y.ndim != 2:
        raise ProblemError(f"Y must have shape (n, k) or (n,), got {tuple(Y.shape)}")
    if Y.shape[0] != X.shape[0]:
        raise ProblemError(f"X has {X.shape[0]} samples but Y has {Y.shape[0]}")
    for name, t in (("X", X), ("Y", Y)):
        # complex values would lose their imaginary part and bools are flags, not data
        if not (t.is_floating_point() or t.dtype in _INT_DTYPES):
            raise ProblemError(f"{name} must hold real numbers, got dtype {t.dtype}")
        if t.is_meta or t.layout != torch.strided:
            what = "a meta tensor (no values)" if t.is_meta else f"a tensor of layout {t.layout}"
            raise ProblemError(f"{name} is {what}; pass a dense tensor of values")
        _check_exact_integers(t, name, dtype)
    return X, Y


class Problem:
    """``L(θ) = (1/(2n)) Σ_i ||f(x_i; θ) − y_i||²`` (or the mean of another per-sample loss) for a model and its data.

    Args:
        model: any ``nn.Module`` mapping a batch ``(N, ...)`` to ``(N, k)`` (or ``(N,)`` for k = 1). It must not
            couple samples or be random: BatchNorm in training mode and active dropout are refused.
        X: inputs, shape ``(n, ...)``.
        Y: targets, shape ``(n, k)`` (or ``(n,)`` for k = 1); for ``cross_entropy`` class indices ``(n,)`` (stored
            as one-hot rows) or soft labels ``(n, k)``; for ``bce_with_logits`` probabilities in [0, 1].
        loss: the square loss as ``"half_mse"`` (L itself) or ``"torch_mse"`` (PyTorch's ``MSELoss`` = (2/k)·L);
            or a loss of THEORY.md §9 through the generalized Gauss–Newton: ``"cross_entropy"`` (softmax on the
            model's logits, L = ``nn.CrossEntropyLoss()``) or ``"bce_with_logits"`` (L = k·``nn.BCEWithLogitsLoss()``).
            Every figure is reported for L; the convention converts learning rates (:meth:`half_mse_lr`).
        dtype: ``torch.float32`` or ``torch.float64``; default the model's. A different dtype works on a copy
            of the model; the user's model is never modified.
        chunk_size: samples per vectorized chunk for per-sample derivatives (default: from a memory budget).

    Data are moved to the model's device; every result stays there. Other layers build on the public seams
    :meth:`forward`, :meth:`batch_outputs`, :meth:`batch_loss_sum` and :meth:`parameters_or`.

    Raises:
        ProblemError: the model is not a module, couples or randomizes samples, has no trainable parameters or
            fails on X; X or Y are not real, dense, finite tensors of matching sample counts; the model's output
            width is not Y's k; class labels outside 0..k−1 or soft labels that are not distributions;
            ``dtype`` or ``chunk_size`` is invalid.

    Example:
        >>> import torch, sgdstab
        >>> X = torch.linspace(-1, 1, 12, dtype=torch.float64).reshape(4, 3)
        >>> problem = sgdstab.Problem(sgdstab.mlp(3, 1, widths=(4,)), X, X.sum(1), dtype=torch.float64)
        >>> problem.n, problem.k, problem.p
        (4, 1, 21)
        >>> problem.gradient().shape, problem.jacobian().shape
        (torch.Size([21]), torch.Size([4, 21]))
        >>> bool(problem.loss() > 0)
        True
    """

    def __init__(
        self,
        model: nn.Module,
        X: Tensor,
        Y: Tensor,
        *,
        loss: str = "half_mse",
        dtype: torch.dtype | None = None,
        chunk_size: int | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ProblemError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not isinstance(X, Tensor) or not isinstance(Y, Tensor):
            raise ProblemError("X and Y must be torch tensors (use torch.as_tensor on arrays)")
        self.loss_convention = check_loss_convention(loss)
        _refuse_stochastic_modules(model)
        _refuse_tensors_without_data(model)
        model, dtype, device = _model_in_dtype(model, dtype)
        self.model = model
        self.dtype = dtype
        self.device = device
        self._flatten_parameters()
        self.output_loss: OutputLoss = output_loss(self.loss_convention)
        X, Y = _checked_data(X, Y, dtype)
        if not self.output_loss.square:  # class indices become one-hot rows of the model's width
            Y = checked_targets(Y, self._output_width(X), self.loss_convention)
        self.X = X.to(device=self.device, dtype=dtype)
        self.Y = Y.to(device=self.device, dtype=dtype)
        _check_finite(self.X, "X")
        _check_finite(self.Y, "Y")
        self.n = int(self.X.shape[0])
        self.k = int(self.Y.shape[1])
        self.p = self.layout.size
        self._check_model_output()
        self.chunk_size = check_chunk_size(chunk_size) if chunk_size is not None else self._default_chunk_size()
        self._check_independent_samples()

    def _flatten_parameters(self) -> None:
        """θ, its layout and the constants (frozen parameters and buffers) of ``self.model``."""
        named = dict(self.model.named_parameters())
        names = tuple(name for name, p in named.items() if p.requires_grad)
        self.layout = ParameterLayout(names, tuple(named[n].shape for n in names))
        self._constants: dict[str, Tensor] = {
            name: p.detach() for name, p in named.items() if not p.requires_grad
        } | dict(self.model.named_buffers())
        self.theta = self.layout.flatten({n: named[n].detach() for n in names}).clone()
        _check_finite(self.theta, "model parameters")

    # ------------------------------------------------------------------ the functional model
    def forward(self, params: dict[str, Tensor], x: Tensor) -> Tensor:
        """f(x; params) for a batch ``x``, shape (m, k): the model run functionally (``torch.func``) on the
        trainable tensors ``params`` (name → tensor, e.g. ``layout.unflatten(θ)``), with the frozen parameters
        and buffers held constant. Differentiable in ``params``; nothing is checked (the hot path)."""
        out = functional_call(self.model, (params, self._constants), (x,))
        return out.reshape(x.shape[0], -1)

    def batch_outputs(self, theta: Tensor, x: Tensor) -> Tensor:
        """f(x; θ) for a batch ``x`` and a flat θ of shape (p,), shape (m, k); differentiable in θ."""
        return self.forward(self.layout.unflatten(theta), x)

    def batch_loss_sum(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Σ_i ℓ(f(x_i; θ), y_i) over a batch — ½ Σ_i ||f(x_i; θ) − y_i||² for the square loss (a sum, not a mean:
        callers divide by the true n once, so an unequal last chunk is weighted correctly); differentiable in θ."""
        return self.output_loss.per_sample(self.forward(self.layout.unflatten(theta), x), y).sum()

    def _f_single(self, theta: Tensor, x: Tensor) -> Tensor:
        """f(x; θ) ∈ R^k for one sample x (no batch dimension)."""
        return self.forward(self.layout.unflatten(theta), x.unsqueeze(0))[0]

    def _probe(self, x: Tensor, data_shape: tuple[int, ...] | None = None) -> Tensor:
        """The model's outputs on a copy of ``x``, refusing (one line) a model that fails or writes into its
        input (in place, it would change X itself and then break the derivatives). ``data_shape``: the shape the
        error names (default X's)."""
        params = self.layout.unflatten(self.theta)
        copy_ = x.clone()
        try:
            out = self.forward(params, copy_)
        except Exception as exc:  # the model cannot run on these inputs: say so in one line
            message = " ".join(f"{type(exc).__name__}: {exc}".split())
            shape = tuple(self.X.shape) if data_shape is None else data_shape
            raise ProblemError(f"model failed on X of shape {shape}: {message}") from exc
        if not torch.equal(copy_, x):
            raise ProblemError(
                "the model modifies its input in place (e.g. x.mul_() or x += …, in-place activations on x); "
                "make the first operation on x out of place"
            )
        return out

    def _output_width(self, X: Tensor) -> int:
        """k, the model's outputs per sample, from one sample of X (the targets of a classification loss take
        their width from it)."""
        with torch.no_grad():
            return int(self._probe(X[:1].to(device=self.device, dtype=self.dtype), tuple(X.shape)).shape[1])

    def _check_model_output(self) -> None:
        m = min(self.n, 8)
        with torch.no_grad():
            out = self._probe(self.X[:m])
            if out.shape[1] != self.k:
                raise ProblemError(f"model outputs {out.shape[1]} value(s) per sample but Y has k = {self.k} column(s)")
            again = self._probe(self.X[:m])
        if not torch.equal(out, again):
            raise ProblemError("model is not deterministic (two forward passes differ); disable randomness")
        _check_finite(out, "model output")
        if not self.output_loss.square:
            self._warn_if_probabilities(out)
            return
        # L sums squared residuals: |r| beyond ~1e19 (float32) or ~1e154 (float64) makes L, ∇L and every figure
        # built on them inf; refuse here rather than report inf figures
        for what, r in (("targets Y", self.Y), ("first residuals f(x) − y", out - self.Y[:m])):
            if not bool(torch.isfinite((r * r).sum())):
                raise ProblemError(
                    f"the squared {what} overflow {self.dtype} (largest |value| {float(r.abs().max()):.3g}); "
                    "rescale the data or use dtype=torch.float64"
                )

    def _warn_if_probabilities(self, out: Tensor) -> None:
        """Logits that look like probabilities (every value in [0, 1]; for softmax, rows summing to 1) mean a
        final softmax or sigmoid inside the model, which the loss then applies a second time."""
        if out.numel() == 0 or not bool(((out >= 0) & (out <= 1)).all()):
            return
        if self.loss_convention == "cross_entropy" and not bool(((out.sum(1) - 1).abs() < 1e-5).all()):
            return
        warnings.warn(
            f"the model's outputs look like probabilities (all in [0, 1]); {self.loss_convention} expects logits: "
            "drop the model's final softmax/sigmoid",
            UserWarning,
            stacklevel=3,
        )

    def _close(self, a: Tensor, b: Tensor) -> bool:
        tol = 1e-4 if self.dtype == torch.float32 else 1e-10
        return a.shape == b.shape and torch.allclose(a, b, rtol=tol, atol=tol * float(b.abs().max().clamp(min=1)))

    def _check_independent_samples(self) -> None:
        """Every sample's output in the batches that L and ∇L use (:meth:`chunks`) must equal its output alone,
        which the per-sample derivatives compute (``vmap`` over single samples): a model that couples the samples
        of a batch (batch statistics, mixing rows) breaks the finite-sum structure.

        Checked over all n samples, chunk by chunk, at the cost of two forward passes over the data: ``vmap``
        runs the single-sample model on a whole chunk at once. A model ``vmap`` cannot run (data-dependent
        control flow, ``.item()``) is spot-checked instead: the first, last and 14 seeded random samples of each
        chunk, each run alone."""
        alone = vmap(self._f_single, in_dims=(None, 0))
        with torch.no_grad():
            for s in self.chunks():
                batched = self._probe(self.X[s])  # also: no failure or in-place write on a whole chunk
                try:
                    rows, single = list(range(s.start, s.stop)), alone(self.theta, self.X[s].clone())
                except Exception:  # not vmappable: compare a few samples run one at a time
                    rows = self._spot_rows(s)
                    single = torch.cat([self._alone(i) for i in rows])
                    batched = batched[[i - s.start for i in rows]]
                if not self._close(batched, single):
                    diff = (batched - single).abs().amax(dim=1)
                    worst = rows[int(diff.argmax())]
                    raise ProblemError(
                        f"a sample's output depends on the other samples in its batch (sample {worst}: "
                        f"{float(diff.max()):.3g} from its output alone; batch statistics?); the finite-sum "
                        "structure needs per-sample outputs"
                    )

    def _alone(self, i: int) -> Tensor:
        """The output of sample ``i`` run as a batch of one (the per-sample derivatives need the model to run so)."""
        try:
            return self.batch_outputs(self.theta, self.X[i : i + 1].clone())
        except Exception as exc:
            message = " ".join(f"{type(exc).__name__}: {exc}".split())
            raise ProblemError(
                f"model failed on the single sample X[{i}] (per-sample derivatives run each sample alone): {message}"
            ) from exc

    def _spot_rows(self, s: slice) -> list[int]:
        """The first, last and 14 seeded random samples of the chunk ``s``, in order."""
        size = s.stop - s.start
        gen = torch.Generator().manual_seed(size)  # the same data are always checked on the same samples
        inner = (torch.randperm(size, generator=gen)[:14] + s.start).tolist()
        return sorted({s.start, s.stop - 1, *inner})

    def _default_chunk_size(self) -> int:
        # Per-sample derivatives of a chunk of m samples hold about m·k·p numbers for the Jacobian, plus the
        # activations of the vectorized backward; keep a chunk near 256 MiB of Jacobian.
        bytes_per_row = self.k * self.p * self.itemsize
        return int(max(1, min(self.n, (256 * 1024**2) // max(bytes_per_row, 1))))

    @property
    def itemsize(self) -> int:
        return torch.empty((), dtype=self.dtype).element_size()

    # ------------------------------------------------------------------ parameters
    def parameters_or(self, theta: Tensor | None) -> Tensor:
        """``theta`` checked (a real tensor of shape (p,)) and moved to the problem's device and dtype, or the
        current θ when ``theta`` is None: how every method with a ``theta=`` argument reads it.

        Raises:
            ProblemError: ``theta`` is not a real tensor, or not of shape (p,).
        """
        if theta is None:
            return self.theta
        if not isinstance(theta, Tensor) or theta.is_complex() or theta.dtype == torch.bool:
            got = type(theta).__name__ if not isinstance(theta, Tensor) else f"a {theta.dtype} tensor"
            raise ProblemError(f"θ must be a real torch tensor of {self.p} parameters, got {got}")
        if theta.shape != (self.p,):
            raise ProblemError(f"θ must be a flat vector of {self.p} parameters, got shape {tuple(theta.shape)}")
        return theta.to(device=self.device, dtype=self.dtype)

    def set_parameters(self, theta: Tensor) -> None:
        """Move the problem to θ (and write θ into the model's parameters)."""
        theta = self.parameters_or(theta).detach().clone()
        _check_finite(theta, "θ")
        self.theta = theta
        named = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in self.layout.unflatten(theta).items():
                named[name].copy_(value)

    def half_mse_lr(self, lr: float) -> float:
        """The learning rate on L equivalent to ``lr`` on this problem's loss convention (THEORY.md §1)."""
        return half_mse_learning_rate(lr, self.loss_convention, self.k)

    @property
    def loss_scale(self) -> float:
        """(the loss in this problem's convention) / L."""
        return loss_scale(self.loss_convention, self.k)

    # ------------------------------------------------------------------ values
    def chunks(self, chunk_size: int | None = None, start: int = 0) -> Iterator[slice]:
        """Consecutive slices of at most ``chunk_size`` samples, from sample ``start`` on."""
        size = self.chunk_size if chunk_size is None else check_chunk_size(chunk_size)
        for begin in range(start, self.n, size):
            yield slice(begin, min(begin + size, self.n))

    def outputs(self, theta: Tensor | None = None) -> Tensor:
        """f(x_i; θ) for every sample, shape (n, k)."""
        params = self.layout.unflatten(self.parameters_or(theta))
        with torch.no_grad():
            return torch.cat([self.forward(params, self.X[s]) for s in self.chunks()])

    @property
    def square_loss(self) -> bool:
        """Whether L is the square loss (``half_mse``/``torch_mse``); else a loss of THEORY.md §9 (the GGN)."""
        return self.output_loss.square

    def residuals(self, theta: Tensor | None = None) -> Tensor:
        """r_i = f(x_i; θ) − y_i, shape (n, k): the square loss's ∇_f ℓ_i.

        Raises:
            ProblemError: the problem's loss is not the square loss (use :meth:`output_gradients` or
                :meth:`kernel_residuals`).
        """
        if not self.square_loss:
            raise ProblemError(
                f"residuals f − y belong to the square loss; this problem's loss is {self.loss_convention}: use "
                "output_gradients() (∇_f ℓ_i) or kernel_residuals()"
            )
        return self.outputs(theta) - self.Y

    def output_gradients(self, theta: Tensor | None = None) -> Tensor:
        """e_i = ∇_f ℓ(f_i, y_i), shape (n, k): the residual f − y for the square loss, softmax(f) − y for
        cross-entropy, sigmoid(f) − y for ``bce_with_logits``. ``∇ℓ_i = J_iᵀ e_i``."""
        return self.output_loss.output_gradient(self.outputs(theta), self.Y)

    def output_hessians(self, theta: Tensor | None = None) -> Tensor:
        """A_i = ∇²_f ℓ(f_i, y_i), shape (n, k, k): I for the square loss, diag(p) − ppᵀ for cross-entropy."""
        return self.output_loss.output_hessian(self.outputs(theta))

    def output_hessian_roots(self, theta: Tensor | None = None) -> Tensor:
        """A_i^{1/2}, shape (n, k, k) (the weights of the GGN kernel K_A = A^{1/2} K A^{1/2})."""
        return self.output_loss.output_hessian_sqrt(self.outputs(theta))

    def kernel_residuals(self, theta: Tensor | None = None) -> Tensor:
        """u_i = A_i^{1/2} A_i^+ e_i, shape (n, k): the residuals of the kernel identities with K_A in place of K
        (THEORY.md §9); r itself for the square loss. ``||u_i||² = e_iᵀ A_i^+ e_i``."""
        return self.output_loss.kernel_residuals(self.outputs(theta), self.Y)

    def loss(self, theta: Tensor | None = None) -> Tensor:
        """L(θ) = (1/n) Σ_i ℓ_i: (1/(2n)) Σ_i ||r_i||² for the square loss (half-mean convention, whatever ``loss=``
        was given); the mean cross-entropy (``nn.CrossEntropyLoss()``); for ``bce_with_logits`` the mean over
        samples of the sum over outputs."""
        return self.output_loss.per_sample(self.outputs(theta), self.Y).sum() / self.n

    def gradient(self, theta: Tensor | None = None) -> Tensor:
        """∇L(θ), shape (p,)."""
        th = self.parameters_or(theta)
        g = torch.zeros_like(th)
        grad_fn = grad(self.batch_loss_sum)
        for s in self.chunks():
            g += grad_fn(th, self.X[s], self.Y[s])
        return g / self.n

    def loss_function(self) -> Callable[[Tensor], Tensor]:
        """θ ↦ L(θ) as a differentiable function on the full data (for torch.func transforms on small problems)."""

        def loss_fn(theta: Tensor) -> Tensor:
            total = sum(self.batch_loss_sum(theta, self.X[s], self.Y[s]) for s in self.chunks())
            return total / self.n  # type: ignore[operator]

        return loss_fn

    def output_function(self) -> Callable[[Tensor, Tensor], Tensor]:
        """(θ, x) ↦ f(x; θ) ∈ R^k for one sample x without batch dimension, for torch.func transforms."""
        return self._f_single

    # ------------------------------------------------------------------ per-sample derivatives
    def _check_dense(self, rows: int, what: str) -> None:
        check_allocation(
            rows * self.p * self.itemsize,
            f"{what} ({rows} × {self.p}, {self.dtype})",
            "use a matrix-free method or a smaller n",
        )

    def per_sample_gradient_blocks(
        self, chunk_size: int | None = None, theta: Tensor | None = None
    ) -> Iterator[tuple[slice, Tensor]]:
        """Yield ``(samples, grads)``, ``grads`` of shape (m, p) holding ∇ℓ_i, for consecutive chunks."""
        th = self.parameters_or(theta)

        def sample_loss(t: Tensor, x: Tensor, y: Tensor) -> Tensor:
            return self.output_loss.per_sample(self._f_single(t, x)[None], y[None])[0]

        fn = vmap(grad(sample_loss), in_dims=(None, 0, 0))
        for s in self.chunks(chunk_size):
            yield s, fn(th, self.X[s], self.Y[s])

    def per_sample_gradients(self, chunk_size: int | None = None, theta: Tensor | None = None) -> Tensor:
        """∇ℓ_i(θ) = J_iᵀ e_i for every sample, shape (n, p) (e_i = r_i and ℓ_i = ½||r_i||² for the square loss)."""
        self._check_dense(self.n, "per-sample gradients")
        return torch.cat([g for _, g in self.per_sample_gradient_blocks(chunk_size, theta)])

    def jacobian_blocks(
        self, chunk_size: int | None = None, theta: Tensor | None = None, start: int = 0
    ) -> Iterator[tuple[slice, Tensor]]:
        """Yield ``(samples, J_block)``, ``J_block`` of shape (m·k, p), for consecutive chunks from ``start``."""
        th = self.parameters_or(theta)
        fn = vmap(jacrev(self._f_single), in_dims=(None, 0))
        for s in self.chunks(chunk_size, start):
            block = fn(th, self.X[s])  # (m, k, p)
            yield s, block.reshape(-1, self.p)

    def jacobian(self, chunk_size: int | None = None, theta: Tensor | None = None) -> Tensor:
        """J ∈ R^{nk×p}: row ``i·k + c`` is ∂f_c(x_i; θ)/∂θ."""
        self._check_dense(self.n * self.k, "the Jacobian")
        J = torch.empty((self.n * self.k, self.p), dtype=self.dtype, device=self.device)
        for s, block in self.jacobian_blocks(chunk_size, theta):
            J[s.start * self.k : s.stop * self.k] = block
        return J

    # ------------------------------------------------------------------ description
    def describe(self) -> dict[str, object]:
        return {
            "n": self.n,
            "k": self.k,
            "p": self.p,
            "dtype": str(self.dtype).removeprefix("torch."),
            "device": str(self.device),
            "loss": self.loss_convention,
            "model": type(self.model).__name__,
            "jacobian_size": format_bytes(self.n * self.k * self.p * self.itemsize),
        }

    def __repr__(self) -> str:
        d = self.describe()
        return (
            f"Problem(model={d['model']}, n={self.n}, k={self.k}, p={self.p}, dtype={d['dtype']}, "
            f"device={d['device']}, loss={self.loss_convention})"
        )
