"""Exact mean-square stability of SGD at a minimum: ρ(T) and η* by sgdstab, against bisection on ρ, a dense
eigen-solve of the (n·k)²-dimensional operator T, and sgdstab's own Galerkin approximation.

THEORY.md §4: ``T(M) = (I − ηK/n) M (I − ηK/n) + η² c [(1/n) K bdiag(M) K − (1/n²) K M K]``; θ* is mean-square
stable iff ρ(T) ≤ 1, and ``η* = 2/λ_max(C⁻¹D)`` directly. Kernels (with replacement, B = n/10, c = 1/B):

- ``ntk``: the NTK of a tanh MLP 784-32-10 at its initialization (seed 0) on the first n images of the built-in
  ``fashion-mnist-small`` (k = 10 one-hot outputs, n·k rows), float32 as sgdstab computes it;
- ``random``: K = A Aᵀ, A (n × 2n) Gaussian with per-sample row scales exp(N(0, 1)) (k = 1, heterogeneous rows).

Sections:

1. ``exact``: for n·k in the sizes, ``critical_learning_rate`` and ``stability`` (at 1.5 η*, Lanczos; at 0.9 η*,
   LOBPCG — the latter only up to n·k = 1000) on the exact route, and the same on the Galerkin route with its
   stated error and its actual error against the exact values; time, operator products, the set-up (K and its
   eigendecomposition) apart.
2. ``bisection``: η* by bisection on ρ from the bracket [0, 2/λ_max(H)], each ρ by sgdstab's own solver on the
   route ``stability`` would take (LOBPCG below η*, Lanczos above: an *optimistic* bisection that is told which
   side it is on), each evaluation capped at ``cap`` products; evaluations, products and time to reach relative
   widths 1e-2 … 1e-6, against sgdstab's direct η* (≈ 1e-10 accurate).
3. ``dense``: T materialized as an (n·k)² × (n·k)² matrix on vec(M) (Kronecker products), ``numpy.linalg.eigvals``
   for ρ and the eigenvalues of ``C⁻¹D`` (both (n·k)²-square) for η*, at small n·k (k = 1, random kernels); its
   memory and an O((n·k)⁶) projection to n·k = 1000.
4. ``large``: the Galerkin route at n·k = 10000 (random kernel, n = 10000), with its stated error, the set-up
   split (K, its eigendecomposition) and the exact route's cost projected from n·k = 3000 (products ∝ n·k·r²).

    python benchmarks/bench_stability.py [--quick] [--threads N] [--sections exact,bisection,dense,large]

A run of some sections only replaces those sections in the existing JSON (and records it under ``partial_runs``).

Writes ``benchmarks/results/stability.json`` (``stability_quick.json`` with ``--quick``). See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

import sgdstab
from sgdstab import Kernel, critical_learning_rate, noise_scale, stability

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    RESULTS_DIR,
    busy_warning,
    fmt_seconds,
    limit_blas_threads,
    machine_state,
    now,
    progress,
    set_clock,
    table,
    write_json,
)

# the module (the package re-exports a function of the same name)
S: Any = importlib.import_module("sgdstab.linear_stability.solver")
O: Any = importlib.import_module("sgdstab.linear_stability.operator")  # the forms the solvers apply

SAMPLING = "with_replacement"
FULL: dict[str, Any] = {
    "exact_sizes": [1000, 3000],
    "below_max_nk": 1000,  # stability at 0.9 η* (LOBPCG) on the exact route up to this n·k
    "bisection": {"nk": 1000, "cap": 100, "budget_s": 150.0},
    "dense_sizes": [20, 40, 60],
    "large": {"nk": 10000, "family": "random"},
}
QUICK: dict[str, Any] = {
    "exact_sizes": [200, 600],
    "below_max_nk": 600,
    "bisection": {"nk": 200, "cap": 150, "budget_s": 20.0},
    "dense_sizes": [10, 20, 30],
    "large": {"nk": 1500, "family": "random"},
}
FAMILIES = ("ntk", "random")
TARGETS = (1e-2, 1e-3, 1e-4, 1e-6)
NTK_WIDTHS = (32,)
K_OUT = 10  # fashion-mnist-small: one-hot over 10 classes


# ----------------------------------------------------------------------------------------------------- kernels
def build_kernel(family: str, nk: int) -> tuple[Kernel, dict[str, float]]:
    """The kernel of ``family`` with n·k = ``nk`` rows, and the seconds of its parts (K itself, then the
    eigendecomposition inside :class:`Kernel`)."""
    start = now()
    if family == "ntk":
        n, k = nk // K_OUT, K_OUT
        X, Y = sgdstab.load_dataset("fashion-mnist-small", n=n)
        model = sgdstab.mlp(X.shape[1:], Y.shape[1], widths=NTK_WIDTHS, activation="tanh", seed=0)
        K = sgdstab.ntk(sgdstab.Problem(model, X, Y)).matrix
    elif family == "random":
        n, k = nk, 1
        g = torch.Generator().manual_seed(0)
        A = torch.randn(n, 2 * n, dtype=torch.float64, generator=g)
        A = A * torch.exp(torch.randn(n, 1, dtype=torch.float64, generator=g))
        K = A @ A.T
    else:
        raise ValueError(family)
    t_k = now() - start
    start = now()
    ker = Kernel(K, n, k)
    return ker, {"seconds_K": t_k, "seconds_eigh": now() - start}


def batch_size(ker: Kernel) -> int:
    return max(1, ker.n // 10)


def timed_call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """``fn(*args, **kwargs)`` and its seconds on the benchmark's clock."""
    start = now()
    out = fn(*args, **kwargs)
    return out, now() - start


