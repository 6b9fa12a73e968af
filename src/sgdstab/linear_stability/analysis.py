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
step on L). Every learning-rate figure (η, η*(B), GD's 2/λ_max, each certificate's bound) is reported on L *and* in
the convention the user chose (``lr_figures``: a step of ``torch.optim.SGD`` on ``nn.MSELoss`` is k/2 times the step
on L); curvature figures are of L (multiply by 2/k for MSELoss's Hessian). ``sgdstab analyze`` (the CLI) calls this
on a saved model, and ``print(analysis)`` shows the same table as the CLI.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from sgdstab.conventions import (
    check_batch_size,
    check_learning_rate,
    check_loss_convention,
    check_sampling,
    frobenius_bound,
    is_global_minimum,
    noise_scale,
    zero_predictor_loss,
)
from sgdstab.errors import AnalysisError, ProblemError
from sgdstab.kernel.kernel import Kernel
from sgdstab.kernel.ntk import ggn_kernel
from sgdstab.linear_stability.solver import Stability, stability
from sgdstab.measure.alignment import Alignment, alignment
from sgdstab.measure.curvature import Curvature, check_rtol, check_seed, curvature, plan_method
from sgdstab.problem.problem import Problem
from sgdstab.utils.results import ResultMixin


@dataclass(frozen=True)
class Analysis(ResultMixin):
    """Curvature, alignment and (with lr and batch size) stability of a model at its parameters.

    ``lr`` is the step on L (half-MSE convention; ``lr_given`` the value passed, in ``loss_convention``);
    ``frobenius_bound`` = sqrt(1/(cμ))/η (inf when c = 0, i.e. GD), ``frobenius_ratio`` = ||H||_F over it (≤ 1
    where SGD can stay, THEORY.md §5); ``gd_bound`` = 2/η, ``gd_ratio`` = λ_max(H)·η/2. ``kernel_built``: K was
    built once and shared by every figure. ``lr_figures``: every learning-rate figure — ``lr``, ``gd_max_lr`` =
    2/λ_max(H), ``critical_lr`` = η*(B) and ``certificate:<name>`` — by convention: ``{"half_mse": on L}``, and
    for ``torch_mse`` also ``"torch_mse"``, the step of ``torch.optim.SGD`` on ``nn.MSELoss``: k/2 times the one
    on L (MSELoss = (2/k)·L). ``lr_in_convention(name)`` reads the latter.

    Example:
        >>> import torch, sgdstab
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
        >>> X = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
        >>> a = sgdstab.analyze(model, X, model(X).detach(), lr=0.1, batch_size=4)
        >>> a.kernel_built, a.stability.batch_size, a.lr_in_convention("lr")
        (True, 4, 0.1)
        >>> [row[1] for row in a.summary_rows()][:3]
        ['n, k, p', 'L = (1/2n) Σ ||f(x_i) − y_i||²', '||H||_F']
    """

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
    lr_figures: dict[str, dict[str, float]] = field(default_factory=dict)

    def lr_in_convention(self, name: str) -> float:
        """The learning-rate figure ``name`` (a key of ``lr_figures``) in ``loss_convention``, the user's."""
        return self.lr_figures[name][self.loss_convention]

    @property
    def _lr_on_loss(self) -> bool:
        """Whether the user's learning rate is the one on L itself (half-MSE, or nn.CrossEntropyLoss = L)."""
        return self.loss_convention in ("half_mse", "cross_entropy")

    def _lr_text(self, name: str) -> str:
        figures = self.lr_figures[name]
        if self._lr_on_loss:
            return f"{figures['half_mse']:.6g}"
        return f"{figures[self.loss_convention]:.6g} on {self.loss_convention} (= {figures['half_mse']:.6g} on L)"

    def __str__(self) -> str:
        """The table ``sgdstab analyze`` prints (``summary_rows`` under a header), then the notes."""
        units = (
            f"on L ({'half-MSE' if self.loss_convention == 'half_mse' else self.loss_convention})"
            if self._lr_on_loss
            else f"on {self.loss_convention} (yours) and on L"
        )
        rows = [("section", "figure", "value"), *self.summary_rows()]
        widths = [max(len(row[i]) for row in rows) for i in range(2)]
        lines = [f"sgdstab analysis: learning rates {units}; {self.seconds:.1f} s"]
        section = ""
        for part, figure, value in rows:
            lines.append(f"  {(part if part != section else '').ljust(widths[0])}  {figure.ljust(widths[1])}  {value}")
            section = part
        lines += [f"note: {note}" for note in self.notes]
        return "\n".join(lines)

    @property
    def _noise(self) -> str:
        """What stands for 2L in μ: 2L itself, or the mean output noise scale s of a loss of THEORY.md §9."""
        return "2L" if self.loss_convention in ("half_mse", "torch_mse") else "s"

    def summary_rows(self) -> list[tuple[str, str, str]]:
        """(section, figure, value) rows of the key figures, for a table."""
        cv, al, st = self.curvature, self.alignment, self.stability

        def pm(value: float, se: float) -> str:
            return f"{value:.6g}" + (f" ± {se:.2g}" if se and se > 0 else "")

        rows = [
            ("problem", "n, k, p", f"{self.n}, {self.k}, {self.p} ({self.dtype})"),
            ("problem", _LOSS_LABELS.get(self.loss_convention, "L"), f"{self.loss:.6g}"),
            ("curvature", "||H||_F", pm(cv.hessian_frobenius, cv.hessian_frobenius_stderr)),
            ("curvature", "λ_max(H)", pm(cv.sharpness, cv.sharpness_error_bound)),
            ("curvature", "Tr H", pm(cv.trace, cv.trace_stderr)),
            ("curvature", "||G||_F (Gauss–Newton)", pm(cv.gauss_newton_frobenius, cv.gauss_newton_frobenius_stderr)),
            ("curvature", "route", f"{cv.method} ({'exact' if cv.exact else 'estimated'})"),
            ("alignment", f"μ = Tr(ΣG)/({self._noise}||G||_F²)", pm(al.mu, al.mu_stderr)),
            ("alignment", f"μ_H = Tr(ΣH)/({self._noise}||H||_F²)", pm(al.mu_hessian, al.mu_hessian_stderr)),
            ("alignment", "μ_inf (uniform)", f"{al.mu_inf:.6g}"),
        ]
        if self.lr is not None:
            unit = "on L" if self._lr_on_loss else f"your {self.loss_convention} step"
            rows.append(("stability", f"η ({unit})", self._lr_text("lr")))
            rows.append(
                (
                    "stability",
                    "GD: λ_max·η/2 (≤ 1); largest η 2/λ_max",
                    f"{self.gd_ratio:.4g}; {self._lr_text('gd_max_lr')}",
                )
            )
        if self.batch_size is not None and self.c is not None:
            rows.append(("stability", "B, sampling, c", f"{self.batch_size}, {self.sampling}, {self.c:.4g}"))
            rows.append(
                (
                    "stability",
                    "Frobenius bound sqrt(1/(cμ))/η; ||H||_F / it",
                    f"{self.frobenius_bound:.6g}; {self.frobenius_ratio:.4g}",
                )
            )
        if st is not None:
            rows.append(("stability", "ρ(T); stable", f"{st.rho:.8g}; {'yes' if st.stable else 'NO'}"))
            rows.append(("stability", "η*(B) exact; η/η*", f"{self._lr_text('critical_lr')}; {st.lr_ratio:.4g}"))
            if st.certificates is not None:
                for e in st.certificates.entries:
                    verdict = "UNSTABLE" if e.unstable_at_lr else "ok"
                    kind = "necessary" if e.necessary else "not necessary"
                    rows.append(
                        ("certificates", e.name, f"η ≤ {self._lr_text('certificate:' + e.name)}: {verdict} ({kind})")
                    )
        return rows


def _kernel_fits(problem: Problem, rtol: float) -> bool:
    return "kernel" in plan_method(problem, rtol, at_minimum=True).estimated_seconds


def _problem(model: nn.Module, X: Tensor, Y: Tensor, loss: str, dtype: torch.dtype | None) -> Problem:
    try:
        return Problem(model, X, Y, loss=loss, dtype=dtype)
    except ProblemError as exc:  # images into a model that starts with nn.Linear: name the fix
        if isinstance(X, Tensor) and X.ndim > 2 and "shapes cannot be multiplied" in str(exc):
            raise ProblemError(
                f"{exc} (a model whose first layer is nn.Linear takes flat inputs: pass X.reshape(len(X), -1))"
            ) from None
        raise


def check_analysis_arguments(
    lr: float | None,
    batch_size: int | None,
    sampling: str,
    loss: str,
    rtol: float,
    seed: int,
    at_minimum: bool | None,
    n: int | None = None,
) -> None:
    """Every argument of :func:`analyze` that can be checked before any work (the CLI calls it before loading
    anything): a typed one-line error for the first bad one."""
    if lr is not None:
        check_learning_rate(lr)
    if batch_size is not None:
        if lr is None:
            raise AnalysisError("a batch size needs a learning rate: pass lr (--lr) too")
        check_batch_size(batch_size, n if n is not None else 2**62)  # B ≤ n once n is known
    check_sampling(sampling)
    check_loss_convention(loss)
    check_rtol(rtol)
    check_seed(seed)
    if at_minimum is not None and not isinstance(at_minimum, bool):
        raise AnalysisError(f"at_minimum must be True, False or None (decide), got {at_minimum!r}")


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
    at_minimum: bool | None = None,
    seed: int = 0,
    top: int = 5,
) -> Analysis:
    """Curvature, alignment and stability of ``model`` on (X, Y) at its current parameters (module docstring).

    Args:
        model: any ``nn.Module`` mapping a batch of X to (batch, k) outputs (not modified).
        X, Y: the data, Y of shape (n, k) (one-hot for classes; ``sgdstab.load_dataset`` gives both).
        lr: learning rate in the ``loss`` convention (optional; needed for every bound).
        batch_size, sampling: SGD's batch size and scheme (``"with_replacement"`` or ``"without_replacement"``;
            B = n without replacement is GD); with ``lr`` they give ρ(T), η*(B) and the certificates.
        loss: ``"half_mse"`` (L) or ``"torch_mse"`` (PyTorch's MSELoss, = (2/k)·L); learning-rate figures are
            reported in both.
        dtype: measure in this dtype (default: the model's); the user's model is never modified.
        method, rtol, seed, top: as in :func:`sgdstab.curvature` (``rtol``: target relative standard error of
            the stochastic figures).
        at_minimum: ``None`` (default) lets :func:`sgdstab.curvature` and :func:`sgdstab.alignment` decide the
            regime; ``True`` asserts θ is a global minimum (H = G), ``False`` estimates H from its products.

    Returns:
        An :class:`Analysis`; ``print`` it for the table ``sgdstab analyze`` shows.

    Raises:
        AnalysisError, ConventionError, MethodError: a bad argument, before any work.
        ProblemError: model and data do not fit (shapes, non-finite values, batch-dependent outputs).

    Example:
        >>> import torch, sgdstab
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        >>> X = torch.randn(32, 4, generator=torch.Generator().manual_seed(0))
        >>> a = sgdstab.analyze(model, X, model(X).detach(), lr=0.1, batch_size=4, loss="torch_mse")
        >>> a.lr_figures["lr"]  # k = 1: a step η on MSELoss is a step 2η on L
        {'half_mse': 0.2, 'torch_mse': 0.1}
    """
    start = time.perf_counter()
    n = len(X) if isinstance(X, Tensor) and X.ndim > 0 else None
    check_analysis_arguments(lr, batch_size, sampling, loss, rtol, seed, at_minimum, n=n)
    problem = _problem(model, X, Y, loss, dtype)
    notes: list[str] = []
    kernel = ggn_kernel(problem) if _kernel_fits(problem, rtol) else None
    if kernel is None:
        notes.append("the NTK does not fit in memory: matrix-free figures, no μ_inf, ρ(T) or η*")
    curv, align = _measure(problem, kernel, method, rtol, seed, top, at_minimum)
    loss_value = float(problem.loss())
    notes += _loss_notes(loss_value, problem)
    eta = problem.half_mse_lr(lr) if lr is not None else None
    sgd = _sgd_figures(problem, kernel, curv, align, loss_value, eta, batch_size, sampling)
    scale = problem.loss_scale  # (loss in the user's convention) = scale·L: a step η on it is scale·η on L
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
        notes=tuple(notes + sgd.notes) + curv.notes + align.notes,
        lr_figures={name: {"half_mse": v, problem.loss_convention: v / scale} for name, v in sgd.on_loss.items()},
        c=sgd.c,
        stability=sgd.stability,
        frobenius_bound=sgd.frobenius_bound,
        frobenius_ratio=sgd.frobenius_ratio,
        gd_bound=sgd.gd_bound,
        gd_ratio=sgd.gd_ratio,
    )


