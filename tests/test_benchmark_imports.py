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


def top_level_names(source: str) -> set[str]:
    """The names a module defines at its top level (functions, classes, assignments, imports)."""
    names: set[str] = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}  # a, b = ...
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return names


def sibling_misses(source: str, siblings: dict[str, str]) -> list[str]:
    """``from <sibling> import name`` of a benchmark helper (``siblings``: module -> source) whose
    module or name is not there: the scripts import each other's parts by file, off ``sys.path``."""
    bad = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module in siblings:
            defined = top_level_names(siblings[node.module])
            bad += [f"from {node.module} import {a.name}" for a in node.names if a.name not in defined]
    return bad


@pytest.mark.parametrize("script", sorted(BENCHMARKS.glob("*.py")), ids=lambda p: p.name)
def test_benchmark_sibling_imports_resolve(script):
    siblings = {p.stem: p.read_text() for p in BENCHMARKS.glob("*.py")}
    assert sibling_misses(script.read_text(), siblings) == []


def test_a_name_moved_between_helpers_is_caught():
    siblings = {"real_folds": "def compose_fold(): ...\n", "real_pooling": "STREAM_KEYS = ()\n"}
    source = ("from real_folds import compose_fold, trained\n"
              "def f():\n    from real_pooling import STREAM_KEYS, pooled\n")
    assert sibling_misses(source, siblings) == ["from real_folds import trained", "from real_pooling import pooled"]
