"""Fetching the Speech Commands dataset: resumable download, safe extraction, atomic install.

The top-level operation is :func:`materialize_dataset`: it turns ``data.source`` (an
http(s)/file URL to a tarball, a local tarball or a local folder in the dataset layout)
into a complete dataset directory, or leaves the previous state untouched:

* downloads go to ``<cache>/<name>.part`` and resume with an HTTP ``Range`` request after
  an interruption (a rerun picks up where the last one stopped);
* the archive's sha256 is checked before anything is extracted;
* every archive member is checked before the first one is written (:func:`safe_extract`);
* extraction happens in a hidden sibling temp dir that is renamed onto the destination
  only after the result looks like Speech Commands; on any failure it is removed.

A JSON info file next to the dataset (``<dest>.json``) records what was installed, so a
rerun with the same source and checksum does nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import lzma
import os
import posixpath
import secrets
import shutil
import tarfile
import time
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import requests
import urllib3
from tqdm import tqdm

from kws.atomic import remove_stale_temps, replace_dir, write_text
from kws.errors import ChecksumError, ConfigError, DatasetError, DownloadError, UnsafeArchiveError

log = logging.getLogger(__name__)

CHUNK_SIZE = 1 << 20
BACKGROUND_NOISE_DIR = "_background_noise_"
_HTTP_SCHEMES = ("http", "https")
#: HTTP statuses worth retrying: the server may answer differently a moment later.
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class _TransientError(Exception):
    """One download attempt failed in a way a retry (resuming the ``.part``) may fix."""

    def __init__(self, message: str, *, reached: bool):
        super().__init__(message)
        #: False when the server was never reached (DNS failure, connection refused).
        self.reached = reached


# --- small helpers ------------------------------------------------------------
def sha256_file(path: str | Path, chunk_size: int = CHUNK_SIZE) -> str:
    """Return the hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def part_path(dest_file: str | Path) -> Path:
    """Where :func:`fetch_archive` keeps an incomplete download of ``dest_file``."""
    dest_file = Path(dest_file)
    return dest_file.with_name(dest_file.name + ".part")


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


def _local_path(source: str) -> Path | None:
    """The local path ``source`` names (a path or a file:// URL), or None for http(s)."""
    parsed = urlparse(source)
    if parsed.scheme in _HTTP_SCHEMES:
        return None
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise ConfigError(f"file URL {source!r} names a remote host; use file:///absolute/path")
        return Path(url2pathname(unquote(parsed.path)))
    if len(parsed.scheme) > 1:  # one letter is a Windows drive, not a scheme
        raise ConfigError(
            f"unsupported data.source {source!r}: use an http(s):// or file:// URL, "
            "a local .tar.gz archive or a folder in the Speech Commands layout"
        )
    return Path(source).expanduser()


# --- download -------------------------------------------------------------------
def fetch_archive(
    url: str,
    dest_file: str | Path,
    *,
    sha256: str | None = None,
    progress: bool = True,
    timeout: float = 60,
    retries: int = 3,
    backoff: float = 1.0,
) -> str:
    """Fetch ``url`` into ``dest_file`` and return its sha256 (hex).

    http(s) URLs are streamed into ``dest_file.part``; an existing ``.part`` is resumed
    with a ``Range`` request. Connection errors and truncated bodies are retried
    ``retries`` times (waiting ``backoff * 2**n`` seconds), each retry resuming the
    ``.part``. A local path or file:// URL is copied the same way. The complete file is
    hashed and, if ``sha256`` is given and differs, deleted (:class:`ChecksumError`);
    only a verified file is renamed to ``dest_file``. An existing ``dest_file`` whose
    sha256 matches the expected one is reused without a download.

    Raises :class:`DownloadError` (HTTP error status, unreachable host, interrupted
    transfer after the retries) or :class:`ChecksumError`.
    """
    dest_file = Path(dest_file)
    part = part_path(dest_file)
    expected = sha256.lower() if sha256 else None
    try:
        dest_file.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DownloadError(f"cannot create download directory {dest_file.parent}: {err}") from None

    if dest_file.is_file():
        if expected and sha256_file(dest_file) == expected:
            log.info("reusing %s (sha256 verified)", dest_file)
            return expected
        log.info("replacing %s: no matching sha256 to reuse it with", dest_file)
        dest_file.unlink()

    local = _local_path(url)
    if local is None:
        _http_download(url, part, progress=progress, timeout=timeout, retries=retries, backoff=backoff)
    else:
        _copy_file(local, part, progress=progress)

    actual = sha256_file(part)
    if expected and actual != expected:
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"checksum mismatch for {url}: expected sha256 {expected}, got {actual}. "
            "The bad file was deleted; rerun to download it again, or fix data.sha256 "
            "(null skips the check)"
        )
    os.replace(part, dest_file)
    log.info("fetched %s -> %s (sha256 %s)", url, dest_file, actual)
    return actual