_LOSS_LABELS = {
    "half_mse": "L = (1/2n) Σ ||f(x_i) − y_i||²",
    "torch_mse": "L = (1/2n) Σ ||f(x_i) − y_i||²",
    "cross_entropy": "L = (1/n) Σ CE(softmax f(x_i), y_i)",
    "bce_with_logits": "L = (1/n) Σ_i Σ_c BCE(σ(f_c(x_i)), y_ic)",
}


def _measure(
    problem: Problem, kernel: Kernel | None, method: str, rtol: float, seed: int, top: int, at_minimum: bool | None
) -> tuple[Curvature, Alignment]:
    """Curvature, then the alignment from it, both through K when it was built."""
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
    return curv, align


def _loss_notes(loss_value: float, problem: Problem) -> list[str]:
    """A loss no better than the zero predictor's is most likely the wrong model or preprocessing: say so."""
    zero = zero_predictor_loss(problem.Y)
    if not problem.square_loss:  # f ≡ 0: uniform predictions, log k for one-hot cross-entropy
        y = problem.Y
        zero = float(problem.output_loss.per_sample(torch.zeros_like(y), y).mean())
        if loss_value < zero:
            return []
        return [
            f"L = {loss_value:.3g} is no better than the zero predictor's (logits f ≡ 0: {zero:.3g}): is this the "
            "trained model and the data preprocessed as in training?"
        ]
    if loss_value < zero:
        return []
    return [
        f"L = {loss_value:.3g} is no better than predicting zero (½·mean||y||² = {zero:.3g}): is this the trained "
        "model (its architecture, activation and weights) and the data preprocessed as in training?"
    ]


