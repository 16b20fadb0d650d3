"""The serving benchmarks' wrk driver (benchmarks/_wrk.py) against the real wrk and a real HTTP
server on 127.0.0.1: the figures it reads agree with wrk's own text report, status errors are
counted, and a script that prints no summary is an error, not a run of zeros."""

from __future__ import annotations

import importlib.util
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _wrk_module():
    spec = importlib.util.spec_from_file_location("_wrk", BENCHMARKS / "_wrk.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


wrk = _wrk_module()


def _server(status: int):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            body = b"ok"
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # keep the test's output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def wrk_or_skip():
    if not (shutil.which("wrk") or Path("/usr/bin/wrk").is_file()):
        pytest.skip("wrk is not installed (the README's set-up command installs it)")


@pytest.mark.parametrize("status", [200, 500])
def test_figures_agree_with_wrks_own_report(tmp_path, wrk_or_skip, status):
    server = _server(status)
    try:
        res, text = wrk.load(f"http://127.0.0.1:{server.server_port}/", wrk.write_get_script(tmp_path),
                             1, 2, 1, "5s")
    finally:
        server.shutdown()
    assert res["requests"] > 0, text
    assert res["requests_per_s"] == pytest.approx(res["requests_per_s_wrk"], rel=0.05)
    assert 0 < res["latency_ms"]["min"] <= res["latency_ms"]["p50"] <= res["latency_ms"]["max"]
    assert set(res["latency_distribution_wrk_ms"]) == {"p50", "p75", "p90", "p99"}
    errors = res["requests"] if status >= 400 else 0
    assert res["non_2xx_3xx"] == res["non_2xx_3xx_wrk"] == res["errors_total"] == errors


def test_a_script_without_the_summary_is_an_error(tmp_path, wrk_or_skip):
    server = _server(200)
    script = tmp_path / "plain.lua"
    script.write_text('wrk.method = "GET"\n')
    try:
        with pytest.raises(RuntimeError, match="no summary"):
            wrk.run(f"http://127.0.0.1:{server.server_port}/", script, 1, 1, 1, "5s")
    finally:
        server.shutdown()


def test_a_multipart_body_holds_the_file_between_its_boundaries():
    body = wrk.multipart_body(b"RIFF....WAVE", "a.wav", "XYZ")
    assert body.startswith(b"--XYZ\r\n") and body.endswith(b"\r\n--XYZ--\r\n")
    assert b'name="file"; filename="a.wav"' in body and b"\r\n\r\nRIFF....WAVE\r\n" in body
