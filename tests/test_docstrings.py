"""Every top-level export documents itself, with an example that runs: the examples are executed here.

For each name in ``sgdstab.__all__`` (exception classes and constants aside): the docstring holds a runnable
example (``>>>``), and a function's docstring says ``Args:``, ``Returns:`` and ``Raises:``. Every docstring example
anywhere in the package runs too (``doctest``), so no example in the docs rots.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import pkgutil

import pytest

import sgdstab

EXPORTS = [
    name
    for name in sgdstab.__all__
    if not name.startswith("__")
    and (inspect.isfunction(getattr(sgdstab, name)) or inspect.isclass(getattr(sgdstab, name)))
    and not (inspect.isclass(getattr(sgdstab, name)) and issubclass(getattr(sgdstab, name), BaseException))
]
# Exports whose docstrings do not yet have an example / Args-Returns-Raises (issue 14, still open for them). Strict
# xfail: once one is written its test passes, xfail fails, and the name must leave this list — it only shrinks.
EXAMPLE_TODO: set[str] = set()
SECTIONS_TODO: set[str] = set()
MODULES = sorted(m.name for m in pkgutil.walk_packages(sgdstab.__path__, "sgdstab.") if m.name != "sgdstab.__main__")


def _todo(names: list[str], todo: set[str]) -> list:
    mark = pytest.mark.xfail(strict=True, reason="not yet documented (issue 14)")
    return [pytest.param(n, marks=mark) if n in todo else n for n in names]


def test_todo_lists_name_exports():
    assert set(EXPORTS) >= (EXAMPLE_TODO | SECTIONS_TODO)


@pytest.mark.parametrize("name", _todo(EXPORTS, EXAMPLE_TODO))
def test_export_has_a_runnable_example(name):
    doc = inspect.getdoc(getattr(sgdstab, name)) or ""
    assert ">>>" in doc, f"sgdstab.{name}: no runnable example (>>>) in its docstring"


@pytest.mark.parametrize("name", _todo([n for n in EXPORTS if inspect.isfunction(getattr(sgdstab, n))], SECTIONS_TODO))
def test_exported_function_documents_args_returns_raises(name):
    doc = inspect.getdoc(getattr(sgdstab, name)) or ""
    missing = [s for s in ("Args:", "Returns:", "Raises:") if s not in doc]
    assert not missing, f"sgdstab.{name}: its docstring has no {', '.join(missing)} section"


@pytest.mark.parametrize("module", MODULES)
def test_docstring_examples_run(module):
    mod = importlib.import_module(module)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = [t for t in finder.find(mod, module) if t.examples and _defined_here(t, module)]
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} docstring example(s) in {module} failed (output above)"


def _defined_here(test: doctest.DocTest, module: str) -> bool:
    """Skip objects a module merely imports (their own module runs their examples)."""
    return (
        test.filename is None
        or test.filename.endswith(module.replace(".", "/") + ".py")
        or (test.filename.endswith(module.replace(".", "/") + "/__init__.py"))
    )
