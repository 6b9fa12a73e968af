"""Necessary conditions for linear stability at a global minimum, side by side (THEORY.md §5), from K.

At a global minimum H = G, so every curvature figure comes exactly from the NTK Gram matrix K (THEORY.md §2):
``||H||_F = ||K||_F/n``, ``λ_max(H) = λ_max(K)/n``, ``Tr H = Tr K/n``, ``||H_i||_F = ||K_ii||_F``, the Wu–Ma–E
non-uniformity ``s`` and the uniform alignment ``μ_inf`` (:mod:`sgdstab.kernel.figures`). Each certificate is a
largest learning rate ``bound_lr`` it allows for the batch size and scheme (through ``c``); a learning rate above
it is declared unstable. The exact threshold is :func:`sgdstab.critical_learning_rate`; a certificate
marked ``necessary`` never declares unstable a learning rate that is mean-square stable, i.e. ``bound_lr ≥ η*``.

- ``frobenius_mu_inf`` (WWS22 with μ_inf): ``η² c μ_inf ||H||_F² ≤ 1``. Necessary: by the one-step identity
  ``E||u_{t+1}||² = ||(I − ηK/n)u||² + η² c μ*(u) ||H||_F² ||u||²`` and ``μ*(u) ≥ μ_inf`` for every residual in
  range(K), ``E||u_t||²`` grows at least like ``(η² c μ_inf ||H||_F²)^t``.
- ``frobenius_mu`` (WWS22 with a measured μ, only when ``mu`` or ``residual`` is given): the paper's heuristic
  form; a necessary condition only if ``μ*(u_t) ≥ μ`` along the iterates, which nothing guarantees.
- ``gd``: ``η ≤ 2/λ_max(H)`` (the mean iterate follows GD).
- ``wu_ma_e`` (2018): ``η ≤ 2/a`` and ``η ≤ 1/(s√c)``, ``a = λ_max(H)``. **Not necessary** (``necessary=False``):
  the s part is implied by Wu–Ma–E's *sufficient* one-step condition ``λ_max((I−ηH)² + η²c Σ_H) ≤ 1``, not by
  mean-square stability. Counterexample (k = 1, n = 3, B = 1, c = 1): per-sample Jacobians (−3, 2), (0, −2),
  (−3, −2) give H = diag(6, 4), s = √42 ≈ 6.48 and η* = 1/6 exactly; at η = 0.16 the exact second-moment
  operator has ρ = 0.933 < 1 while s > 1/(η√c) = 6.25.
- ``mulayoff_michaeli``: ``η ≤ 2 Tr H / ((1−c)||H||_F² + (c/n) Σ_i ||H_i||_F²)`` (the Rayleigh quotient of
  ``C⁻¹D`` at the identity in parameter space, where ``C``, ``D`` are self-adjoint; necessary).
- ``trace``: ``η ≤ 2/(c Tr H)`` (``2/Tr H`` at B = 1) for k = 1, where it follows from Mulayoff–Michaeli by
  ``||H_i||_F = Tr H_i`` and Jensen. For k > 1 that form is **not** necessary (two samples with J_i = I_2, B = 1:
  SGD is GD, η* = 2 = 2/λ_max(H), but 2/Tr H = 1); since ``||H_i||_F ≥ Tr H_i/√k``, the valid form
  ``η ≤ 2k/(c Tr H)`` is used instead.
- ``psi = η ||H||_F √c`` (normalized flatness), expected ``≤ 1/√μ``.

``tests/test_certificates.py`` checks every certificate marked necessary against the exact ρ on random kernels
and pins both counterexamples above.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sgdstab.conventions import check_batch_size, check_learning_rate, check_sampling, noise_scale
from sgdstab.errors import StabilityError
from sgdstab.kernel import figures as kf
from sgdstab.kernel.kernel import Kernel
from sgdstab.kernel.ntk import KernelSource, as_kernel
from sgdstab.linear_stability.checks import check_mu
from sgdstab.utils.results import ResultMixin

NAMES: tuple[str, ...] = ("frobenius_mu_inf", "frobenius_mu", "gd", "wu_ma_e", "mulayoff_michaeli", "trace")


@dataclass(frozen=True)
class KernelCurvature(ResultMixin):
    """The K-derived figures every certificate needs (at a global minimum, H = G), computed once.

    ``frobenius`` = ||H||_F, ``lambda_max`` = λ_max(H), ``trace`` = Tr H, ``per_sample_frob2`` = Σ_i ||H_i||_F²,
    ``nonuniformity`` = s (Wu–Ma–E), ``mu_inf`` = uniform alignment of the linearized dynamics.

    Example:
        >>> import torch, sgdstab
        >>> cv = sgdstab.kernel_curvature(torch.diag(torch.tensor([4.0, 2.0], dtype=torch.float64)))
        >>> cv.lambda_max, cv.trace  # λ_max(K)/n, Tr K/n
        (2.0, 3.0)
    """

    n: int
    k: int
    rank: int
    frobenius: float
    lambda_max: float
    trace: float
    per_sample_frob2: float
    nonuniformity: float
    mu_inf: float


def kernel_curvature(problem_or_kernel: KernelSource, mu_inf: float | None = None) -> KernelCurvature:
    """:class:`KernelCurvature` of a Problem (at a global minimum), a :class:`sgdstab.Kernel` or a
    square tensor, computed once per kernel (kept with it through ``Kernel.memo``).

    Args:
        problem_or_kernel: a :class:`~sgdstab.Problem` at a global minimum (K = its NTK), a
            :class:`~sgdstab.Kernel`, or a square symmetric PSD tensor (k = 1).
        mu_inf: overrides the computed uniform alignment μ_inf.

    Returns:
        The :class:`KernelCurvature`.

    Raises:
        StabilityError: a bad kernel, or ``mu_inf`` not a finite number ≥ 0.

    Example:
        >>> import torch, sgdstab
        >>> K = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> cv = sgdstab.kernel_curvature(K)
        >>> cv.n, cv.rank, round(cv.lambda_max, 12), round(cv.frobenius, 12)  # λ_max(K)/n, ||K||_F/n
        (2, 2, 1.5, 1.581138830084)
    """
    ker = as_kernel(problem_or_kernel)
    cached = ker.memo("certificate-curvature", lambda: _kernel_curvature(ker))
    if mu_inf is not None:
        cached = KernelCurvature(**{**cached.to_dict(), "mu_inf": check_mu(mu_inf, "mu_inf")})
    return cached


def _kernel_curvature(ker: Kernel) -> KernelCurvature:
    n, k = ker.n, ker.k
    K = ker.K
    blocks = kf.block_diagonal(K, n, k)
    return KernelCurvature(
        n=n,
        k=k,
        rank=ker.rank,
        frobenius=kf.gauss_newton_frobenius(K, n),
        lambda_max=max(float(ker.eigen.values[-1]), 0.0) / n,
        trace=kf.gauss_newton_trace(K, n),
        per_sample_frob2=float((blocks * blocks).sum()),
        nonuniformity=kf.nonuniformity(K, n, k, ker.eigen),
        mu_inf=kf.uniform_alignment(K, n, k, ker.eigen) if ker.rank else math.nan,
    )


@dataclass(frozen=True)
class Certificate(ResultMixin):
    """One condition: the largest learning rate it allows, whether it declares ``lr`` unstable, and whether it is
    a proven necessary condition for mean-square linear stability (``bound_lr ≥ η*``) or a heuristic.

    Example:
        >>> import torch, sgdstab
        >>> gd = sgdstab.certificates(torch.eye(2, dtype=torch.float64), 1.5, 1)["gd"]  # η ≤ 2/λ_max(H) = 4
        >>> gd.bound_lr, gd.unstable_at_lr, gd.necessary
        (4.0, False, True)
    """

    name: str
    bound_lr: float
    unstable_at_lr: bool
    necessary: bool
    statement: str


def _safe_div(a: float, b: float) -> float:
    return a / b if b > 0 else math.inf


@dataclass(frozen=True)
class _Bound:
    """One certificate at one noise scale c, before it is held against a learning rate: the largest learning rate
    it allows, whether it is a proven necessary condition, and what it says."""

    name: str
    bound_lr: float
    necessary: bool
    description: str

    def at(self, eta: float) -> Certificate:
        """The certificate's verdict on the learning rate ``eta``."""
        statement = _statement(self.description, self.bound_lr, eta, self.necessary)
        return Certificate(self.name, self.bound_lr, bool(eta > self.bound_lr), self.necessary, statement)


