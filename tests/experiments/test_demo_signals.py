"""The demo's process pool under signals: SIGTERM or SIGINT to the demo's process ends it and both experiment
workers at once (before: SIGTERM left the workers running for good; SIGINT waited for the experiments in flight).

The experiments are replaced by one that marks its start and sleeps (the workers import it from a module next to
the script: spawned processes see the parent's ``sys.path``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

_SLEEPY = """
import time
from pathlib import Path


def sleepy(name, config, out_dir, quiet):
    (Path(out_dir) / f"{name}.started").touch()
    time.sleep(600)
"""

_SCRIPT = """
import sys
from pathlib import Path

from rich.console import Console

import sgdstab.experiments.demo as demo
from sleepy import sleepy

if __name__ == "__main__":
    demo._one = sleepy
    try:
        demo._run_parallel({"a": None, "b": None}, Path(sys.argv[1]), 2, Console(stderr=True, quiet=True))
    except KeyboardInterrupt as exc:
        print(type(exc).__name__, flush=True)
        sys.exit(getattr(exc, "exit_code", 130))
"""


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            text = Path(f"/proc/{entry}/stat").read_text() if entry.isdigit() else ""
        except OSError:
            continue
        if text and int(text[text.rindex(")") + 2 :].split()[1]) == pid:
            found.append(int(entry))
    return found


def _running(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2] != "Z"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_ends_the_demo_and_its_experiment_workers_at_once(tmp_path, signum):
    (tmp_path / "sleepy.py").write_text(textwrap.dedent(_SLEEPY))
    (tmp_path / "script.py").write_text(textwrap.dedent(_SCRIPT))
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "script.py"), str(out)], stdout=subprocess.PIPE, text=True, env=env
    )
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not ((out / "a.started").exists() and (out / "b.started").exists()):
            assert time.monotonic() < deadline and proc.poll() is None, "the experiments did not start"
            time.sleep(0.05)
        workers = [pid for pid in _children(proc.pid) if pid != proc.pid]
        assert len(workers) >= 2  # the two workers (and multiprocessing's resource tracker)
        start = time.monotonic()
        os.kill(proc.pid, signum)  # to the demo's process only: it must stop its workers itself
        stdout, _ = proc.communicate(timeout=20)
        while [pid for pid in workers if _running(pid)] and time.monotonic() - start < 10:
            time.sleep(0.02)
        seconds = time.monotonic() - start
        left = [pid for pid in workers if _running(pid)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for pid in workers:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)
    print(f"{signal.Signals(signum).name}: the demo and its workers ended {seconds:.2f} s after the signal")
    assert not left, f"workers still alive after the demo ended: {left}"
    expected = ("Terminated", 143) if signum == signal.SIGTERM else ("KeyboardInterrupt", 130)
    assert (stdout.strip(), proc.returncode) == expected
    assert seconds < 5, seconds  # not the 600 s the experiments in flight would take