def _copy_file(src: Path, part: Path, *, progress: bool) -> None:
    """Copy a local file into ``part`` with a byte progress bar."""
    if not src.is_file():
        raise DownloadError(f"source archive {src} does not exist or is not a file")
    try:
        with open(src, "rb") as fin, open(part, "wb") as fout, _bar(
            src.name, src.stat().st_size, 0, progress
        ) as bar:
            while chunk := fin.read(CHUNK_SIZE):
                fout.write(chunk)
                bar.update(len(chunk))
    except OSError as err:
        part.unlink(missing_ok=True)
        raise DownloadError(f"cannot copy {src} to {part}: {err}") from None


def _bar(name: str, total: int | None, initial: int, enabled: bool) -> tqdm:
    return tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=name,
        disable=not enabled,
        mininterval=0.5,
    )


def _http_download(url: str, part: Path, *, progress: bool, timeout: float, retries: int, backoff: float) -> None:
    """Bring ``part`` to the complete content of ``url``, retrying transient failures."""
    host = urlparse(url).netloc or url
    with requests.Session() as session:
        attempt = 0
        while True:
            try:
                _http_attempt(session, url, part, progress=progress, timeout=timeout)
                return
            except _TransientError as err:
                if attempt >= retries:
                    have = part.stat().st_size if part.exists() else 0
                    if not err.reached:
                        kept = f" ({have} bytes kept in {part} for a resume)" if have else ""
                        raise DownloadError(
                            f"cannot reach {host} to download {url} ({err}){kept}; "
                            "check the network or set data.source to a local archive/folder"
                        ) from None
                    raise DownloadError(
                        f"download of {url} failed after {attempt + 1} attempt(s): {err}; "
                        f"{have} bytes kept in {part}, rerun to resume"
                    ) from None
                attempt += 1
                delay = min(backoff * 2 ** (attempt - 1), 30.0)
                log.warning("download attempt %d failed (%s); retrying in %.1fs", attempt, err, delay)
                time.sleep(delay)


def _http_attempt(session: requests.Session, url: str, part: Path, *, progress: bool, timeout: float) -> None:
    """One GET of ``url``, appending to ``part`` when the server honours our ``Range``."""
    offset = part.stat().st_size if part.exists() else 0
    # identity: stream the archive's bytes as they are, never transparently decoded.
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        log.info("resuming %s at byte %d", url, offset)
    else:
        log.info("downloading %s", url)
    try:
        resp = session.get(url, headers=headers, stream=True, timeout=timeout, allow_redirects=True)
    except (requests.ConnectionError, requests.Timeout) as err:
        raise _TransientError(_root_cause(err), reached=False) from None
    except requests.RequestException as err:
        raise DownloadError(f"cannot download {url}: {_short(err)}") from None

    with resp:
        status = resp.status_code
        if status == 416 and offset:
            total = _content_range_total(resp.headers.get("Content-Range", ""))
            if total is None or total == offset:
                log.info("%s is already complete in %s", url, part)
                return
            part.unlink()  # our .part is longer than the file: start over
            raise _TransientError(f"partial file has {offset} bytes but the server has {total}", reached=True)
        if status in _RETRY_STATUSES:
            raise _TransientError(f"HTTP {status} {resp.reason}", reached=True)
        if status >= 400:
            raise DownloadError(
                f"HTTP {status} {resp.reason} for {url}: check data.source "
                "(or set it to a local archive/folder)"
            )
        if status == 206:
            start = _content_range_start(resp.headers.get("Content-Range", ""))
            if start != offset:
                part.unlink(missing_ok=True)
                raise _TransientError(
                    f"server resumed at byte {start}, expected {offset}; restarting", reached=True
                )
            mode = "ab"
        else:
            if offset:
                log.info("server ignored the Range request; restarting from byte 0")
            offset, mode = 0, "wb"

        length = resp.headers.get("Content-Length")
        expected_body = int(length) if length and length.isdigit() else None
        total = offset + expected_body if expected_body is not None else None
        received = 0
        try:
            with open(part, mode) as fh, _bar(part.name.removesuffix(".part"), total, offset, progress) as bar:
                for chunk in _body_chunks(resp):
                    fh.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        except _StreamError as err:
            log.debug("reading %s failed: %r", url, err.__cause__)
            of_total = f" of {total}" if total is not None else ""
            raise _TransientError(f"connection lost after {offset + received}{of_total} bytes", reached=True) from None
        except OSError as err:
            raise DownloadError(f"cannot write {part}: {err}") from None
        if expected_body is not None and received < expected_body:
            raise _TransientError(
                f"truncated body: got {offset + received} of {total} bytes", reached=True
            )


