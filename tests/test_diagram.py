"""The stability diagram (THEORY.md §6.5): exact η*(B) against every certificate on random kernels."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from sgdstab.conventions import noise_scale
from sgdstab.errors import ConventionError, StabilityError
from sgdstab.kernel.kernel import Kernel
from sgdstab.linear_stability.diagram import StabilityDiagram, default_batch_sizes, stability_diagram
from sgdstab.linear_stability.solver import critical_learning_rate, stability

pytestmark = pytest.mark.usefixtures("one_thread")


CASES = [(20, 1, "with_replacement", 0), (24, 2, "without_replacement", 1), (30, 1, "without_replacement", 2)]


def random_kernel(n: int, k: int, p: int, seed: int, spread: float = 1.0) -> torch.Tensor:
    """K = A Aᵀ, A (nk × p) random with heterogeneous per-sample row scales exp(spread·N(0,1))."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n * k, p, dtype=torch.float64, generator=g)
    scale = torch.exp(spread * torch.randn(n, 1, 1, dtype=torch.float64, generator=g)).expand(n, k, 1)
    A = A * scale.reshape(n * k, 1)
    return A @ A.T


_CACHE: dict[tuple, tuple[Kernel, StabilityDiagram]] = {}


def diagram(n: int, k: int, sampling: str, seed: int) -> tuple[Kernel, StabilityDiagram]:
    key = (n, k, sampling, seed)
    if key not in _CACHE:
        ker = Kernel(random_kernel(n, k, 2 * n * k, seed), n, k)
        _CACHE[key] = (ker, stability_diagram(ker, sampling=sampling))
    return _CACHE[key]


@pytest.mark.parametrize("case", CASES)
def test_critical_lr_matches_a_direct_call_and_grows_with_batch_size(case):
    ker, d = diagram(*case)
    fresh = Kernel(ker.K.clone(), ker.n, ker.k)  # a separate kernel: no shared cache
    for b, eta in zip(d.batch_sizes, d.critical_lr, strict=True):
        assert eta == pytest.approx(critical_learning_rate(fresh, b, d.sampling), rel=1e-9)
    crit = np.asarray(d.critical_lr)
    assert np.all(np.diff(crit) >= -1e-9 * crit[1:])
    assert d.c == tuple(noise_scale(b, d.n, d.sampling) for b in d.batch_sizes)


@pytest.mark.parametrize("case", CASES)
def test_every_necessary_certificate_lies_on_or_above_the_exact_threshold(case):
    _, d = diagram(*case)
    assert sum(d.necessary.values()) >= 4 and d.necessary["wu_ma_e"] is False
    for name, ok in d.necessary.items():
        if not ok:
            continue
        ratios = np.asarray(d.ratio(name))
        assert np.all(ratios >= 1 - 1e-9), (name, ratios)
    assert not any("a bug" in note for note in d.notes)


def test_the_key_check_can_fail_on_the_not_necessary_wu_ma_e_box():
    # the same ratio test as above rejects Wu–Ma–E here: its s-part dips below the exact η* (THEORY.md §5)
    _, d = diagram(24, 2, "without_replacement", 1)
    assert min(d.ratio("wu_ma_e")) < 0.995


def test_gd_line_is_exact_at_full_batch_without_replacement():
    ker, d = diagram(24, 2, "without_replacement", 1)
    lam = float(torch.linalg.eigvalsh(ker.K)[-1])
    assert d.batch_sizes[0] == 1 and d.batch_sizes[-1] == ker.n
    assert d.critical_lr[-1] == pytest.approx(2 * ker.n / lam, rel=1e-8)
    assert d.bounds["gd"][-1] == pytest.approx(2 * ker.n / lam, rel=1e-10)
    assert d.lambda_max == pytest.approx(lam / ker.n, rel=1e-10)
    assert math.isinf(d.bounds["frobenius_mu_inf"][-1])  # c = 0: the noise certificates allow every η


