"""dvc.yaml's deps cover the code each stage runs: the transitive closure of the ``kws.*`` imports
of the stage's module (``python -m kws.stages.X`` in its ``cmd``), imports inside functions
included, each package's ``__init__.py`` too. A module missing from a stage's deps would let
``dvc repro`` call the stage "up to date" after that module changed."""

from __future__ import annotations

import ast
import copy
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
MODULE_CMD = re.compile(r"python -m (kws(?:\.\w+)*)")


def module_file(module: str) -> Path | None:
    """The file of ``module`` under src/ (a package: its ``__init__.py``), None when it is none."""
    base = SRC.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_modules(path: Path, module: str) -> set[str]:
    """The ``kws.*`` modules ``path`` imports anywhere in it (``from kws.x import y``: ``kws.x``, and
    ``kws.x.y`` when ``y`` is a module; relative imports resolved against ``module``)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m.split(".")[0] == "kws" and module_file(m) is not None}


def closure(module: str) -> dict[Path, str]:
    """Every project file importing ``module`` runs: ``{file: the module that brought it in}``."""
    files: dict[Path, str] = {}
    todo = [(module, "the stage's command")]
    seen = set()
    while todo:
        name, by = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__.py and a/b/__init__.py first
            parent = ".".join(parts[:i])
            if parent != name:
                todo.append((parent, by))
        path = module_file(name)
        files.setdefault(path.relative_to(REPO), by)
        todo.extend((m, name) for m in imported_modules(path, name))
    return files


def stage_deps(stage: dict) -> list[str]:
    return [next(iter(d)) if isinstance(d, dict) else str(d) for d in stage.get("deps", [])]


def missing_deps(dvc: dict) -> dict[str, list[str]]:
    """``{stage: ["src/kws/x.py (imported by kws.y)", ...]}``: files a stage's module runs that its
    deps do not cover (a listed folder covers what is inside it)."""
    missing = {}
    for name, stage in dvc["stages"].items():
        match = MODULE_CMD.search(stage.get("cmd", ""))
        if not match:
            continue
        deps = [Path(d) for d in stage_deps(stage)]
        lacking = [f"{path} (imported by {by})" for path, by in sorted(closure(match.group(1)).items())
                   if not any(path == d or d in path.parents for d in deps)]
        if lacking:
            missing[name] = lacking
    return missing


@pytest.fixture(scope="module")
def dvc() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())


def test_every_stage_runs_a_kws_module(dvc):
    assert {name for name, stage in dvc["stages"].items() if MODULE_CMD.search(stage["cmd"])} == set(dvc["stages"])


def test_every_stage_lists_the_project_code_it_runs(dvc):
    missing = missing_deps(dvc)
    assert not missing, "dvc.yaml deps lack code the stages import:\n" + "\n".join(
        f"  {stage}: {', '.join(files)}" for stage, files in missing.items())


def test_code_deps_exist(dvc):
    """A dep on a module that was moved or deleted would be a DVC error at the next repro."""
    stale = [(name, d) for name, stage in dvc["stages"].items() for d in stage_deps(stage)
             if d.startswith("src/") and not (REPO / d).exists()]
    assert not stale


@pytest.mark.parametrize("stage", ["download", "prepare", "train", "evaluate", "promote"])
def test_a_missing_dep_is_reported(dvc, stage):
    """The check can fail: drop one imported module (not the stage's own file) from a copy of the
    stage's deps, and it is named, with the stage."""
    broken = copy.deepcopy(dvc)
    module = MODULE_CMD.search(broken["stages"][stage]["cmd"]).group(1)
    own = module_file(module).relative_to(REPO)
    dropped = sorted(str(p) for p in closure(module) if p != own)[-1]
    broken["stages"][stage]["deps"] = [d for d in broken["stages"][stage]["deps"] if d != dropped]
    missing = missing_deps(broken)
    assert list(missing) == [stage] and len(missing[stage]) == 1 and missing[stage][0].startswith(f"{dropped} (")


def test_no_stage_imports_another_nor_a_library_a_stage(dvc):
    """The data walk goes down: config -> stage -> library modules, never stage -> stage (what two
    stages share is a library module, e.g. kws.artifacts) and never library -> stage."""
    stages = {f"src/kws/stages/{name}.py" for name in dvc["stages"]}
    for name, stage in dvc["stages"].items():
        module = MODULE_CMD.search(stage["cmd"]).group(1)
        others = {str(p) for p in closure(module)} & stages - {str(module_file(module).relative_to(REPO))}
        assert not others, f"{module} imports {sorted(others)}"
