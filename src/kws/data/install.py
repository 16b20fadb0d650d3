"""Installing a dataset: ``data.source`` -> a complete dataset directory, atomically.

The top-level operation is :func:`materialize_dataset`: it turns ``data.source`` (an
http(s)/file URL to a tarball, a local tarball or a local folder in the dataset layout)
into a complete dataset directory, or leaves the previous state untouched:

* downloads go to ``<cache>/<name>.part`` and resume after an interruption
  (:func:`kws.data.http.fetch_archive`);
* the archive's sha256 is checked before anything is extracted (:mod:`kws.data.checksum`);
* every archive member is checked before the first one is written
  (:func:`kws.data.archive.safe_extract`);
* extraction happens in a hidden sibling temp dir that is renamed onto the destination
  only after the result looks like Speech Commands; on any failure it is removed.

A JSON info file next to the dataset (``<dest>.json``) records what was installed, so a
rerun with the same source and checksum does nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import secrets
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlparse

from kws.atomic import remove_stale_temps, replace_dir, write_text
from kws.data.archive import safe_extract
from kws.data.checksum import sha256_file, verify_sha256
from kws.data.http import fetch_archive, local_path
from kws.errors import ConfigError, DatasetError, DownloadError

log = logging.getLogger(__name__)


# --- the info file ---------------------------------------------------------------------
def info_path(dest_dir: str | Path) -> Path:
    """The info JSON that describes the dataset at ``dest_dir``: ``<dest_dir>.json``.

    (``data/raw/speech_commands`` -> ``data/raw/speech_commands.json``; a dot in the
    directory name is kept rather than treated as a suffix.)
    """
    dest_dir = Path(dest_dir)
    return dest_dir.with_name(dest_dir.name + ".json")


def read_info(dest_dir: str | Path) -> dict[str, Any] | None:
    """The recorded info of the dataset at ``dest_dir``, or None if missing/unreadable."""
    try:
        info = json.loads(info_path(dest_dir).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def write_info(dest_dir: str | Path, info: dict[str, Any]) -> Path:
    """Write the info JSON next to ``dest_dir`` atomically (temp file + ``os.replace``)."""
    path = info_path(dest_dir)
    try:
        write_text(path, json.dumps(info, indent=2, sort_keys=True) + "\n")
    except OSError as err:
        raise DatasetError(f"cannot write {path}: {err}") from None
    return path


def is_up_to_date(dest_dir: str | Path, source: str, sha256: str | None = None, **extra: Any) -> bool:
    """True when ``dest_dir`` exists and its info file records ``source`` (and ``sha256``
    when one is configured, and every ``extra`` key with an equal value)."""
    if not Path(dest_dir).is_dir():
        return False
    info = read_info(dest_dir)
    if info is None or info.get("source") != source:
        return False
    if sha256 and str(info.get("sha256", "")).lower() != sha256.lower():
        return False
    return all(info.get(key) == value for key, value in extra.items())


def utc_now() -> str:
    """The current UTC time as an ISO-8601 string (seconds)."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


# --- dataset layout -----------------------------------------------------------------
def _visible_entries(path: Path) -> list[Path]:
    return [p for p in path.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]


def _word_dirs(root: Path) -> list[Path]:
    """Word folders: visible directories not starting with ``_`` that hold .wav files."""
    words = []
    for p in _visible_entries(root):
        if p.is_dir() and not p.name.startswith("_"):  # symlinked word folders count too
            if any(f.suffix.lower() == ".wav" for f in p.iterdir()):
                words.append(p)
    return sorted(words)


def dataset_root(path: str | Path) -> Path:
    """The directory that holds the word folders: ``path`` itself, or its single
    sub-directory when the layout is nested one level. Raises :class:`DatasetError`."""
    path = Path(path)
    if _word_dirs(path):
        return path
    entries = _visible_entries(path)
    if len(entries) == 1 and entries[0].is_dir() and _word_dirs(entries[0]):
        return entries[0]
    raise DatasetError(
        f"archive does not contain the Speech Commands layout (word folders such as yes/, no/ "
        f"with .wav files) in {path}: check data.source"
    )


