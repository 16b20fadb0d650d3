"""Atomic directory outputs: build next to the target, then swap it in with a rename.

A failed or interrupted stage never leaves a half-written directory where a later stage
(or the service) would trust it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


def replace_dir(src: Path, dst: Path) -> None:
    """Move directory ``src`` onto ``dst``; a previous ``dst`` is renamed aside first, then removed."""
    src, dst = Path(src), Path(dst)
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(target: str | Path) -> list[Path]:
    """Remove temp dirs that :func:`staged_dir` left beside ``target`` when its process was killed
    outright (SIGKILL, power loss): their names carry the writer's pid, and only dead writers'
    dirs are removed (each logged). Returns what was removed."""
    target = Path(target)
    removed = []
    for tmp in target.parent.glob(f".{target.name}.tmp-*"):
        pid = tmp.name[len(f".{target.name}.tmp-"):].split("-", 1)[0]
        if tmp.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            log.info("removed %s, left by a killed run (pid %s)", tmp, pid)
            removed.append(tmp)
    return removed


@contextmanager
def staged_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty temp dir beside ``target``; on success it replaces ``target``, on any error it is removed.
    Temp dirs of earlier writers that were killed outright are removed first."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    try:
        os.chmod(tmp, 0o755)
        yield tmp
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically (see :func:`write_bytes`)."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file atomically (temp file in the same folder + rename): a reader polling it never
    sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
