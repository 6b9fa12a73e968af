"""Executors: a run in a spawned pool worker gives the same figures, bit for bit, as in this process; a failing
run comes back as a RunFailure, not an exception; bad executor settings are refused."""

from __future__ import annotations

import math

import pytest

from sgdstab.errors import ExecutorError
from sgdstab.sweep.config import RunConfig, run_to_dict
from sgdstab.sweep.executors import LocalExecutor, SerialExecutor, make_executor
from sgdstab.sweep.run import RunFailure, RunOutput

TINY = {"dataset": "digits", "classes": (0, 1), "n": 40, "widths": (8,), "steps": 60}
CONFIGS = [
    run_to_dict(RunConfig(**TINY, lr=0.2, batch_size=4)),
    run_to_dict(RunConfig(**TINY, lr=0.05, batch_size=20, stability=True)),
    run_to_dict(RunConfig(**{**TINY, "dataset": "fashion-mnist"}, data_dir="/nonexistent/sgdstab")),
]


def _collect(executor, configs):
    handles = [executor.submit(cfg) for cfg in configs]
    outcomes = {}
    while len(outcomes) < len(handles):
        for h in executor.wait([h for h in handles if h not in outcomes], timeout=1.0):
            outcomes[h] = executor.result(h)
    return [outcomes[h] for h in handles]


def _same(a, b):
    return a == b or (isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b))


def test_local_pool_equals_serial_and_reports_failures():
    inline = SerialExecutor(threads=1)
    try:
        serial = _collect(inline, CONFIGS)
    finally:
        inline.close()
    pool = LocalExecutor(workers=1, threads=1)
    try:
        pooled = _collect(pool, CONFIGS)
    finally:
        pool.close()
    for a, b in zip(serial[:2], pooled[:2], strict=True):
        assert isinstance(a, RunOutput) and isinstance(b, RunOutput)
        assert a.results.keys() == b.results.keys()
        assert all(_same(a.results[k], b.results[k]) for k in a.results), (a.results, b.results)
        assert a.history == b.history and (a.theta == b.theta).all()
        assert a.worker != b.worker  # really another process
    assert {"rho", "critical_lr", "stable"} <= serial[1].results.keys()
    for failure in (serial[2], pooled[2]):
        assert isinstance(failure, RunFailure)
        assert failure.error.startswith("DataError") and "/nonexistent/sgdstab" in failure.error
        assert "\n" not in failure.error and "Traceback" in failure.traceback


def test_bad_executor_settings_are_refused():
    with pytest.raises(ExecutorError, match="unknown executor 'dask'"):
        make_executor("dask")
    with pytest.raises(ExecutorError, match="--address is for --executor ray"):
        make_executor("local", address="auto")
    with pytest.raises(ExecutorError, match="at least 1"):
        make_executor("local", workers=0)