def _iter_files(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name


def tree_digest(root: str | Path, *, content: bool = False) -> str:
    """sha256 over the sorted relative paths and sizes of all files under ``root``
    (and their bytes too when ``content`` is true)."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(_iter_files(root), key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root).as_posix()
        digest.update(f"{rel}\0{path.stat().st_size}\n".encode())
        if content:
            digest.update(bytes.fromhex(sha256_file(path)))
    return digest.hexdigest()


def tree_stats(root: str | Path) -> dict[str, int]:
    """``{"n_files", "n_words", "bytes"}`` of a dataset directory."""
    root = Path(root)
    n_files = n_bytes = 0
    for path in _iter_files(root):
        n_files += 1
        n_bytes += path.stat().st_size
    return {"n_files": n_files, "n_words": len(_word_dirs(root)), "bytes": n_bytes}


# --- the atomic build -------------------------------------------------------------------
def link_or_copy_tree(src: Path, dst: Path) -> None:
    """Recreate ``src`` under ``dst`` (following symlinked folders), hard-linking files where
    possible, copying otherwise."""
    for dirpath, _dirnames, filenames in os.walk(src, followlinks=True):
        target_dir = dst / Path(dirpath).relative_to(src)
        target_dir.mkdir(parents=True, exist_ok=True)
        for name in filenames:
            _link_or_copy(Path(dirpath) / name, target_dir / name)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def build_dataset_atomically(
    dest_dir: str | Path, build: Callable[[Path], None], *, content_digest: bool = False,
    add_dirs: dict[str, Path] | None = None,
) -> dict[str, Any]:
    """Run ``build(tmp)`` in a fresh hidden sibling of ``dest_dir``, check the result has
    the Speech Commands layout (accepting one level of nesting), put every ``add_dirs``
    folder's .wav files into ``<root>/<name>/`` (replacing what the source had there) and
    rename it onto ``dest_dir`` (replacing a previous one, whose info file is removed first).

    On any failure, KeyboardInterrupt included, the temp dir is removed and ``dest_dir``
    is left as it was. Returns :func:`tree_stats` plus ``tree_sha256`` (:func:`tree_digest`).
    """
    dest_dir = Path(dest_dir)
    try:
        dest_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatasetError(f"cannot create {dest_dir.parent}: {err}") from None
    remove_stale_temps(dest_dir)
    tmp = dest_dir.parent / f".{dest_dir.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        tmp.mkdir()  # not mkdtemp: its 0700 mode would end up on the dataset directory
        build(tmp)
        root = dataset_root(tmp)
        for name, folder in (add_dirs or {}).items():
            shutil.rmtree(root / name, ignore_errors=True)
            (root / name).mkdir()
            for wav in sorted(folder.glob("*.wav")):
                _link_or_copy(wav, root / name / wav.name)
        stats = tree_stats(root)
        stats["tree_sha256"] = tree_digest(root, content=content_digest)
        info_path(dest_dir).unlink(missing_ok=True)  # never leave an info file describing other data
        replace_dir(root, dest_dir)
    except OSError as err:
        raise DatasetError(f"cannot install the dataset at {dest_dir}: {err}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return stats


# --- the top-level operation ----------------------------------------------------------
def cache_file_for(url: str, cache_dir: Path) -> Path:
    """Cache location of ``url``'s archive: its file name, prefixed by a hash of the URL
    so that two sources never resume each other's partial downloads."""
    name = posixpath.basename(urlparse(url).path) or "archive.tar.gz"
    return cache_dir / f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{name}"


def materialize_dataset(
    source: str | Path,
    dest_dir: str | Path,
    *,
    sha256: str | None = None,
    cache_dir: str | Path | None = None,
    keep_archive: bool = False,
    progress: bool = True,
    timeout: float = 60,
    retries: int = 3,
    backoff: float = 1.0,
    add_dirs: dict[str, str | Path | None] | None = None,
) -> dict[str, Any]:
    """Make ``dest_dir`` hold the Speech Commands dataset from ``source``, atomically.

    ``source`` is an http(s) URL to a tarball (downloaded, resumably, into ``cache_dir``,
    default ``<dest_dir's parent>/.cache``, and deleted after extraction unless
    ``keep_archive``), a file:// URL or path to a local tarball (verified and extracted in
    place), or a local folder in the dataset layout (hard-linked or copied; symlinked word
    folders are followed). ``sha256`` is the ARCHIVE's checksum: a folder has none, it is
    recorded by :func:`tree_digest` of its file list instead (and re-copied when that changes).
    ``add_dirs`` maps a folder name in the dataset (``_background_noise_``, ``_silence_``) to
    a local folder whose .wav files go there (``data.noise_dir``, ``data.silence_dir``).

    If ``dest_dir`` already holds this source (its info file says so), nothing is done.
    Otherwise the info file ``<dest_dir>.json`` is written after the dataset is in place.
    Returns the info dict: ``source``, ``sha256``, ``bytes``, ``n_files``, ``n_words``,
    ``fetched_at`` (and ``added`` when ``add_dirs`` is used).
    """
    source = str(source).strip() if source is not None else ""
    if not source:
        raise ConfigError("data.source is empty: set it to a URL, a local archive or a folder")
    dest_dir = Path(dest_dir)
    expected = sha256.lower() if sha256 else None
    adds = _added_folders(add_dirs or {})
    added = {name: {"source": str(folder), "sha256": tree_digest(folder)} for name, folder in adds.items()}
    extra = {"added": added} if added else {}

    local = local_path(source)
    folder = local is not None and local.is_dir()
    if folder:
        if _same_path(local, dest_dir):
            raise ConfigError(f"data.source {local} is the destination itself; point it elsewhere")
        root = dataset_root(local)
        if expected:
            log.info("data.sha256 is an archive checksum and does not apply to the folder %s; "
                     "recording the digest of its file list instead", source)
        expected = tree_digest(root)
    if is_up_to_date(dest_dir, source, expected, **extra):
        log.info("already downloaded: %s holds %s", dest_dir, source)
        return read_info(dest_dir) or {}

    if folder:
        log.info("linking/copying %s -> %s", root, dest_dir)
        stats = build_dataset_atomically(dest_dir, lambda tmp: link_or_copy_tree(root, tmp), add_dirs=adds)
        info = {"source": source, "sha256": expected, **_counts(stats)}
    else:
        fetch = dict(progress=progress, timeout=timeout, retries=retries, backoff=backoff)
        cache = Path(cache_dir) if cache_dir is not None else dest_dir.parent / ".cache"
        info = _materialize_archive(source, local, dest_dir, expected, cache_dir=cache, keep_archive=keep_archive,
                                    add_dirs=adds, fetch=fetch)
    info.update(extra)
    write_info(dest_dir, info)
    log.info("dataset ready at %s: %d words, %d files", dest_dir, info["n_words"], info["n_files"])
    return info


def _counts(stats: dict[str, Any]) -> dict[str, Any]:
    """The info file's size fields, and when it was made."""
    return {"bytes": stats["bytes"], "n_files": stats["n_files"], "n_words": stats["n_words"], "fetched_at": utc_now()}


def _same_path(folder: Path, dest_dir: Path) -> bool:
    return dest_dir.exists() and folder.resolve() == dest_dir.resolve()


def _added_folders(add_dirs: dict[str, str | Path | None]) -> dict[str, Path]:
    out = {}
    for name, folder in add_dirs.items():
        if not folder:
            continue
        path = Path(folder).expanduser()
        if not path.is_dir():
            raise ConfigError(f"the folder for {name} ({folder}) does not exist: fix data.noise_dir / data.silence_dir")
        if not any(path.glob("*.wav")):
            raise DatasetError(f"the folder for {name} ({folder}) holds no .wav files")
        out[name] = path
    return out


def _materialize_archive(
    source: str, local: Path | None, dest_dir: Path, expected: str | None, *,
    cache_dir: Path, keep_archive: bool, add_dirs: dict[str, Path], fetch: dict[str, Any],
) -> dict[str, Any]:
    """Fetch (URL) or verify (local file) the archive, extract it atomically, return its info."""
    if local is None:
        archive = cache_file_for(source, cache_dir)
        digest = fetch_archive(source, archive, sha256=expected, **fetch)
    else:
        if not local.is_file():
            raise DownloadError(
                f"data.source {source} does not exist: set it to a URL, a local archive "
                "or a folder in the Speech Commands layout"
            )
        archive = local
        digest = verify_sha256(archive, expected, source=source)
    size = archive.stat().st_size
    log.info("extracting %s into %s", archive, dest_dir)
    try:
        stats = build_dataset_atomically(
            dest_dir, lambda tmp: safe_extract(archive, tmp, fetch["progress"]), add_dirs=add_dirs
        )
    except DownloadError:
        if local is None and expected is None:
            archive.unlink(missing_ok=True)  # unverified and corrupt: fetch afresh next time
        raise
    if local is None and not keep_archive:
        archive.unlink(missing_ok=True)
    return {"source": source, "sha256": digest, **_counts(stats), "bytes": size}
