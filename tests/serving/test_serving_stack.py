"""End to end through the real nginx -> real Waitress -> Flask -> TFLite, on loopback."""

from __future__ import annotations

import gzip
import json
import shutil
import socket
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
import soundfile as sf

from kws.audio import load_file
from kws.bundle import read_meta
from tests.support.bundles import long_recording, wav_bytes
from tests.support.nginx import NginxProcess, nginx_or_skip
from tests.support.processes import free_port
from tests.support.serving import assert_error, ffmpeg_convert, metric_value, offline_scores, post_audio, tree

LABELS = ["_silence_", "_unknown_", "one", "two", "three"]


def _scores(body) -> dict[str, float]:
    return {s["label"]: s["score"] for s in body["scores"]}


def test_every_real_clip_through_nginx(base, all_clips):
    for path in all_clips:
        resp = post_audio(base, path.read_bytes(), path.name)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["keyword"] in LABELS
        assert 0 <= body["confidence"] <= 1 and len(body["scores"]) == 3
        assert 0.3 < body["duration_s"] <= 1.01 and body["sample_rate"] == 16000
        assert body["model"] == {"name": "kws-tiny", "version": "test-1", "runtime": "tflite"}
        assert body["request_id"] == resp.headers["X-Request-ID"]
        assert "detections" not in body


def test_served_scores_equal_offline_keras(base, bundle, keras_model, clips):
    cfg = read_meta(bundle).features
    for word, paths in clips.items():
        for path in paths:
            body = post_audio(base, path.read_bytes(), path.name, params={"top_k": 5}).json()
            want = offline_scores(keras_model, load_file(path, 16000), cfg)
            got = _scores(body)
            np.testing.assert_allclose([got[lab] for lab in LABELS], want, atol=1e-4)
            assert body["keyword"] == LABELS[int(np.argmax(want))]
            assert body["keyword"] == word  # the tiny model knows its own training clips


def test_api_prefix_and_raw_body(base, clips):
    data = clips["one"][0].read_bytes()
    a = post_audio(base, data).json()
    b = requests.post(f"{base}/api/predict", data=data, headers={"Content-Type": "audio/wav"}, timeout=30).json()
    assert a["keyword"] == b["keyword"] and a["scores"] == b["scores"]
    for path in ("/api/health", "/api/ready", "/api/model", "/api/openapi.json", "/health", "/ready", "/model"):
        assert requests.get(base + path, timeout=10).status_code == 200, path


def test_request_id_passes_through_nginx(base):
    rid = f"test-{uuid.uuid4().hex[:8]}"
    assert requests.get(f"{base}/health", headers={"X-Request-ID": rid}, timeout=10).headers["X-Request-ID"] == rid
    generated = requests.get(f"{base}/health", timeout=10).headers["X-Request-ID"]
    assert len(generated) == 32  # nginx's $request_id


