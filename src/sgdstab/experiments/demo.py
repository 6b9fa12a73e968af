"""``sgdstab demo``: the main job — a compact version of the five experiments of THEORY.md §6, the
cross-entropy one of §9 and the momentum one of §9.1 on the built-in
Fashion-MNIST subset, in one report with its figures (about a minute of CPU; at most about 3 minutes on 2 cores).

It runs, each into its own subdirectory of the output directory and each through its own experiment
(:mod:`sgdstab.experiments`, every claim checked there and written there too):

1. ``flatness`` — SGD over a small (η, B) grid and GD: ||H||_F ≤ sqrt(1/(cμ))/η at every SGD solution (the
   Frobenius certificate), η ≤ η*(B) there (exact linear stability), λ_max ≤ 2/η everywhere and GD at the edge of
   stability;
2. ``alignment`` — μ = Tr(ΣG)/(2L||G||_F²) along SGD training of a linear net, random features, an MLP and a CNN,
   and against width;
3. ``scaling`` — the same bound over two sample sizes and two widths;
4. ``escape`` — one sharp minimum, SGD restarts on both sides of the exact η*;
5. ``diagram`` — the exact stable region of one minimum in the (η, B) plane;
6. ``cross_entropy`` — GD and SGD on the softmax cross-entropy, tracked through the generalized Gauss–Newton:
   λ_max(H) against 2/η, the exact η*(B) of the linearization and μ along training;
7. ``momentum`` — ``torch.optim.SGD`` with momentum 0.9 (heavy ball, Nesterov) and without, restarted next to one
   minimum on both sides of each one's exact η*(B, β).

The top-level ``report.md`` repeats every claim with its verdict and links each experiment's report and figures,
and says which certificate binds at the diagram's minimum (:func:`sgdstab.experiments.diagram.which_binds`, from
that experiment's numbers: each bound as a multiple of η*(B), the tightest necessary one by B, and why the headline
uses the measured μ). ``summary.json`` keeps those numbers under ``certificates`` and holds the same claims
machine-readable (``claims``: one entry per claim with its experiment), the three checks of the original demo
(``headline``: Frobenius certificate, linear stability, GD bound / edge of stability, taken from ``flatness``), each
experiment's run time, and the machine's load average. Every file is written atomically; a failed claim is reported
as FAILED, never dropped.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from sgdstab._version import __version__
from sgdstab.data import DEFAULT_DATASET, load_dataset
from sgdstab.errors import ConfigError
from sgdstab.experiments.base import REPORT_FILE
from sgdstab.experiments.config import build_config
from sgdstab.experiments.diagram import which_binds
from sgdstab.experiments.io import atomic_write_json, atomic_write_text, prepare_output_dir
from sgdstab.experiments.registry import get_experiment
from sgdstab.utils import signals
from sgdstab.utils.text import fmt

DEMO_CLASSES = (0, 6)  # T-shirt/top against shirt: the hardest pair of Fashion-MNIST, so curvature matters
DEMO_N = 64
ORDER = ("flatness", "alignment", "scaling", "escape", "diagram", "cross_entropy", "momentum", "edge_of_stability")
HEADLINE = {  # the original demo's three checks → the flatness claims that carry them
    "frobenius_certificate": ("frobenius_bound",),
    "linear_stability": ("linearly_stable",),
    "gd_bound": ("gd_bound", "gd_edge_of_stability"),
}
SUMMARY_FILE = "summary.json"


def demo_configs(n: int | None = None, seed: int = 0, quick: bool = False) -> dict[str, Any]:
    """The config of each experiment in the demo: compact versions of the full runs (``quick``: the CI-sized
    variants). ``n`` sets the sample size of every net (scaling uses n/2 and n)."""
    configs: dict[str, Any] = {}
    for name in ORDER:
        exp = get_experiment(name)
        base = exp.default_config(quick=quick)
        changes: dict[str, Any] = {} if quick else _compact(name)
        changes["seed"] = seed
        if n is not None:
            changes |= _sized(name, n, base, changes)
        configs[name] = build_config(type(base), changes, base=base, source=f"the demo's {name} config")
    return configs


def _compact(name: str) -> dict[str, Any]:
    """Smaller than the full runs (THEORY.md §6 at a glance): a few nets each, one escape, one diagram."""
    return {
        "flatness": {"n": DEMO_N, "lrs": (0.01, 0.02, 0.04), "batch_sizes": (2, 4, 16), "max_steps": 10000},
        "alignment": {"n": DEMO_N, "steps": 1000, "linear_widths": (16, 160), "rf_widths": (64, 640)},
        "scaling": {"ns": (DEMO_N // 2, DEMO_N), "widths": (16, 128)},
        "escape": {"n": 48, "widths": (32,), "lr_ratios": (0.6, 1.8), "escape_steps": 300, "chains": 2000},
        "diagram": {"n": DEMO_N, "widths": (32,), "num_batch_sizes": 8, "random_checks": 8},
        "cross_entropy": {"n": DEMO_N, "steps": 1000},
        "momentum": {"n": 48, "widths": (32,), "steps": 1200},
        "edge_of_stability": {"n": 100, "width": 32, "steps": 800, "measure_every": 80},
    }[name]


def _sized(name: str, n: int, base: Any, changes: dict[str, Any]) -> dict[str, Any]:
    if name == "scaling":
        b = changes.get("batch_size", base.batch_size)
        return {"ns": (max(4, n // 2), n), "batch_size": min(b, max(1, n // 2 - 1))}
    out: dict[str, Any] = {"n": n}
    if name == "flatness":
        out["batch_sizes"] = tuple(b for b in changes.get("batch_sizes", base.batch_sizes) if b < n) or (1,)
    if name == "alignment":
        out["batch_size"] = min(base.batch_size, n)
    if name == "cross_entropy":
        out["batch_size"] = min(base.batch_size, max(1, n - 1))
    if name == "momentum":
        out["batch_size"] = min(base.batch_size, n)
    if name == "edge_of_stability":
        out["batch_size"] = min(base.batch_size, max(1, n - 1))
    return out


def run_demo(
    out: str | os.PathLike[str] | None = None,
    n: int | None = None,
    seed: int = 0,
    quiet: bool = False,
    quick: bool = False,
    workers: int | None = None,
) -> Path:
    """Run the demo into ``out`` (default ``sgdstab-demo``) and return the path of its report.

    ``n``: the sample size of the nets (default 64; scaling uses n/2 and n); ``quick``: each experiment's CI-sized
    variant instead of the demo's compact configs; ``workers``: experiments run at a time, each in its own process
    on one thread (default: 2, or 1 on a one-core machine; 1 runs them here, one after the other)."""
    console = Console(stderr=True, quiet=quiet)
    out_dir = prepare_output_dir(Path(out or "sgdstab-demo"), owner="demo")
    # the data set is checked before anything runs (an impossible n fails in a second, not after minutes)
    data = load_dataset(DEFAULT_DATASET, n=n or DEMO_N, classes=DEMO_CLASSES, subset="stratified", seed=seed)
    configs = demo_configs(n, seed, quick)
    for name in ORDER:
        prepare_output_dir(out_dir / name, owner=name)
    atomic_write_json(out_dir / "config.json", {"experiment": "demo", "n": n, "seed": seed, "quick": quick})
    load_start = os.getloadavg()
    wall, cpu = time.perf_counter(), time.process_time()
    console.print(f"[bold]sgdstab demo[/bold]: the eight experiments of THEORY.md §6 and §9, compact, into {out_dir}")
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    if workers < 1:
        raise ConfigError(f"workers must be at least 1, got {workers}")
    done = (
        _run_parallel(configs, out_dir, workers, console)
        if workers > 1
        else _run_here(configs, out_dir, quiet, console)
    )
    results = {name: {**done[name], "captions": _captions(out_dir / name / REPORT_FILE)} for name in ORDER}
    summary = _summary(results, data.description, n, seed, quick)
    summary |= {
        "seconds": time.perf_counter() - wall,
        # the experiments' own CPU time (in worker processes when workers > 1) plus this process's
        "cpu_seconds": time.process_time()
        - cpu
        + (sum(r["cpu_seconds"] for r in results.values()) if workers > 1 else 0),
        "workers": workers,
        "load_average": {"start": list(load_start), "end": list(os.getloadavg())},
    }
    report = out_dir / REPORT_FILE
    atomic_write_text(report, _report(summary))
    atomic_write_json(out_dir / SUMMARY_FILE, summary)
    failed = [f"{c['experiment']}/{c['name']}" for c in summary["claims"] if not c["passed"]]
    verdict = f"all {len(summary['claims'])} claims passed" if not failed else f"FAILED: {', '.join(failed)}"
    console.print(f"demo done in {summary['seconds']:.0f} s ({verdict}); report: {report}", highlight=False)
    print(report)
    return report


def _one(name: str, config: Any, out_dir: Path, quiet: bool) -> dict[str, Any]:
    """One experiment on one thread: these problems are small, and two threads per process fight for the cores
    (measured: 6× the CPU time of one thread on a loaded 2-core machine)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return get_experiment(name).run(config, out_dir / name, quiet=quiet)
    finally:
        torch.set_num_threads(old)


