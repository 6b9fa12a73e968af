"""The code base stays ruff-clean (the configuration is in pyproject.toml, with its complexity gate) and no function
in the package is longer than a screen."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_check_passes():
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    proc = subprocess.run(
        [ruff, "check", "src", "tests", "scripts", "benchmarks"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:]


MAX_FUNCTION_LINES = 60  # def line to last line, docstring excluded: one screen
# Still over the limit (issue 14 is open for them). The list only shrinks: a listed function that fits fails the test.
LONG_TODO: set[tuple[str, str]] = set()


def _length(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    first = node.body[0]
    doc = 0
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        doc = first.end_lineno - first.lineno + 1
    return node.end_lineno - node.lineno + 1 - doc


def test_no_function_in_the_package_is_longer_than_a_screen():
    long, pending = [], set()
    package = ROOT / "src" / "sgdstab"
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and _length(node) > MAX_FUNCTION_LINES:
                key = (path.relative_to(package).as_posix(), node.name)
                if key in LONG_TODO:
                    pending.add(key)
                else:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {_length(node)} lines")
    assert pending == LONG_TODO, f"now within the limit, remove from LONG_TODO: {sorted(LONG_TODO - pending)}"
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines (split them into named steps):\n" + "\n".join(long)
