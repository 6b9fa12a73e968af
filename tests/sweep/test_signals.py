"""Signals end a sweep cleanly: SIGTERM (``timeout``, ``kill``, a CI cancel) and SIGINT (to the driver, or to
its process group as a terminal's Ctrl-C) end the driver and every pool worker; the store stays consistent, its
runs in flight go back to ``pending``, and the same command resumes and finishes every run exactly once. A driver
killed with SIGKILL (no handler can run) still takes its workers with it.

Exit codes (documented in docs/bad-inputs.md): SIGINT → 130 and ``aborted``; SIGTERM → 143 and
``terminated by SIGTERM`` once the CLI maps :class:`sgdstab.utils.signals.Terminated` (until then 130 and ``aborted``).

The subprocess tests are slow (each starts a sweep, its workers and a resume); the unit tests of
:mod:`sgdstab.utils.signals` and of the local pool's shutdown are fast."""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
from sweep_helpers import assert_artifacts_complete, cli_command, cli_env, db_rows, grid_config, run_cli

from sgdstab.sweep.config import RunConfig, run_to_dict
from sgdstab.sweep.executors import LocalExecutor
from sgdstab.utils import signals

LRS, BATCHES, SEEDS = (0.05, 0.2), (4, 20), (0,)
TOTAL = len(LRS) * len(BATCHES) * len(SEEDS)
STEPS = 2000  # ≈ 1–3 s a run: the signal lands just after the second pair of runs has begun
ROWS = STEPS // 10 + 1


# ------------------------------------------------------------------------------------------ process table
def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, state, start time) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the command name may hold spaces and parentheses
    return int(fields[1]), fields[0], int(fields[19])


def _descendants(root: int) -> dict[int, int]:
    """Every process below ``root`` now: pid → start time (to tell a reused pid from the same process)."""
    parents: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (st := _stat(int(entry))) is not None:
            parents.setdefault(st[0], []).append(int(entry))
            starts[int(entry)] = st[2]
    found, todo = {}, [root]
    while todo:
        for child in parents.get(todo.pop(), []):
            found[child] = starts[child]
            todo.append(child)
    return found


def _alive(tree: dict[int, int]) -> list[int]:
    """The processes of ``tree`` that still run (a zombie has ended: only its exit status is left)."""
    return [pid for pid, start in tree.items() if (st := _stat(pid)) is not None and st[1] != "Z" and st[2] == start]


def _wait_gone(tree: dict[int, int], timeout: float) -> float | None:
    """Seconds until every process of ``tree`` has ended, or None if some still run after ``timeout``."""
    start = time.monotonic()
    while _alive(tree):
        if time.monotonic() - start > timeout:
            return None
        time.sleep(0.02)
    return time.monotonic() - start


def _tagged(tag: str) -> list[int]:
    """The running processes whose environment holds ``SIGNALS_TEST_TAG=tag``: a driver's whole tree, even the
    processes it started after any snapshot, and those an ended driver left to init."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes() if entry.isdigit() else b""
        except OSError:
            continue
        if f"SIGNALS_TEST_TAG={tag}".encode() in environ.split(b"\0") and (st := _stat(int(entry))) and st[1] != "Z":
            found.append(int(entry))
    return found


def _kill_left(tree: dict[int, int]) -> None:
    for pid in _alive(tree):  # a test that fails must not leave 360 MB workers behind
        os.kill(pid, signal.SIGKILL)


def _end(proc: subprocess.Popen) -> None:
    """Kill ``proc`` if it still runs, and reap it."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _reap(proc: subprocess.Popen, tree: dict[int, int]) -> list[int]:
    """End ``proc`` (:func:`_end`), then SIGKILL what is left of ``tree``; returns the processes that were left."""
    _end(proc)
    left = _alive(tree)
    _kill_left(tree)
    return left


# ----------------------------------------------------------------------------------------------- sweeps
def _counts(out: Path) -> dict[str, int]:
    try:
        return dict(db_rows(out, "SELECT status, COUNT(*) FROM runs GROUP BY status"))
    except Exception:  # not created yet, or being created
        return {}