def rel_err(a: float, b: float) -> float:
    return abs(a - b) / abs(b) if b else math.nan


# ------------------------------------------------------------------------------------------ 1. exact vs Galerkin
def section_exact(settings: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for nk in settings["exact_sizes"]:
        for family in FAMILIES:
            progress(f"exact: {family} n·k = {nk}")
            ker, setup = build_kernel(family, nk)
            B = batch_size(ker)
            row: dict[str, Any] = {"family": family, "nk": nk, "n": ker.n, "k": ker.k, "rank": ker.rank, "B": B}
            row.update(setup)
            for method in ("exact", "galerkin"):
                eta_star, t_eta = timed_call(critical_learning_rate, ker, B, SAMPLING, method=method)
                res: dict[str, Any] = {"eta_star": eta_star, "seconds_eta_star": t_eta}
                factors = [1.5] + ([0.9] if method == "galerkin" or nk <= settings["below_max_nk"] else [])
                eta_ref = row.get("exact", {}).get("eta_star", eta_star)  # the same η for both routes
                for f in factors:
                    st, t_st = timed_call(
                        stability, ker, f * eta_ref, B, SAMPLING, method=method, with_certificates=False
                    )
                    res[f"at_{f}"] = {
                        "lr": f * eta_ref,
                        "rho": st.rho,
                        "log_rho": st.escape_rate,
                        "seconds": t_st,
                        "matvecs": st.matvecs,
                        "method": st.method,
                        "subspace_rank": st.subspace_rank,
                        "stated_error": st.error,
                        "converged": st.converged,
                    }
                    progress(
                        f"  {method} at {f} η*: ρ = {st.rho:.10g} ({st.method}, {st.matvecs} products) {t_st:.1f} s"
                    )
                row[method] = res
            ex, ga = row["exact"], row["galerkin"]
            ga["error_eta_star"] = rel_err(ga["eta_star"], ex["eta_star"])
            for key in ("at_1.5", "at_0.9"):
                if key in ex:
                    ga[key]["error_rho"] = rel_err(ga[key]["rho"], ex[key]["rho"])
                    ga[key]["error_log_rho"] = rel_err(ga[key]["log_rho"], ex[key]["log_rho"])
            rows.append(row)
    return rows


def print_exact(rows: list[dict[str, Any]]) -> None:
    print("\n=== 1. exact route vs Galerkin (with replacement, B = n/10); set-up = K + its eigendecomposition")
    head = ["kernel", "n·k", "rank", "set-up", "η* exact", "stability 1.5η*", "products", "stability 0.9η*", "products"]
    body = []
    for r in rows:
        ex = r["exact"]
        lo = ex.get("at_0.9")
        body.append(
            [
                r["family"],
                str(r["nk"]),
                str(r["rank"]),
                fmt_seconds(r["seconds_K"] + r["seconds_eigh"]),
                fmt_seconds(ex["seconds_eta_star"]),
                fmt_seconds(ex["at_1.5"]["seconds"]),
                str(ex["at_1.5"]["matvecs"]),
                fmt_seconds(lo["seconds"]) if lo else "not run",
                str(lo["matvecs"]) if lo else "",
            ]
        )
    print(table(head, body, right=tuple(range(1, len(head)))))
    head = ["kernel", "n·k", "η* Galerkin", "err η*", "stab 1.5η*", "r", "stated", "err ρ", "stab 0.9η*", "r"]
    head += ["stated", "err ρ", "err log ρ"]
    body = []
    for r in rows:
        ga = r["galerkin"]
        hi, lo = ga["at_1.5"], ga["at_0.9"]
        body.append(
            [
                r["family"],
                str(r["nk"]),
                fmt_seconds(ga["seconds_eta_star"]),
                f"{ga['error_eta_star']:.1e}",
                fmt_seconds(hi["seconds"]),
                str(hi["subspace_rank"]),
                f"{hi['stated_error']:.1e}",
                f"{hi['error_rho']:.1e}",
                fmt_seconds(lo["seconds"]),
                str(lo["subspace_rank"]),
                f"{lo['stated_error']:.1e}",
                f"{lo['error_rho']:.1e}" if "error_rho" in lo else "-",
                f"{lo['error_log_rho']:.1e}" if "error_log_rho" in lo else "-",
            ]
        )
    print("  Galerkin route (errors relative to the exact route; 'stated' is the route's own error estimate):")
    print(table(head, body, right=tuple(range(1, len(head)))))
    for r in rows:
        ex, ga = r["exact"], r["galerkin"]
        ratio = ex["at_1.5"]["seconds"] / max(ga["at_1.5"]["seconds"], 1e-9)
        line = (
            f"  {r['family']} n·k = {r['nk']}: η* = {ex['eta_star']:.6g}, ρ(1.5η*) = {ex['at_1.5']['rho']:.8g}; "
            f"time exact ÷ Galerkin (stability at 1.5η*) = {ratio:.1f}×"
        )
        if "at_0.9" in ex:
            line += f"; log ρ(0.9η*) exact {ex['at_0.9']['log_rho']:.3g}, Galerkin {ga['at_0.9']['log_rho']:.3g}"
        print(line)


# --------------------------------------------------------------------------------------------- 2. bisection on ρ
class _Capped(Exception):
    pass


class _CountingForm:
    """sgdstab's symmetric form of T̂ with its products counted, raising :class:`_Capped` past ``cap``."""

    def __init__(self, form: Any, cap: int) -> None:
        self._form, self.cap, self.count = form, cap, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._form, name)

    def bdiag(self, v: torch.Tensor) -> torch.Tensor:
        self.count += 1 if v.ndim == 1 else int(v.shape[0])
        if self.count > self.cap:
            raise _Capped
        return self._form.bdiag(v)


