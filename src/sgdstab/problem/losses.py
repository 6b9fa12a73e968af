"""Per-sample losses ℓ(f, y) of the outputs f ∈ R^k, and the output derivatives the generalized Gauss–Newton needs.

THEORY.md §9: for a loss convex in the outputs, A_i = ∇²_f ℓ(f_i, y_i) (k × k, PSD), the GGN is
``G = (1/n) Σ_i J_iᵀ A_i J_i`` and every kernel identity of §2–§4 holds with the weighted kernel
``K_A = A^{1/2} K A^{1/2}`` in place of K and the *kernel residuals* ``u_i = A_i^{1/2} A_i^+ e_i`` in place of
``r_i``, where ``e_i = ∇_f ℓ_i`` (then ``∇ℓ_i = J_iᵀ e_i = (A_i^{1/2} J_i)ᵀ u_i``, because e_i ∈ range(A_i)).
``||u_i||² = e_iᵀ A_i^+ e_i`` is the *output noise scale*: ``||r_i||²`` for the square loss, the χ² divergence
``Σ_c y_ic²/p_ic − 1`` of the label from the prediction for softmax cross-entropy.

Each loss is a small stateless object; :class:`sgdstab.Problem` holds one (``problem.output_loss``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["BCE_WITH_LOGITS", "CROSS_ENTROPY", "SQUARE", "OutputLoss", "output_loss"]


@dataclass(frozen=True)
class OutputLoss:
    """A per-sample loss of the outputs. ``square``: the half squared error (A = I, u = r = e)."""

    name: str

    @property
    def square(self) -> bool:
        return self.name == "square"

    # ------------------------------------------------------------------ values
    def per_sample(self, f: Tensor, y: Tensor) -> Tensor:
        """ℓ(f_i, y_i) for a batch, shape (m,); differentiable in f."""
        if self.name == "square":
            r = f - y
            return 0.5 * (r * r).sum(-1)
        if self.name == "cross_entropy":
            return torch.logsumexp(f, dim=-1) - (y * f).sum(-1)
        return (F.softplus(f) - y * f).sum(-1)  # bce_with_logits: Σ_c log(1 + e^f) − y f, stable for any f

    def output_gradient(self, f: Tensor, y: Tensor) -> Tensor:
        """e_i = ∇_f ℓ(f_i, y_i), shape (m, k): f − y, softmax(f) − y, or sigmoid(f) − y."""
        if self.name == "square":
            return f - y
        if self.name == "cross_entropy":
            return torch.softmax(f, dim=-1) - y
        return torch.sigmoid(f) - y

    def output_hessian(self, f: Tensor) -> Tensor:
        """A_i = ∇²_f ℓ(f_i, ·) (independent of y for these losses), shape (m, k, k)."""
        m, k = f.shape
        if self.name == "square":
            return torch.eye(k, dtype=f.dtype, device=f.device).expand(m, k, k).clone()
        if self.name == "cross_entropy":
            p = torch.softmax(f, dim=-1)
            return torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        s = torch.sigmoid(f)
        return torch.diag_embed(s * (1 - s))

    def output_hessian_sqrt(self, f: Tensor) -> Tensor:
        """A_i^{1/2} (symmetric PSD square root), shape (m, k, k). Softmax: from the eigendecomposition of A_i with
        eigenvalues below k·eps·max clamped to zero, so the constant direction (A_i 1 = 0) stays exactly null."""
        m, k = f.shape
        if self.name == "square":
            return torch.eye(k, dtype=f.dtype, device=f.device).expand(m, k, k).clone()
        if self.name == "bce_with_logits":
            s = torch.sigmoid(f)
            return torch.diag_embed(torch.sqrt(s * (1 - s)))
        values, vectors = torch.linalg.eigh(self.output_hessian(f))
        floor = k * torch.finfo(f.dtype).eps * values[:, -1:].clamp(min=0)
        roots = torch.where(values > floor, values.clamp(min=0).sqrt(), torch.zeros_like(values))
        return (vectors * roots[:, None, :]) @ vectors.transpose(1, 2)

    def kernel_residuals(self, f: Tensor, y: Tensor) -> Tensor:
        """u_i = A_i^{1/2} A_i^+ e_i, shape (m, k), from closed forms of A_i^+ e_i (no pseudo-inverse):

        - square: u = r;
        - softmax: A w = p − y for w = 1 − y/p (p > 0), so A^+ e = w − mean(w)·1 (the part orthogonal to A's null
          vector 1), and ||u||² = eᵀw = Σ_c y_c²/p_c − 1;
        - sigmoid (A diagonal): u = (s − y)/sqrt(s(1 − s)).
        """
        if self.name == "square":
            return f - y
        if self.name == "bce_with_logits":
            s = torch.sigmoid(f)
            # s(1 − s) = σ(f)σ(−f) computed without cancellation; it underflows only for |f| ≳ 700 (float64)
            return (s - y) / torch.sqrt(torch.sigmoid(f) * torch.sigmoid(-f))
        p = torch.softmax(f, dim=-1)
        w = 1 - y / p
        w = w - w.mean(-1, keepdim=True)
        return (self.output_hessian_sqrt(f) @ w[:, :, None])[:, :, 0]


SQUARE = OutputLoss("square")
CROSS_ENTROPY = OutputLoss("cross_entropy")
BCE_WITH_LOGITS = OutputLoss("bce_with_logits")


def output_loss(convention: str) -> OutputLoss:
    """The per-sample loss of a loss convention (``half_mse`` and ``torch_mse`` are both the square loss)."""
    if convention == "cross_entropy":
        return CROSS_ENTROPY
    if convention == "bce_with_logits":
        return BCE_WITH_LOGITS
    return SQUARE
