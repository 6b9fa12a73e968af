"""The package's layers, as the data flows: nothing imports upward, nothing imports in a circle.

Every ``import`` in ``src/sgdstab`` counts, at module level, inside functions and under ``TYPE_CHECKING`` alike.
Each subpackage's ``__init__`` docstring says what it may import; this test is the check of those sentences.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "sgdstab"

# lowest first; a unit may import its own unit and any unit of a strictly lower layer
LAYERS: tuple[tuple[str, ...], ...] = (
    ("sgdstab._version", "sgdstab.errors"),
    ("sgdstab.utils",),
    ("sgdstab.conventions",),
    ("sgdstab.data",),
    ("sgdstab.models",),
    ("sgdstab.problem",),
    ("sgdstab.operators", "sgdstab.estimators"),
    ("sgdstab.kernel",),
    ("sgdstab.measure",),
    ("sgdstab.linear_stability",),
    ("sgdstab.training",),
    ("sgdstab.tracking",),
    ("sgdstab.experiments",),
    ("sgdstab.sweep",),
    ("sgdstab.cli", "sgdstab"),
)
TOP_LEVEL_MODULES = {"__init__.py", "_version.py", "cli.py", "conventions.py", "errors.py"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _unit(module: str) -> str:
    """The layered unit a module belongs to: its subpackage, or itself at the top level."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else module


def _layer(unit: str) -> int:
    for i, units in enumerate(LAYERS):
        if unit in units:
            return i
    raise AssertionError(f"{unit} is in no layer: add it to LAYERS in {__file__}")


def _imports(path: Path, module: str) -> set[str]:
    """Every sgdstab module ``path`` imports (a ``from pkg import name`` counts as pkg.name when that is a module)."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "sgdstab"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target.split(".")[0] != "sgdstab":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if _is_module(sub) else target)
    return found


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (SRC / rel.with_suffix(".py")).exists() or (SRC / rel / "__init__.py").exists()


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        graph[module] = {m for m in _imports(path, module) if m != module}
    return graph


def test_every_unit_has_a_layer_and_says_what_it_may_import():
    for path in sorted(PACKAGE.iterdir()):
        if path.is_dir() and (path / "__init__.py").exists():
            _layer(f"sgdstab.{path.name}")
            doc = ast.get_docstring(ast.parse((path / "__init__.py").read_text())) or ""
            if path.name not in ("data", "experiments", "sweep"):
                assert "May import" in doc, f"{path.name}/__init__.py does not say what it may import"
        elif path.suffix == ".py":
            assert path.name in TOP_LEVEL_MODULES, (
                f"{path.name}: top-level modules are only {sorted(TOP_LEVEL_MODULES)}"
            )


def test_no_module_imports_upward_or_sideways():
    bad = []
    for module, imported in _graph().items():
        unit = _unit(module)
        for target in imported:
            other = _unit(target)
            if other == unit or (other == "sgdstab" and target == "sgdstab"):
                if other == "sgdstab" and unit != "sgdstab":
                    bad.append(f"{module} imports the top-level package (import from the defining module)")
                continue
            if _layer(other) >= _layer(unit):
                bad.append(f"{module} imports {target}")
    assert not bad, "imports against the layering:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                cycles.append(" → ".join([*stack[stack.index(nxt) :], nxt]))
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("unit", [u for layer in LAYERS for u in layer if u != "sgdstab"])
def test_each_unit_exists(unit):
    assert _is_module(unit), f"{unit} is listed in LAYERS but does not exist"
