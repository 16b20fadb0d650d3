"""The OpenAPI documents describe every error answer the service gives (issue 22): the codes are
derived from the sources (every ``KWSError`` raised where a request runs, and the handlers'
own answers), each must be in the catalogue with its status and on some operation; and real
answers of the real app (a saturated ffmpeg gate, a full request queue behind real Waitress, a
missing model, ...) are each checked against the operation that gave them."""

from __future__ import annotations

import ast
import importlib
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

import kws.errors
from kws.serving import app as app_module
from kws.serving.openapi import document
from kws.serving.openapi_errors import COMMON, ERRORS
from kws.serving.overload import CHEAP_PATHS
from tests.support.bundles import long_recording, wav_bytes
from tests.support.openapi import assert_documented, undocumented
from tests.support.processes import ApiProcess
from tests.support.serving import assert_error, decoders_taken, ffmpeg_convert, post_audio

SRC = Path(kws.errors.__file__).parent
#: The modules a request runs through (the training side raises errors no request can meet).
SERVICE_MODULES = [*sorted((SRC / "serving").glob("*.py")), SRC / "audio.py", SRC / "ffmpeg.py", SRC / "sniff.py",
                   SRC / "bundle.py", SRC / "features.py", SRC / "streaming" / "detector.py"]
#: ConfigError is raised at start-up (settings, the server) or, in runtimes, for a runtime the
#: settings already refuse; a bundle's own bad configuration is re-raised as BundleError.
NOT_AT_REQUEST_TIME = {"ConfigError"}
#: The Werkzeug errors a route can meet (app._http_error names them from HTTP_CODES): an unreadable
#: body, an unknown path, a wrong method, a body over MAX_CONTENT_LENGTH or too many parts.
WERKZEUG_STATUSES = (400, 404, 405, 413)


def _error_classes() -> dict[str, type]:
    """Every KWSError subclass the service modules define (imported, so that each is known)."""
    for module in SERVICE_MODULES:
        importlib.import_module("kws." + ".".join(module.relative_to(SRC).with_suffix("").parts))
    found, todo = {}, [kws.errors.KWSError]
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return found


def _literal(node: ast.AST | None):
    return node.value if isinstance(node, ast.Constant) else ...


def _kwargs(call: ast.Call) -> dict[str, ast.AST]:
    return {k.arg: k.value for k in call.keywords if k.arg}


def emitted() -> dict[str, set[tuple[int, str]]]:
    """(status, code) of every error a request can be answered with, by where it is raised (from the AST
    of :data:`SERVICE_MODULES`). A code passed on from a variable is the code of another raise found here."""
    classes = _error_classes()
    out: dict[str, set[tuple[int, str]]] = {}
    for module in SERVICE_MODULES:
        for call in (n for n in ast.walk(ast.parse(module.read_text())) if isinstance(n, ast.Call)):
            name = getattr(call.func, "id", None) or getattr(call.func, "attr", None)
            kw = _kwargs(call)
            if name in classes and name not in NOT_AT_REQUEST_TIME:
                code = _literal(kw["code"]) if "code" in kw else classes[name].code
                status = _literal(kw["status"]) if "status" in kw else classes[name].status
            elif name == "_chunk_error":  # stream_api: (message, code, status=422)
                code = _literal(call.args[1])
                status = _literal(call.args[2]) if len(call.args) > 2 else _literal(kw.get("status", ast.Constant(422)))
            elif name == "error_response":  # app: (code, message, status, headers)
                code, status = _literal(call.args[0]), _literal(call.args[2])
            else:
                continue
            if code is ... or status is ...:
                continue  # forwarded: the code of another raise
            out.setdefault(f"{module.relative_to(SRC)}:{call.lineno}", set()).add((status, code))
    for status in WERKZEUG_STATUSES:
        out.setdefault("werkzeug", set()).add((status, app_module.HTTP_CODES[status]))
    return out


def _documented(doc) -> set[tuple[int, str]]:
    got = set()
    for ops in doc["paths"].values():
        for op in ops.values():
            for status, spec in op["responses"].items():
                for code in spec.get("content", {}).get("application/json", {}).get("examples", {}):
                    got.add((int(status), code))
    got |= {(404, "not_found"), (405, "method_not_allowed")} if {"NotFound", "MethodNotAllowed"} <= set(
        doc["components"]["responses"]) else set()
    return got