@pytest.mark.parametrize("case", CASES)
def test_stable_grid_and_verification_points_agree_with_rho(case):
    ker, d = diagram(*case)
    assert d.verified >= 4 and d.disagreements == 0, d.notes
    assert len(d.stable) == len(d.lrs) and all(len(row) == len(d.batch_sizes) for row in d.stable)
    assert any(any(row) for row in d.stable) and not all(all(row) for row in d.stable)
    # independent check on points straddling the boundary: ρ ≤ 1 exactly where η ≤ η*
    for j in (0, len(d.batch_sizes) // 2):
        b, eta = d.batch_sizes[j], d.critical_lr[j]
        for factor, expect in ((0.97, True), (1.03, False)):
            st = stability(ker, factor * eta, b, d.sampling, with_certificates=False)
            assert st.stable is expect, (b, factor, st.rho)


def test_defaults_span_the_diagram():
    _, d = diagram(30, 1, "without_replacement", 2)
    assert d.batch_sizes == default_batch_sizes(30)
    assert 8 <= len(d.batch_sizes) <= 12 and len(set(d.batch_sizes)) == len(d.batch_sizes)
    assert len(d.lrs) == 40 and list(d.lrs) == sorted(d.lrs)
    assert d.lrs[0] == pytest.approx(0.5 * min(d.critical_lr))
    finite = [v for row in d.bounds.values() for v in row if math.isfinite(v)]
    assert d.lrs[-1] == pytest.approx(2 * max(finite))
    assert default_batch_sizes(5) == (1, 2, 3, 4, 5)


def test_table_markdown_and_json():
    _, d = diagram(20, 1, "with_replacement", 0)
    rows = d.table()
    assert len(rows) == len(d.batch_sizes)
    names = list(d.bounds)
    expected = {"B", "c", "critical_lr", *names, *(f"{name}/critical_lr" for name in names)}
    assert set(rows[0]) == expected
    for row, b in zip(rows, d.batch_sizes, strict=True):
        assert row["B"] == b
        assert row["mulayoff_michaeli/critical_lr"] == pytest.approx(row["mulayoff_michaeli"] / row["critical_lr"])
    md = d.to_markdown()
    assert md.count("\n| ") == len(rows) + 1 and "wu_ma_e †" in md and "not a necessary condition" in md
    assert '"critical_lr"' in d.to_json()


def test_custom_grid_and_measured_mu():
    ker, _ = diagram(20, 1, "with_replacement", 0)
    d = stability_diagram(ker, lrs=[1e-3, 1e-4], batch_sizes=[4, 1, 4], mu=0.3, verify=0)
    assert d.batch_sizes == (1, 4) and d.lrs == (1e-4, 1e-3) and d.verified == 0
    assert d.necessary["frobenius_mu"] is False and len(d.bounds["frobenius_mu"]) == 2


def test_plot_writes_a_png_and_leaves_no_temp_file(tmp_path):
    _, d = diagram(20, 1, "with_replacement", 0)
    path = tmp_path / "diagram.png"
    fig = d.plot(path)
    assert path.stat().st_size > 10_000
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(tmp_path) == ["diagram.png"]
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "Wu–Ma–E box (not necessary)" in labels and "exact stable region" in labels
    wme = next(line for line in ax.get_lines() if line.get_label() == "Wu–Ma–E box (not necessary)")
    assert wme.get_linestyle() == "--"


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"lrs": []}, StabilityError),
        ({"lrs": [1e-3, -1.0]}, ConventionError),
        ({"lrs": [0.0]}, ConventionError),
        ({"batch_sizes": [0]}, ConventionError),
        ({"batch_sizes": [21]}, ConventionError),
        ({"batch_sizes": []}, StabilityError),
        ({"sampling": "poisson"}, ConventionError),
        ({"verify": -1}, StabilityError),
    ],
)
def test_bad_input_raises_one_line_errors(kwargs, error):
    ker, _ = diagram(20, 1, "with_replacement", 0)
    with pytest.raises(error) as info:
        stability_diagram(ker, **kwargs)
    assert "\n" not in str(info.value) and str(info.value)


def test_zero_kernel_has_no_diagram():
    with pytest.raises(StabilityError, match="K = 0"):
        stability_diagram(torch.zeros(4, 4))


def test_markdown_ratios_keep_their_significant_figures_and_plot_labels_are_mathtext(tmp_path):
    """Every ratio cell is bound/η* to 3 significant figures with the zeros kept (GD's 2/λ_max at B = n, which
    equals η* to rounding, reads 1.00×, not 1×); the figure's labels are mathtext, and they parse (savefig)."""
    from sgdstab.utils.text import fmt

    _, d = diagram(24, 2, "without_replacement", 1)
    md = d.to_markdown()
    rows = [line for line in md.splitlines() if line.startswith("| ") and line[2].isdigit()]
    for line, row in zip(rows, d.table(), strict=True):
        cells = [c.strip() for c in line.strip("| ").split(" | ")]
        for name, cell in zip(d.bounds, cells[3:], strict=True):
            ratio = row[f"{name}/critical_lr"]
            assert cell == f"{fmt(row[name])} ({fmt(ratio, 3)}×)"
            if math.isfinite(ratio) and ratio != float(f"{ratio:.3g}"):
                assert len(cell.split("(")[1].rstrip("×)").replace(".", "").replace("-", "").lstrip("0")) >= 3
    fig = d.plot(tmp_path / "d.png")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert r"GD: $2/\lambda_{\max}(H)$" in labels and r"Frobenius (WWS22, $\mu_{\inf}$)" in labels
    assert r"$\lambda_{\max}(H)$" in fig.axes[0].get_title()
