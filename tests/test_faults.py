"""Injected faults: runs killed mid-write, training runs that diverge, allocations that cannot fit.

**Killed runs.** A harness process (this file run as a script) imports sgdstab once and then, for each trial, forks a
child that runs a job into its own directory and is SIGKILLed — at the k-th file it opens for writing there (after
a random delay of 0–30 ms: before, during or after that write), or at a random time. An audit hook
(:func:`sys.addaudithook`) in the child logs every file opened for writing and every rename. The parent test then
checks every trial directory: each file under a final name is complete (JSON parses, PNG ends with its IEND chunk,
CSV rows have the header's width, Markdown ends where the complete run's does, a checkpoint loads and resumes to the
uninterrupted run's parameters), and no file was ever opened for writing under its final name — only temporary
names (``.NAME.*.tmp``) are written, and renamed into place. Jobs: an experiment and the demo (their bodies
replaced by a stub that writes a table, a figure and the usual files: the writing is what is under test) and a
training run writing a checkpoint every step.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import random
import re
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from references import tiny_problem
from sgdstab import Problem, alignment, curvature, ntk, stability, train
from sgdstab.errors import MemoryBudgetError
from sgdstab.estimators.matrix_free import hutchpp, top_eigenpairs

pytestmark = pytest.mark.usefixtures("one_thread")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_END = b"IEND\xaeB`\x82"
TEMP_NAME = re.compile(r"^\..+\.tmp$")  # tempfile.mkstemp(prefix=".NAME.", suffix=".tmp") in every atomic writer
TRAIN_SETTINGS = {"lr": 0.1, "batch_size": 3, "sampling": "reshuffle", "steps": 300, "track_every": 10, "seed": 4}


# ------------------------------------------------------------------------------------------------ the harness
def _stub_body(config, ctx):
    """A body that does no science but writes what a real one does: a table and a figure through the context."""
    from sgdstab.experiments.base import Outcome
    from sgdstab.experiments.io import new_figure
    from sgdstab.experiments.report import Claim

    ctx.table("trajectory.csv", [{"step": i, "loss": 0.5**i} for i in range(200)])
    fig, ax = new_figure(size=(2.0, 1.5))
    ax.plot(range(20), [0.5**i for i in range(20)])
    ctx.figure("loss.png", fig, "a stub figure")
    rows = [{"i": i, "x": i / 7} for i in range(500)]
    return Outcome(rows=rows, claims=[Claim("stub", "the stub ran", True, "wrote its files")], intro="stub run\n")


def _job(kind: str, out: Path) -> None:
    """Run one job into ``out`` (in the forked child)."""
    if kind in ("experiment", "demo"):
        import importlib

        from sgdstab.cli import main
        from sgdstab.experiments.registry import MODULES

        for module_name, _ in MODULES.values():
            module = importlib.import_module(module_name)
            module.EXPERIMENT = dataclasses.replace(module.EXPERIMENT, body=_stub_body)
        argv = ["experiment", "diagram", "--quick", "--quiet", "--out", str(out)]
        if kind == "demo":
            argv = ["demo", "--quiet", "--workers", "1", "--out", str(out)]
        rc = main(argv)
        assert rc == 0, rc
    elif kind == "naive":  # what the checks must catch: a report written in pieces under its final name
        with open(out / "summary.json", "w") as f:
            for i in range(2000):
                f.write(json.dumps({"i": i}) + ",\n" if i else "[\n")
                f.flush()
                time.sleep(0.001)
            f.write("{}]\n")
    elif kind == "train":
        P = tiny_problem("mlp", 2, "off", n=11)
        hist = train(P, **TRAIN_SETTINGS, checkpoint_every=1, checkpoint_path=out / "run.ckpt", progress=False)
        hist.save(out / "history.json")
    else:
        raise ValueError(kind)


def _is_write(mode, flags) -> bool:
    if isinstance(mode, str):
        return any(c in mode for c in "wax+")
    return isinstance(flags, int) and bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND))


def _child(kind: str, out: Path, log_path: Path, kill_at_write: int | None, delay: float, signal_fd: int) -> None:
    out.mkdir(parents=True)
    log = open(log_path, "a", buffering=1)  # noqa: SIM115 - line-buffered: the log must survive the SIGKILL
    root = str(out) + os.sep
    writes = 0

    def hook(event: str, args: tuple) -> None:
        nonlocal writes
        if event == "open" and isinstance(args[0], str | bytes | os.PathLike):
            path = os.fsdecode(args[0])
            if path.startswith(root) and _is_write(args[1], args[2]):
                writes += 1
                log.write(json.dumps(["write", path]) + "\n")
                if writes == kill_at_write:
                    if delay == 0:  # before the file is even opened
                        os.kill(os.getpid(), signal.SIGKILL)
                    os.write(signal_fd, b"k")  # the parent kills after `delay`, wherever this process then is
        elif event == "os.rename" and os.fsdecode(args[1]).startswith(root):
            log.write(json.dumps(["rename", os.fsdecode(args[0]), os.fsdecode(args[1])]) + "\n")

    sys.addaudithook(hook)
    _job(kind, out)
    log.write(json.dumps(["finished"]) + "\n")


def harness(spec_path: str) -> None:
    """Run the trials of a spec file: {"kind", "root", "trials": [{"kill_at_write", "delay", "kill_after"}]}."""
    import importlib

    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401 - imported once, not in every child

    import sgdstab.cli  # noqa: F401 - imported once, not in every child
    from sgdstab.experiments.registry import MODULES

    for module_name, _ in MODULES.values():
        importlib.import_module(module_name)
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(1)  # one thread: safe to fork, and fair to the machine
    root = Path(spec["root"])
    results = []
    for i, trial in enumerate(spec["trials"]):
        out, log_path = root / f"trial{i}", root / f"trial{i}.log"
        read_fd, write_fd = os.pipe()
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.close(read_fd)
            code = 0
            try:
                _child(spec["kind"], out, log_path, trial["kill_at_write"], trial["delay"], write_fd)
            except BaseException as exc:
                log_path.open("a").write(json.dumps(["error", repr(exc)]) + "\n")
                code = 1
            os._exit(code)
        os.close(write_fd)
        # wait for the child's "k" (its k-th write began) or for the random time, then kill; EOF: it finished
        ready, _, _ = select.select([read_fd], [], [], trial["kill_after"])
        if not ready:
            os.kill(pid, signal.SIGKILL)
        elif os.read(read_fd, 1) == b"k":
            time.sleep(trial["delay"])
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        os.close(read_fd)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        results.append({"killed": killed, "status": status, "seconds": time.perf_counter() - start})
    (root / "results.json").write_text(json.dumps(results))


def run_trials(tmp_path: Path, kind: str, trials: list[dict]) -> list[dict]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"kind": kind, "root": str(tmp_path), "trials": trials}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, __file__, "harness", str(spec)], capture_output=True, text=True, timeout=600, env=env
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())
    for i, result in enumerate(results):
        result["trial"] = trials[i]
        result["out"] = tmp_path / f"trial{i}"
        log = tmp_path / f"trial{i}.log"  # absent when the kill came before the child opened it
        result["log"] = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        assert not any(entry[0] == "error" for entry in result["log"]), result["log"]
        assert result["killed"] or result["log"][-1:] == [["finished"]], result
    return results


# ------------------------------------------------------------------------------------------------- the checks
def _final_files(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file() and not TEMP_NAME.match(p.name))


def _last_line(text: str) -> str:
    return re.sub(r"[0-9.]+", "#", text.rstrip("\n").splitlines()[-1])


def check_complete(path: Path, reference: Path | None) -> None:
    """Fail unless ``path`` is a complete file of its kind (compared with the complete run's file when given)."""
    data = path.read_bytes()
    if path.suffix == ".json":
        json.loads(data)
    elif path.suffix == ".png":
        assert data.startswith(PNG_SIGNATURE) and data.endswith(PNG_END), path
    elif path.suffix == ".csv":
        rows = list(csv.reader(data.decode().splitlines()))
        assert data.endswith(b"\n") and rows and all(len(r) == len(rows[0]) for r in rows), path
        if reference is not None:
            assert len(rows) == len(list(csv.reader(reference.read_text().splitlines()))), path
    elif path.suffix == ".md":
        text = data.decode()
        assert text.endswith("\n"), path
        if reference is not None:
            assert _last_line(text) == _last_line(reference.read_text()), path
    elif path.suffix == ".ckpt":
        state = torch.load(path, weights_only=True)
        assert state["format"] == "sgdstab-train-checkpoint"
    else:
        raise AssertionError(f"unexpected file {path}")


def check_trial(result: dict, reference_dir: Path | None) -> tuple[int, int]:
    """Check one trial; returns (final files checked, temporary files left behind)."""
    out = result["out"]
    if not out.exists():
        return 0, 0
    for entry in result["log"]:
        if entry[0] == "write":  # only temporary names are ever opened for writing
            assert TEMP_NAME.match(Path(entry[1]).name), f"{entry[1]} was written under its final name"
        elif entry[0] == "rename":
            assert TEMP_NAME.match(Path(entry[1]).name) and not TEMP_NAME.match(Path(entry[2]).name), entry
    finals = _final_files(out)
    for path in finals:
        ref = reference_dir / path.relative_to(out) if reference_dir is not None else None
        check_complete(path, ref if ref is not None and ref.exists() else None)
    temps = [p for p in out.rglob("*") if p.is_file() and TEMP_NAME.match(p.name)]
    if not result["killed"]:
        assert not temps  # a finished run cleans up
    return len(finals), len(temps)


def kill_plan(writes: int, extra_random: int, duration: float, seed: int) -> list[dict]:
    """A complete reference run, a kill at each of the first ``writes`` writes (a random delay of 0–30 ms, a third of
    them at once) and ``extra_random`` kills at random times within ``duration`` seconds."""
    rng = random.Random(seed)
    trials = [{"kill_at_write": None, "delay": 0.0, "kill_after": None}]
    for k in range(1, writes + 1):
        delay = 0.0 if rng.random() < 1 / 3 else rng.uniform(0.0, 0.03)
        trials.append({"kill_at_write": k, "delay": delay, "kill_after": None})
    for _ in range(extra_random):
        trials.append({"kill_at_write": None, "delay": 0.0, "kill_after": rng.uniform(0.0, duration)})
    return trials


def check_faults(results: list[dict]) -> dict:
    """Check every trial against the complete reference run (trial 0); count what was injected and found."""
    reference = results[0]
    assert not reference["killed"]
    writes = sum(1 for entry in reference["log"] if entry[0] == "write")
    counts = {"writes": writes, "trials": len(results) - 1, "killed": 0, "files": 0, "temps": 0}
    for result in results:
        files, temps = check_trial(result, reference["out"])
        k = result["trial"]["kill_at_write"]
        if k is not None and k <= writes and result["trial"]["delay"] == 0:
            assert result["killed"], result  # killed in the audit hook itself: always lands
        counts["killed"] += result["killed"]
        counts["files"] += files
        counts["temps"] += temps
    return counts


def test_killed_experiment_leaves_only_complete_files(tmp_path):
    # an experiment writes config.json, trajectory.csv, loss.png, results.csv, report.md and summary.json, each
    # opened once for writing (created by mkstemp and written through that descriptor; loss.png, saved by name,
    # twice), and its ownership marker .sgdstab-output.json: created, then rewritten as each of the six files is
    # listed before it appears (issue 13) — 14 writes
    counts = check_faults(run_trials(tmp_path, "experiment", kill_plan(14, 0, 0.0, seed=1)))
    assert counts["writes"] == 14
    # a delayed kill may come after the run ended: the last writes take a few milliseconds
    assert counts["killed"] >= 8


def test_killed_training_leaves_a_checkpoint_that_resumes_exactly(tmp_path):
    full = tiny_problem("mlp", 2, "off", n=11)
    full_hist = train(full, **TRAIN_SETTINGS, progress=False)
    rng = random.Random(3)
    writes = [1, 2, 5, 17, 60, 150, 299]  # checkpoint writes (one per step) at which to kill
    trials = [
        {"kill_at_write": k, "delay": rng.choice([0.0, rng.uniform(0, 3e-3)]), "kill_after": None} for k in writes
    ]
    results = run_trials(tmp_path, "train", trials)
    assert sum(r["killed"] for r in results) == len(writes)
    resumed_runs = 0
    for result in results:
        check_trial(result, None)
        ckpt = result["out"] / "run.ckpt"
        if not ckpt.exists():  # killed before the first checkpoint was renamed into place
            continue
        P = tiny_problem("mlp", 2, "off", n=11)
        resumed = train(P, **TRAIN_SETTINGS, resume=ckpt, progress=False)
        assert torch.equal(P.theta, full.theta) and resumed.losses == full_hist.losses
        resumed_runs += 1
    assert resumed_runs >= len(writes) - 2


def test_the_checks_catch_a_writer_that_is_not_atomic(tmp_path):
    results = run_trials(tmp_path, "naive", [{"kill_at_write": 1, "delay": 0.05, "kill_after": None}])
    assert results[0]["killed"]
    with pytest.raises(AssertionError, match="was written under its final name"):
        check_trial(results[0], None)
    with pytest.raises(json.JSONDecodeError):  # and the file it left is cut short
        check_complete(results[0]["out"] / "summary.json", None)
    png = tmp_path / "cut.png"
    png.write_bytes(PNG_SIGNATURE + b"\x00" * 100)
    with pytest.raises(AssertionError):
        check_complete(png, None)


@pytest.mark.slow
def test_killed_demo_leaves_only_complete_files(tmp_path):
    """The demo (five experiments, stubbed, and its own report and summary): a kill at each of its file opens and
    at 20 random times."""
    probe = run_trials(tmp_path / "probe", "demo", kill_plan(0, 0, 0.0, seed=0))[0]
    writes = sum(1 for entry in probe["log"] if entry[0] == "write")
    assert writes >= 60
    counts = check_faults(run_trials(tmp_path / "kills", "demo", kill_plan(writes, 20, probe["seconds"], seed=2)))
    assert counts["writes"] == writes and counts["killed"] >= 0.8 * writes


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["experiment", "train"])
def test_many_random_kills(tmp_path, kind):
    """Sixty kills at random times within the duration of a complete run."""
    probe = run_trials(tmp_path / "probe", kind, kill_plan(0, 0, 0.0, seed=0))[0]
    results = run_trials(tmp_path / "kills", kind, kill_plan(0, 60, probe["seconds"], seed=11))
    for result in results:
        check_trial(result, results[0]["out"] if kind == "experiment" else None)
    assert sum(r["killed"] for r in results) >= 30