class _StreamError(Exception):
    """Reading the response body failed (the cause is the network error)."""


def _body_chunks(resp: requests.Response) -> Iterator[bytes]:
    """The body's raw bytes (never content-decoded), as they arrive.

    ``read1`` hands over whatever the socket delivered, so when the connection drops
    every byte received so far has been yielded (and written) first; reading fixed-size
    chunks would lose the last incomplete one.
    """
    try:
        read1 = getattr(resp.raw, "read1", None)
        if read1 is not None:  # urllib3 >= 2
            while chunk := read1(CHUNK_SIZE, decode_content=False):
                yield chunk
        else:
            yield from resp.iter_content(64 * 1024)
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as err:
        raise _StreamError() from err


def _content_range_start(value: str) -> int | None:
    """``bytes 100-199/200`` -> 100."""
    try:
        return int(value.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _content_range_total(value: str) -> int | None:
    """``bytes */200`` or ``bytes 0-9/200`` -> 200 (None when unknown)."""
    try:
        return int(value.rsplit("/", 1)[1])
    except (IndexError, ValueError):
        return None


def _root_cause(err: BaseException) -> str:
    """The innermost reason of a requests/urllib3 connection error, e.g. ``Connection
    refused`` or ``[Errno -2] Name or service not known``, instead of their nested reprs."""
    seen: set[int] = set()
    best: BaseException = err
    stack: list[BaseException] = [err]
    while stack:
        exc = stack.pop()
        if id(exc) in seen:
            continue
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.strerror:
            best = exc
        nested = [exc.__cause__, exc.__context__, getattr(exc, "reason", None), *exc.args]
        stack.extend(e for e in nested if isinstance(e, BaseException))
    if isinstance(best, OSError) and best.strerror:
        return best.strerror if best.errno is None or best.errno > 0 else f"DNS lookup failed: {best.strerror}"
    if isinstance(err, requests.Timeout):
        return "timed out"
    return _short(err)


def _short(err: BaseException) -> str:
    """A one-line description of a requests/urllib3 error (their reprs nest deeply)."""
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# --- extraction -------------------------------------------------------------------
def _escapes(path: str) -> bool:
    """True when a relative POSIX path, normalized, leaves its root."""
    norm = posixpath.normpath(path)
    return norm == ".." or norm.startswith("../")


def _is_absolute(name: str) -> bool:
    return name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":")


#: tarfile's extraction-filter error (Python >= 3.11.4), None where filters do not exist.
_FILTER_ERROR: type[Exception] | None = getattr(tarfile, "FilterError", None)
#: What a truncated or corrupt (compressed) tar stream raises.
_CORRUPT = (tarfile.ReadError, tarfile.CompressionError, EOFError, zlib.error, gzip.BadGzipFile, lzma.LZMAError)


