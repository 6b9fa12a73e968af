"""The tracker's figure: the sharpness measures against the optimizer's edge of stability over steps, the loss, and
(where the kernel figures were measured) η against the exact η*(B, β) and ||G||_F against the Frobenius bound."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def _column(rows: Sequence[Mapping[str, float]], name: str) -> np.ndarray:
    return np.array([float(r.get(name, math.nan)) for r in rows], dtype=float)


def _any(values: np.ndarray) -> bool:
    return bool(np.isfinite(values).any())


def _edge_panel(ax: Any, rows: Sequence[Mapping[str, float]], preconditioned: bool) -> None:
    step = _column(rows, "step")
    name = "preconditioned_sharpness" if preconditioned else "sharpness"
    label = "λ_max(P⁻¹H)" if preconditioned else "λ_max(H)"
    ax.plot(step, _column(rows, name), color="C0", lw=1.6, label=label)
    if preconditioned:
        ax.plot(step, _column(rows, "sharpness"), color="C0", lw=0.8, ls=":", label="λ_max(H)")
    bs, se = _column(rows, "batch_sharpness"), _column(rows, "batch_sharpness_stderr")
    if _any(bs):
        ax.plot(step, bs, color="C1", lw=1.4, label="batch sharpness")
        ax.fill_between(step, bs - 2 * se, bs + 2 * se, color="C1", alpha=0.2, lw=0)
    ss = _column(rows, "step_sharpness")
    if _any(ss):
        ax.plot(step, ss, ".", color="C2", ms=3, alpha=0.6, label="step sharpness")
    ax.step(step, _column(rows, "threshold"), where="post", color="k", ls="--", lw=1.2, label="edge of stability")
    ax.set_ylabel("curvature")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)


def _loss_panel(ax: Any, rows: Sequence[Mapping[str, float]]) -> None:
    step = _column(rows, "step")
    loss, train = _column(rows, "loss"), _column(rows, "train_loss")
    ax.plot(step, loss, color="C3", lw=1.4, label="loss (evaluation subset)")
    if _any(train):
        ax.plot(step, train, color="C3", lw=0.8, alpha=0.5, label="training loss (as passed)")
    positive = np.concatenate([loss[loss > 0], train[train > 0]])
    if positive.size and positive.max() / positive.min() > 20:
        ax.set_yscale("log")
    ax.set_ylabel("loss")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)


def _kernel_panel(ax: Any, rows: Sequence[Mapping[str, float]]) -> None:
    kept = [r for r in rows if math.isfinite(float(r.get("critical_lr", math.nan)))]
    step = _column(kept, "step")
    ratio = _column(kept, "lr") / _column(kept, "critical_lr")
    ax.plot(step, ratio, "o-", color="C4", ms=3, label="η / η*(B, β)")
    frob, bound = _column(kept, "gauss_newton_frobenius"), _column(kept, "frobenius_bound")
    with np.errstate(divide="ignore", invalid="ignore"):
        ax.plot(step, frob / bound, "s-", color="C5", ms=3, label="||G||_F / Frobenius bound")
    ax.axhline(1.0, color="k", ls="--", lw=1.0)
    ax.set_yscale("log")
    ax.set_ylabel("ratio (> 1: unstable)")
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)


def track_figure(rows: Sequence[Mapping[str, float]], meta: Mapping[str, Any]) -> Any:
    """The figure of a tracked run (a matplotlib ``Figure``; nothing drawn when there are no rows)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    kernel = _any(_column(rows, "critical_lr"))
    panels = 3 if kernel else 2
    fig = Figure(figsize=(7.5, 2.6 * panels + 0.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(panels, 1, sharex=True, squeeze=False)[:, 0]
    if rows:
        _edge_panel(axes[0], rows, bool(meta.get("preconditioned")))
        _loss_panel(axes[1], rows)
        if kernel:
            _kernel_panel(axes[2], rows)
    axes[-1].set_xlabel("step")
    fig.suptitle(str(meta.get("title", "sgdstab tracker")), fontsize=10)
    fig.tight_layout()
    return fig
