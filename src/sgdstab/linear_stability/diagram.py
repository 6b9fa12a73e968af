"""The stability diagram (THEORY.md §6 item 5): for one minimum, the exact stable region in the (η, B) plane.

For each batch size B the exact mean-square critical learning rate ``η*(B)`` (:func:`sgdstab.critical_learning_rate`,
no bisection) is drawn with every certificate's bound ``η(B)`` (:func:`sgdstab.certificate_grid`):
the Frobenius certificate, the Wu–Ma–E box, the Mulayoff–Michaeli bound, the trace bound and the GD line 2/λ_max(H).
A certificate marked necessary can never lie below ``η*(B)``; its ratio ``bound/η*`` is its slack.

Conventions: ``η`` is the step on the half-MSE loss ``L = (1/(2n)) Σ_i ||r_i||²``; the SGD noise scale is
``c = 1/B`` with replacement and ``c = (n − B)/(B(n − 1))`` without (0 at B = n, i.e. GD).

The stable grid is ``η ≤ η*(B)``. ρ(T) need not be monotone in η in general, so a few grid points on both sides of
each boundary are also checked with :func:`sgdstab.stability` (``verified`` counts them; any disagreement between
``ρ ≤ 1`` and ``η ≤ η*`` is written to ``notes``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from sgdstab.conventions import check_sampling, noise_scale
from sgdstab.errors import StabilityError
from sgdstab.kernel.kernel import Kernel
from sgdstab.kernel.ntk import KernelSource, as_kernel
from sgdstab.linear_stability.certificates import CertificateGrid, certificate_grid
from sgdstab.linear_stability.checks import check_batch_sizes, check_lrs, check_non_negative_int
from sgdstab.linear_stability.solver import critical_learning_rate, stability
from sgdstab.utils import files
from sgdstab.utils.results import ResultMixin
from sgdstab.utils.text import fmt

DEFAULT_NUM_BATCH_SIZES = 10
DEFAULT_NUM_LRS = 40
VERIFY_BATCH_SIZES = 3  # batch sizes (first, middle, last) whose boundary is checked with stability()
_BOUNDARY_RTOL = 1e-6  # grid points this close to η* are not used for verification (ρ ≈ 1 within solver tolerance)

LABELS: dict[str, str] = {  # plain text, for reports and tables
    "frobenius_mu_inf": "Frobenius (WWS22, μ_inf)",
    "frobenius_mu": "Frobenius (WWS22, measured μ)",
    "gd": "GD: 2/λ_max(H)",
    "wu_ma_e": "Wu–Ma–E box",
    "mulayoff_michaeli": "Mulayoff–Michaeli",
    "trace": "trace",
}
PLOT_LABELS: dict[str, str] = {  # the same in matplotlib mathtext, for figure legends
    "frobenius_mu_inf": r"Frobenius (WWS22, $\mu_{\inf}$)",
    "frobenius_mu": r"Frobenius (WWS22, measured $\mu$)",
    "gd": r"GD: $2/\lambda_{\max}(H)$",
    "wu_ma_e": "Wu–Ma–E box",
    "mulayoff_michaeli": "Mulayoff–Michaeli",
    "trace": "trace",
}


def default_batch_sizes(n: int, count: int = DEFAULT_NUM_BATCH_SIZES) -> tuple[int, ...]:
    """About ``count`` log-spaced distinct integers from 1 to n, always including 1 and n."""
    if n <= count:
        return tuple(range(1, n + 1))
    values = np.unique(np.round(np.geomspace(1, n, count)).astype(int))
    return tuple(int(b) for b in sorted({1, n, *values.tolist()}))


@dataclass(frozen=True)
class StabilityDiagram(ResultMixin):
    """The exact stable region of one minimum in the (η, B) plane, with every certificate's bound.

    ``critical_lr[j]`` = η*(B_j); ``bounds[name][j]`` = the largest η certificate ``name`` allows at B_j (``inf``
    where it allows every η, e.g. the Frobenius and trace bounds at c = 0); ``necessary[name]``: a proven necessary
    condition (bound ≥ η*). ``c[j]``: the noise scale. ``stable[i][j]``: ``lrs[i] ≤ η*(B_j)``. ``verified``: grid
    points checked with :func:`sgdstab.stability`; ``disagreements`` of them had ρ ≤ 1 differ from η ≤ η*
    (described in ``notes``). ``lambda_max`` = λ_max(H) = λ_max(K)/n. η is on L = (1/(2n)) Σ ||r||².

    Example:
        >>> import torch, sgdstab
        >>> K = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> d = sgdstab.stability_diagram(K, [0.5, 1.2], [1, 2], "without_replacement", verify=0)
        >>> [round(e, 12) for e in d.critical_lr], d.stable  # rows: lrs, columns: batch sizes (B = n: GD)
        ([1.0, 1.333333333333], ((True, True), (False, True)))
        >>> [round(r, 12) for r in d.ratio("gd")]  # the GD line's slack over η*
        [1.333333333333, 1.0]
    """

    batch_sizes: tuple[int, ...]
    critical_lr: tuple[float, ...]
    bounds: dict[str, tuple[float, ...]]
    necessary: dict[str, bool]
    lrs: tuple[float, ...]
    stable: tuple[tuple[bool, ...], ...]
    sampling: str
    n: int
    k: int
    c: tuple[float, ...]
    lambda_max: float
    verified: int
    disagreements: int
    notes: tuple[str, ...] = ()

    def ratio(self, name: str) -> tuple[float, ...]:
        """``bounds[name][j] / critical_lr[j]`` per batch size (≥ 1 for a necessary certificate: its slack)."""
        return tuple(_div(b, e) for b, e in zip(self.bounds[name], self.critical_lr, strict=True))

    def table(self) -> list[dict[str, Any]]:
        """One row per batch size: ``B``, ``c``, ``critical_lr``, each bound and each ratio ``<name>/critical_lr``."""
        rows = []
        for j, b in enumerate(self.batch_sizes):
            row: dict[str, Any] = {"B": b, "c": self.c[j], "critical_lr": self.critical_lr[j]}
            for name in self.bounds:
                row[name] = self.bounds[name][j]
            for name in self.bounds:
                row[f"{name}/critical_lr"] = _div(self.bounds[name][j], self.critical_lr[j])
            rows.append(row)
        return rows

    def to_markdown(self) -> str:
        """The table as Markdown: bounds and, in brackets, their ratio to η* (not-necessary ones marked †)."""

        names = list(self.bounds)
        head = ["B", "c", "η*"] + [f"{name}{'' if self.necessary[name] else ' †'}" for name in names]
        lines = [
            f"Stability diagram: n = {self.n}, k = {self.k}, sampling = {self.sampling}, "
            f"λ_max(H) = {fmt(self.lambda_max)}; η on L = (1/2n) Σ ||r||²; entries: bound (bound/η*)",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "|".join("---:" for _ in head) + "|",
        ]
        for row in self.table():
            cells = [str(row["B"]), fmt(row["c"]), fmt(row["critical_lr"])]
            cells += [f"{fmt(row[name])} ({fmt(row[f'{name}/critical_lr'], 3)}×)" for name in names]
            lines.append("| " + " | ".join(cells) + " |")
        if not all(self.necessary.values()):
            lines += ["", "† not a necessary condition for mean-square stability: it may lie below η*."]
        if self.notes:
            lines += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines)

    def plot(self, path: str | os.PathLike[str] | None = None, ax: Any = None) -> Any:
        """Draw the diagram (x = B, y = η, both log); save a PNG atomically when ``path`` is given; return the
        figure."""
        import matplotlib
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        if ax is None:  # a bare Agg figure: no pyplot state, no global backend switch
            fig = Figure(figsize=(10.0, 6.0), dpi=110)
            FigureCanvasAgg(fig)
            ax = fig.add_subplot(1, 1, 1)
        else:
            fig = ax.figure
        bs = np.asarray(self.batch_sizes, dtype=float)
        crit = np.asarray(self.critical_lr, dtype=float)
        finite = [v for v in (*self.lrs, *crit) if math.isfinite(v) and v > 0]
        lo = min(finite) if finite else 1e-3
        ax.fill_between(bs, lo * 1e-3, crit, color="tab:blue", alpha=0.18, linewidth=0, label="exact stable region")
        ax.plot(bs, crit, color="black", linewidth=2.4, marker="o", markersize=4, label="exact η*(B): ρ(T) = 1")
        styles = {
            "frobenius_mu_inf": ("tab:red", "-"),
            "frobenius_mu": ("tab:pink", "-."),
            "gd": ("tab:gray", "-"),
            "wu_ma_e": ("tab:orange", "--"),
            "mulayoff_michaeli": ("tab:green", "-"),
            "trace": ("tab:purple", "-"),
        }
        colors = iter(matplotlib.rcParams["axes.prop_cycle"].by_key()["color"])
        for name, values in self.bounds.items():
            y = np.asarray(values, dtype=float)
            y = np.where(np.isfinite(y) & (y > 0), y, np.nan)
            if np.all(np.isnan(y)):
                continue
            color, style = styles.get(name, (next(colors), "-"))
            label = PLOT_LABELS.get(name, name)
            if not self.necessary[name]:
                style = "--" if style == "-" else style
                label += " (not necessary)"
            width = 1.4 if name == "gd" else 1.8
            ax.plot(bs, y, color=color, linestyle=style, linewidth=width, label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        drawn = list(finite)
        for values in self.bounds.values():
            drawn += [v for v in values if math.isfinite(v) and v > 0]
        ax.set_ylim(min(drawn) / 1.5, max(drawn) * 1.5)
        ax.set_xlim(bs.min() / 1.15, bs.max() * 1.15)
        ax.set_xticks(bs, [str(b) for b in self.batch_sizes])
        ax.set_xticks([], minor=True)
        cdesc = "c = 1/B" if self.sampling == "with_replacement" else "c = (n−B)/(B(n−1))"
        ax.set_xlabel(f"batch size B ({self.sampling.replace('_', ' ')}, {cdesc})")
        ax.set_ylabel(r"learning rate η on $L = \frac{1}{2n}\sum_i \|r_i\|^2$")
        ax.set_title(
            f"Stability diagram: n = {self.n}, k = {self.k}, " + r"$\lambda_{\max}(H)$ = " + f"{self.lambda_max:.3g}"
        )
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, framealpha=0.9, borderaxespad=0.0)
        if path is not None:  # atomic and durable, only over a regular file (sgdstab.utils.files)
            files.write_stream(path, lambda handle: fig.savefig(handle, format="png", bbox_inches="tight"))
        return fig


def _div(a: float, b: float) -> float:
    if b > 0 and math.isfinite(b):
        return a / b
    return math.nan


def _verification_points(lrs: tuple[float, ...], critical: tuple[float, ...], count: int) -> list[tuple[int, int]]:
    """Grid points (i, j): for up to ``count`` batch sizes, the grid lr just below and just above η*(B_j)."""
    m = len(critical)
    if count <= 0 or m == 0:
        return []
    cols = sorted({round(x) for x in np.linspace(0, m - 1, min(count, m))})
    points = []
    for j in cols:
        eta = critical[j]
        usable = [i for i, lr in enumerate(lrs) if abs(lr / eta - 1) > _BOUNDARY_RTOL] if math.isfinite(eta) else []
        below = [i for i in usable if lrs[i] < eta]
        above = [i for i in usable if lrs[i] > eta]
        if below:
            points.append((below[-1], j))
        if above:
            points.append((above[0], j))
    return points


def stability_diagram(
    problem_or_kernel: KernelSource,
    lrs: Sequence[float] | None = None,
    batch_sizes: Sequence[int] | None = None,
    sampling: str = "with_replacement",
    mu: float | None = None,
    *,
    verify: int = VERIFY_BATCH_SIZES,
) -> StabilityDiagram:
    """The stability diagram of one minimum (THEORY.md §6.5): exact η*(B) and every certificate's bound per B.

    Args:
        problem_or_kernel: a :class:`~sgdstab.Problem` at a global minimum, a :class:`~sgdstab.Kernel` or a square
            symmetric PSD tensor (k = 1).
        lrs: learning rates on L; default 40 log-spaced values from 0.5·min η* to 2·max finite bound.
        batch_sizes: default about 10 log-spaced integers from 1 to n (1 and n included).
        sampling: ``"with_replacement"`` or ``"without_replacement"``.
        mu: a measured alignment for the heuristic ``frobenius_mu`` line.
        verify: number of batch sizes whose boundary is checked with :func:`~sgdstab.stability` (the grid points
            just below and just above η*).

    Returns:
        The :class:`StabilityDiagram`.

    Raises:
        ConventionError: a bad learning rate, batch size or sampling scheme.
        StabilityError: a bad kernel, ``mu`` or ``verify``; empty ``lrs`` or ``batch_sizes``; K = 0 with the
            default learning rates (no diagram to draw).

    Example:
        >>> import torch, sgdstab
        >>> d = sgdstab.stability_diagram(torch.eye(4, dtype=torch.float64), batch_sizes=[1, 4], verify=1)
        >>> d.batch_sizes, len(d.lrs), d.verified, d.disagreements
        ((1, 4), 40, 2, 0)
    """
    scheme = check_sampling(sampling)
    verify = check_non_negative_int(verify, "verify")
    kernel = as_kernel(problem_or_kernel)
    n = kernel.n
    bs = default_batch_sizes(n) if batch_sizes is None else check_batch_sizes(batch_sizes, n)
    given_lrs = None if lrs is None else check_lrs(lrs)
    critical = tuple(critical_learning_rate(kernel, b, scheme) for b in bs)
    grid_lrs = _default_lrs(kernel, bs, critical, scheme, mu) if given_lrs is None else given_lrs
    grid = certificate_grid(kernel, grid_lrs, bs, scheme, mu=mu)
    stable = tuple(tuple(bool(lr <= e) for e in critical) for lr in grid_lrs)
    verified, notes = _verify(kernel, grid_lrs, bs, critical, stable, scheme, verify)
    disagreements = len(notes)
    notes += _necessary_below_critical(grid, bs, critical)
    return StabilityDiagram(
        batch_sizes=bs,
        critical_lr=critical,
        bounds=dict(grid.bound_lr),
        necessary=dict(grid.necessary),
        lrs=tuple(grid_lrs),
        stable=stable,
        sampling=scheme,
        n=n,
        k=kernel.k,
        c=tuple(noise_scale(b, n, scheme) for b in bs),
        lambda_max=max(float(kernel.eigen.values[-1]), 0.0) / n,
        verified=verified,
        disagreements=disagreements,
        notes=tuple(notes),
    )


def _default_lrs(
    kernel: Kernel, bs: tuple[int, ...], critical: tuple[float, ...], scheme: str, mu: float | None
) -> tuple[float, ...]:
    """40 log-spaced learning rates from 0.5·min η* to 2·max(finite bounds and η*)."""
    probe = certificate_grid(kernel, [1.0], bs, scheme, mu=mu)
    finite_crit = [e for e in critical if math.isfinite(e) and e > 0]
    if not finite_crit:
        raise StabilityError("K = 0: every learning rate is stable and there is no diagram to draw")
    finite_bounds = [v for row in probe.bound_lr.values() for v in row if math.isfinite(v) and v > 0]
    hi = 2 * max(finite_bounds + finite_crit)
    return tuple(float(v) for v in np.geomspace(0.5 * min(finite_crit), hi, DEFAULT_NUM_LRS))


def _verify(
    kernel: Kernel,
    lrs: tuple[float, ...],
    bs: tuple[int, ...],
    critical: tuple[float, ...],
    stable: tuple[tuple[bool, ...], ...],
    scheme: str,
    verify: int,
) -> tuple[int, list[str]]:
    """Check the grid points next to each of ``verify`` boundaries with :func:`stability`: how many were checked,
    and one note per point where ``ρ ≤ 1`` and ``η ≤ η*`` disagree."""
    notes: list[str] = []
    points = _verification_points(lrs, critical, verify)
    for i, j in points:
        st = stability(kernel, lrs[i], bs[j], scheme, with_certificates=False)
        if st.stable != stable[i][j]:
            notes.append(
                f"B = {bs[j]}, η = {lrs[i]:.6g}: ρ = {st.rho:.10g} but η {'≤' if stable[i][j] else '>'} "
                f"η* = {critical[j]:.6g} (ρ is not monotone in η here)"
            )
    return len(points), notes


def _necessary_below_critical(grid: CertificateGrid, bs: tuple[int, ...], critical: tuple[float, ...]) -> list[str]:
    """A note for every necessary certificate that lies below η* somewhere (it never should: a bug)."""
    notes = []
    for name, ok in grid.necessary.items():
        if not ok:
            continue
        low = [(b, v, e) for b, v, e in zip(bs, grid.bound_lr[name], critical, strict=True) if v < e * (1 - 1e-9)]
        if low:
            b, v, e = low[0]
            notes.append(f"necessary certificate {name} lies below η* at B = {b} ({v:.6g} < {e:.6g}): a bug")
    return notes


__all__ = ["LABELS", "PLOT_LABELS", "StabilityDiagram", "default_batch_sizes", "stability_diagram"]