def check_members(members: list[tarfile.TarInfo]) -> None:
    """Raise :class:`UnsafeArchiveError` for the first member that could write outside
    the extraction directory or is not a plain file, directory or contained link."""
    symlinks = {posixpath.normpath(m.name.replace("\\", "/")) for m in members if m.issym()}
    for m in members:
        name = m.name
        norm = posixpath.normpath(name.replace("\\", "/"))
        if not name.strip():
            raise UnsafeArchiveError(f"unsafe archive member {name!r}: empty name")
        if _is_absolute(name):
            raise UnsafeArchiveError(f"unsafe archive member {name!r}: absolute path")
        if ".." in name.replace("\\", "/").split("/"):
            raise UnsafeArchiveError(f"unsafe archive member {name!r}: '..' path component")
        parents = norm.split("/")[:-1]
        for i in range(1, len(parents) + 1):
            if "/".join(parents[:i]) in symlinks:
                raise UnsafeArchiveError(f"unsafe archive member {name!r}: written through a symlink")
        if m.issym():
            target = m.linkname
            if _is_absolute(target) or _escapes(posixpath.join(posixpath.dirname(norm), target)):
                raise UnsafeArchiveError(
                    f"unsafe archive member {name!r}: symlink to {target!r} points outside the archive"
                )
        elif m.islnk():
            target = m.linkname
            if _is_absolute(target) or _escapes(target) or ".." in target.split("/"):
                raise UnsafeArchiveError(
                    f"unsafe archive member {name!r}: hard link to {target!r} points outside the archive"
                )
        elif not (m.isreg() or m.isdir()):
            raise UnsafeArchiveError(
                f"unsafe archive member {name!r}: special file (device, FIFO or unknown type)"
            )


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

    def tracked(members: list[tarfile.TarInfo], bar: tqdm):
        for m in members:
            yield m
            bar.update(m.size)

    try:
        with open(archive, "rb") as raw, tarfile.open(fileobj=raw, mode="r:*") as tar:
            members = []
            with _bar(f"check {archive.name}", archive.stat().st_size, 0, progress) as bar:
                for m in tar:  # reads the whole archive: truncation shows up here
                    members.append(m)
                    bar.update(raw.tell() - bar.n)
            check_members(members)
            dest_dir.mkdir(parents=True, exist_ok=True)
            with _bar(f"extract {archive.name}", sum(m.size for m in members), 0, progress) as bar:
                if _FILTER_ERROR is not None:
                    tar.extractall(dest_dir, members=tracked(members, bar), filter="data")
                else:  # Python < 3.11.4: the pre-check above is the only guard
                    tar.extractall(dest_dir, members=tracked(members, bar))
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

    local = _local_path(source)
    if local is not None and local.is_dir():
        if _same_path(local, dest_dir):
            raise ConfigError(f"data.source {local} is the destination itself; point it elsewhere")
        root = dataset_root(local)
        digest = tree_digest(root)
        if expected:
            log.info("data.sha256 is an archive checksum and does not apply to the folder %s; "
                     "recording the digest of its file list instead", source)
        if is_up_to_date(dest_dir, source, digest, **extra):
            log.info("already downloaded: %s holds %s", dest_dir, source)
            return read_info(dest_dir) or {}
        log.info("linking/copying %s -> %s", root, dest_dir)
        stats = build_dataset_atomically(dest_dir, lambda tmp: link_or_copy_tree(root, tmp), add_dirs=adds)
        info = {"source": source, "sha256": digest, "bytes": stats["bytes"], "n_files": stats["n_files"],
                "n_words": stats["n_words"], "fetched_at": utc_now()}
    else:
        if is_up_to_date(dest_dir, source, expected, **extra):
            log.info("already downloaded: %s holds %s", dest_dir, source)
            return read_info(dest_dir) or {}
        info = _materialize_archive(
            source, local, dest_dir, expected,
            cache_dir=Path(cache_dir) if cache_dir is not None else dest_dir.parent / ".cache",
            keep_archive=keep_archive, progress=progress, timeout=timeout, retries=retries, backoff=backoff,
            add_dirs=adds,
        )
    info.update(extra)
    write_info(dest_dir, info)
    log.info("dataset ready at %s: %d words, %d files", dest_dir, info["n_words"], info["n_files"])
    return info


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
    source: str,
    local: Path | None,
    dest_dir: Path,
    expected: str | None,
    *,
    cache_dir: Path,
    keep_archive: bool,
    progress: bool,
    timeout: float,
    retries: int,
    backoff: float,
    add_dirs: dict[str, Path],
) -> dict[str, Any]:
    if local is None:
        archive = cache_file_for(source, cache_dir)
        digest = fetch_archive(
            source, archive, sha256=expected, progress=progress, timeout=timeout, retries=retries, backoff=backoff
        )
    else:
        if not local.is_file():
            raise DownloadError(
                f"data.source {source} does not exist: set it to a URL, a local archive "
                "or a folder in the Speech Commands layout"
            )
        archive = local
        digest = sha256_file(archive)
        if expected and digest != expected:
            raise ChecksumError(
                f"checksum mismatch for {source}: expected sha256 {expected}, got {digest}; "
                "fix the archive or data.sha256 (null skips the check)"
            )
    size = archive.stat().st_size
    log.info("extracting %s into %s", archive, dest_dir)
    try:
        stats = build_dataset_atomically(dest_dir, lambda tmp: safe_extract(archive, tmp, progress), add_dirs=add_dirs)
    except DownloadError:
        if local is None and expected is None:
            archive.unlink(missing_ok=True)  # unverified and corrupt: fetch afresh next time
        raise
    if local is None and not keep_archive:
        archive.unlink(missing_ok=True)
    return {
        "source": source,
        "sha256": digest,
        "bytes": size,
        "n_files": stats["n_files"],
        "n_words": stats["n_words"],
        "fetched_at": utc_now(),
    }