def _bounds(cv: KernelCurvature, c: float, mu: float | None) -> list[_Bound]:
    """Every certificate at noise scale c (``frobenius_mu`` only with a measured μ); the names, their order and
    which are necessary do not depend on c."""
    F2 = cv.frobenius**2
    mu_inf = cv.mu_inf if math.isfinite(cv.mu_inf) else 0.0
    out = [
        _Bound(
            "frobenius_mu_inf",
            1 / math.sqrt(c * mu_inf * F2) if c * mu_inf * F2 > 0 else math.inf,
            True,
            f"Frobenius (WWS22) with μ_inf = {mu_inf:.4g}: necessary η² c μ_inf ||H||_F² ≤ 1 "
            "(μ_inf bounds the alignment of every reachable residual)",
        )
    ]
    if mu is not None:
        out.append(
            _Bound(
                "frobenius_mu",
                1 / math.sqrt(c * mu * F2) if c * mu * F2 > 0 else math.inf,
                False,
                f"Frobenius (WWS22) with measured μ = {mu:.4g}: η² c μ ||H||_F² ≤ 1, the paper's heuristic form "
                "(necessary only if μ*(u_t) ≥ μ along the iterates)",
            )
        )
    out.append(_Bound("gd", _safe_div(2.0, cv.lambda_max), True, "GD / edge of stability: η ≤ 2/λ_max(H)"))
    s_bound = _safe_div(1.0, cv.nonuniformity * math.sqrt(c))
    out.append(
        _Bound(
            "wu_ma_e",
            min(_safe_div(2.0, cv.lambda_max), s_bound),
            False,
            f"Wu–Ma–E 2018: η ≤ 2/a and η ≤ 1/(s√c), a = {cv.lambda_max:.4g}, s = {cv.nonuniformity:.4g}; the s part "
            "follows from their sufficient one-step condition and is not necessary for mean-square stability",
        )
    )
    denom = (1 - c) * F2 + (c / cv.n) * cv.per_sample_frob2
    out.append(
        _Bound(
            "mulayoff_michaeli",
            _safe_div(2 * cv.trace, denom),
            True,
            "Mulayoff–Michaeli: η ≤ 2 Tr H / ((1−c)||H||_F² + (c/n) Σ_i ||H_i||_F²)",
        )
    )
    out.append(_trace_bound(cv, c))
    return out