def test_every_code_the_sources_can_answer_is_documented():
    found = emitted()
    codes = {pair for pairs in found.values() for pair in pairs}
    # the scan sees what it must: the classes' own codes and the literals of app, api and stream_api
    assert {(503, "busy"), (503, "storage_unavailable"), (503, "overloaded"), (413, "audio_too_large"),
            (409, "out_of_order"), (500, "model_error"), (422, "bad_scores")} <= codes
    wrong = {(s, c) for s, c in codes if c not in ERRORS or ERRORS[c].status != s}
    assert not wrong, f"codes not in the catalogue with that status: {sorted(wrong)} (raised at: " + ", ".join(
        where for where, pairs in found.items() if pairs & wrong) + ")"
    missing = codes - _documented(document())
    assert not missing, f"codes on no operation of the document: {sorted(missing)}"
    stale = {(e.status, c) for c, e in ERRORS.items()} - codes
    assert not stale, f"the catalogue documents codes nothing raises: {sorted(stale)}"


def test_every_operation_documents_the_answers_any_request_can_get():
    doc = document()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            shed = path not in CHEAP_PATHS
            for code in COMMON:
                if code == "overloaded" and not shed:
                    continue
                assert undocumented(doc, method.upper(), path, ERRORS[code].status, code,
                                    {"Retry-After": "1"} if ERRORS[code].retry_after else {}) is None, (path, method)
            for status, spec in op["responses"].items():
                retrying = [c for c in spec.get("content", {}).get("application/json", {}).get("examples", {})
                            if ERRORS[c].retry_after]
                assert bool(retrying) == ("Retry-After" in spec.get("headers", {})), (path, method, status)
    public = document(public=True)
    assert public["components"]["responses"] == doc["components"]["responses"]


