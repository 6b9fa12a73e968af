"""The NTK Gram matrix against a dense Jacobian from autograd loops; both assembly routes; memory refusals."""

from __future__ import annotations

import pytest
import torch

from references import dense, tiny_problem
from sgdstab import MemoryBudgetError, ntk
from sgdstab.kernel.ntk import ntk_memory


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("k", [1, 3])
def test_ntk_equals_dense_JJt(kind, k):
    P = tiny_problem(kind, k, "off")
    D = dense(P)
    K_ref = D.J @ D.J.T
    torch.testing.assert_close(ntk(P).matrix, K_ref, rtol=1e-12, atol=1e-12)
    # the bounded-memory route, with an unequal last block (n = 7, blocks of 3)
    torch.testing.assert_close(ntk(P, chunk_size=3).matrix, K_ref, rtol=1e-12, atol=1e-12)
    assert torch.equal(ntk(P).matrix, ntk(P).matrix.T)


def test_ntk_layout_is_sample_major():
    P = tiny_problem("mlp", 3, "off")
    K = ntk(P).matrix
    J = dense(P).J
    i, c, j, d = 2, 1, 5, 0
    assert K[i * 3 + c, j * 3 + d].item() == pytest.approx(float(J[i * 3 + c] @ J[j * 3 + d]), rel=1e-12)


def test_ntk_refuses_when_K_cannot_fit(monkeypatch):
    P = tiny_problem("mlp", 3, "off", n=40)
    monkeypatch.setenv("SGDSTAB_MEMORY_LIMIT", "20K")  # K alone is 120² · 8 B = 115 KiB
    with pytest.raises(MemoryBudgetError, match="method='matrix_free'"):
        ntk(P)


def test_ntk_falls_back_to_blocks_when_J_does_not_fit(monkeypatch):
    P = tiny_problem("mlp", 3, "off", n=40, chunk_size=40)
    mem = ntk_memory(P)
    # room for K and small Jacobian blocks, not for K and all of J
    limit = int((mem["kernel"] + mem["jacobian"] // 2) / 0.8)
    monkeypatch.setenv("SGDSTAB_MEMORY_LIMIT", str(limit))
    torch.testing.assert_close(ntk(P, method="jacobian").matrix, dense(P).J @ dense(P).J.T, rtol=1e-12, atol=1e-12)