def _trace_bound(cv: KernelCurvature, c: float) -> _Bound:
    if cv.k == 1:
        return _Bound("trace", _safe_div(2.0, c * cv.trace), True, "trace: η ≤ 2/(c Tr H) (2/Tr H at B = 1)")
    return _Bound(
        "trace",
        _safe_div(2.0 * cv.k, c * cv.trace),
        True,
        f"trace for k = {cv.k} outputs: η ≤ 2k/(c Tr H) (the k = 1 form 2/(c Tr H) is not necessary when the "
        "per-sample Hessians have rank up to k)",
    )


@dataclass(frozen=True)
class Certificates(ResultMixin):
    """The certificates of THEORY.md §5 at one (lr, batch size, scheme), with the curvature they use.

    ``entries``: one :class:`Certificate` each (``frobenius_mu`` only when a measured μ was given). ``psi`` =
    η ||H||_F √c (normalized flatness), expected ≤ 1/√μ: ``psi_limit_mu_inf`` = 1/√μ_inf, ``psi_limit_mu`` = 1/√μ.
    Convenience: ``cert["gd"]``, :attr:`bound_lr` (the tightest necessary bound), :attr:`unstable` (some
    necessary certificate declares lr unstable), :attr:`unstable_by`. ``notes`` say why a figure is NaN or
    infinite (no measured μ given; a bound that sets no limit).

    Example:
        >>> import torch, sgdstab
        >>> K = torch.tensor([[2.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> cert = sgdstab.certificates(K, 1.5, 1)  # η* = 1 here
        >>> cert.unstable, cert.unstable_by, round(cert.bound_lr, 12)
        (True, ('gd', 'wu_ma_e', 'mulayoff_michaeli', 'trace'), 1.0)
    """

    lr: float
    batch_size: int
    sampling: str
    c: float
    n: int
    k: int
    frobenius: float
    lambda_max: float
    trace: float
    per_sample_frob2: float
    nonuniformity: float
    mu_inf: float
    mu: float
    psi: float
    psi_limit_mu_inf: float
    psi_limit_mu: float
    entries: tuple[Certificate, ...]
    notes: tuple[str, ...] = ()

    def __str__(self) -> str:
        head = ResultMixin.__str__(dataclasses.replace(self, entries=()))
        head = "\n".join(line for line in head.splitlines() if not line.lstrip().startswith("entries"))
        width = max(len(e.name) for e in self.entries)
        rows = [
            f"  {e.name.ljust(width)}  η ≤ {e.bound_lr:<10.4g} {'UNSTABLE' if e.unstable_at_lr else 'ok':8s}"
            f" {'necessary' if e.necessary else 'not necessary'}"
            for e in self.entries
        ]
        return head + "\n" + "\n".join(rows)

    def __getitem__(self, name: str) -> Certificate:
        for entry in self.entries:
            if entry.name == name:
                return entry
        raise KeyError(f"no certificate {name!r}; have {', '.join(e.name for e in self.entries)}")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries)

    @property
    def necessary(self) -> tuple[Certificate, ...]:
        return tuple(e for e in self.entries if e.necessary)

    @property
    def bound_lr(self) -> float:
        """The tightest (smallest) learning rate allowed by a necessary certificate."""
        return min(e.bound_lr for e in self.necessary)

    @property
    def tightest(self) -> str:
        return min(self.necessary, key=lambda e: e.bound_lr).name

    @property
    def unstable(self) -> bool:
        return any(e.unstable_at_lr for e in self.necessary)

    @property
    def unstable_by(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.entries if e.unstable_at_lr)


