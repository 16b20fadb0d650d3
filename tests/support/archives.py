"""Test helpers for the download stage: a real HTTP server on 127.0.0.1 (``Range`` honoured,
told to drop a connection part-way or to ignore ``Range``) and .tar.gz archives built from the
real sample clips in ``../shared/data/speech_commands_sample``."""

from __future__ import annotations

import contextlib
import hashlib
import io
import tarfile
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from tests.support.paths import SAMPLE_DIR as SAMPLE

WORDS = sorted(p.name for p in SAMPLE.iterdir() if p.is_dir() and not p.name.startswith("_")) if SAMPLE.is_dir() else []
#: every test module using the sample clips: skipped, with the reason, where shared/ is missing
needs_sample = pytest.mark.skipif(
    not WORDS, reason=f"Speech Commands sample clips not found at {SAMPLE} (shared data not checked out)"
)


@dataclass
class ServerState:
    """What the server serves and what it saw."""

    files: dict[str, bytes] = field(default_factory=dict)
    cut_after: int | None = None  # drop the connection after this many body bytes, once
    ignore_range: bool = False  # answer 200 with the whole file even to a Range request
    requests: list[dict[str, str]] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        state: ServerState = self.server.state  # type: ignore[attr-defined]
        state.requests.append({"path": self.path, **{k.lower(): v for k, v in self.headers.items()}})
        data = state.files.get(self.path)
        if data is None:
            self.send_error(404, "not found")
            return
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng and not state.ignore_range:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        body = data[start:]
        self.send_response(status)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if state.cut_after is not None:
            cut, state.cut_after = state.cut_after, None
            self.wfile.write(body[:cut])
            self.wfile.flush()
            self.close_connection = True  # the socket closes before Content-Length bytes
            return
        self.wfile.write(body)


@contextlib.contextmanager
def http_server() -> Iterator[tuple[str, ServerState]]:
    """(base URL, state) of a threaded HTTP server on a free local port."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = ServerState()  # type: ignore[attr-defined]
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.state  # type: ignore[attr-defined]
    finally:
        httpd.shutdown()
        httpd.server_close()


def sample_files() -> dict[str, bytes]:
    """Relative path -> bytes of the sample's word clips (the noise files are left out: size)."""
    return {
        f"{word}/{clip.name}": clip.read_bytes()
        for word in WORDS
        for clip in sorted((SAMPLE / word).glob("*.wav"))
    }


def make_tar(files: dict[str, bytes], *, prefix: str = "", extra: list[tarfile.TarInfo] = ()) -> bytes:
    """A .tar.gz of ``files`` (under ``prefix``), then the ``extra`` members."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for rel, data in files.items():
            info = tarfile.TarInfo(prefix + rel)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        for info in extra:
            tar.addfile(info, io.BytesIO(b"pwned") if info.isreg() else None)
    return buf.getvalue()


# fixtures (tests/conftest.py's pytest_plugins offers them to every test)
@pytest.fixture(scope="module")
def clips() -> dict[str, bytes]:
    """The sample's word clips, relative path -> bytes."""
    return sample_files()


@pytest.fixture(scope="module")
def tarball(clips: dict[str, bytes]) -> bytes:
    """A .tar.gz of :func:`clips`."""
    return make_tar(clips)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def leftovers(parent: Path) -> list[str]:
    """Temp or half-written dataset dirs next to the destination."""
    if not parent.exists():
        return []
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    with http_server() as served:
        yield served


@pytest.fixture
def no_proxy_for_localhost(monkeypatch):
    """A proxy configured in the environment must not intercept the local test server."""
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
