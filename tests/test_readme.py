"""The README's promises: its Python example runs as written, and it gives exactly two set-up commands."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README.read_text(), flags=re.S)


def test_python_example_runs_as_written(capsys):
    (example,) = _blocks("python")
    assert len(example.strip().splitlines()) <= 12
    namespace: dict = {}
    exec(compile(example, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "hessian_frobenius" in out and "Frobenius bound" in out
    assert namespace["history"].diverged_at is None
    assert namespace["align"].mu > 0


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