def rho_evaluation(form: Any, eta: float, c: float, below: bool, cap: int) -> tuple[float, int, bool]:
    """ρ(T) at ``eta`` by sgdstab's solver on the route ``stability`` takes (LOBPCG below η*, Lanczos above),
    at most ``cap`` products. Returns (ρ or nan, products, converged)."""
    counting = _CountingForm(form, cap)
    try:
        if below:
            res = S._rho_lobpcg(counting, eta, c, 1e-10, None)
        else:
            res = S._rho(counting, eta, c, "lanczos", 1e-10, None, eta_star=math.nan)
    except _Capped:
        return math.nan, cap, False
    return res.value, counting.count, bool(res.converged)


def section_bisection(settings: dict[str, Any]) -> list[dict[str, Any]]:
    cfg = settings["bisection"]
    out = []
    for family in FAMILIES:
        nk = cfg["nk"]
        progress(f"bisection: {family} n·k = {nk}")
        ker, _ = build_kernel(family, nk)
        B = batch_size(ker)
        c = noise_scale(B, ker.n, SAMPLING)
        direct: dict[str, Any] = {}
        for tol in (1e-10, 1e-6):
            value, secs = timed_call(critical_learning_rate, ker, B, SAMPLING, method="exact", tol=tol)
            st = stability(ker, 1.5 * value, B, SAMPLING, method="exact", tol=tol, with_certificates=False)
            direct[f"tol_{tol:g}"] = {"eta_star": value, "seconds": secs, "matvecs_with_rho": st.matvecs}
        eta_ref = direct["tol_1e-10"]["eta_star"]
        direct["tol_1e-06"]["error"] = rel_err(direct["tol_1e-06"]["eta_star"], eta_ref)
        form = O.symmetric_form(ker)
        lo, hi = 0.0, 2 * ker.n / float(ker.eigen.values[-1])
        evaluations, products, unconverged, seconds = 0, 0, 0, 0.0
        reached: dict[str, Any] = {}
        trace = []
        while len(reached) < len(TARGETS) and seconds < cfg["budget_s"]:
            mid = 0.5 * (lo + hi)
            below = mid < eta_ref  # the oracle: which side, hence which route (and the sign when capped)
            (rho, used, ok), secs = timed_call(rho_evaluation, form, mid, c, below, cfg["cap"])
            evaluations += 1
            products += used
            unconverged += not ok
            seconds += secs
            if ok and (rho > 1) == below and abs(rho - 1) > 1e-9:
                raise RuntimeError(f"ρ({mid:.6g}) = {rho} contradicts η* = {eta_ref:.6g}")
            trace.append({"lr_ratio": mid / eta_ref, "rho": rho, "products": used, "converged": ok, "seconds": secs})
            if below:
                lo = mid
            else:
                hi = mid
            for target in TARGETS:
                if f"{target:g}" not in reached and hi - lo <= target * hi:
                    reached[f"{target:g}"] = {
                        "evaluations": evaluations,
                        "products": products,
                        "unconverged": unconverged,
                        "seconds": seconds,
                        "error": rel_err(0.5 * (lo + hi), eta_ref),
                    }
        out.append(
            {
                "family": family,
                "nk": nk,
                "B": B,
                "cap": cfg["cap"],
                "budget_s": cfg["budget_s"],
                "bracket": [0.0, 2 * ker.n / float(ker.eigen.values[-1])],
                "direct": direct,
                "reached": reached,
                "evaluations": evaluations,
                "products": products,
                "unconverged": unconverged,
                "seconds": seconds,
                "trace": trace,
            }
        )
    return out


