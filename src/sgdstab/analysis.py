"""Analyse any model at its current parameters: curvature, noise alignment and SGD stability in one call.

``analyze(model, X, Y, lr=..., batch_size=..., sampling=...)`` builds the square-loss problem
L = (1/2n) Σ ||f(x_i) − y_i||² (THEORY.md §1), builds the NTK K = JJᵀ **once** when it fits (the kernel route of
:func:`sgdstab.plan_method`) and hands it to every measurement:

- :func:`sgdstab.curvature`: ||H||_F, Tr H, λ_max(H) of the true Hessian (exact at a minimum or for small p,
  else Lanczos/Hutch++ with standard errors), the Gauss–Newton figures of G = JᵀJ/n exactly through K;
- :func:`sgdstab.alignment`: μ = Tr(ΣG)/(2L||G||_F²), μ_H (H in place of G) and μ_inf;
- with ``lr`` and ``batch_size``: :func:`sgdstab.stability` — ρ(T), the exact critical learning rate η*(B) and
  every certificate of §5 — linearized with K (exact at a global minimum; elsewhere a note says so), and the
  Frobenius bound sqrt(1/(cμ))/η with c = 1/B with replacement, (n − B)/(B(n − 1)) without.

``lr`` is in the problem's loss convention (``loss="torch_mse"``: PyTorch's MSELoss = (2/k)·L, converted to the
step on L, which every reported figure uses). ``sgdstab analyze`` (the CLI) calls this on a saved model.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from sgdstab.alignment import Alignment, alignment
from sgdstab.conventions import noise_scale
from sgdstab.curvature import Curvature, curvature, plan_method
from sgdstab.errors import SgdstabError
from sgdstab.problem import Problem
from sgdstab.results import ResultMixin
from sgdstab.stability import Kernel, Stability, stability


class AnalysisError(SgdstabError, ValueError):
    """Inconsistent arguments to :func:`analyze` (e.g. a batch size without a learning rate)."""


@dataclass(frozen=True)
class Analysis(ResultMixin):
    """Curvature, alignment and (with lr and batch size) stability of a model at its parameters.

    ``lr`` is the step on L (half-MSE convention; ``lr_given`` the value passed, in ``loss_convention``);
    ``frobenius_bound`` = sqrt(1/(cμ))/η (inf when c = 0, i.e. GD), ``frobenius_ratio`` = ||H||_F over it (≤ 1
    where SGD can stay, THEORY.md §5); ``gd_bound`` = 2/η, ``gd_ratio`` = λ_max(H)·η/2. ``kernel_built``: K was
    built once and shared by every figure."""

    n: int
    k: int
    p: int
    dtype: str
    loss: float
    loss_convention: str
    lr_given: float | None
    lr: float | None
    batch_size: int | None
    sampling: str | None
    c: float | None
    curvature: Curvature
    alignment: Alignment
    stability: Stability | None
    frobenius_bound: float | None
    frobenius_ratio: float | None
    gd_bound: float | None
    gd_ratio: float | None
    kernel_built: bool
    seconds: float
    notes: tuple[str, ...] = field(default=())

    def summary_rows(self) -> list[tuple[str, str, str]]:
        """(section, figure, value) rows of the key figures, for a table."""
        cv, al, st = self.curvature, self.alignment, self.stability

        def pm(value: float, se: float) -> str:
            return f"{value:.6g}" + (f" ± {se:.2g}" if se and se > 0 else "")

        rows = [
            ("problem", "n, k, p", f"{self.n}, {self.k}, {self.p} ({self.dtype})"),
            ("problem", "L = (1/2n) Σ ||f(x_i) − y_i||²", f"{self.loss:.6g}"),
            ("curvature", "||H||_F", pm(cv.hessian_frobenius, cv.hessian_frobenius_stderr)),
            ("curvature", "λ_max(H)", pm(cv.sharpness, cv.sharpness_error_bound)),
            ("curvature", "Tr H", pm(cv.trace, cv.trace_stderr)),
            ("curvature", "||G||_F (Gauss–Newton)", pm(cv.gauss_newton_frobenius, cv.gauss_newton_frobenius_stderr)),
            ("curvature", "route", f"{cv.method} ({'exact' if cv.exact else 'estimated'})"),
            ("alignment", "μ = Tr(ΣG)/(2L||G||_F²)", pm(al.mu, al.mu_stderr)),
            ("alignment", "μ_H = Tr(ΣH)/(2L||H||_F²)", pm(al.mu_hessian, al.mu_hessian_stderr)),
            ("alignment", "μ_inf (uniform)", f"{al.mu_inf:.6g}"),
        ]
        if self.lr is not None:
            rows.append(("stability", "η (on L)", f"{self.lr:.6g}"))
            rows.append(("stability", "GD bound 2/η; λ_max·η/2", f"{self.gd_bound:.6g}; {self.gd_ratio:.4g}"))
        if self.batch_size is not None and self.c is not None:
            rows.append(("stability", "B, sampling, c", f"{self.batch_size}, {self.sampling}, {self.c:.4g}"))
            rows.append(
                (
                    "stability",
                    "Frobenius bound sqrt(1/(cμ))/η; ||H||_F / bound",
                    f"{self.frobenius_bound:.6g}; {self.frobenius_ratio:.4g}",
                )
            )
        if st is not None:
            rows.append(("stability", "ρ(T); stable", f"{st.rho:.8g}; {'yes' if st.stable else 'NO'}"))
            rows.append(("stability", "η*(B) exact; η/η*", f"{st.critical_lr:.6g}; {st.lr_ratio:.4g}"))
            if st.certificates is not None:
                for e in st.certificates.entries:
                    verdict = "UNSTABLE" if e.unstable_at_lr else "ok"
                    kind = "necessary" if e.necessary else "not necessary"
                    rows.append(("certificates", e.name, f"η ≤ {e.bound_lr:.6g}: {verdict} ({kind})"))
        return rows


def _kernel_fits(problem: Problem, rtol: float) -> bool:
    return "kernel" in plan_method(problem, rtol, at_minimum=True).estimated_seconds


def analyze(
    model: nn.Module,
    X: Tensor,
    Y: Tensor,
    lr: float | None = None,
    batch_size: int | None = None,
    sampling: str = "with_replacement",
    *,
    loss: str = "half_mse",
    dtype: torch.dtype | None = None,
    method: str = "auto",
    rtol: float = 1e-2,
    at_minimum: bool = False,
    seed: int = 0,
    top: int = 5,
) -> Analysis:
    """Curvature, alignment and stability of ``model`` on (X, Y) at its current parameters (module docstring).

    Args:
        lr: learning rate in the ``loss`` convention (optional; needed for every bound).
        batch_size, sampling: SGD's batch size and scheme (``"with_replacement"`` or ``"without_replacement"``;
            B = n without replacement is GD); with ``lr`` they give ρ(T), η*(B) and the certificates.
        loss: ``"half_mse"`` (L) or ``"torch_mse"`` (PyTorch's MSELoss, = (2/k)·L).
        dtype: measure in this dtype (default: the model's); the user's model is never modified.
        method, rtol, seed, top: as in :func:`sgdstab.curvature` (``rtol``: target relative standard error of
            the stochastic figures).
        at_minimum: assert that θ is a global minimum (H = G; the kernel route is then exact).
    """
    start = time.perf_counter()
    if batch_size is not None and lr is None:
        raise AnalysisError("a batch size needs a learning rate: pass lr (--lr) too")
    problem = Problem(model, X, Y, loss=loss, dtype=dtype)
    notes: list[str] = []
    kernel = Kernel.from_problem(problem) if _kernel_fits(problem, rtol) else None
    if kernel is None:
        notes.append("the NTK does not fit in memory: matrix-free figures, no μ_inf, ρ(T) or η*")
    curv = curvature(problem, method=method, rtol=rtol, seed=seed, top=top, at_minimum=at_minimum, kernel=kernel)
    align = alignment(
        problem,
        method="kernel" if kernel is not None else "matrix_free",
        hessian=True,
        rtol=rtol,
        seed=seed,
        curvature_result=curv,
        kernel=kernel,
    )
    loss_value = float(problem.loss())
    eta = problem.half_mse_lr(lr) if lr is not None else None
    figures: dict[str, Any] = dict.fromkeys(
        ("c", "stability", "frobenius_bound", "frobenius_ratio", "gd_bound", "gd_ratio")
    )
    if eta is not None:
        figures["gd_bound"] = 2 / eta
        figures["gd_ratio"] = curv.sharpness * eta / 2
    if eta is not None and batch_size is not None:
        c = noise_scale(batch_size, problem.n, sampling)
        mu = align.mu
        bound = math.sqrt(1 / (c * mu)) / eta if c > 0 and mu > 0 else math.inf
        figures |= {"c": c, "frobenius_bound": bound, "frobenius_ratio": curv.hessian_frobenius / bound}
        if kernel is not None:
            st = stability(kernel, eta, batch_size, sampling, mu=mu if math.isfinite(mu) and mu > 0 else None)
            scale = 0.5 * float((problem.Y * problem.Y).sum()) / problem.n
            if loss_value > 100 * torch.finfo(problem.dtype).eps * max(scale, 1e-30):
                notes.append(
                    f"θ is not a global minimum (L = {loss_value:.3g}): ρ(T), η* and the certificates linearize SGD "
                    "with the Gauss–Newton kernel"
                )
            figures["stability"] = st
    return Analysis(
        n=problem.n,
        k=problem.k,
        p=problem.p,
        dtype=str(problem.dtype).replace("torch.", ""),
        loss=loss_value,
        loss_convention=problem.loss_convention,
        lr_given=None if lr is None else float(lr),
        lr=eta,
        batch_size=None if batch_size is None else int(batch_size),
        sampling=sampling if batch_size is not None else None,
        kernel_built=kernel is not None,
        curvature=curv,
        alignment=align,
        seconds=time.perf_counter() - start,
        notes=tuple(notes) + curv.notes + align.notes,
        **figures,
    )


__all__ = ["Analysis", "AnalysisError", "analyze"]