@dataclass(frozen=True)
class _SgdFigures:
    """The figures that need a learning rate (and a batch size): None where not given. ``on_loss``: every
    learning-rate figure on L, by name (``lr``, ``gd_max_lr``, ``critical_lr``, ``certificate:<name>``)."""

    c: float | None = None
    stability: Stability | None = None
    frobenius_bound: float | None = None
    frobenius_ratio: float | None = None
    gd_bound: float | None = None
    gd_ratio: float | None = None
    on_loss: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _sgd_figures(
    problem: Problem,
    kernel: Kernel | None,
    curv: Curvature,
    align: Alignment,
    loss_value: float,
    eta: float | None,
    batch_size: int | None,
    sampling: str,
) -> _SgdFigures:
    """GD's line with a learning rate; with a batch size too, the Frobenius bound and (K built) ρ(T), η* and the
    certificates."""
    if eta is None:
        return _SgdFigures()
    gd = {"gd_bound": 2 / eta, "gd_ratio": curv.sharpness * eta / 2}
    on_loss = {"lr": eta, "gd_max_lr": 2 / curv.sharpness if curv.sharpness > 0 else math.inf}
    if batch_size is None:
        return _SgdFigures(**gd, on_loss=on_loss)
    c = noise_scale(batch_size, problem.n, sampling)
    mu = align.mu
    bound = frobenius_bound(eta, c, mu)
    frob = {"c": c, "frobenius_bound": bound, "frobenius_ratio": curv.hessian_frobenius / bound}
    if kernel is None:
        return _SgdFigures(**gd, **frob, on_loss=on_loss)
    st = stability(kernel, eta, batch_size, sampling, mu=mu if math.isfinite(mu) and mu > 0 else None)
    notes = []
    if not problem.square_loss:
        notes.append(
            f"{problem.loss_convention} has no finite global minimum: ρ(T), η* and the certificates are those of "
            "SGD's linearization at θ with the GGN kernel K_A (THEORY.md §9)"
        )
    elif not is_global_minimum(loss_value, problem.Y, problem.dtype):
        notes.append(
            f"θ is not a global minimum (L = {loss_value:.3g}): ρ(T), η* and the certificates linearize SGD "
            "with the Gauss–Newton kernel"
        )
    on_loss["critical_lr"] = st.critical_lr
    if st.certificates is not None:
        on_loss |= {f"certificate:{e.name}": e.bound_lr for e in st.certificates.entries}
    return _SgdFigures(**gd, **frob, stability=st, on_loss=on_loss, notes=notes)


__all__ = ["Analysis", "AnalysisError", "analyze", "check_analysis_arguments"]
