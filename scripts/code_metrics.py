"""The structure figures issue 14 asks for, on any checkout: ``python scripts/code_metrics.py [ROOT]``.

Counts, for ``ROOT/src/sgdstab`` (default: this checkout): modules at the top level of the package, names exported
by ``sgdstab.__all__`` (read from the source, nothing imported), functions in all, functions over 10 branches
(ruff's PLR0912 count) and over McCabe complexity 10 (C901), functions over 60 and over 100 lines (def to end,
docstring excluded), and the duplicated plumbing the issue names: inline Frobenius bounds, ``os.replace`` calls
(atomic writes) outside ``files.py``, distinct spellings of non-finite numbers in JSON, and exception classes
defined outside ``errors.py``. Ruff comes from the same environment as this Python.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

LIMIT_LINES = 60


def _functions(package: Path) -> list[tuple[Path, ast.FunctionDef | ast.AsyncFunctionDef]]:
    out = []
    for path in sorted(package.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                out.append((path, node))
    return out


def _length(node: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    first = node.body[0]
    doc = 0
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        doc = first.end_lineno - first.lineno + 1
    return node.end_lineno - node.lineno + 1 - doc


def _ruff_count(package: Path, rule: str, option: str) -> int:
    ruff = Path(sys.executable).with_name("ruff")
    cmd = [str(ruff), "check", "--no-cache", "--isolated", "--select", rule, "--config", option]
    cmd += ["--output-format", "json", str(package)]
    found = json.loads(subprocess.run(cmd, capture_output=True, text=True).stdout or "[]")
    return len(found)


def _exported(package: Path) -> int:
    tree = ast.parse((package / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
            return len(node.value.elts)
    return 0


def _grep(package: Path, pattern: str, skip: str | None = None) -> int:
    rx = re.compile(pattern)
    return sum(len(rx.findall(p.read_text())) for p in package.rglob("*.py") if skip is None or p.name != skip)


def metrics(root: Path) -> dict[str, int]:
    package = root / "src" / "sgdstab"
    functions = _functions(package)
    lengths = [_length(node) for _, node in functions]
    spellings = set()
    for p in package.rglob("*.py"):
        text = p.read_text()
        for word in ('"NaN"', '"nan"', '"Infinity"', '"inf"', "allow_nan=True"):
            if word in text and ("json" in text.lower() or "sqlite" in text.lower()):
                spellings.add({'"Infinity"': '"NaN"', '"inf"': '"nan"'}.get(word, word))
    errors_outside = sum(
        1
        for p in package.rglob("*.py")
        if p.name != "errors.py"
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.ClassDef)
        and any(re.search(r"Error|Exception|Terminated", ast.unparse(b)) for b in node.bases)
    )
    return {
        "top-level modules (excluding __init__, _version)": sum(
            1 for p in package.glob("*.py") if p.name not in ("__init__.py", "_version.py")
        ),
        "subpackages": sum(1 for p in package.iterdir() if (p / "__init__.py").exists()),
        "exported names (sgdstab.__all__)": _exported(package),
        "functions": len(functions),
        "functions over 10 branches (ruff PLR0912)": _ruff_count(package, "PLR0912", "lint.pylint.max-branches=10"),
        "functions over McCabe complexity 10 (ruff C901)": _ruff_count(
            package, "C901", "lint.mccabe.max-complexity=10"
        ),
        "functions over 50 statements (ruff PLR0915)": _ruff_count(package, "PLR0915", "lint.pylint.max-statements=50"),
        f"functions over {LIMIT_LINES} lines": sum(n > LIMIT_LINES for n in lengths),
        "functions over 100 lines": sum(n > 100 for n in lengths),
        "inline Frobenius bounds sqrt(1/(c·μ))/η": _grep(package, r"sqrt\(1(?:\.0)? / \(c \*", skip="conventions.py"),
        "os.replace outside utils/files.py (atomic writes)": _grep(package, r"os\.replace\(", skip="files.py"),
        "JSON spellings of non-finite numbers": len(spellings),
        "exception classes outside errors.py": errors_outside,
    }


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]
    for name, value in metrics(root).items():
        print(f"{value:6d}  {name}")


if __name__ == "__main__":
    main()
