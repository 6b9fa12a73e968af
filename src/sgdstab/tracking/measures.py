"""One measurement of the tracker: the figures of one row of its table at the current θ.

Every step costs what it must and no more:

- the loss on the evaluation subset (one forward pass);
- λ_max(H) by Lanczos from the last top eigenvector (:func:`sgdstab.measure.top_eigen.sharpness`): a few
  Hessian-vector products when the curvature moved little since the last row;
- for Adam and RMSprop, λ_max(P⁻¹H) with P from the optimizer's own second-moment state, warm-started alike;
- the batch sharpness by Monte Carlo over batches of the evaluation subset drawn as the loop draws them, stopped
  at ``batch_rtol`` standard error (:func:`sgdstab.batch_sharpness`);
- the step sharpness along the update Δθ the optimizer just made;
- every ``kernel_every``-th row, through the kernel of a smaller subset: μ, ||G||_F, the Frobenius bound, the
  mean-square proxy λ_max(E_B[(I − ηH_B)²]) (plain SGD) and the exact η*(B, β) of SGD's linearization (momentum
  included); not for adaptive optimizers.

Hessian figures are reported for the loss in the user's convention (``loss_scale``·L) and rates in the
optimizer's units, so that the sharpness is compared with the threshold the optimizer's own η sets.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from sgdstab.conventions import frobenius_bound, learning_rate_in_convention, loss_scale, noise_scale
from sgdstab.errors import SgdstabError
from sgdstab.kernel.figures import noise_figures
from sgdstab.kernel.ntk import as_kernel
from sgdstab.linear_stability.proxy import mean_square_proxy
from sgdstab.linear_stability.solver import critical_learning_rate
from sgdstab.measure.sharpness import batch_sharpness
from sgdstab.measure.top_eigen import sharpness, step_sharpness
from sgdstab.problem.problem import Problem
from sgdstab.tracking.optimizers import OptimizerView


@dataclass
class Settings:
    """What a measurement computes and how precisely (the tracker's arguments)."""

    batch_size: int
    sampling: str
    train_size: int | None
    batch_rtol: float
    max_batches: int
    sharpness_rtol: float
    kernel_every: int
    seed: int


class Measurer:
    """Measures rows at the current θ of ``problem`` (and of ``kernel_problem``, a subset of it), keeping the warm
    starts of its Lanczos solves from one row to the next."""

    def __init__(self, problem: Problem, kernel_problem: Problem | None, settings: Settings) -> None:
        self.problem = problem
        self.kernel_problem = kernel_problem
        self.settings = settings
        self.scale = loss_scale(problem.loss_convention, problem.k)
        self._warm: Tensor | None = None
        self._warm_preconditioned: Tensor | None = None
        self.notes: set[str] = set()

    def row(self, index: int, view: OptimizerView, update: Tensor | None, P: Tensor | None) -> dict[str, float]:
        """The figures of one row (``index``: the row's number, which seeds its batches and picks kernel rows)."""
        start = time.perf_counter()
        s = self.scale
        found = sharpness(self.problem, start=self._start(self._warm, index), rtol=self.settings.sharpness_rtol)
        self._warm = found.vector
        row: dict[str, Any] = {
            "lr": view.lr,
            "threshold": view.threshold,
            "loss": s * float(self.problem.loss()),
            "sharpness": s * found.value,
            "sharpness_residual": found.residual,
            "hessian_products": found.products,
        }
        if P is not None:
            warm = self._start(self._warm_preconditioned, index)
            pre = sharpness(self.problem, preconditioner=P, start=warm, rtol=self.settings.sharpness_rtol)
            self._warm_preconditioned = pre.vector
            row["preconditioned_sharpness"] = s * pre.value
        if not view.preconditioned:
            row |= self._batch_sharpness(index)
        if update is not None and bool(torch.any(update != 0)):
            row["step_sharpness"] = s * step_sharpness(self.problem, update)
        if self.kernel_problem is not None and index % self.settings.kernel_every == 0:
            row |= self._kernel_figures(view)
        row["measure_seconds"] = time.perf_counter() - start
        return row

    def _start(self, last: Tensor | None, index: int) -> Tensor | None:
        """The last top eigenvector with a fresh random part (half its norm): a start that is nearly
        an eigenvector spans an almost invariant Krylov space, whose residual test would pass on the *old* top
        direction after the curvature's top eigenvalue changed places; the random part keeps the others in view."""
        if last is None:
            return None
        gen = torch.Generator().manual_seed(self.settings.seed + 7919 * (index + 1))
        noise = torch.randn(last.shape[0], generator=gen, dtype=torch.float64).to(last)
        return last / torch.linalg.vector_norm(last) + 0.5 * noise / torch.linalg.vector_norm(noise)

    def _batch_sharpness(self, index: int) -> dict[str, float]:
        st = self.settings
        b = min(st.batch_size, self.problem.n)
        bs = batch_sharpness(
            self.problem,
            b,
            st.sampling,
            interaction=False,
            rtol=st.batch_rtol,
            max_batches=st.max_batches,
            seed=st.seed + index,
        )
        return {"batch_sharpness": self.scale * bs.value, "batch_sharpness_stderr": self.scale * bs.stderr}

    def _kernel_figures(self, view: OptimizerView) -> dict[str, float]:
        """μ, ||G||_F, the Frobenius bound and η*(B, β) through the kernel of the kernel subset."""
        problem = self.kernel_problem
        assert problem is not None
        if view.kind != "sgd" or not math.isfinite(view.lr):
            return {}
        batch = self._kernel_batch(problem.n)
        if batch is None:
            return {}
        kernel = as_kernel(problem)
        r = problem.residuals() if problem.square_loss else problem.kernel_residuals()
        nf = noise_figures(kernel.K, r.detach().cpu().double(), problem.n, problem.k)
        frob = float(torch.linalg.matrix_norm(kernel.K)) / problem.n
        c = noise_scale(batch[0], problem.n, batch[1])
        lr_on_L = problem.half_mse_lr(view.lr * (1 - view.dampening))
        figures = {"mu": nf.mu, "gauss_newton_frobenius": self.scale * frob}
        if view.momentum == 0:  # the bound and the proxy are plain SGD's (THEORY.md §5, §9.0); momentum has η*(B, β)
            bound = frobenius_bound(lr_on_L, c, nf.mu) if not math.isnan(nf.mu) else math.nan
            figures["frobenius_bound"] = self.scale * bound
            figures["mean_square_proxy"] = mean_square_proxy(kernel, lr_on_L, c)
        try:
            eta = critical_learning_rate(
                kernel, batch[0], batch[1], momentum=view.momentum, nesterov=view.nesterov, progress=False
            )
        except SgdstabError as exc:  # rank beyond the momentum solver's reach, a zero kernel
            self.notes.add(f"η*(B, β) not computed: {exc}")
            return figures
        # η* on L, for the optimizer's η (dampening d scales the step by 1 − d)
        figures["critical_lr"] = learning_rate_in_convention(eta, problem.loss_convention, problem.k) / (
            1 - view.dampening
        )
        return figures

    def _kernel_batch(self, n: int) -> tuple[int, str] | None:
        st = self.settings
        if st.train_size is not None and st.batch_size >= st.train_size:
            return n, "without_replacement"  # gradient descent: no noise on any subset
        if st.batch_size >= n:
            self.notes.add(
                f"the kernel subset ({n} samples) is not larger than B = {st.batch_size}: no μ, bound or η*; "
                "raise kernel_size"
            )
            return None
        return st.batch_size, st.sampling
