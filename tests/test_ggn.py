"""Cross-entropy and BCE through the generalized Gauss–Newton (THEORY.md §9), against dense float64 references
built by plain autograd loops (A_i by autograd's Hessian of the loss in the outputs, not the closed form), exhaustive
batch enumeration and closed-form expectations."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import sgdstab
from sgdstab.errors import MethodError, PolishError, ProblemError
from sgdstab.kernel import figures as kf

N, K_OUT = 6, 3


def _model(k: int = K_OUT, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, k)).double()


def _inputs(n: int = N) -> torch.Tensor:
    return torch.randn(n, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))


def _labels(n: int = N, k: int = K_OUT) -> torch.Tensor:
    return torch.randint(0, k, (n,), generator=torch.Generator().manual_seed(2))


def _sample_loss(loss: str, f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """ℓ(f, y) for one sample by torch's own loss modules (the reference's definition of the loss)."""
    if loss == "cross_entropy":
        return F.cross_entropy(f[None], y[None], reduction="sum")
    return F.binary_cross_entropy_with_logits(f, y, reduction="sum")


class Reference:
    """H, J, A_i, G, Σ, the mean output noise scale s and μ by plain autograd (no sgdstab code)."""

    def __init__(self, model: nn.Module, X: torch.Tensor, Y: torch.Tensor, loss: str) -> None:
        params = list(model.parameters())
        names = [name for name, _ in model.named_parameters()]
        shapes = [p.shape for p in params]
        n = len(X)
        theta = torch.cat([p.detach().reshape(-1) for p in params])

        def unflat(t: torch.Tensor) -> dict[str, torch.Tensor]:
            out, i = {}, 0
            for name, s in zip(names, shapes, strict=True):
                out[name] = t[i : i + s.numel()].view(s)
                i += s.numel()
            return out

        def loss_of(t: torch.Tensor) -> torch.Tensor:
            f = torch.func.functional_call(model, unflat(t), (X,))
            return sum(_sample_loss(loss, f[i], Y[i]) for i in range(n)) / n

        self.loss = float(loss_of(theta))
        self.H = torch.autograd.functional.hessian(loss_of, theta)
        J_rows, A, grads, scales = [], [], [], []
        for i in range(n):
            f = model(X[i : i + 1])[0]
            Ji = torch.stack(
                [
                    torch.cat([g.reshape(-1) for g in torch.autograd.grad(f[c], params, retain_graph=True)])
                    for c in range(len(f))
                ]
            )
            fi = f.detach().clone().requires_grad_(True)
            li = _sample_loss(loss, fi, Y[i])
            (e,) = torch.autograd.grad(li, fi)
            Ai = torch.autograd.functional.hessian(lambda z, i=i: _sample_loss(loss, z, Y[i]), f.detach())
            J_rows.append(Ji)
            A.append(Ai)
            grads.append(Ji.T @ e)
            scales.append(float(e @ torch.linalg.pinv(Ai, hermitian=True) @ e))
        self.J = torch.cat(J_rows)
        self.A = torch.stack(A)
        self.H_i = [Ji.T @ Ai @ Ji for Ji, Ai in zip(J_rows, A, strict=True)]
        self.G = sum(self.H_i) / n
        gs = torch.stack(grads)
        self.grads = gs
        self.Sigma = gs.T @ gs / n - torch.outer(gs.mean(0), gs.mean(0))
        self.s = sum(scales) / n
        self.mu = float(torch.trace(self.Sigma @ self.G)) / (self.s * float((self.G**2).sum()))


def _problem(loss: str = "cross_entropy", k: int = K_OUT) -> tuple[sgdstab.Problem, Reference]:
    model, X = _model(k), _inputs()
    if loss == "cross_entropy":
        Y = _labels(k=k)
        ref_Y = Y
    else:
        Y = torch.rand(N, k, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
        ref_Y = Y
    return sgdstab.Problem(model, X, Y, loss=loss), Reference(model, X, ref_Y, loss)


# ------------------------------------------------------------------------------------------------ the problem
@pytest.mark.parametrize("loss", ["cross_entropy", "bce_with_logits"])
def test_loss_gradient_and_per_sample_gradients_match_torch(loss):
    problem, ref = _problem(loss)
    assert float(problem.loss()) == pytest.approx(ref.loss, rel=1e-13)
    assert torch.allclose(problem.gradient(), ref.grads.mean(0), atol=1e-14)
    assert torch.allclose(problem.per_sample_gradients(), ref.grads, atol=1e-14)


def test_cross_entropy_is_torchs_mean_reduction_and_bce_is_k_times_torchs():
    model, X, y = _model(), _inputs(), _labels()
    ce = sgdstab.Problem(model, X, y, loss="cross_entropy")
    assert float(ce.loss()) == pytest.approx(float(nn.CrossEntropyLoss()(model(X), y).detach()), rel=1e-14)
    soft = torch.softmax(torch.randn(N, K_OUT, dtype=torch.float64), 1)
    ce_soft = sgdstab.Problem(model, X, soft, loss="cross_entropy")
    assert float(ce_soft.loss()) == pytest.approx(float(nn.CrossEntropyLoss()(model(X), soft).detach()), rel=1e-14)
    target = torch.rand(N, K_OUT, dtype=torch.float64)
    bce = sgdstab.Problem(model, X, target, loss="bce_with_logits")
    assert float(bce.loss()) == pytest.approx(K_OUT * float(nn.BCEWithLogitsLoss()(model(X), target)), rel=1e-14)
    # a step η on nn.BCEWithLogitsLoss() (mean over n·k) is a step η/k on L
    assert bce.half_mse_lr(0.3) == pytest.approx(0.3 / K_OUT)
    assert ce.half_mse_lr(0.3) == 0.3


@pytest.mark.parametrize("loss", ["cross_entropy", "bce_with_logits"])
def test_output_derivatives_match_autograd(loss):
    problem, ref = _problem(loss)
    assert torch.allclose(problem.output_hessians(), ref.A, atol=1e-14)
    S = problem.output_hessian_roots()
    assert torch.allclose(S @ S, ref.A, atol=1e-14)
    u, e = problem.kernel_residuals(), problem.output_gradients()
    assert torch.allclose((S @ u[:, :, None])[:, :, 0], e, atol=1e-13)  # A^{1/2} u = e: ∇ℓ_i = (A^{1/2}J_i)ᵀ u_i
    assert float((u * u).sum()) / N == pytest.approx(ref.s, rel=1e-11)  # ||u_i||² = e_iᵀ A_i^+ e_i


def test_residuals_are_refused_for_cross_entropy():
    problem, _ = _problem()
    with pytest.raises(ProblemError, match="output_gradients"):
        problem.residuals()


# ------------------------------------------------------------------------------------------------ curvature
@pytest.mark.parametrize("loss", ["cross_entropy", "bce_with_logits"])
@pytest.mark.parametrize("method", ["dense", "kernel"])
def test_curvature_matches_the_dense_hessian_and_ggn(loss, method):
    problem, ref = _problem(loss)
    c = sgdstab.curvature(problem, method=method, rtol=1e-3, max_matvecs=20_000)
    G_eig, H_eig = torch.linalg.eigvalsh(ref.G), torch.linalg.eigvalsh(ref.H)
    assert c.gauss_newton_frobenius == pytest.approx(float(torch.linalg.matrix_norm(ref.G)), rel=1e-11)
    assert c.gauss_newton_trace == pytest.approx(float(torch.trace(ref.G)), rel=1e-11)
    assert c.gauss_newton_sharpness == pytest.approx(float(G_eig[-1]), rel=1e-10)
    s2 = torch.linalg.eigvalsh(sum(Hi @ Hi for Hi in ref.H_i) / N - ref.G @ ref.G)[-1]
    assert c.nonuniformity == pytest.approx(float(s2) ** 0.5, rel=1e-8)
    assert c.sharpness == pytest.approx(float(H_eig[-1]), rel=1e-8, abs=3 * c.sharpness_error_bound)
    se = max(c.hessian_frobenius_stderr, 1e-12)
    assert abs(c.hessian_frobenius - float(torch.linalg.matrix_norm(ref.H))) <= 5 * se + 1e-9
    assert abs(c.trace - float(torch.trace(ref.H))) <= 5 * max(c.trace_stderr, 1e-12) + 1e-9
    assert not c.at_minimum


def test_matrix_free_products_use_the_output_hessians():
    problem, ref = _problem()
    V = torch.randn(problem.p, 3, dtype=torch.float64)
    from sgdstab.operators.products import gauss_newton_matmat, noise_covariance_matmat, residual_curvature_matmat

    assert torch.allclose(gauss_newton_matmat(problem, V), ref.G @ V, atol=1e-13)
    assert torch.allclose(noise_covariance_matmat(problem, V), ref.Sigma @ V, atol=1e-13)
    assert torch.allclose(residual_curvature_matmat(problem, V), (ref.H - ref.G) @ V, atol=1e-12)


def test_ggn_kernel_is_the_weighted_ntk():
    problem, ref = _problem()
    KA = sgdstab.ggn_kernel(problem)
    S = torch.stack([torch.from_numpy(__import__("scipy").linalg.sqrtm(a.numpy()).real) for a in ref.A])
    JA = torch.cat([S[i] @ ref.J[i * K_OUT : (i + 1) * K_OUT] for i in range(N)])
    assert torch.allclose(KA.matrix, JA @ JA.T, atol=1e-12)
    assert KA.rank == N * (K_OUT - 1)  # softmax: A_i 1 = 0
    assert any("GGN kernel" in note for note in KA.notes)
    # a plain NTK given where the GGN kernel is expected is refused, not used
    with pytest.raises(MethodError, match="ggn_kernel"):
        sgdstab.curvature(problem, method="kernel", kernel=sgdstab.ntk(problem))
    with pytest.raises(MethodError, match=r"no finite|global minimum"):
        sgdstab.curvature(problem, at_minimum=True)


# ------------------------------------------------------------------------------------------------ alignment
@pytest.mark.parametrize("loss", ["cross_entropy", "bce_with_logits"])
def test_alignment_matches_the_dense_definition(loss):
    problem, ref = _problem(loss)
    a = sgdstab.alignment(problem, method="kernel", hessian=True)
    assert a.mu == pytest.approx(ref.mu, rel=1e-10)
    assert a.tr_sigma_g == pytest.approx(float(torch.trace(ref.Sigma @ ref.G)), rel=1e-10)
    assert a.trace_sigma == pytest.approx(float(torch.trace(ref.Sigma)), rel=1e-10)
    assert a.loss == pytest.approx(ref.loss, rel=1e-13)
    mu_h = float(torch.trace(ref.Sigma @ ref.H)) / (ref.s * float((ref.H**2).sum()))
    assert a.mu_hessian == pytest.approx(mu_h, rel=1e-6)
    mf = sgdstab.alignment(problem, method="matrix_free", hessian=False, rtol=1e-3)
    assert mf.tr_sigma_g == pytest.approx(a.tr_sigma_g, rel=1e-10)  # exact on that route too
    assert abs(mf.mu - a.mu) <= 5 * mf.mu_stderr + 1e-10


def test_alignment_with_labels_drawn_from_the_model_has_the_closed_form_expectation():
    """E_y Tr(ΣG) = (1 − 1/n)||G||_F² and E_y s = k − 1 when y_i ~ softmax(f_i) (THEORY.md §9): measured over
    draws of labels, each through the exact kernel formulas."""
    torch.manual_seed(5)
    model, X = _model(k=4), torch.randn(10, 4, dtype=torch.float64)
    problem = sgdstab.Problem(model, X, torch.zeros(10, dtype=torch.long), loss="cross_entropy")
    f = problem.outputs()
    p = torch.softmax(f, 1)
    KA = sgdstab.ggn_kernel(problem).matrix
    n, k = problem.n, problem.k
    G_frob2 = float((KA**2).sum()) / n**2
    gen = torch.Generator().manual_seed(7)
    traces, scales = [], []
    for _ in range(3000):
        y = F.one_hot(torch.multinomial(p, 1, generator=gen)[:, 0], k).double()
        u = problem.output_loss.kernel_residuals(f, y)
        nf = kf.noise_figures(KA, u, n, k)
        traces.append(nf.tr_sigma_g)
        scales.append(2 * nf.loss)
    traces_t, scales_t = torch.tensor(traces), torch.tensor(scales)
    se_t = float(traces_t.std()) / math.sqrt(len(traces))
    se_s = float(scales_t.std()) / math.sqrt(len(scales))
    assert abs(float(traces_t.mean()) - (1 - 1 / n) * G_frob2) < 4 * se_t
    assert abs(float(scales_t.mean()) - (k - 1)) < 4 * se_s


# ------------------------------------------------------------------------------------------------ stability
def _enumerated_rho(ref: Reference, eta: float, B: int, sampling: str) -> float:
    """ρ of E_batch[(I − η/B Σ H_i) ⊗ (I − η/B Σ H_i)] on range(G), batches enumerated."""
    values, vectors = torch.linalg.eigh(ref.G)
    Q = vectors[:, values > 1e-12 * values[-1]]
    Hq = [Q.T @ Hi @ Q for Hi in ref.H_i]
    r = Q.shape[1]
    if sampling == "with_replacement":
        batches = list(itertools.product(range(N), repeat=B))
    else:
        batches = list(itertools.combinations(range(N), B))
    T = torch.zeros(r * r, r * r, dtype=torch.float64)
    for batch in batches:
        M = torch.eye(r, dtype=torch.float64) - eta / B * sum(Hq[i] for i in batch)
        T += torch.kron(M, M)
    T /= len(batches)
    return float(torch.linalg.eigvals(T).abs().max())


@pytest.mark.parametrize("sampling", ["with_replacement", "without_replacement"])
def test_stability_matches_the_enumerated_operator(sampling):
    problem, ref = _problem()
    eta_star = sgdstab.critical_learning_rate(problem, 2, sampling)
    for eta in (0.5 * eta_star, 1.5 * eta_star):
        st = sgdstab.stability(problem, eta, 2, sampling)
        assert st.rho == pytest.approx(_enumerated_rho(ref, eta, 2, sampling), rel=1e-9)
        assert st.stable == (eta < eta_star)
        assert any("no finite global minimum" in note for note in st.notes)
    assert (
        _enumerated_rho(ref, eta_star * (1 - 1e-6), 2, sampling)
        < 1
        < _enumerated_rho(ref, eta_star * (1 + 1e-6), 2, sampling)
    )


def test_analyze_and_train_run_on_cross_entropy():
    model, X, y = _model(), _inputs(), _labels()
    a = sgdstab.analyze(model, X, y, lr=0.3, batch_size=2, loss="cross_entropy")
    assert a.stability is not None and a.stability.critical_lr > 0
    assert any("no finite global minimum" in note for note in a.notes)
    assert "CE" in str(a)
    problem = sgdstab.Problem(model, X, y, loss="cross_entropy")
    ref = Reference(model, X, y, "cross_entropy")
    theta0 = problem.theta.clone()
    history = sgdstab.train(problem, lr=0.5, batch_size=N, sampling="without_replacement", steps=1, progress=False)
    # B = n without replacement is GD on L: one step is θ − η∇L with torch's own gradient of the mean cross-entropy
    assert torch.allclose(problem.theta, theta0 - 0.5 * ref.grads.mean(0), atol=1e-14)
    assert history.losses[0] == pytest.approx(ref.loss, rel=1e-14)
    with pytest.raises(PolishError, match="square loss"):
        sgdstab.polish_to_minimum(problem)


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    ("Y", "match"),
    [
        (torch.tensor([0, 1, 2, 3, 0, 1]), "outside 0..2"),
        (torch.tensor([0, 1, -1, 2, 0, 1]), "outside 0..2"),
        (torch.full((N, K_OUT), 0.5, dtype=torch.float64), "sums to 1.5"),
        (torch.tensor([[1.5, -0.5, 0.0]] * N, dtype=torch.float64), "negative"),
        (torch.tensor([0.5, 1, 2, 0, 1, 2]), "non-integer"),
        (torch.zeros(N, 4, dtype=torch.float64), "4 columns"),
    ],
)
def test_bad_labels_are_one_line_errors(Y, match):
    with pytest.raises(ProblemError, match=match):
        sgdstab.Problem(_model(), _inputs(), Y, loss="cross_entropy")


def test_probabilities_as_outputs_warn_and_bad_logits_or_widths_are_refused():
    probs = nn.Sequential(_model(), nn.Softmax(dim=1))
    with pytest.warns(UserWarning, match="expects logits"):
        sgdstab.Problem(probs, _inputs(), _labels(), loss="cross_entropy")
    with pytest.raises(ProblemError, match="k ≥ 2"):
        sgdstab.Problem(_model(k=1), _inputs(), torch.zeros(N, dtype=torch.long), loss="cross_entropy")
    with pytest.raises(ProblemError, match=r"\[0, 1\]"):
        sgdstab.Problem(_model(), _inputs(), torch.full((N, K_OUT), 2.0, dtype=torch.float64), loss="bce_with_logits")
    huge = _model()
    with torch.no_grad():
        huge[2].bias.fill_(float("inf"))
    with pytest.raises(ProblemError, match="non-finite"):
        sgdstab.Problem(huge, _inputs(), _labels(), loss="cross_entropy")