def _silence_flac(channels: int, rate: int, seconds: float) -> bytes:
    ffmpeg = shutil.which("ffmpeg") or pytest.skip("ffmpeg is not installed")
    layout = {1: "mono", 8: "7.1"}[channels]
    return subprocess.run([ffmpeg, "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                           f"anullsrc=r={rate}:cl={layout}", "-t", str(seconds), "-f", "flac", "pipe:1"],
                          check=True, capture_output=True, timeout=120).stdout


@pytest.fixture(scope="module")
def uploads(tmp_path_factory, clips) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("uploads")
    src = clips["one"][0]
    return {"wav": src.read_bytes(),
            "webm": ffmpeg_convert(src, out / "clip.webm", "-c:a", "libopus").read_bytes(),
            "wide": _silence_flac(8, 384000, 10)}  # a few KB that would decode to 30,720,000 samples


class Checked:
    """A Flask test client whose every answer must be documented for the route that gave it."""

    def __init__(self, app):
        self.client, self.doc, self.seen = app.test_client(), document(), set()

    def __call__(self, method: str, path: str, **kw):
        resp = self.client.open(path, method=method, **kw)
        assert_documented(self.doc, method, path, resp.status_code, resp.get_json(silent=True), resp.headers)
        if resp.status_code >= 400:
            self.seen.add(resp.get_json()["error"]["code"])
        return resp


def test_real_answers_of_the_app_are_documented(bundle, uploads, tmp_path):
    from kws.serving.app import create_app

    app = create_app({"model_dir": str(bundle), "preload": False, "ffmpeg_concurrency": 1, "ffmpeg_wait_s": 0.1,
                      "stream_max_sessions": 1, "max_upload_mb": 1})
    call = Checked(app)
    wav = uploads["wav"]
    assert call("POST", "/predict", data=wav, content_type="audio/wav").status_code == 200
    call("POST", "/predict", data={}, content_type="multipart/form-data")  # missing_file
    call("POST", "/predict?threshold=2", data=wav, content_type="audio/wav")  # invalid_parameter
    call("POST", "/api/predict", data=b"junk" * 100, content_type="audio/wav")  # unsupported_media_type
    call("POST", "/predict", data=b"\0" * (2 * 1024 * 1024), content_type="audio/wav")  # payload_too_large
    call("POST", "/predict", data=uploads["wide"], content_type="audio/flac")  # audio_too_large
    call("POST", "/predict", data=wav_bytes(np.zeros(16000, np.float32)), content_type="audio/wav")  # silent
    call("POST", "/predict", data=wav_bytes(np.full(16000, np.nan, np.float32), subtype="FLOAT"),
         content_type="audio/wav")  # invalid_audio
    call("POST", "/predict", data=wav_bytes(np.full(4000 * 61, 0.1, np.float32), 4000, "PCM_U8"),
         content_type="audio/wav")  # audio_too_long
    call("POST", "/predict", data=b"", content_type="audio/wav")  # empty_audio
    call("GET", "/predict")  # method_not_allowed
    call("GET", "/nothing/here")  # not_found
    call("POST", "/admin/reload")  # forbidden: no token
    with decoders_taken(app):
        assert call("POST", "/predict", data=uploads["webm"], content_type="audio/webm").status_code == 503  # busy
    opened = call("POST", "/stream")
    sid = opened.get_json()["session"]
    call("POST", "/stream")  # too_many_sessions
    call("POST", "/stream?threshold=x")  # invalid_parameter
    chunk = np.zeros(3200, "<i2").tobytes()
    call("POST", f"/stream/{sid}", data=chunk, content_type="application/octet-stream")  # no ?format=
    for path, data, ctype in [(f"/stream/{sid}?format=s16&seq=3", chunk, "application/octet-stream"),  # out_of_order
                              (f"/stream/{sid}?format=s16", b"", "application/octet-stream"),  # empty_chunk
                              (f"/stream/{sid}?format=s16", b"\0\0\0", "application/octet-stream"),
                              (f"/stream/{sid}?format=s16&rate=8000", chunk, "application/octet-stream"),
                              (f"/stream/{sid}?format=s16&channels=2", chunk, "application/octet-stream"),
                              (f"/stream/{sid}?format=f32", np.full(800, np.inf, "<f4").tobytes(),
                               "application/octet-stream"),
                              (f"/stream/{sid}?format=s16", b"\0" * 64000, "application/octet-stream"),
                              (f"/stream/{sid}", chunk, "text/plain"),
                              ("/stream/nosuchsessionatall", chunk, "audio/L16;rate=16000")]:
        call("POST", path, data=data, content_type=ctype)
    assert call("DELETE", f"/stream/{sid}").status_code == 200
    call("DELETE", f"/stream/{sid}")  # session_closed
    app.extensions["kws"].draining = True  # what SIGTERM sets (kws.serving.server)
    call("GET", "/ready")
    call("POST", "/stream")
    tokened = Checked(create_app({"model_dir": str(bundle), "preload": False, "admin_token": "s3cret"}))
    tokened("POST", "/api/admin/reload", headers={"Authorization": "Bearer wrong"})
    missing = Checked(create_app({"model_dir": str(tmp_path / "absent"), "preload": False}))
    for method, path in [("POST", "/predict"), ("GET", "/model"), ("POST", "/stream")]:
        missing(method, path, data=wav, content_type="audio/wav")
    assert {"missing_file", "invalid_parameter", "unsupported_media_type", "payload_too_large", "audio_too_large",
            "silent_audio", "invalid_audio", "audio_too_long", "empty_audio", "method_not_allowed", "not_found",
            "forbidden", "busy", "too_many_sessions", "out_of_order", "empty_chunk", "bad_chunk_length",
            "wrong_sample_rate", "bad_channels", "invalid_samples", "chunk_too_large", "unknown_session",
            "session_closed", "shutting_down"} <= call.seen, call.seen
    assert tokened.seen == {"unauthorized"} and missing.seen == {"model_not_found"}


def test_overloaded_through_real_waitress_is_documented_with_retry_after(tmp_path, bundle, clips):
    """KWS_MAX_QUEUE=0: no request waits; while the one worker scans a long recording, the next is
    answered 503 ``overloaded`` + Retry-After (and /health normally), as the document says."""
    doc = document()
    slow = wav_bytes(long_recording([(float(t), clips["one"][0]) for t in np.arange(2.0, 58.0, 7.0)],
                                    duration_s=60.0))
    env = {"KWS_THREADS": "1", "KWS_MAX_QUEUE": "0", "KWS_OVERLOAD_RETRY_AFTER_S": "2", "KWS_WINDOW_STRIDE_S": "0.02"}
    with ApiProcess(bundle, tmp_path / "api", env=env) as api:
        first = post_audio(api.url, clips["two"][0].read_bytes(), "idle.wav")
        assert first.status_code == 200, first.text[:300]  # nothing waits: an idle worker takes it
        with ThreadPoolExecutor(1) as pool:
            running = pool.submit(post_audio, api.url, slow, "slow.wav", timeout=120)
            time.sleep(0.3)
            extra = post_audio(api.url, clips["two"][0].read_bytes(), "extra.wav", timeout=30)
            still_busy = not running.done()
            health = requests.get(f"{api.url}/health", timeout=30)
            assert running.result().status_code == 200
    assert still_busy, "the slow request ended before the extra one came"
    assert_error(extra, 503, "overloaded")
    assert extra.headers["Retry-After"] == "2" and health.status_code == 200
    assert_documented(doc, "POST", "/predict", extra.status_code, extra.json(), extra.headers)
    assert_documented(doc, "GET", "/health", health.status_code, health.json(), health.headers)