def _start(tmp_path: Path, tag: str = "") -> tuple[subprocess.Popen, Path, Path, Path]:
    """``sgdstab sweep`` of TOTAL runs with two workers, in its own process group, its stderr in a file; ``tag``
    marks every process of its tree (see :func:`_tagged`)."""
    config = grid_config(tmp_path, LRS, BATCHES, SEEDS)
    config.write_text(config.read_text().replace("steps = 60", f"steps = {STEPS}"))
    out, log = tmp_path / "out", tmp_path / "stderr.txt"
    with log.open("w") as err:  # a file, not a pipe: an orphaned worker would hold a pipe open for good
        proc = subprocess.Popen(
            cli_command("sweep", str(config), "--out", str(out), "--workers", "2"),
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=dict(cli_env(), SIGNALS_TEST_TAG=tag),
            start_new_session=True,  # its own process group, as a shell job: the group signal reaches only it
        )
    return proc, config, out, log


def _wait_in_flight(proc: subprocess.Popen, out: Path) -> None:
    """Until the first two runs are done and the next is claimed: both workers are up, a run has just begun."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        counts = _counts(out)
        if counts.get("done", 0) >= 2 and counts.get("running", 0) >= 1:
            return
        time.sleep(0.05)
    raise AssertionError(f"the sweep did not reach a run in flight (exit {proc.poll()}, counts {_counts(out)})")


def _assert_each_done_once(out: Path) -> None:
    assert db_rows(out, "PRAGMA integrity_check") == [("ok",)]
    assert db_rows(out, "SELECT status, COUNT(*) FROM runs GROUP BY status") == [("done", TOTAL)]
    assert db_rows(out, "SELECT COUNT(*), COUNT(DISTINCT run_id) FROM results WHERE name = 'final_loss'") == [
        (TOTAL, TOTAL)
    ]
    assert db_rows(out, "SELECT COUNT(*) FROM metrics") == [(TOTAL * ROWS,)]
    assert db_rows(out, "SELECT COUNT(*) FROM owners") == [(0,)]


SENDS = {
    "SIGTERM": (signal.SIGTERM, False),
    "SIGINT": (signal.SIGINT, False),
    "Ctrl-C": (signal.SIGINT, True),  # a terminal sends SIGINT to the whole foreground group
    "SIGKILL": (signal.SIGKILL, False),  # no handler runs: the workers must die with their parent anyway
}


def _expected_ending(how: str, code: int, last_line: str) -> bool:
    if how == "SIGKILL":
        return code == -signal.SIGKILL
    if how == "SIGTERM":
        return code == 128 + signal.SIGTERM and last_line == "terminated by SIGTERM"
    return code == 130 and last_line in ("aborted", "interrupted")


@pytest.mark.slow
@pytest.mark.parametrize("how", list(SENDS))
def test_a_signalled_sweep_ends_every_process_and_resumes_each_run_once(tmp_path, how):
    signum, group = SENDS[how]
    tag = uuid.uuid4().hex
    proc, config, out, log = _start(tmp_path, tag)
    tree: dict[int, int] = {}
    try:
        _wait_in_flight(proc, out)
        tree = _descendants(proc.pid)
        assert len(tree) >= 2, tree  # the two workers (and multiprocessing's resource tracker)
        done_before = dict(db_rows(out, "SELECT run_id, finished FROM runs WHERE status = 'done'"))
        (run_seconds,) = db_rows(out, "SELECT MIN(seconds) FROM runs WHERE status = 'done'")[0]
        start = time.monotonic()
        if group:
            os.killpg(proc.pid, signum)
        else:
            os.kill(proc.pid, signum)
        code = proc.wait(timeout=30)
        driver_seconds = time.monotonic() - start
        tree_seconds = _wait_gone(tree, timeout=15)
    finally:
        _end(proc)
        left = _alive(tree) + [pid for pid in _tagged(tag) if pid not in tree]  # also any started after the snapshot
        _kill_left(tree)
        for pid in _tagged(tag):
            os.kill(pid, signal.SIGKILL)
    stderr = log.read_text()
    lines = [line for line in stderr.splitlines() if line.strip()]
    total = driver_seconds + (tree_seconds or 0)
    print(f"{how}: driver ended in {driver_seconds:.2f} s, the whole tree in {total:.2f} s (a run {run_seconds:.1f} s)")
    assert not left and tree_seconds is not None, f"{how}: processes of the sweep still alive: {left}"
    assert _expected_ending(how, code, lines[-1] if lines else ""), (code, stderr[-2000:])
    assert "Traceback" not in stderr
    # the runs in flight were not waited for: they had just begun, and a run takes run_seconds (a fast machine's
    # short runs cannot show that; test_cancelling_the_local_pool_ends_its_workers_at_once does, with endless runs)
    assert driver_seconds < max(2.0, 0.5 * run_seconds), (driver_seconds, run_seconds)
    assert db_rows(out, "PRAGMA integrity_check") == [("ok",)]
    if how != "SIGKILL":  # released: nothing left running nor registered, resume waits for nobody
        assert db_rows(out, "SELECT COUNT(*) FROM runs WHERE status = 'running'") == [(0,)]
        assert db_rows(out, "SELECT COUNT(*) FROM owners") == [(0,)]

    resumed = run_cli("sweep", str(config), "--out", str(out), "--workers", "2")
    assert resumed.returncode == 0, resumed.stderr
    _assert_each_done_once(out)
    finished = dict(db_rows(out, "SELECT run_id, finished FROM runs"))
    attempts = dict(db_rows(out, "SELECT run_id, attempts FROM runs"))
    for rid, when in done_before.items():  # a run finished before the signal is not redone
        assert finished[rid] == when and attempts[rid] == 1
    assert_artifacts_complete(out)


@pytest.mark.slow
def test_sigterm_at_random_times_leaves_no_process_and_a_store_that_resumes(tmp_path):
    """SIGTERM at three random times of a sweep's life (start-up, store creation, claims, runs, records, the
    report), each time on the same directory, then the same command finishes every run exactly once."""
    seed = random.randrange(10**6)
    rng = random.Random(seed)
    config = grid_config(tmp_path, LRS, BATCHES, SEEDS)
    config.write_text(config.read_text().replace("steps = 60", f"steps = {STEPS // 4}"))
    out, tag = tmp_path / "out", uuid.uuid4().hex
    env = dict(cli_env(), SIGNALS_TEST_TAG=tag)
    for attempt in range(3):
        delay = rng.uniform(0.5, 8.0)
        log = tmp_path / f"stderr{attempt}.txt"
        with log.open("w") as err:
            proc = subprocess.Popen(
                cli_command("sweep", str(config), "--out", str(out), "--workers", "2"),
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
            )
        try:
            time.sleep(delay)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
            deadline = time.monotonic() + 10
            while _tagged(tag) and time.monotonic() < deadline:
                time.sleep(0.05)
            left = _tagged(tag)
        finally:
            _end(proc)
            for pid in _tagged(tag):
                os.kill(pid, signal.SIGKILL)
        where = f"seed {seed}, attempt {attempt}, signal after {delay:.2f} s"
        stderr = log.read_text()
        assert not left, f"{where}: processes left: {left}"
        assert "Traceback" not in stderr, f"{where}: {stderr[-3000:]}"
        lines = [line for line in stderr.splitlines() if line.strip()]
        if code == -signal.SIGTERM:  # before the handler was installed (imports): nothing created yet
            assert attempt > 0 or not out.exists(), where
        elif code != 0:  # 0: the sweep had finished
            assert _expected_ending("SIGTERM", code, lines[-1]), f"{where}: exit {code}, {lines[-3:]}"
        if (out / "sweep.db").exists():
            assert db_rows(out, "PRAGMA integrity_check") == [("ok",)], where
            assert db_rows(out, "SELECT COUNT(*) FROM runs WHERE status = 'running'") == [(0,)], where
            assert db_rows(out, "SELECT COUNT(*) FROM owners") == [(0,)], where
    resumed = run_cli("sweep", str(config), "--out", str(out), "--workers", "2")
    assert resumed.returncode == 0, f"seed {seed}: {resumed.stderr[-2000:]}"
    rows = STEPS // 4 // 10 + 1
    assert db_rows(out, "SELECT status, COUNT(*) FROM runs GROUP BY status") == [("done", TOTAL)]
    assert db_rows(out, "SELECT COUNT(*), COUNT(DISTINCT run_id) FROM results WHERE name = 'final_loss'") == [
        (TOTAL, TOTAL)
    ]
    assert db_rows(out, "SELECT COUNT(*) FROM metrics") == [(TOTAL * rows,)]
    assert_artifacts_complete(out)
    assert not list(out.rglob(".*.tmp")), f"seed {seed}: temporaries left"


@pytest.mark.slow
def test_ctrl_c_while_the_workers_start_up_prints_no_traceback(tmp_path):
    """Before: the workers, still importing torch, got the terminal's SIGINT too: one traceback each."""
    proc, _, out, log = _start(tmp_path)
    tree: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 60
        while len(tree := _descendants(proc.pid)) < 2:
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.01)
        time.sleep(0.3)  # inside the workers' start-up (seconds of imports)
        os.killpg(proc.pid, signal.SIGINT)
        code = proc.wait(timeout=30)
        gone = _wait_gone(tree, timeout=15)
    finally:
        left = _reap(proc, tree)
    stderr = log.read_text()
    assert not left and gone is not None, f"processes of the sweep still alive: {left}"
    assert code == 130 and "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    assert db_rows(out, "SELECT COUNT(*) FROM runs WHERE status = 'running'") == [(0,)]
    assert db_rows(out, "SELECT COUNT(*) FROM owners") == [(0,)]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason='ray is not installed: pip install "sgdstab[ray]"')