# --------------------------------------------------------------------------------------------- divergence
def test_diverging_run_with_checkpoints_records_the_step_and_keeps_the_last_finite_checkpoint(tmp_path):
    P = tiny_problem("mlp", 1, "off", n=8)
    start = P.theta.clone()
    ckpt = tmp_path / "run.ckpt"
    # B = 1 at a learning rate well above η*: L passes 10⁶·L₀ at step 25, after eight checkpoints
    hist = train(P, 0.5, 1, steps=500, track_every=5, checkpoint_every=3, checkpoint_path=ckpt, progress=False)
    assert hist.diverged_at == hist.steps[-1] == 25
    last = hist.losses[-1]
    assert not math.isfinite(last) or last > 1e6 * hist.losses[0]
    assert all(math.isfinite(v) and v <= 1e6 * hist.losses[0] for v in hist.losses[:-1])
    assert torch.equal(P.theta, start)  # the problem keeps the parameters it had before the run
    # the checkpoint on disk is the last one before the divergence, with finite parameters, and resumes to the same
    state = torch.load(ckpt, weights_only=True)
    assert state["step"] == 24
    assert all(bool(torch.isfinite(t).all()) for t in state["parameters"].values())
    Q = tiny_problem("mlp", 1, "off", n=8)
    again = train(Q, 0.5, 1, steps=500, track_every=5, checkpoint_every=3, resume=ckpt, checkpoint_path=ckpt,
                  progress=False)  # fmt: skip
    assert again.diverged_at == hist.diverged_at and again.losses == hist.losses