def test_bad_inputs_and_nothing_left_on_disk(base, api, stack, clips, tmp_path):
    roots = {"server TMPDIR": api.tmpdir, "server cwd": api.cwd, "nginx body temp": stack.prefix / "client_body"}
    before = {name: tree(p) for name, p in roots.items()}
    sys_tmp, cwd = Path(tempfile.gettempdir()), Path.cwd()
    tmp_before = {p.name for p in sys_tmp.iterdir()}
    cwd_before = {p.name for p in cwd.iterdir()}

    assert_error(post_audio(base, b"\x00\x01garbage" * 500, "x.wav"), 415, "unsupported_media_type")
    assert_error(post_audio(base, b"ID3\x03\x00junkjunk" * 300, "x.mp3"), 415, "unsupported_media_type")
    assert_error(post_audio(base, b"", "empty.wav"), 422, "empty_audio")
    five_minutes = np.zeros(16000 * 300, np.float32)
    five_minutes[::100] = 0.1
    data = wav_bytes(five_minutes)
    assert len(data) < 10 * 1024 * 1024
    assert_error(post_audio(base, data, "long.wav"), 422, "audio_too_long")
    assert_error(post_audio(base, wav_bytes(np.zeros(16000, np.float32)), "silent.wav"), 422, "silent_audio")
    nan = np.full(16000, np.nan, np.float32)
    assert_error(post_audio(base, wav_bytes(nan, subtype="FLOAT"), "nan.wav"), 422, "invalid_audio")
    m4a = ffmpeg_convert(clips["one"][0], tmp_path / "x.m4a")  # decoded by ffmpeg from a private temp dir
    assert post_audio(base, m4a.read_bytes(), "x.m4a").status_code == 200
    assert_error(post_audio(base, m4a.read_bytes()[:400], "cut.m4a"), 415, "unsupported_media_type")
    resp = requests.post(f"{base}/predict", files={"other": ("a.wav", b"RIFF")}, timeout=10)
    assert_error(resp, 400, "missing_file")
    assert_error(requests.post(f"{base}/predict", timeout=10), 400, "missing_file")
    assert_error(requests.get(f"{base}/predict", timeout=10), 405, "method_not_allowed")
    assert_error(requests.get(f"{base}/api/nope", timeout=10), 404, "not_found")
    assert_error(requests.get(f"{base}/nope.html", timeout=10), 404, "not_found")
    assert_error(requests.post(f"{base}/predict", data=b"hi", headers={"Content-Type": "text/plain"}, timeout=10),
                 415, "unsupported_media_type")
    assert_error(requests.post(f"{base}/predict?threshold=7", files={"file": ("a.wav", b"RIFF")}, timeout=10),
                 400, "invalid_parameter")

    after = {name: tree(p) for name, p in roots.items()}
    assert after == before, f"files left behind: { {k: after[k] - before[k] for k in roots} }"
    new_tmp = {p.name for p in sys_tmp.iterdir()} - tmp_before
    assert not {n for n in new_tmp if n.startswith("kws-") or (sys_tmp / n).is_file()}, new_tmp
    assert {p.name for p in cwd.iterdir()} - cwd_before == set()


def test_nginx_413_is_json(base, api, stack):
    """One limit (KWS_MAX_UPLOAD_MB) for both: nginx refuses what the app would, with the app's words."""
    assert stack.variables["KWS_MAX_UPLOAD_MB"] == api.extra_env["KWS_MAX_UPLOAD_MB"] == "10"
    big = b"\0" * (11 * 1024 * 1024)
    resp = post_audio(base, big, "big.wav")
    body = assert_error(resp, 413, "payload_too_large")
    assert body["error"]["message"] == "the upload is larger than the 10 MB limit"
    assert body["request_id"] == resp.headers["X-Request-ID"]
    app_body = assert_error(post_audio(api.url, big, "big.wav"), 413, "payload_too_large")
    assert app_body["error"]["message"] == body["error"]["message"]


def test_app_413_directly_against_waitress(api):
    big = b"\0" * (11 * 1024 * 1024)
    resp = post_audio(api.url, big, "big.wav")
    body = assert_error(resp, 413, "payload_too_large")
    assert "10 MB" in body["error"]["message"] and resp.headers["Server"] != "nginx"


# --------------------------------------------------------------------------- nginx's own answers
def raw_http(url: str, data: bytes, timeout: float = 10.0) -> tuple[int | None, dict[str, str], bytes]:
    """Send raw bytes (requests cannot send a broken request); ``(status, headers, body)``,
    status None when nginx closed the connection without answering."""
    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(data)
        buf = b""
        while b"\r\n\r\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
        if not buf:
            return None, {}, b""
        head, _, body = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        while len(body) < int(headers.get("content-length", 0)):
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return int(lines[0].split(" ")[1]), headers, body


def assert_raw_error(answer, status: int, code: str) -> dict:
    got, headers, body = answer
    assert got == status, (got, headers, body[:300])
    assert headers["content-type"].startswith("application/json") and b"<html" not in body.lower(), body[:300]
    doc = json.loads(body)
    assert doc["error"]["code"] == code and doc["error"]["message"], doc
    assert doc["request_id"] == headers["x-request-id"], (doc, headers)
    return doc


