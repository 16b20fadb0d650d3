"""Resumable download of one file: http(s) with ``Range`` resume and retries, or a local copy.

:func:`fetch_archive` streams into ``<dest>.part``; after an interruption a rerun resumes it
with a ``Range`` request. Only a complete file that passed the sha256 check
(:func:`kws.data.checksum.verify_sha256`) is renamed onto ``<dest>``.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import requests
import urllib3

from kws.data.checksum import CHUNK_SIZE, sha256_file, verify_sha256
from kws.data.progress import byte_bar
from kws.errors import ConfigError, DownloadError

log = logging.getLogger(__name__)

_HTTP_SCHEMES = ("http", "https")
#: HTTP statuses worth retrying: the server may answer differently a moment later.
_RETRY_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})


class _TransientError(Exception):
    """One download attempt failed in a way a retry (resuming the ``.part``) may fix."""

    def __init__(self, message: str, *, reached: bool):
        super().__init__(message)
        #: False when the server was never reached (DNS failure, connection refused).
        self.reached = reached


class _StreamError(Exception):
    """Reading the response body failed (the cause is the network error)."""


def part_path(dest_file: str | Path) -> Path:
    """Where :func:`fetch_archive` keeps an incomplete download of ``dest_file``."""
    dest_file = Path(dest_file)
    return dest_file.with_name(dest_file.name + ".part")


def local_path(source: str) -> Path | None:
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

    local = local_path(url)
    if local is None:
        _http_download(url, part, progress=progress, timeout=timeout, retries=retries, backoff=backoff)
    else:
        _copy_file(local, part, progress=progress)

    actual = verify_sha256(part, expected, source=url, delete=True)
    os.replace(part, dest_file)
    log.info("fetched %s -> %s (sha256 %s)", url, dest_file, actual)
    return actual


def _copy_file(src: Path, part: Path, *, progress: bool) -> None:
    """Copy a local file into ``part`` with a byte progress bar."""
    if not src.is_file():
        raise DownloadError(f"source archive {src} does not exist or is not a file")
    try:
        with open(src, "rb") as fin, open(part, "wb") as fout, byte_bar(
            src.name, src.stat().st_size, 0, progress
        ) as bar:
            while chunk := fin.read(CHUNK_SIZE):
                fout.write(chunk)
                bar.update(len(chunk))
    except OSError as err:
        part.unlink(missing_ok=True)
        raise DownloadError(f"cannot copy {src} to {part}: {err}") from None


# --- http(s) -------------------------------------------------------------------------
def _http_download(url: str, part: Path, *, progress: bool, timeout: float, retries: int, backoff: float) -> None:
    """Bring ``part`` to the complete content of ``url``, retrying transient failures."""
    with requests.Session() as session:
        attempt = 0
        while True:
            try:
                _http_attempt(session, url, part, progress=progress, timeout=timeout)
                return
            except _TransientError as err:
                if attempt >= retries:
                    raise _gave_up(url, part, err, attempt + 1) from None
                attempt += 1
                delay = min(backoff * 2 ** (attempt - 1), 30.0)
                log.warning("download attempt %d failed (%s); retrying in %.1fs", attempt, err, delay)
                time.sleep(delay)


def _gave_up(url: str, part: Path, err: _TransientError, attempts: int) -> DownloadError:
    """The error once the retries are spent; the ``.part`` stays for a later resume."""
    have = part.stat().st_size if part.exists() else 0
    if not err.reached:
        host = urlparse(url).netloc or url
        kept = f" ({have} bytes kept in {part} for a resume)" if have else ""
        return DownloadError(
            f"cannot reach {host} to download {url} ({err}){kept}; "
            "check the network or set data.source to a local archive/folder"
        )
    return DownloadError(
        f"download of {url} failed after {attempts} attempt(s): {err}; {have} bytes kept in {part}, rerun to resume"
    )


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
        offset = _resume_offset(resp, url, part, offset)
        if offset is not None:
            _write_body(resp, url, part, offset, progress=progress)


def _resume_offset(resp: requests.Response, url: str, part: Path, offset: int) -> int | None:
    """Where the response's body starts in the file: ``offset`` when the server resumed, 0
    when it sends the whole file, None when ``part`` is already complete. Raises for a
    status that a retry may fix (:class:`_TransientError`) or will not (:class:`DownloadError`)."""
    status = resp.status_code
    if status == 416 and offset:
        total = _content_range_total(resp.headers.get("Content-Range", ""))
        if total is None or total == offset:
            log.info("%s is already complete in %s", url, part)
            return None
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
            raise _TransientError(f"server resumed at byte {start}, expected {offset}; restarting", reached=True)
        return offset
    if offset:
        log.info("server ignored the Range request; restarting from byte 0")
    return 0


def _write_body(resp: requests.Response, url: str, part: Path, offset: int, *, progress: bool) -> None:
    """Write the body into ``part`` from byte ``offset`` (appending when it is not 0)."""
    length = resp.headers.get("Content-Length")
    expected_body = int(length) if length and length.isdigit() else None
    total = offset + expected_body if expected_body is not None else None
    received = 0
    try:
        with open(part, "ab" if offset else "wb") as fh, byte_bar(
            part.name.removesuffix(".part"), total, offset, progress
        ) as bar:
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
        raise _TransientError(f"truncated body: got {offset + received} of {total} bytes", reached=True)


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
