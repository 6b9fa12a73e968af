"""Ending cleanly on SIGTERM and SIGINT, and worker processes that never outlive their parent.

``timeout``, ``kill`` and a CI cancel send SIGTERM, whose default action ends the process at once: no ``finally``
runs, a process pool's workers are left blocked on their pipe for good, the store's claims stay taken. Inside
:func:`stop_on_signals`, SIGTERM instead raises :class:`Terminated` (a :class:`KeyboardInterrupt`, so every
``except KeyboardInterrupt``/``finally`` that handles Ctrl-C handles it too: click turns both into ``Abort``), and
so does SIGHUP (the terminal or the ssh session closed); SIGINT keeps raising :class:`KeyboardInterrupt`. Only the
first signal raises: later ones, while the ``finally`` blocks stop the workers and release the store, are
ignored, so that a second Ctrl-C cannot cut the cleanup in half (it is bounded: :func:`stop_pool` kills what does
not stop within ``STOP_SECONDS``). :func:`deferred` holds a signal back during a section that must not be cut (a
store write, a result's files): it is raised when the section ends.

Pool workers are born with SIGINT blocked and ignore it from :func:`worker_setup` on (:func:`spawning` around
the submission that starts them; a terminal's Ctrl-C reaches the whole process group, the driver handles it once
and stops the workers itself), and
:func:`worker_setup`, the ``initializer`` of every pool, asks the kernel on Linux to SIGKILL the worker when its
parent dies (``PR_SET_PDEATHSIG``): even a driver killed with SIGKILL, where no handler runs, leaves no worker
behind. :func:`stop_pool` ends a pool's workers at once.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from multiprocessing import resource_tracker
from types import FrameType
from typing import Any

from sgdstab.errors import Terminated

HANDLED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # SIGHUP: the terminal or the ssh session closed
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
STOP_SECONDS = 2.0  # how long stopped workers get to exit on SIGTERM before SIGKILL


class _State:
    """The handler's state: depth of :func:`deferred` sections, the signal held back, whether one was raised."""

    def __init__(self) -> None:
        self.active = 0
        self.deferring = 0
        self.pending: int | None = None
        self.raised = False
        self.ignored: set[int] = set()  # ignored before (``nohup``, a background job): they stay ignored


_state = _State()


def _raise_for(signum: int) -> None:
    _state.raised = True
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signum)


def _handler(signum: int, frame: FrameType | None) -> None:
    if _state.raised or _state.pending is not None:
        return  # unwinding already: a second signal must not cut the cleanup short
    if _state.deferring:
        _state.pending = signum
        return
    _raise_for(signum)


def install() -> None:
    """(Re)install the handlers of :func:`stop_on_signals`, e.g. after a library replaced them (``ray.init``
    installs its own SIGTERM handler). Only in the main thread and inside :func:`stop_on_signals`."""
    if _state.active and threading.current_thread() is threading.main_thread():
        for signum in HANDLED:
            if signum not in _state.ignored:
                signal.signal(signum, _handler)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within: SIGTERM and SIGHUP raise :class:`Terminated`, SIGINT :class:`KeyboardInterrupt`, once; a signal
    ignored on entry (``nohup``, a background job of a script) stays ignored; the previous handlers are restored
    on the way out. Outside the main thread (where Python cannot set handlers) it does nothing. Nested uses share
    the outermost one's handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if _state.active:
        _state.active += 1
        try:
            yield
        finally:
            _state.active -= 1
        return
    previous = {signum: signal.getsignal(signum) for signum in HANDLED}
    _state.active, _state.deferring, _state.pending, _state.raised = 1, 0, None, False
    _state.ignored = {signum for signum, handler in previous.items() if handler == signal.SIG_IGN}
    try:
        install()
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        _state.active, _state.deferring, _state.pending = 0, 0, None


@contextmanager
def deferred() -> Iterator[None]:
    """A section a signal must not cut (a store write and the files it vouches for): a signal that arrives
    inside is raised when the outermost section ends (unless the section raised already)."""
    _state.deferring += 1
    try:
        yield
    finally:
        _state.deferring -= 1
    if not _state.deferring and _state.pending is not None and not _state.raised:
        signum, _state.pending = _state.pending, None
        _raise_for(signum)


@contextmanager
def spawning() -> Iterator[None]:
    """Around a call that may start pool workers (``pool.submit``): SIGINT is *blocked* in this thread meanwhile.
    A spawned worker inherits the blocked mask across ``exec``, so a Ctrl-C during its start-up (seconds of
    imports, before :func:`worker_setup` ignores SIGINT and unblocks it) stays pending in the worker and is then
    discarded: no traceback per worker. In the driver the signal is not lost either (an ignored one would be): it
    is delivered when the block ends, or to another thread at once. Outside the main thread it does nothing.

    multiprocessing's resource tracker unblocks SIGINT after starting itself, so it is started first."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    resource_tracker.ensure_running()
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def worker_setup(parent: int | None = None) -> None:
    """A pool worker's initializer: ignore SIGINT, and die with the parent ``parent`` (its pid) on Linux. (The
    kernel sends the signal when the *thread* that started the worker ends: start a pool from a thread that
    outlives it, as the sweep driver and the demo do from the main thread.)"""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # discards a Ctrl-C held pending since the spawn
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    if not sys.platform.startswith("linux"):  # pragma: no cover - the parent's shutdown is the only defence
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - no prctl: the parent's shutdown is the only defence
        return
    if parent is not None and os.getppid() != parent:
        os._exit(1)  # the parent died before the request took effect: nobody will ever send work


def pool_kwargs() -> dict[str, Any]:
    """The ``initializer``/``initargs`` that give a process pool's workers :func:`worker_setup`."""
    return {"initializer": worker_setup, "initargs": (os.getpid(),)}


def stop_pool(pool: ProcessPoolExecutor, timeout: float = STOP_SECONDS) -> None:
    """Cancel a pool's queued work and end its workers now: SIGTERM, then SIGKILL after ``timeout`` seconds
    (a worker in the middle of a run is not waited for; its result is lost, its run is redone on resume)."""
    processes = list((getattr(pool, "_processes", None) or {}).values())  # private, stable since Python 3.2
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in processes:
        if proc.is_alive():
            proc.terminate()
    deadline = time.monotonic() + timeout
    for proc in processes:
        proc.join(max(0.0, deadline - time.monotonic()))
        if proc.is_alive():
            proc.kill()
            proc.join(1.0)


__all__ = [
    "Terminated",
    "deferred",
    "install",
    "pool_kwargs",
    "spawning",
    "stop_on_signals",
    "stop_pool",
    "worker_setup",
]