def _statement(description: str, bound: float, eta: float, necessary: bool) -> str:
    verdict = "declares it unstable" if eta > bound else "allows it"
    kind = "" if necessary else " (not a necessary condition)"
    return f"{description}. Bound η ≤ {bound:.4g}; lr = {eta:.4g}: {verdict}{kind}"


def _notes(cv: KernelCurvature, c: float, mu: float | None, entries: tuple[Certificate, ...]) -> tuple[str, ...]:
    """Why a figure of :class:`Certificates` is NaN or infinite."""
    notes = []
    if mu is None:
        notes.append("mu and psi_limit_mu are NaN: no measured alignment was given (pass mu= or residual=)")
    if not math.isfinite(cv.mu_inf):
        notes.append("mu_inf is NaN: K = 0, no residual direction is reachable")
    elif cv.mu_inf <= 0:
        notes.append(
            "mu_inf = 0: some reachable residual direction carries no SGD noise (e.g. n = 1), so "
            "psi_limit_mu_inf is inf and the uniform Frobenius bound sets no limit"
        )
    unbounded = [e.name for e in entries if math.isinf(e.bound_lr)]
    if unbounded:
        why = "c = 0 (B = n without replacement: GD, no noise)" if c == 0 else "a zero curvature or noise figure"
        notes.append(f"bound_lr = inf for {', '.join(unbounded)}: {why}; these certificates set no limit here")
    return tuple(notes)


def _measured_mu(source: KernelSource | KernelCurvature, mu: float | None, residual: Tensor | None) -> float | None:
    if mu is not None and residual is not None:
        raise StabilityError("give either mu or residual, not both")
    if mu is not None:
        return check_mu(mu, "mu")
    if residual is None:
        return None
    if isinstance(source, KernelCurvature):
        raise StabilityError("a residual needs the kernel K, not only its curvature figures")
    ker = as_kernel(source)
    r = torch.as_tensor(residual, dtype=torch.float64)
    if r.numel() != ker.nk:
        raise StabilityError(f"residual must have n·k = {ker.nk} entries, got {r.numel()}")
    value = kf.noise_figures(ker.K, r, ker.n, ker.k).mu
    if not math.isfinite(value):
        raise StabilityError("the residual is zero: the loss alignment μ is undefined there")
    return value


