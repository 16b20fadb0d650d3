"""The benchmark scripts run rarely (minutes each, never in CI), so a module they import that was
moved or renamed would only show up weeks later: every ``kws``/``tests`` import they make, at any
depth, must resolve now."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
OURS = ("kws", "tests")


def project_imports(source: str) -> list[tuple[str, str | None]]:
    """``(module, name)`` for every import of a project module in ``source`` (``name`` None for
    ``import module``)."""
    found: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and node.module.split(".")[0] in OURS:
            found += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names if alias.name.split(".")[0] in OURS]
    return found


def unresolved(imports: list[tuple[str, str | None]]) -> list[str]:
    bad = []
    for module, name in imports:
        try:
            mod = importlib.import_module(module)
        except ImportError as err:
            bad.append(f"{module}: {err}")
            continue
        if name and not hasattr(mod, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                bad.append(f"from {module} import {name}")
    return bad


@pytest.mark.parametrize("script", sorted(BENCHMARKS.glob("*.py")), ids=lambda p: p.name)
def test_benchmark_imports_resolve(script):
    assert unresolved(project_imports(script.read_text())) == []


def test_a_moved_module_is_caught():
    source = "def main():\n    from kws.serving import testing as kt\n    import kws.no_such_module\n"
    assert len(unresolved(project_imports(source))) == 2
