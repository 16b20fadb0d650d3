"""A scratch copy of the pipeline (what `dvc repro` needs) in its own git repository.

Tests and benchmarks run the real pipeline there, never in the checkout itself.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Mapping, Sequence

#: What `dvc repro` needs from the repository: configuration, code, the pipeline and DVC's settings.
PIPELINE_FILES = ("conf", "src", "dvc.yaml", ".dvc/config", ".dvcignore", ".gitignore")


def copy_pipeline(repo: Path, dest: Path, params, overrides: Sequence[str] | None = None,
                  env: Mapping[str, str] | None = None) -> Path:
    """Copy :data:`PIPELINE_FILES` of ``repo`` into ``dest``, write ``params`` (a composed config) as
    its ``params.yaml`` (recording ``overrides``), and commit it all in a new git repository."""
    from kws.config import write_params

    dest.mkdir(parents=True, exist_ok=True)
    for item in PIPELINE_FILES:
        src = repo / item
        if src.is_dir():
            shutil.copytree(src, dest / item, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif src.exists():
            (dest / item).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dest / item)
    write_params(params, dest / "params.yaml", overrides or ())
    git = ["git", "-c", "user.email=kws@localhost", "-c", "user.name=kws"]
    for cmd in (["git", "init", "-q"], [*git, "add", "-A"], [*git, "commit", "-qm", "pipeline copy"]):
        subprocess.run(cmd, cwd=dest, env=None if env is None else dict(env), check=True, capture_output=True)
    return dest