# ------------------------------------------------------------------------- solvers that run out of iterations
def test_every_iterative_figure_says_whether_it_converged(monkeypatch):
    """Starve each iterative solver of iterations: its result says so (``converged`` False and a note), and what
    depends on it inherits the flag."""
    P = tiny_problem("mlp", 2, "off", n=12, width=20)
    curv = curvature(P, method="matrix_free", rtol=1e-4, max_matvecs=50, top=1)
    assert not curv.converged and any("stopped at its budget of 50 products" in note for note in curv.notes)
    assert curv.hessian_frobenius_stderr > 1e-4 * curv.hessian_frobenius  # the spread that was not reached
    align = alignment(P, hessian=True, curvature_result=curv)
    assert not align.converged  # μ_H uses the unconverged ||H||_F
    assert alignment(P, method="kernel", hessian=False).converged
    A = np.diag(np.arange(1.0, 301.0))
    tf = hutchpp(A, rtol=1e-6, max_matvecs=40)
    assert not tf.converged and tf.matvecs <= 40
    eig = top_eigenpairs(A, 3, maxiter=1, tol=0.0, ncv=7)  # one Lanczos restart on a slowly separating spectrum
    assert not eig.converged and len(eig.eigenvalues) < 3  # only the pairs that did converge are returned
    # sys.modules: the package attribute sgdstab.stability is the function, which shadows the module
    monkeypatch.setattr(sys.modules["sgdstab.linear_stability.solver"], "_POWER_MAX_MATVECS", 3)
    st = stability(tiny_problem("mlp", 2, "minimum", n=6), 0.1, 2, method="power", with_certificates=False)
    assert not st.converged and "the eigen-solver did not converge: ρ and η* are the last iterates" in st.notes


