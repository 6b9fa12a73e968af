"""Every stability method against a dense operator, at c = 0 (GD) and c > 0, below, at and above η* (issue #8 §7).

The reference builds T on the symmetric nk × nk matrices from :func:`sgdstab.stability_operator` applied to a basis
and takes its spectral radius with numpy (no code of the solver's eigen-routes involved); at c = 0 T is GD's and
ρ = max_a (1 − ηλ_a/n)² in closed form.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sgdstab import Kernel, critical_learning_rate, stability, stability_operator

# tol = 1e-10 (the default): the eigenvalues to about that, relative; a few units of slack for the reference's own
# rounding (a non-symmetric eig of an nk(nk+1)/2-square matrix)
RTOL = 1e-9


def _kernel(n: int, k: int, rank: int, seed: int) -> Kernel:
    g = torch.Generator().manual_seed(seed)
    J = torch.randn(n * k, rank, dtype=torch.float64, generator=g)
    J = J * torch.logspace(0, -1.5, rank, dtype=torch.float64)  # a spread spectrum, as trained nets have
    return Kernel(J @ J.T, n, k)


def _dense_rho(ker: Kernel, eta: float, batch_size: int, sampling: str) -> float:
    """Spectral radius of T on Sym(range K) — the residuals u = Jδ live in range(J) = range(K), which T keeps —
    with T materialized on the basis U (E_ab + E_ba) Uᵀ, a ≤ b, of U = K's range eigenvectors."""
    T = stability_operator(ker, eta, batch_size, sampling)
    lam, U = torch.linalg.eigh(ker.K)
    U = U[:, lam > 1e-10 * lam.max()]
    r = U.shape[1]
    ia, ib = np.triu_indices(r)
    cols = []
    for a, b in zip(ia, ib, strict=True):
        E = torch.zeros(r, r, dtype=torch.float64)
        E[a, b] = E[b, a] = 1.0
        out = U.T @ T(U @ E @ U.T) @ U
        cols.append(out.numpy()[ia, ib])
    A = np.stack(cols, 1)
    return float(np.abs(np.linalg.eigvals(A)).max())


def _gd_rho(ker: Kernel, eta: float) -> float:
    lam = torch.linalg.eigvalsh(ker.K)
    lam = lam[lam > 1e-10 * lam.max()]
    return float(((1 - eta * lam / ker.n) ** 2).max())


KERNELS = {
    "k1-full": (12, 1, 12, 0),  # n = 12, k = 1, full rank: dense and Lanczos/LOBPCG routes
    "k2-singular": (8, 2, 10, 1),  # rank 10 of nk = 16
}
SCHEMES = [("with_replacement", 3), ("without_replacement", 3), ("without_replacement", None)]  # None: B = n (GD)
FACTORS = (0.5, 0.9, 1.0, 1.1, 2.0)


@pytest.fixture(scope="module", params=list(KERNELS))
def kernel(request):
    return _kernel(*KERNELS[request.param])


@pytest.mark.parametrize(("sampling", "batch"), SCHEMES)
@pytest.mark.parametrize("method", ["dense", "lanczos", "power", "exact", "auto"])
def test_every_method_matches_the_dense_operator(kernel, method, sampling, batch):
    B = kernel.n if batch is None else batch
    eta_star = critical_learning_rate(kernel, B, sampling, method="dense")
    for factor in FACTORS:
        eta = factor * eta_star
        reference = _dense_rho(kernel, eta, B, sampling)
        if batch is None:
            assert reference == pytest.approx(_gd_rho(kernel, eta), rel=1e-12)
        st = stability(kernel, eta, B, sampling, method=method, with_certificates=False)
        assert st.exact
        if method == "power" and not st.converged:  # it may crawl on the cluster below 1; it must then say so
            assert any("did not converge" in note for note in st.notes)
            continue
        assert st.converged
        assert st.rho == pytest.approx(reference, rel=RTOL), (method, sampling, B, factor, st.rho, reference)
        assert st.critical_lr == pytest.approx(eta_star, rel=RTOL)


def test_the_lobpcg_route_below_eta_star_is_as_accurate_as_promised():
    # rank 40 > 24: the default route is Lanczos for η* and LOBPCG for ρ below η*, where ρ's top is a cluster just
    # below 1; the reference is the dense route (eigh of the packed operator, its own test above)
    ker = _kernel(40, 1, 40, 3)
    for sampling, B in (("with_replacement", 4), ("without_replacement", 8), ("without_replacement", 40)):
        eta_star = critical_learning_rate(ker, B, sampling, method="dense")
        for factor in (0.3, 0.6, 0.9, 0.99):
            dense = stability(ker, factor * eta_star, B, sampling, method="dense", with_certificates=False)
            auto = stability(ker, factor * eta_star, B, sampling, with_certificates=False)
            assert auto.converged
            assert auto.rho == pytest.approx(dense.rho, rel=1e-11), (sampling, B, factor, auto.method)
            assert math.log(auto.rho) == pytest.approx(math.log(dense.rho), rel=1e-8, abs=1e-11)