def _curvature(source: KernelSource | KernelCurvature, mu_inf: float | None) -> KernelCurvature:
    if isinstance(source, KernelCurvature):
        return source if mu_inf is None else KernelCurvature(**{**source.to_dict(), "mu_inf": mu_inf})
    return kernel_curvature(source, mu_inf)


def certificates(
    kernel: KernelSource | KernelCurvature,
    lr: float,
    batch_size: int,
    sampling: str = "with_replacement",
    mu: float | None = None,
    mu_inf: float | None = None,
    residual: Tensor | None = None,
) -> Certificates:
    """Every certificate of THEORY.md §5 at (lr, batch_size, sampling), from K.

    Args:
        kernel: a :class:`~sgdstab.Problem` at a global minimum, a :class:`~sgdstab.Kernel`, a square symmetric PSD
            tensor (k = 1) or a precomputed :class:`KernelCurvature`.
        lr: the learning rate on the half-MSE loss L.
        batch_size: B, in 1..n.
        sampling: ``"with_replacement"`` or ``"without_replacement"``.
        mu: a measured loss alignment for the heuristic ``frobenius_mu``.
        mu_inf: overrides the uniform alignment μ_inf.
        residual: the residual (n·k entries) to compute μ from with K, instead of ``mu``.

    Returns:
        The :class:`Certificates`.

    Raises:
        ConventionError: a bad learning rate, batch size or sampling scheme.
        StabilityError: a bad kernel; ``mu`` or ``mu_inf`` not a finite number ≥ 0; both ``mu`` and ``residual``;
            a residual of the wrong size, or zero, or with only a :class:`KernelCurvature`.

    Example:
        >>> import torch, sgdstab
        >>> cert = sgdstab.certificates(torch.eye(2, dtype=torch.float64), 1.5, 1)
        >>> cert.names
        ('frobenius_mu_inf', 'gd', 'wu_ma_e', 'mulayoff_michaeli', 'trace')
        >>> round(cert["gd"].bound_lr, 12), round(cert.bound_lr, 12), cert.unstable
        (4.0, 2.0, False)
    """
    cv = _curvature(kernel, None if mu_inf is None else check_mu(mu_inf, "mu_inf"))
    eta = check_learning_rate(lr)
    scheme = check_sampling(sampling)
    b = check_batch_size(batch_size, cv.n)
    c = noise_scale(b, cv.n, scheme)
    mu_value = _measured_mu(kernel, mu, residual)
    entries = tuple(bound.at(eta) for bound in _bounds(cv, c, mu_value))
    return Certificates(
        notes=_notes(cv, c, mu_value, entries),
        lr=eta,
        batch_size=b,
        sampling=scheme,
        c=c,
        n=cv.n,
        k=cv.k,
        frobenius=cv.frobenius,
        lambda_max=cv.lambda_max,
        trace=cv.trace,
        per_sample_frob2=cv.per_sample_frob2,
        nonuniformity=cv.nonuniformity,
        mu_inf=cv.mu_inf,
        mu=math.nan if mu_value is None else mu_value,
        psi=eta * cv.frobenius * math.sqrt(c),
        psi_limit_mu_inf=_safe_div(1.0, math.sqrt(max(cv.mu_inf, 0.0))) if cv.mu_inf == cv.mu_inf else math.nan,
        psi_limit_mu=math.nan if mu_value is None else _safe_div(1.0, math.sqrt(max(mu_value, 0.0))),
        entries=entries,
    )