def test_float32_results_carry_their_float64_check():
    P = tiny_problem("mlp", 2, "off", n=12, width=20)
    P32 = Problem(P.model, P.X, P.Y, dtype=torch.float32)
    for result in (curvature(P32, method="kernel", top=1), alignment(P32, hessian=False)):
        assert result.float64_check_difference is not None and 0 < result.float64_check_difference < 1e-3
    for result in (curvature(P, method="kernel", top=1), alignment(P, hessian=False)):
        assert result.float64_check_difference is None  # float64: nothing to check


# ----------------------------------------------------------------------------------------------------- memory
MEMORY_PROBE = textwrap.dedent(
    """
    import json, resource, sys, torch
    sys.path.insert(0, {tests!r})
    from sgdstab import Problem, curvature, load_dataset, mlp, ntk, simulate_linearized
    from sgdstab.errors import MemoryBudgetError
    torch.set_num_threads(1)
    X = torch.randn(16000, 4, dtype=torch.float64)
    P = Problem(torch.nn.Linear(4, 1).double(), X, X[:, :1] * 2)  # K = J Jᵀ: 16000² float64 = 2 GB
    wide = Problem(torch.nn.Linear(16000, 1).double(), torch.randn(3, 16000, dtype=torch.float64),
                   torch.zeros(3, 1, dtype=torch.float64))  # dense Hessian: 16001² float64 = 2 GB
    requests = {{
        "ntk": lambda: ntk(P).matrix,
        "dense Hessian": lambda: curvature(wide, method="dense"),
        "synthetic data": lambda: load_dataset("gaussian-linear", n=10**8, dim=20),
        "model": lambda: mlp(4000, 1, widths=(100000,)),
        "linearized chains": lambda: simulate_linearized(torch.eye(50).double(), 0.1, 5, 10**6, chains=1000),
    }}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    refused = {{}}
    for name, call in requests.items():
        try:
            call()
            refused[name] = None
        except MemoryBudgetError as exc:
            refused[name] = str(exc)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({{"refused": refused, "before": before, "peak": peak}}))
    """
)


