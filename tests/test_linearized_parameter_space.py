"""Linearized SGD in parameter space (the actual model, through JVP/VJP) equals the residual-space dynamics
u_{t+1} = (I − (η/B) K D_ξ) u_t that the stability engine analyses (THEORY.md §4)."""

from __future__ import annotations

import pytest
import torch
from torch.func import jvp, vjp

from references import tiny_problem
from sgdstab import ntk


def _outputs(problem, idx):
    def fn(theta):
        return problem.forward(problem.layout.unflatten(theta), problem.X[idx])

    return fn


@pytest.mark.parametrize(("kind", "k"), [("mlp", 1), ("mlp", 2), ("cnn", 3)])
@pytest.mark.parametrize("sampling", ["with_replacement", "without_replacement"])
def test_parameter_space_iterates_map_onto_residual_space(kind, k, sampling):
    P = tiny_problem(kind, k, "minimum")  # targets = outputs: a global minimum, H_i = J_iᵀJ_i
    n, lr, B = P.n, 0.3, 3
    K = ntk(P).matrix
    J = P.jacobian()
    gen = torch.Generator().manual_seed(7)
    delta = torch.randn(P.p, dtype=torch.float64, generator=gen)
    u = J @ delta
    for _ in range(12):
        if sampling == "with_replacement":
            idx = torch.randint(n, (B,), generator=gen)
        else:
            idx = torch.randperm(n, generator=gen)[:B]
        # parameter space: δ ← δ − (η/B) Σ_{i∈batch} J_iᵀ J_i δ, one JVP and one VJP of the model
        fn = _outputs(P, idx)
        _, Jd = jvp(fn, (P.theta,), (delta,))
        _, pullback = vjp(fn, P.theta)
        delta = delta - (lr / B) * pullback(Jd)[0]
        # residual space: u ← u − (η/B) K D_ξ u, ξ_i = multiplicity of sample i in the batch
        xi = torch.bincount(idx, minlength=n).to(torch.float64).repeat_interleave(k)
        u = u - (lr / B) * (K @ (xi * u))
        torch.testing.assert_close(J @ delta, u, rtol=1e-10, atol=1e-12)
    assert u.norm() > 0