def test_nginx_own_errors_are_json(base):
    """What nginx 1.22 answers ITSELF, before the api is involved, in the api's JSON shape --
    including the errors raised while the request line/headers are read (see the template)."""
    close = b"Connection: close\r\n\r\n"
    assert_raw_error(raw_http(base, b"GARBAGE\r\n\r\n"), 400, "bad_request")  # no URI was ever parsed
    assert_raw_error(raw_http(base, b"GET / HTTP/1.1 extra\r\nHost: x\r\n" + close), 400, "bad_request")
    assert_raw_error(raw_http(base, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 400, "bad_request")
    assert_raw_error(raw_http(base, b"GET /health HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n" + close),
                     400, "bad_request")
    assert_raw_error(raw_http(base, b"GET /health HTTP/1.1\r\n" + close), 400, "bad_request")  # HTTP/1.1 needs Host
    long_line = b"GET /predict?" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n" + close
    assert_raw_error(raw_http(base, long_line), 414, "uri_too_long")
    big_header = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20_000 + b"\r\n" + close
    assert_raw_error(raw_http(base, big_header), 431, "headers_too_large")  # nginx's 494
    cookies = b"".join(b"Cookie: c%d=%s\r\n" % (i, b"v" * 7000) for i in range(6))
    assert_raw_error(raw_http(base, b"GET / HTTP/1.1\r\nHost: x\r\n" + cookies + close), 431, "headers_too_large")
    assert_raw_error(raw_http(base, b"TRACE / HTTP/1.1\r\nHost: x\r\n" + close), 405, "method_not_allowed")
    assert_raw_error(raw_http(base, b"POST /index.html HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n" + close[:-2]
                              + b"\r\nhi"), 405, "method_not_allowed")
    assert_raw_error(raw_http(base, b"GET /index.html HTTP/1.1\r\nHost: x\r\nRange: bytes=99999999-\r\n" + close),
                     416, "range_not_satisfiable")
    assert_raw_error(raw_http(base, b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n" + close),
                     501, "not_implemented")
    # The error answers themselves are internal.
    for path in ("/.kws-error/400", "/.kws-error/"):
        assert_error(requests.get(base + path, timeout=10), 404, "not_found")
    # The api's own errors pass through untouched (nginx does not intercept them); unknown paths
    # never reach it (nginx's JSON 404, tests/serving/test_paths.py).
    resp = requests.get(f"{base}/api/predict", timeout=10)
    assert_error(resp, 405, "method_not_allowed")
    assert "POST" in resp.json()["error"]["message"]


class _ShortTimeouts(NginxProcess):
    """The template, with 1 s client timeouts instead of 30/60 s."""

    def render(self):
        conf = super().render()
        site = self.prefix / "default.conf"
        site.write_text(site.read_text().replace("client_body_timeout 30s;",
                                                 "client_body_timeout 1s;\n    client_header_timeout 1s;"))
        return conf


def test_nginx_500_is_json_and_408_is_never_sent(tmp_path):
    """nginx's own 500 (here: the request body cannot be buffered to disk) answers JSON; on a client
    timeout nginx 1.22 sends NOTHING (it logs 408 and closes), so there is no 408 to make JSON."""
    nginx_or_skip()
    with _ShortTimeouts(tmp_path / "nginx", upstream=f"127.0.0.1:{free_port()}") as ngx:
        started = time.monotonic()
        assert raw_http(ngx.url, b"GET / HTTP/1.1\r\nHost: x\r\n") == (None, {}, b"")  # headers never end
        assert raw_http(ngx.url, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc") \
            == (None, {}, b"")  # the body never ends
        assert time.monotonic() - started < 8  # closed by the 1 s timeouts, not by ours (10 s)

        body_temp = ngx.prefix / "client_body"  # bodies over client_body_buffer_size (1m) go there
        shutil.rmtree(body_temp)
        body_temp.write_text("not a directory")
        try:
            data = b"\0" * (3 * 1024 * 1024)
            head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(data)
            assert_raw_error(raw_http(ngx.url, head + data), 500, "internal_error")
        finally:
            body_temp.unlink()
            body_temp.mkdir()


def test_operator_endpoints_are_private_unless_allowed(tmp_path, api, base):
    """/metrics, /openapi.json and /admin/... (also under /api/, also %-encoded) answer JSON 403 to
    addresses outside KWS_ADMIN_ALLOW; the page's /api/model and the API itself stay public."""
    nginx_or_skip()
    assert requests.get(f"{base}/metrics", timeout=10).status_code == 200  # the stack allows 127.0.0.1
    private = ["/metrics", "/api/metrics", "/openapi.json", "/api/openapi.json", "/api/%6detrics", "/api//metrics"]
    with NginxProcess(tmp_path / "other", upstream=f"127.0.0.1:{api.port}", admin_allow="10.255.255.1") as ngx:
        for path in private:
            body = assert_error(requests.get(ngx.url + path, timeout=10), 403, "forbidden")
            assert "not served publicly" in body["error"]["message"], path
        for path in ("/admin/reload", "/api/admin/reload", "/admin"):
            assert_error(requests.post(ngx.url + path, timeout=10), 403, "forbidden")
        for path in ("/model", "/api/model", "/health", "/api/ready", "/"):
            assert requests.get(ngx.url + path, timeout=10).status_code == 200, path
        assert requests.get(f"{ngx.url}/api/model", timeout=10).json()["labels"] == LABELS  # what app.js reads
    # A list (spaces/commas) that includes the client's address lets it in.
    with NginxProcess(tmp_path / "list", upstream=f"127.0.0.1:{api.port}",
                      admin_allow="10.255.255.1, 127.0.0.1") as ngx:
        for path in ("/metrics", "/api/metrics", "/openapi.json"):
            assert requests.get(ngx.url + path, timeout=10).status_code == 200, path
        # /admin/ is passed on to the api, which answers for itself (JSON, not nginx's 403)
        resp = requests.post(f"{ngx.url}/admin/reload", timeout=30)
        assert resp.headers["Content-Type"].startswith("application/json")
        assert "not served publicly" not in resp.text


@pytest.fixture(scope="module")
def variants(tmp_path_factory, clips) -> dict[str, bytes]:
    """One real clip in every format and several rates/channels/bit depths."""
    src = clips["three"][0]
    out = tmp_path_factory.mktemp("formats")
    samples, sr = sf.read(src, dtype="float32")
    made = {"wav": src.read_bytes()}
    for ext, args in {"flac": [], "ogg": ["-c:a", "libvorbis"], "mp3": ["-c:a", "libmp3lame", "-b:a", "128k"],
                      "webm": ["-c:a", "libopus"], "m4a": ["-c:a", "aac", "-b:a", "128k"]}.items():
        made[ext] = ffmpeg_convert(src, out / f"clip.{ext}", *args).read_bytes()
    made["8k.wav"] = ffmpeg_convert(src, out / "clip8k.wav", "-ar", "8000").read_bytes()
    made["44k-stereo.wav"] = ffmpeg_convert(src, out / "clip44.wav", "-ar", "44100", "-ac", "2").read_bytes()
    made["24bit.wav"] = wav_bytes(samples, sr, subtype="PCM_24")
    made["float.wav"] = wav_bytes(samples, sr, subtype="FLOAT")
    made["48k-stereo.flac"] = ffmpeg_convert(src, out / "clip48.flac", "-ar", "48000", "-ac", "2").read_bytes()
    return made


LOSSLESS = ("wav", "flac", "44k-stereo.wav", "24bit.wav", "float.wav", "48k-stereo.flac")


def test_every_format_and_rate_is_served_like_offline_keras(base, variants, keras_model, bundle):
    """Each variant is decoded to 16 kHz mono and scored exactly as the training side would score
    the same decoded audio; lossless variants of the clip also keep its keyword."""
    from kws.audio import decode

    cfg = read_meta(bundle).features
    ref = post_audio(base, variants["wav"], "clip.wav").json()
    assert ref["keyword"] == "three"
    for name, data in variants.items():
        resp = post_audio(base, data, f"clip.{name.split('.')[-1]}", params={"top_k": len(LABELS)})
        assert resp.status_code == 200, (name, resp.text)
        body = resp.json()
        assert body["duration_s"] == pytest.approx(1.0, abs=0.1), name
        expected = offline_scores(keras_model, decode(data, cfg.sample_rate).samples, cfg)
        served = _scores(body)
        np.testing.assert_allclose([served[lab] for lab in LABELS], expected, atol=2e-3, err_msg=name)
        if name in LOSSLESS:
            assert body["keyword"] == ref["keyword"], (name, body)
    assert post_audio(base, variants["44k-stereo.wav"]).json()["sample_rate"] == 44100
    assert post_audio(base, variants["44k-stereo.wav"]).json()["channels"] == 2
    assert post_audio(base, variants["8k.wav"]).json()["sample_rate"] == 8000
    # ffmpeg-decoded formats report the source's own rate and channels too (Opus always decodes at 48 kHz)
    webm = post_audio(base, variants["webm"], "clip.webm").json()
    assert (webm["sample_rate"], webm["channels"]) == (48000, 1), webm
    mp3 = post_audio(base, variants["mp3"], "clip.mp3").json()
    assert (mp3["sample_rate"], mp3["channels"]) == (16000, 1), mp3


def test_fifty_concurrent_requests(base, clips):
    inputs = [clips[w][i].read_bytes() for w in ("one", "two", "three") for i in range(2)]
    jobs = [inputs[i % len(inputs)] for i in range(50)]

    def call(data):
        r = post_audio(base, data, timeout=120)
        return r.status_code, r.json()

    with ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(call, jobs))
    assert all(code == 200 for code, _ in results), [b for c, b in results if c != 200][:3]
    by_input: dict[int, set] = {}
    for i, (_, body) in enumerate(results):
        key = json.dumps([body["keyword"], body["confidence"], body["scores"]])
        by_input.setdefault(i % len(inputs), set()).add(key)
    assert all(len(v) == 1 for v in by_input.values()), by_input
    assert len({r[1]["request_id"] for r in results}) == 50


def test_thirty_seconds_of_audio_finds_the_keywords(base, clips):
    placed = [(3.0, clips["one"][0]), (11.5, clips["two"][1]), (20.25, clips["three"][2])]
    data = wav_bytes(long_recording(placed, duration_s=30.0))
    resp = post_audio(base, data, "long.wav")
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["duration_s"] == pytest.approx(30.0)
    dets = body["detections"]
    for start, path in placed:
        word = path.parent.name
        assert any(d["keyword"] == word and abs(d["start_s"] - start) <= 0.5 for d in dets), (word, start, dets)
    for d in dets:  # no false alarm in the noise-only stretches
        assert any(abs(d["start_s"] - s) <= 1.0 for s, _ in placed), d
        assert d["end_s"] - d["start_s"] == pytest.approx(1.0)
    # the answer is the most confident detection; detections may tie once rounded to 6 decimals
    top = max(d["confidence"] for d in dets)
    assert body["keyword"] in {d["keyword"] for d in dets if d["confidence"] == top}
    assert body["confidence"] == top


def test_metrics_count_requests(base, clips):
    text = requests.get(f"{base}/metrics", timeout=10).text
    before = metric_value(text, "kws_http_requests_total", endpoint="/predict", method="POST", status="200")
    for _ in range(2):
        post_audio(base, clips["one"][0].read_bytes())
    post_audio(base, b"", "e.wav")
    text = requests.get(f"{base}/metrics", timeout=10).text
    after = metric_value(text, "kws_http_requests_total", endpoint="/predict", method="POST", status="200")
    assert after - before == 2
    assert metric_value(text, "kws_http_requests_total", endpoint="/predict", method="POST", status="422") >= 1
    assert metric_value(text, "kws_predictions_total", label="one") >= 2
    assert metric_value(text, "kws_model_loaded") == 1
    assert metric_value(text, "kws_http_request_duration_seconds_count", endpoint="/predict") >= 2


def test_openapi_and_model(base):
    resp = requests.get(f"{base}/openapi.json", timeout=10)
    doc = resp.json()
    assert doc["openapi"].startswith("3.")
    assert {"/predict", "/health", "/ready", "/metrics", "/model", "/openapi.json"} <= set(doc["paths"])
    assert "Error" in doc["components"]["schemas"]
    post = doc["paths"]["/predict"]["post"]
    assert {"200", "400", "413", "415", "422", "500", "503"} <= set(post["responses"])
    model = requests.get(f"{base}/model", timeout=10).json()
    assert model["labels"] == LABELS and model["features"]["n_mfcc"] == 13 and model["runtime"] == "tflite"
    assert model["model_info"]["name"] == "kws-tiny"


def test_nginx_gzips_json_and_serves_the_page(base):
    resp = requests.get(f"{base}/openapi.json", headers={"Accept-Encoding": "gzip"}, timeout=10, stream=True)
    assert resp.headers.get("Content-Encoding") == "gzip"
    assert json.loads(gzip.decompress(resp.raw.read()))["openapi"]
    page = requests.get(f"{base}/", timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"] and 'id="file"' in page.text
    for asset, ctype in (("app.js", "javascript"), ("style.css", "text/css")):
        r = requests.get(f"{base}/{asset}", timeout=10)
        assert r.status_code == 200 and ctype in r.headers["Content-Type"]