def test_too_large_allocations_are_refused_before_they_happen(tmp_path):
    """Each request would allocate ≥ 1.6 GB; with SGDSTAB_MEMORY_LIMIT=512M every one is refused by its estimate,
    and the process's peak resident memory stays where the set-up left it (nothing was allocated and freed)."""
    script = tmp_path / "probe.py"
    script.write_text(MEMORY_PROBE.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "SGDSTAB_MEMORY_LIMIT": "512M"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, message in report["refused"].items():
        assert message is not None, f"{name} was not refused"
        assert "but only 409.6 MiB is available" in message, message
    assert report["peak"] - report["before"] < 100 * 1024**2, report


def test_memory_estimate_matches_what_the_kernel_takes(monkeypatch):
    """The budget check is not a guess: K of n·k = 600 in float64 is 2.88 MB, refused just below, taken just above."""
    X = torch.randn(600, 4, dtype=torch.float64)
    P = Problem(torch.nn.Linear(4, 1).double(), X, X[:, :1])
    need = 600 * 600 * 8 + 600 * P.p * 8  # K and J
    monkeypatch.setenv("SGDSTAB_MEMORY_LIMIT", str(int(600 * 600 * 8 / 0.8) - 8))
    with pytest.raises(MemoryBudgetError, match=r"needs 2\.7 MiB"):
        ntk(P)
    monkeypatch.setenv("SGDSTAB_MEMORY_LIMIT", str(int(need / 0.8) + 8))
    assert ntk(P).matrix.shape == (600, 600)


if __name__ == "__main__":  # the harness: python tests/test_faults.py harness SPEC
    if sys.argv[1:2] == ["harness"]:
        harness(sys.argv[2])