def test_sigterm_shuts_down_the_private_ray_instance(tmp_path):
    """Before: Ray's own SIGTERM handlers won, the driver died of SIGABRT after a C++ stack dump on stderr."""
    config = grid_config(tmp_path, LRS, BATCHES, SEEDS)
    config.write_text(config.read_text().replace("steps = 60", f"steps = {STEPS}"))
    out, log = tmp_path / "out", tmp_path / "stderr.txt"
    with log.open("w") as err:
        proc = subprocess.Popen(
            cli_command("sweep", str(config), "--out", str(out), "--executor", "ray", "--workers", "2"),
            stdout=subprocess.DEVNULL,
            stderr=err,
            env=cli_env(),
            start_new_session=True,
        )
    tree: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 120
        while _counts(out).get("running", 0) < 1:
            assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-2000:]
            time.sleep(0.1)
        time.sleep(1.0)  # the tasks reach their Ray workers
        tree = _descendants(proc.pid)  # raylet, GCS, Ray workers, …
        os.kill(proc.pid, signal.SIGTERM)
        code = proc.wait(timeout=60)
        gone = _wait_gone(tree, timeout=30)
    finally:
        left = _reap(proc, tree)
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    assert not left and gone is not None, f"Ray processes still alive: {left}"
    # Ray's worker threads may turn the signal into a plain interrupt before ours runs: ended either way, one line
    assert (code, lines[-1]) in ((143, "terminated by SIGTERM"), (130, "aborted")), (code, lines[-8:])
    assert not [line for line in lines if "SIGTERM received" in line or "Traceback" in line]
    assert db_rows(out, "PRAGMA integrity_check") == [("ok",)]
    assert db_rows(out, "SELECT COUNT(*) FROM runs WHERE status = 'running'") == [(0,)]
    assert db_rows(out, "SELECT COUNT(*) FROM owners") == [(0,)]