def _captions(report: Path) -> dict[str, str]:
    """figure file → caption, as the experiment's report.md shows them (``![caption](file)``)."""
    found = re.findall(r"^!\[(.*)\]\(([^()\s]+\.png)\)$", report.read_text(encoding="utf-8"), flags=re.M)
    return {name: caption for caption, name in found}


def _line(name: str, result: dict[str, Any]) -> str:
    failed = [c["name"] for c in result["claims"] if not c["passed"]]
    verdict = f"all {len(result['claims'])} claims passed" if not failed else f"FAILED: {', '.join(failed)}"
    return f"  {name}: {verdict} ({result['seconds']:.0f} s)"


def _run_here(configs: dict[str, Any], out_dir: Path, quiet: bool, console: Console) -> dict[str, dict[str, Any]]:
    results = {}
    for i, name in enumerate(configs, 1):
        console.print(f"[bold]{i}/{len(configs)} {name}[/bold]", highlight=False)
        results[name] = _one(name, configs[name], out_dir, quiet)
        console.print(_line(name, results[name]), highlight=False, markup=False)
    return results


def _run_parallel(configs: dict[str, Any], out_dir: Path, workers: int, console: Console) -> dict[str, dict[str, Any]]:
    """The experiments in ``workers`` processes (spawned: no state shared with this one), quiet; one line each as
    it finishes. Ctrl-C or SIGTERM (raised as :class:`sgdstab.utils.signals.Terminated`) ends every worker at once and
    propagates; the workers ignore a terminal's Ctrl-C themselves and die with this process even on SIGKILL
    (:mod:`sgdstab.utils.signals`)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    console.print(f"running {', '.join(configs)} in {workers} processes …", highlight=False)
    results = {}
    with signals.stop_on_signals():
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, **signals.pool_kwargs())
        try:
            with signals.spawning():  # the workers are born with SIGINT blocked
                futures = {pool.submit(_one, name, cfg, out_dir, True): name for name, cfg in configs.items()}
            for future in as_completed(futures):
                name = futures[future]
                results[name] = future.result()
                console.print(_line(name, results[name]), highlight=False, markup=False)
        except KeyboardInterrupt:  # a signal: do not wait minutes for the experiments in flight
            signals.stop_pool(pool)
            raise
        finally:
            pool.shutdown(wait=True)
    return results


def _summary(results: dict[str, dict[str, Any]], description: str, n: int | None, seed: int, quick: bool) -> dict:
    claims = [{"experiment": name, **c} for name, s in results.items() for c in s["claims"]]
    flat = {c["name"]: c for c in results["flatness"]["claims"]}
    headline = {}
    for key, names in HEADLINE.items():
        parts = [flat[x] for x in names if x in flat]
        headline[key] = {
            "holds": bool(parts) and all(p["passed"] for p in parts),
            "claims": [p["name"] for p in parts],
            "detail": "; ".join(p["detail"] for p in parts),
            "numbers": {p["name"]: p["numbers"] for p in parts},
        }
    experiments = [
        {
            "name": name,
            "title": s["title"],
            "dir": name,
            "report": f"{name}/{REPORT_FILE}",
            "passed": s["passed"],
            "claims": len(s["claims"]),
            "figures": [f"{name}/{f}" for f in s["files"]["figures"]],
            "captions": {f"{name}/{f}": c for f, c in s.get("captions", {}).items()},
            "seconds": s["seconds"],
            "cpu_seconds": s["cpu_seconds"],
            "config": s["config"],
        }
        for name, s in results.items()
    ]
    diagram = results["diagram"]["numbers"]
    return {
        "experiment": "demo",
        "title": "sgdstab demo: why SGD ends up at flat minima",
        "sgdstab_version": __version__,
        "data": description,
        "n": n,
        "seed": seed,
        "quick": quick,
        "passed": all(c["passed"] for c in claims),
        "headline": headline,
        # the diagram minimum's certificates, per scheme and B: which one binds (the report's section comes from it)
        "certificates": {key: diagram[key] for key in _BINDING_KEYS if key in diagram},
        "experiments": experiments,
        "claims": claims,
    }


_BINDING_KEYS = ("n", "lambda_max", "hessian_frobenius", "mu_inf", "mu_measured", "certificates")
_BINDING_SCHEME = "with_replacement"  # the flatness grid's scheme; the diagram report has both

_INTRO = """\
**The claim.** At a global minimum of the square loss that SGD with learning rate η and batch size B can stay in,
||H||_F ≤ sqrt(1/(cμ))/η = sqrt(B/μ)/η (c = 1/B with replacement), where μ = Tr(ΣG)/(2L||G||_F²) measures how
well the SGD noise Σ is aligned with the curvature G — and GD only has λ_max(H) ≤ 2/η (THEORY.md §5). Below, five
compact experiments on the built-in Fashion-MNIST subset check it: the flatness of the minima SGD reaches, the
alignment μ along training, its independence of n and width, the escape from a sharp minimum (SGD above the exact
η* leaves, below it stays) and the exact stable region of one minimum. Every figure is computed exactly through
the NTK K = JJᵀ (built once per measured point); η is on L = (1/2n) Σ ||f(x_i) − y_i||². A sixth carries the
analysis to cross-entropy (docs/THEORY.md §9): GD and SGD tracked through the generalized Gauss–Newton. A seventh
restarts torch.optim.SGD with momentum next to a minimum on both sides of its exact η*(B, β) (§9.1). An eighth
follows GD and SGD from initialization in a plain torch loop with sgdstab.Tracker: λ_max(H) rises to 2/η under GD,
stays below it under SGD, where η ≤ η*(B) (§9.2)."""


def _binding_section(numbers: dict[str, Any] | None) -> list[str]:
    """Which certificate binds at the diagram's minimum, generated from the diagram experiment's numbers."""
    if not numbers or _BINDING_SCHEME not in numbers.get("certificates", {}):
        return []
    text = which_binds(
        numbers,
        heading="## Which certificate binds, at the diagram's minimum (section 5)",
        schemes=(_BINDING_SCHEME,),
    )
    return [text, "", "(Without replacement, and every bound itself: [diagram/report.md](diagram/report.md).)", ""]


def _report(summary: dict[str, Any]) -> str:
    claims = summary["claims"]
    failed = [c for c in claims if not c["passed"]]
    verdict = (
        f"**All {len(claims)} claims passed**, in {len(summary['experiments'])} experiments."
        if not failed
        else f"**{len(failed)} of {len(claims)} claims FAILED:** "
        + ", ".join(f"{c['experiment']}/{c['name']}" for c in failed)
        + "."
    )
    lines = [f"# {summary['title']}", "", _INTRO, "", f"Data: {summary['data']}.", "", verdict, ""]
    lines += ["## The main result, on the flatness grid", ""]
    words = {
        "frobenius_certificate": "Frobenius bound ||H||_F ≤ sqrt(1/(cμ))/η at every SGD solution, μ measured there "
        "(why measured μ, and how loose μ_inf makes it: next section)",
        "linear_stability": "linear stability where SGD settled: η ≤ η*(B), the exact threshold of ρ(T) ≤ 1 (2% slack "
        "for a run that stops near, not at, the minimum)",
        "gd_bound": "GD bound λ_max(H) ≤ 2/η at every solution (2% slack), GD at the edge of stability",
    }
    for key, h in summary["headline"].items():
        lines.append(f"- **{'holds' if h['holds'] else 'FAILS'}** — {words[key]}: {h['detail']}")
    lines += ["", "(Figures in section 1.)", ""]
    lines += _binding_section(summary.get("certificates"))
    by_name = {}
    for c in claims:
        by_name.setdefault(c["experiment"], []).append(c)
    for i, e in enumerate(summary["experiments"], 1):
        lines += [f"## {i}. {e['title']}", ""]
        lines.append(
            f"Full report: [{e['report']}]({e['report']}) (config, results table and every number there); "
            f"{e['seconds']:.0f} s."
        )
        lines.append("")
        lines += [
            f"- **{'PASSED' if c['passed'] else 'FAILED'}** — {c['statement']}: {c['detail']}"
            for c in by_name.get(e["name"], [])
        ]
        lines.append("")
        for fig in e["figures"]:
            caption = e["captions"].get(fig, Path(fig).stem)
            lines += [f"![{caption}]({fig})", "", f"*{caption}*", ""]
    load = summary["load_average"]
    lines += [
        "## Run time",
        "",
        "| experiment | wall (s) | CPU (s) | claims | passed |",
        "|---|---|---|---|---|",
        *[
            f"| {e['name']} | {e['seconds']:.1f} | {e['cpu_seconds']:.1f} | {e['claims']} | "
            f"{'yes' if e['passed'] else 'NO'} |"
            for e in summary["experiments"]
        ],
        "",
        f"Total: {summary['seconds']:.1f} s wall, {summary['cpu_seconds']:.1f} s CPU (sgdstab "
        f"{summary['sgdstab_version']}); load average (1 min) {fmt(load['start'][0], 3)} at the start, "
        f"{fmt(load['end'][0], 3)} at the end. Files: `summary.json` (every claim machine-readable), one directory "
        "per experiment.",
    ]
    return "\n".join(lines).rstrip() + "\n"


__all__ = ["DEMO_CLASSES", "ORDER", "demo_configs", "run_demo"]