def print_bisection(rows: list[dict[str, Any]]) -> None:
    print(
        "\n=== 2. η* by bisection on ρ (sgdstab's ρ solver, told which side of η* it is: optimistic) against "
        "sgdstab's direct η*"
    )
    for r in rows:
        d10, d6 = r["direct"]["tol_1e-10"], r["direct"]["tol_1e-06"]
        print(
            f"  {r['family']} n·k = {r['nk']}, B = {r['B']}: direct η* = {d10['eta_star']:.10g} in "
            f"{fmt_seconds(d10['seconds'])} (tol 1e-10); {fmt_seconds(d6['seconds'])} at tol 1e-6 (error "
            f"{d6['error']:.1e}); η* and ρ together: {d10['matvecs_with_rho']} products. Bracket [0, 2/λ_max(H)] "
            f"= [0, {r['bracket'][1] / d10['eta_star']:.3g} η*]; each ρ capped at {r['cap']} products"
        )
        body = []
        for target in TARGETS:
            got = r["reached"].get(f"{target:g}")
            if got is None:
                body.append([f"{target:g}", "not reached", "", "", "", "", ""])
                continue
            body.append(
                [
                    f"{target:g}",
                    str(got["evaluations"]),
                    str(got["products"]),
                    str(got["unconverged"]),
                    fmt_seconds(got["seconds"]),
                    f"{got['seconds'] / max(d10['seconds'], 1e-9):.0f}×",
                    f"{got['error']:.1e}",
                ]
            )
        head = ["rel. width", "ρ evals", "products", "capped", "time", "÷ direct η*", "error"]
        print(table(head, body, right=(1, 2, 3, 4, 5, 6)))
        near = [t for t in r["trace"] if abs(t["lr_ratio"] - 1) < 1e-2]
        if near:
            print(
                "  products per ρ within 1% of η*: "
                + ", ".join(
                    f"{t['lr_ratio'] - 1:+.0e}: {t['products']}{'' if t['converged'] else ' (capped)'}" for t in near
                )
            )