# ------------------------------------------------------------------------------------------- unit tests
def test_sigterm_raises_terminated_once_and_the_handlers_are_restored():
    before = {signum: signal.getsignal(signum) for signum in signals.HANDLED}
    cleaned = False
    with pytest.raises(signals.Terminated) as caught, signals.stop_on_signals():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # not reached: the handler raises at once
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # a second signal during the cleanup is ignored
            os.kill(os.getpid(), signal.SIGINT)
            cleaned = True
    assert cleaned and caught.value.signum == signal.SIGTERM and caught.value.exit_code == 143
    assert isinstance(caught.value, KeyboardInterrupt) and str(caught.value) == "terminated by SIGTERM"
    assert {signum: signal.getsignal(signum) for signum in signals.HANDLED} == before


def test_sigint_raises_keyboard_interrupt_inside_stop_on_signals():
    with pytest.raises(KeyboardInterrupt) as caught, signals.stop_on_signals():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    assert type(caught.value) is KeyboardInterrupt


def test_a_signal_ignored_before_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a background job of a script, or nohup's SIGHUP
    try:
        with signals.stop_on_signals():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_sighup_raises_terminated():
    # under `nohup` (a CI step, a detached shell) SIGHUP arrives ignored, and an ignored signal rightly stays so
    previous = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    try:
        with pytest.raises(signals.Terminated) as caught, signals.stop_on_signals():
            os.kill(os.getpid(), signal.SIGHUP)
            time.sleep(5)
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert caught.value.exit_code == 129


