"""Shared fixtures."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch


@pytest.fixture
def one_thread():
    """Run a test's tiny eigenproblems on one thread: on a loaded 2-core machine, 2 torch threads spin and run
    up to 10× slower; the thread count is restored afterwards."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``tmpfs(size)`` mounts a tmpfs of ``size`` (``"1m"``, ``"8m"``) under ``tmp_path`` and returns its path
    (a real full disk); every mount is undone after the test. Needs root and permission to mount: the test is
    skipped elsewhere."""
    mounts: list[Path] = []

    def mount(size: str) -> Path:
        folder = tmp_path / ("tmpfs" if not mounts else f"tmpfs{len(mounts)}")
        folder.mkdir()
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a tmpfs needs root")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
        mounts.append(folder)
        return folder

    try:
        yield mount
    finally:
        for folder in reversed(mounts):
            subprocess.run(["umount", str(folder)], check=False)