# --------------------------------------------------------------------------------------------- 3. dense (nk)² solve
def dense_operators(K: np.ndarray, n: int, eta: float, c: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """T, C and D (k = 1) as (n²) × (n²) matrices on row-major vec(M): vec(X M Y) = (X ⊗ Yᵀ) vec(M)."""
    eye = np.eye(n)
    A = eye - eta * K / n
    KK = np.kron(K, K)
    diag_mask = eye.reshape(-1)  # bdiag(M) = diag(diag(M)) for k = 1: keep the entries (i, i) of vec(M)
    T = np.kron(A, A) + eta**2 * c * (KK * diag_mask[None, :] / n - KK / n**2)
    C = (np.kron(K, eye) + np.kron(eye, K)) / (2 * n)
    D = (1 - c) / n**2 * KK + c / n * KK * diag_mask[None, :]
    return T, C, D


def dense_rho(K: np.ndarray, n: int, eta: float, c: float) -> float:
    """ρ(T) from all (n·k)² eigenvalues of the materialized T."""
    T, _, _ = dense_operators(K, n, eta, c)
    return float(np.abs(np.linalg.eigvals(T)).max())


def dense_eta_star(K: np.ndarray, n: int, c: float) -> float:
    """η* = 2/λ_max(C⁻¹D) from all (n·k)² eigenvalues of the materialized C⁻¹D."""
    _, C, D = dense_operators(K, n, 1.0, c)
    return 2.0 / float(np.linalg.eigvals(np.linalg.solve(C, D)).real.max())


def section_dense(settings: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for nk in settings["dense_sizes"]:
        progress(f"dense: random n·k = {nk}")
        ker, _ = build_kernel("random", nk)
        B = batch_size(ker)
        c = noise_scale(B, ker.n, SAMPLING)
        eta_star, t_eta = timed_call(critical_learning_rate, ker, B, SAMPLING)
        eta = 1.5 * eta_star
        st, t_st = timed_call(stability, ker, eta, B, SAMPLING, with_certificates=False)
        K = ker.K.numpy()
        rho_d, t_rho_d = timed_call(dense_rho, K, ker.n, eta, c)
        eta_d, t_eta_d = timed_call(dense_eta_star, K, ker.n, c)
        rows.append(
            {
                "nk": nk,
                "B": B,
                "dim": nk * nk,
                "bytes_T": 8 * nk**4,
                "sgdstab": {"eta_star": eta_star, "seconds_eta_star": t_eta, "rho": st.rho, "seconds": t_st},
                "sgdstab_method": st.method,
                "dense": {"eta_star": eta_d, "seconds_eta_star": t_eta_d, "rho": rho_d, "seconds_rho": t_rho_d},
                "diff_eta_star": rel_err(eta_d, eta_star),
                "diff_rho": rel_err(rho_d, st.rho),
            }
        )
    if rows:
        last = rows[-1]
        scale = (1000 / last["nk"]) ** 6
        rows[-1]["projection_nk_1000"] = {
            "seconds": (last["dense"]["seconds_rho"] + last["dense"]["seconds_eta_star"]) * scale,
            "bytes_T": 8 * 1000**4,
        }
    return rows


def print_dense(rows: list[dict[str, Any]]) -> None:
    print("\n=== 3. dense eigen-solve of the (n·k)²-dimensional T (numpy eigvals on vec(M); random kernels, k = 1)")
    head = ["n·k", "dim", "T size", "dense ρ", "dense η*", "sgdstab stability", "sgdstab η*", "ratio", "|Δρ|/ρ"]
    head.append("|Δη*|/η*")
    body = []
    for r in rows:
        dense_t = r["dense"]["seconds_rho"] + r["dense"]["seconds_eta_star"]
        ours = r["sgdstab"]["seconds"]
        body.append(
            [
                str(r["nk"]),
                str(r["dim"]),
                f"{r['bytes_T'] / 2**20:.0f} MiB",
                fmt_seconds(r["dense"]["seconds_rho"]),
                fmt_seconds(r["dense"]["seconds_eta_star"]),
                f"{fmt_seconds(ours)} ({r['sgdstab_method']})",
                fmt_seconds(r["sgdstab"]["seconds_eta_star"]),
                f"{dense_t / max(ours, 1e-9):.0f}×",
                f"{r['diff_rho']:.1e}",
                f"{r['diff_eta_star']:.1e}",
            ]
        )
    print(table(head, body, right=tuple(range(1, len(head)))))
    if rows and "projection_nk_1000" in rows[-1]:
        p = rows[-1]["projection_nk_1000"]
        print(
            f"  projected to n·k = 1000 (time ∝ (n·k)⁶ from n·k = {rows[-1]['nk']}): {p['seconds'] / 3.15e7:.1e} "
            f"years and {p['bytes_T'] / 2**40:.1f} TiB for T alone; the ratio column is dense (ρ + η*) ÷ sgdstab's "
            "stability (which computes both)"
        )


# ------------------------------------------------------------------------------------------------ 4. large Galerkin
def section_large(settings: dict[str, Any], exact_rows: list[dict[str, Any]]) -> dict[str, Any]:
    nk, family = settings["large"]["nk"], settings["large"]["family"]
    progress(f"large: {family} n·k = {nk} (the eigendecomposition of K dominates)")
    ker, setup = build_kernel(family, nk)
    B = batch_size(ker)
    progress(f"  K in {setup['seconds_K']:.1f} s, eigendecomposition in {setup['seconds_eigh']:.1f} s")
    eta_star, t_eta = timed_call(lambda: critical_learning_rate(ker, B, SAMPLING, method="galerkin"))
    st, t_st = timed_call(
        lambda: stability(ker, 1.5 * eta_star, B, SAMPLING, method="galerkin", with_certificates=False)
    )
    auto, t_auto = timed_call(lambda: stability(ker, 1.5 * eta_star, B, SAMPLING, with_certificates=False))
    # the exact route's projected cost: its products scale as n·k·r², measured at the largest exact size
    proj = None
    same = [r for r in exact_rows if r["family"] == family]
    if same:
        big = max(same, key=lambda r: r["nk"])
        per_product = big["exact"]["at_1.5"]["seconds"] / max(big["exact"]["at_1.5"]["matvecs"], 1)
        scale = (nk * ker.rank**2) / (big["nk"] * big["rank"] ** 2)
        proj = {"from_nk": big["nk"], "seconds_per_product": per_product * scale}
        proj["seconds_stability"] = proj["seconds_per_product"] * big["exact"]["at_1.5"]["matvecs"]
    return {
        "family": family,
        "nk": nk,
        "n": ker.n,
        "k": ker.k,
        "rank": ker.rank,
        "B": B,
        **setup,
        "eta_star": eta_star,
        "seconds_eta_star": t_eta,
        "rho": st.rho,
        "seconds_stability": t_st,
        "matvecs": st.matvecs,
        "subspace_rank": st.subspace_rank,
        "stated_error": st.error,
        "auto_method": auto.method,
        "auto_seconds": t_auto,
        "exact_projection": proj,
    }


def print_large(r: dict[str, Any]) -> None:
    print(
        f"\n=== 4. Galerkin at n·k = {r['nk']} ({r['family']} kernel, n = {r['n']}, k = {r['k']}, rank {r['rank']}, "
        f"B = {r['B']})"
    )
    rows = [
        ["K (sgdstab.ntk, or A Aᵀ)", fmt_seconds(r["seconds_K"]), ""],
        ["eigendecomposition of K (Kernel)", fmt_seconds(r["seconds_eigh"]), ""],
        ["critical_learning_rate(method='galerkin')", fmt_seconds(r["seconds_eta_star"]), f"η* = {r['eta_star']:.8g}"],
        [
            "stability(1.5 η*, method='galerkin')",
            fmt_seconds(r["seconds_stability"]),
            f"ρ = {r['rho']:.8g}, r = {r['subspace_rank']}, {r['matvecs']} products, "
            f"stated error {r['stated_error']:.1e}",
        ],
        ["stability(1.5 η*) method='auto'", fmt_seconds(r["auto_seconds"]), f"route {r['auto_method']}"],
    ]
    print(table(["what", "time", "result"], rows, right=(1,)))
    p = r.get("exact_projection")
    if p:
        print(
            f"  the exact route here (products ∝ n·k·r², from n·k = {p['from_nk']}): "
            f"~{fmt_seconds(p['seconds_per_product'])} per product, ~{fmt_seconds(p['seconds_stability'])} for "
            "stability (projected, not run)"
        )


# ------------------------------------------------------------------------------------------------------ driver
SECTIONS = ("exact", "bisection", "dense", "large")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="n·k = 200 and 600 (large: 1500), about a minute")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (default 1)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {', '.join(SECTIONS)}")
    parser.add_argument("--out", type=Path, help="JSON path (default results/stability.json or stability_quick.json)")
    args = parser.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {', '.join(sorted(unknown))}")
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    blas_limit = limit_blas_threads(args.threads) if args.threads > 0 else None  # noqa: F841
    set_clock("cpu" if args.threads == 1 else "wall")
    settings = QUICK if args.quick else FULL
    machine = machine_state()
    print(
        f"sgdstab {sgdstab.__version__}: {machine['torch_threads']} torch thread(s), BLAS threads "
        f"{machine['blas_threads']}, {machine['clock']} clock, load {machine['load_average_1_5_15min']}"
    )
    if warning := busy_warning():
        print("warning:", warning)
    out = args.out or RESULTS_DIR / ("stability_quick.json" if args.quick else "stability.json")
    result: dict[str, Any] = {}
    if set(sections) != set(SECTIONS) and out.is_file():  # a partial run updates its sections of the last results
        result = json.loads(out.read_text())
        result.setdefault("partial_runs", []).append({"sections": sections, "machine_start": machine})
    else:
        result["machine_start"] = machine
    result.update({"settings": settings, "sampling": SAMPLING})
    started = time.perf_counter()
    exact_rows: list[dict[str, Any]] = result.get("exact", [])
    if "exact" in sections:
        exact_rows = section_exact(settings)
        result["exact"] = exact_rows
        print_exact(exact_rows)
    if "bisection" in sections:
        result["bisection"] = section_bisection(settings)
        print_bisection(result["bisection"])
    if "dense" in sections:
        result["dense"] = section_dense(settings)
        print_dense(result["dense"])
    if "large" in sections:
        result["large"] = section_large(settings, exact_rows)
        print_large(result["large"])
    wall = time.perf_counter() - started
    if "partial_runs" in result and result["partial_runs"][-1]["sections"] == sections:
        result["partial_runs"][-1].update(machine_end=machine_state(), wall_seconds=wall)
    else:
        result.update(machine_end=machine_state(), wall_seconds_total=wall)
    write_json(out, result)
    print(f"\nwrote {out} ({fmt_seconds(wall)} wall)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
