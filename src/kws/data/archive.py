"""Safe extraction of a tar archive: every member is checked before the first one is written.

A member that could write outside the extraction directory (absolute path, ``..``, a link
pointing out, a path through a symlink) or is not a plain file, directory or contained link
raises :class:`UnsafeArchiveError` naming it, and nothing is extracted. tarfile's ``data``
filter is a second line of defence where Python has it.
"""

from __future__ import annotations

import gzip
import lzma
import posixpath
import tarfile
import zlib
from pathlib import Path
from typing import Iterable, Iterator

from kws.data.progress import byte_bar
from kws.errors import DatasetError, DownloadError, UnsafeArchiveError

#: tarfile's extraction-filter error (Python >= 3.11.4), None where filters do not exist.
_FILTER_ERROR: type[Exception] | None = getattr(tarfile, "FilterError", None)
#: What a truncated or corrupt (compressed) tar stream raises.
_CORRUPT = (tarfile.ReadError, tarfile.CompressionError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError)


def _escapes(path: str) -> bool:
    """True when a relative POSIX path, normalized, leaves its root."""
    norm = posixpath.normpath(path)
    return norm == ".." or norm.startswith("../")


def _is_absolute(name: str) -> bool:
    return name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":")


def check_members(members: list[tarfile.TarInfo]) -> None:
    """Raise :class:`UnsafeArchiveError` for the first member that could write outside
    the extraction directory or is not a plain file, directory or contained link."""
    symlinks = {posixpath.normpath(m.name.replace("\\", "/")) for m in members if m.issym()}
    for m in members:
        problem = _path_problem(m.name, symlinks) or _type_problem(m)
        if problem:
            raise UnsafeArchiveError(f"unsafe archive member {m.name!r}: {problem}")


def _path_problem(name: str, symlinks: set[str]) -> str | None:
    """Why writing to ``name`` could leave the extraction directory (None: it cannot)."""
    if not name.strip():
        return "empty name"
    if _is_absolute(name):
        return "absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "'..' path component"
    parents = posixpath.normpath(name.replace("\\", "/")).split("/")[:-1]
    for i in range(1, len(parents) + 1):
        if "/".join(parents[:i]) in symlinks:
            return "written through a symlink"
    return None


def _type_problem(m: tarfile.TarInfo) -> str | None:
    """Why the member's type is unsafe: a link pointing outside, a device or FIFO."""
    if m.issym():
        norm = posixpath.normpath(m.name.replace("\\", "/"))
        target = m.linkname
        if _is_absolute(target) or _escapes(posixpath.join(posixpath.dirname(norm), target)):
            return f"symlink to {target!r} points outside the archive"
    elif m.islnk():
        target = m.linkname
        if _is_absolute(target) or _escapes(target) or ".." in target.split("/"):
            return f"hard link to {target!r} points outside the archive"
    elif not (m.isreg() or m.isdir()):
        return "special file (device, FIFO or unknown type)"
    return None


def safe_extract(archive: str | Path, dest_dir: str | Path, progress: bool = False) -> list[str]:
    """Extract a .tar/.tar.gz/.tgz (also .bz2/.xz) into ``dest_dir`` and return member names.

    Every member is checked first (:func:`check_members`); if any is unsafe,
    :class:`UnsafeArchiveError` names it and nothing is extracted. Extraction also uses
    tarfile's ``data`` filter as a second line of defence. A corrupt or truncated
    archive raises :class:`DownloadError`; the caller removes the partial ``dest_dir``.
    ``progress``: two bars with an ETA, the check (compressed bytes read) and the extraction
    (member bytes written) — each a minute or more for the full 2.4 GB archive.
    """
    archive, dest_dir = Path(archive), Path(dest_dir)
    if not archive.is_file():
        raise DownloadError(f"archive {archive} does not exist")
    try:
        with open(archive, "rb") as raw, tarfile.open(fileobj=raw, mode="r:*") as tar:
            with byte_bar(f"check {archive.name}", archive.stat().st_size, 0, progress) as bar:
                members = []
                for m in tar:  # reads the whole archive: truncation shows up here
                    members.append(m)
                    bar.update(raw.tell() - bar.n)
            check_members(members)
            dest_dir.mkdir(parents=True, exist_ok=True)
            with byte_bar(f"extract {archive.name}", sum(m.size for m in members), 0, progress) as bar:
                _extract(tar, dest_dir, _counted(members, bar))
    except _CORRUPT as err:
        raise DownloadError(
            f"archive {archive} is corrupt, truncated or not a tar archive ({err}); "
            "delete it and fetch it again (set data.sha256 to catch this at download time)"
        ) from None
    except OSError as err:
        raise DatasetError(f"cannot extract {archive} into {dest_dir}: {err}") from None
    except Exception as err:
        if _FILTER_ERROR is not None and isinstance(err, _FILTER_ERROR):  # missed by the pre-check
            raise UnsafeArchiveError(f"unsafe archive member in {archive}: {err}") from None
        raise
    return [m.name for m in members]


def _counted(members: list[tarfile.TarInfo], bar) -> Iterator[tarfile.TarInfo]:
    """``members``, advancing ``bar`` by each one's size as it is handed out."""
    for m in members:
        yield m
        bar.update(m.size)


def _extract(tar: tarfile.TarFile, dest_dir: Path, members: Iterable[tarfile.TarInfo]) -> None:
    if _FILTER_ERROR is not None:
        tar.extractall(dest_dir, members=members, filter="data")
    else:  # Python < 3.11.4: the pre-check is the only guard
        tar.extractall(dest_dir, members=members)