def test_a_signal_inside_a_deferred_section_is_raised_when_it_ends():
    steps = []
    with pytest.raises(signals.Terminated), signals.stop_on_signals():
        with signals.deferred():
            with signals.deferred():  # nested: only the outermost end raises
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
                steps.append("inner")
            steps.append("outer")
        steps.append("after")  # not reached
    assert steps == ["inner", "outer"]


def test_a_ctrl_c_during_spawning_is_held_not_lost():
    """Before, spawning() ignored SIGINT and a Ctrl-C that landed during a submission was dropped: the sweep ran
    on to the end and exited 0 (seen once in CI). Now the signal is blocked, and raised when the block ends."""
    steps = []
    with pytest.raises(KeyboardInterrupt), signals.stop_on_signals():
        with signals.spawning():
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)  # to this thread, as if it won the race
            time.sleep(0.05)
            steps.append("inside")
        steps.append("after")  # not reached
    assert steps == ["inside"]
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def test_workers_spawned_within_spawning_ignore_sigint_and_do_not_block_it():
    pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"), **signals.pool_kwargs())
    try:
        with signals.spawning():
            handler = pool.submit(signal.getsignal, signal.SIGINT)
        mask = pool.submit(signal.pthread_sigmask, signal.SIG_BLOCK, [])
        assert handler.result(timeout=60) == signal.SIG_IGN
        assert signal.SIGINT not in mask.result(timeout=60)  # worker_setup unblocked it: a pending one was dropped
    finally:
        pool.shutdown(wait=True)


def test_ray_init_replacing_the_handler_is_undone_by_install():
    with pytest.raises(signals.Terminated), signals.stop_on_signals():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))  # what ray.init does
        signals.install()
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)


def test_cancelling_the_local_pool_ends_its_workers_at_once():
    long_run = run_to_dict(RunConfig(dataset="digits", classes=(0, 1), n=40, widths=(8,), steps=10**7))
    pool = LocalExecutor(workers=2)
    tree: dict[int, int] = {}
    try:
        handles = [pool.submit(long_run), pool.submit(long_run)]
        workers = set(pool._pool._processes)  # type: ignore[union-attr]
        tree = {pid: began for pid, began in _descendants(os.getpid()).items() if pid in workers}
        assert len(tree) == 2
        start = time.monotonic()
        pool.close(cancel=True)  # before: shutdown(wait=False) left both running their endless run
        seconds = time.monotonic() - start
        assert not _alive(tree)
        assert seconds < 2 * signals.STOP_SECONDS + 1
        assert all(h.done() for h in handles)
    finally:
        _kill_left(tree)


_PARENT = """
import os, sys, time
from concurrent.futures import ProcessPoolExecutor
import multiprocessing
from sgdstab.utils.signals import pool_kwargs

if __name__ == "__main__":
    pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"), **pool_kwargs())
    worker = pool.submit(os.getpid).result()  # the initializer has run
    pool.submit(time.sleep, 600)
    print(worker, flush=True)
    time.sleep(600)
"""


def test_pool_workers_ignore_sigint_and_die_with_their_parent_even_on_sigkill(tmp_path):
    script = tmp_path / "parent.py"
    script.write_text(textwrap.dedent(_PARENT))
    parent = subprocess.Popen(  # stderr: the killed parent's resource tracker warns of its leaked semaphores
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=cli_env()
    )
    tree: dict[int, int] = {}
    try:
        worker = int(parent.stdout.readline())  # type: ignore[union-attr]
        tree = {pid: start for pid, start in _descendants(parent.pid).items() if pid == worker}
        os.kill(worker, signal.SIGINT)  # a terminal's Ctrl-C reaches the workers too: the driver handles it
        time.sleep(0.3)
        assert _alive(tree) == [worker]
        parent.kill()  # SIGKILL: no handler, no cleanup in the parent
        parent.wait()
        assert _wait_gone(tree, timeout=5) is not None, "the worker outlived its parent"
    finally:
        _end(parent)
        _kill_left(tree)
