"""The README's promises: every Python block runs as written (the API example compares the Frobenius bound at a
global minimum, where the theorem applies), and it gives exactly two set-up commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def test_every_other_python_block_runs_as_written(capsys):
    blocks = _blocks("python")
    assert blocks, "the README has no Python example"
    for index, block in enumerate(blocks[1:], start=1):  # the first has a test of its own, below
        namespace: dict = {}  # each block stands alone, as a reader would paste it
        exec(compile(block, f"README.md (python block {index + 1})", "exec"), namespace)
    capsys.readouterr()


def test_python_api_example_compares_the_bound_at_a_global_minimum(capsys):
    example = _blocks("python")[0]
    assert len(example.strip().splitlines()) <= 12
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "hessian_frobenius" in out and "Frobenius bound" in out
    assert namespace["history"].diverged_at is None
    align, polished, curv, problem = (namespace[k] for k in ("align", "polished", "curv", "problem"))
    assert align.mu > 0 and align.loss > 1e-8  # μ where SGD stopped, not at the 0/0 of the minimum
    # the comparison is made where the theorem applies: a global minimum to float64 rounding, reached close by
    assert polished.global_minimum and float(problem.loss()) <= 1e-25 and polished.loss_before == align.loss
    assert polished.relative_distance < 0.1
    assert curv.loss == float(problem.loss()) and curv.at_minimum
    bound = (20 / align.mu) ** 0.5 / 0.05
    assert curv.hessian_frobenius <= bound
    assert f"{curv.hessian_frobenius}" in out and f"{bound}" in out


def test_quickstart_has_exactly_two_commands():
    quickstart = README.read_text().split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```bash\n(.*?)```", quickstart, flags=re.S)
    commands = [line for line in block.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert [c.split("#")[0].strip() for c in commands] == ["make demo", "make test"]


def test_ci_runs_the_readme_test_command():
    ci = (README.parent / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, flags=re.M)


@pytest.mark.parametrize("target", ["demo", "test"])
def test_makefile_has_the_targets(target):
    assert re.search(rf"^{target}:", (README.parent / "Makefile").read_text(), flags=re.M)
