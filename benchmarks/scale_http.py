"""A local HTTP server for ``bench_scale.py``'s stand-in archive: it honours ``Range`` and drops a
transfer once after a set number of bytes (``state.cut``), so the download stage's resume is
exercised against a real socket; every transfer is logged (``state.log``)."""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _State:
    def __init__(self, root: Path):
        self.root = root
        self.cut: dict[str, int] = {}  # path -> drop the connection after this many body bytes, once
        self.log: list[dict] = []
        self.lock = threading.Lock()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args) -> None:
        pass

    def do_GET(self) -> None:  # noqa: N802
        state: _State = self.server.state  # type: ignore[attr-defined]
        name = self.path.lstrip("/")
        path = state.root / name
        if "/" in name or not path.is_file():
            self.send_error(404, "not found")
            return
        size = path.stat().st_size
        start, status = 0, 200
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        entry = {"path": self.path, "range_start": start if rng else None, "status": status, "t0": time.time()}
        self.send_response(status)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(size - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{size - 1}/{size}")
        self.end_headers()
        with state.lock:
            cut = state.cut.pop(self.path, None)
        count = size - start if cut is None else min(cut, size - start)
        sent = 0
        try:
            with open(path, "rb") as fh:
                while sent < count:
                    n = self.connection.sendfile(fh, start + sent, count - sent)
                    if not n:
                        break
                    sent += n
        except OSError as err:  # the client went away
            entry["error"] = str(err)
        entry.update(sent=sent, t1=time.time(), cut=cut is not None)
        with state.lock:
            state.log.append(entry)
        if cut is not None:
            self.close_connection = True  # the socket closes before Content-Length bytes


def start_server(root: Path) -> tuple[ThreadingHTTPServer, str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    httpd.state = _State(root)  # type: ignore[attr-defined]
    threading.Thread(target=httpd.serve_forever, args=(0.1,), daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}"