@dataclass(frozen=True)
class CertificateGrid(ResultMixin):
    """Certificate learning rates for many batch sizes, and their verdicts on a grid of learning rates.

    ``bound_lr[name][j]``: the largest learning rate certificate ``name`` allows at ``batch_sizes[j]``;
    ``unstable[name][i][j]``: it declares ``lrs[i]`` unstable at ``batch_sizes[j]``. ``necessary[name]`` as in
    :class:`Certificate`.

    Example:
        >>> import torch, sgdstab
        >>> grid = sgdstab.certificate_grid(torch.eye(2, dtype=torch.float64), [1.0, 3.0], [1, 2])
        >>> grid.bound_lr["gd"], grid.unstable["gd"]  # rows: lrs, columns: batch sizes
        ((4.0, 4.0), ((False, False), (False, False)))
        >>> grid.bounds("trace").tolist()  # 2/(c Tr H), c = 1/B
        [2.0, 4.0]
    """

    lrs: tuple[float, ...]
    batch_sizes: tuple[int, ...]
    sampling: str
    c: tuple[float, ...]
    bound_lr: dict[str, tuple[float, ...]]
    unstable: dict[str, tuple[tuple[bool, ...], ...]]
    necessary: dict[str, bool]

    def bounds(self, name: str) -> np.ndarray:
        """``bound_lr[name]`` as an array over batch sizes."""
        return np.asarray(self.bound_lr[name], dtype=float)


def certificate_grid(
    kernel: KernelSource | KernelCurvature,
    lrs: Sequence[float],
    batch_sizes: Sequence[int],
    sampling: str = "with_replacement",
    mu: float | None = None,
    mu_inf: float | None = None,
) -> CertificateGrid:
    """Every certificate's learning-rate bound for each batch size, and its verdict on each (lr, B): the K-derived
    figures are computed once (the per-point cost is a few flops), for the stability diagram (THEORY.md §6.5).

    Args:
        kernel: as for :func:`certificates`.
        lrs: learning rates on the half-MSE loss L (kept in the order given).
        batch_sizes: batch sizes, each in 1..n (kept in the order given).
        sampling: ``"with_replacement"`` or ``"without_replacement"``.
        mu: a measured loss alignment for the heuristic ``frobenius_mu``.
        mu_inf: overrides the uniform alignment μ_inf.

    Returns:
        The :class:`CertificateGrid`.

    Raises:
        ConventionError: a bad learning rate, batch size or sampling scheme.
        StabilityError: a bad kernel, or ``mu`` or ``mu_inf`` not a finite number ≥ 0.

    Example:
        >>> import torch, sgdstab
        >>> grid = sgdstab.certificate_grid(torch.eye(2, dtype=torch.float64), [1.0, 3.0], [1, 2])
        >>> grid.c, grid.bound_lr["mulayoff_michaeli"]
        ((1.0, 0.5), (2.0, 2.6666666666666665))
    """
    cv = _curvature(kernel, None if mu_inf is None else check_mu(mu_inf, "mu_inf"))
    scheme = check_sampling(sampling)
    etas = np.array([check_learning_rate(lr) for lr in lrs], dtype=float)
    bs = tuple(check_batch_size(b, cv.n) for b in batch_sizes)
    cs = tuple(noise_scale(b, cv.n, scheme) for b in bs)
    mu_value = None if mu is None else check_mu(mu, "mu")
    per_b = [_bounds(cv, c, mu_value) for c in cs]
    reference = _bounds(cv, 1.0, mu_value)  # the names, their order and which are necessary do not depend on c
    bound: dict[str, tuple[float, ...]] = {}
    unstable: dict[str, tuple[tuple[bool, ...], ...]] = {}
    necessary: dict[str, bool] = {}
    for idx, certificate in enumerate(reference):
        row = np.array([bounds[idx].bound_lr for bounds in per_b], dtype=float)
        bound[certificate.name] = tuple(float(x) for x in row)
        verdict = etas[:, None] > row[None, :]
        unstable[certificate.name] = tuple(tuple(bool(x) for x in line) for line in verdict)
        necessary[certificate.name] = certificate.necessary
    return CertificateGrid(
        lrs=tuple(float(x) for x in etas),
        batch_sizes=bs,
        sampling=scheme,
        c=cs,
        bound_lr=bound,
        unstable=unstable,
        necessary=necessary,
    )


__all__ = [
    "NAMES",
    "Certificate",
    "CertificateGrid",
    "Certificates",
    "KernelCurvature",
    "certificate_grid",
    "certificates",
    "kernel_curvature",
]
