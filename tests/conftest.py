"""Shared fixtures."""

from __future__ import annotations

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
