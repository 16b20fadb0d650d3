"""The Flask app in-process (test client): configuration, errors, runtimes, request ids."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest

from kws.audio import load_file
from kws.bundle import read_meta
from kws.errors import ConfigError
from kws.serving import predictor as pm
from kws.serving import registry
from kws.serving.app import create_app, load_config
from tests.support.bundles import wav_bytes
from tests.support.serving import offline_scores


def _client(**config):
    return create_app({"preload": False, **config}).test_client()


def _err(resp, status, code):
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["error"]["code"] == code and body["error"]["message"]
    assert "Traceback" not in resp.get_data(as_text=True)
    return body


def test_config_from_environment_and_overrides():
    env = {"KWS_MODEL_DIR": "/m", "KWS_MAX_UPLOAD_MB": "2.5", "KWS_RUNTIME": "keras", "KWS_TOP_K": "5",
           "KWS_PRELOAD": "no", "KWS_WINDOW_STRIDE_S": ""}
    cfg = load_config({"top_k": 2}, environ=env)
    assert cfg["model_dir"] == "/m" and cfg["max_upload_mb"] == 2.5 and cfg["runtime"] == "keras"
    assert cfg["top_k"] == 2 and cfg["preload"] is False and cfg["window_stride_s"] == 0.125
    assert cfg["tta_shifts_ms"] == (0,) and cfg["runtime"] == "keras"  # the clip alone
    assert load_config(environ={"KWS_TTA_SHIFTS_MS": "0, -30,30"})["tta_shifts_ms"] == (0.0, -30.0, 30.0)
    assert load_config(environ={"KWS_TTA_SHIFTS_MS": "0"})["tta_shifts_ms"] == (0.0,)
    for bad in ({"KWS_RUNTIME": "onnx"}, {"KWS_TOP_K": "many"}, {"KWS_MAX_DURATION_S": "0"},
                {"KWS_DETECTION_THRESHOLD": "2"}, {"KWS_PRELOAD": "maybe"}, {"KWS_TTA_SHIFTS_MS": "a,b"},
                {"KWS_TTA_SHIFTS_MS": "0,900"}):
        with pytest.raises(ConfigError):
            load_config(environ=bad)
    with pytest.raises(ConfigError, match="unknown"):
        load_config({"nope": 1}, environ={})


def test_no_bundle_health_ok_ready_503(tmp_path):
    registry.reset()
    c = _client(model_dir=str(tmp_path / "missing"), retry_s=0)
    assert c.get("/health").get_json() == {"status": "ok"}
    _err(c.post("/predict", data={"file": (io.BytesIO(b"RIFF"), "a.wav")}), 503, "model_not_found")
    _err(c.get("/ready"), 503, "model_not_found")
    _err(c.get("/model"), 503, "model_not_found")
    registry.reset()


def test_keras_runtime_through_the_app_matches_model_predict(bundle, keras_model, clips):
    c = _client(model_dir=str(bundle), runtime="keras")
    samples = load_file(clips["one"][1], 16000)
    resp = c.post("/predict?top_k=10", data=wav_bytes(samples), content_type="audio/wav")
    body = resp.get_json()
    assert resp.status_code == 200 and body["model"]["runtime"] == "keras"
    labels = read_meta(bundle).labels
    served = np.array([dict((s["label"], s["score"]) for s in body["scores"])[lab] for lab in labels])
    np.testing.assert_allclose(served, offline_scores(keras_model, samples, read_meta(bundle).features), atol=1e-4)
    assert c.get("/ready").get_json()["model"]["runtime"] == "keras"


def test_unexpected_error_is_json_500_and_logged(bundle, clips, monkeypatch, caplog):
    c = _client(model_dir=str(bundle))

    def boom(self, *a, **kw):
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(pm.Predictor, "predict", boom)
    with caplog.at_level(logging.ERROR, logger="kws.serving"):
        resp = c.post("/predict", data={"file": (open(clips["one"][0], "rb"), "one.wav")})
    body = _err(resp, 500, "internal_error")
    assert "secret internal detail" not in resp.get_data(as_text=True)
    assert body["request_id"] == resp.headers["X-Request-ID"]
    assert any(r.exc_info and "secret internal detail" in str(r.exc_info[1]) for r in caplog.records)


def test_request_ids(bundle):
    c = _client(model_dir=str(bundle))
    assert c.get("/health", headers={"X-Request-ID": "abc-123"}).headers["X-Request-ID"] == "abc-123"
    generated = c.get("/health", headers={"X-Request-ID": "bad id <script>" + "x" * 200}).headers["X-Request-ID"]
    assert len(generated) == 32 and generated.isalnum()


def test_raw_bodies_and_parameters(bundle, clips):
    c = _client(model_dir=str(bundle))
    data = clips["two"][0].read_bytes()
    for ctype in ("audio/wav", "audio/x-wav", "application/octet-stream", "audio/wav; codecs=1"):
        assert c.post("/predict", data=data, content_type=ctype).status_code == 200, ctype
    _err(c.post("/predict", data=b"hello", content_type="text/plain"), 415, "unsupported_media_type")
    _err(c.post("/predict", data=b"{}", content_type="application/json"), 415, "unsupported_media_type")
    _err(c.post("/predict", data=b"", content_type="audio/wav"), 422, "empty_audio")
    _err(c.post("/predict"), 400, "missing_file")
    _err(c.post("/predict", data={"file": (io.BytesIO(b""), "")}), 400, "missing_file")
    for bad in ("threshold=1.5", "threshold=x", "top_k=0", "top_k=two"):
        _err(c.post(f"/predict?{bad}", data=data, content_type="audio/wav"), 400, "invalid_parameter")
    form = c.post("/predict", data={"file": (io.BytesIO(data), "two.wav"), "threshold": "1", "top_k": "5"})
    body = form.get_json()
    assert body["keyword"] == "_unknown_" and len(body["scores"]) == 5 and body["threshold"] == 1.0
    assert c.post("/api/predict?top_k=99", data=data, content_type="audio/wav").get_json()["scores"].__len__() == 5


def test_app_limits_upload_size(bundle):
    c = _client(model_dir=str(bundle), max_upload_mb=0.5)
    _err(c.post("/predict", data=b"\0" * (600 * 1024), content_type="audio/wav"), 413, "payload_too_large")
    _err(c.post("/predict", data={"file": (io.BytesIO(b"\0" * (600 * 1024)), "a.wav")}), 413, "payload_too_large")


def test_too_many_multipart_parts_says_so_not_too_large(bundle, clips):
    c = _client(model_dir=str(bundle))
    data = clips["one"][0].read_bytes()
    fields = {f"f{i}": "x" for i in range(40)}
    body = _err(c.post("/predict", data={"file": (io.BytesIO(data), "one.wav"), **fields}), 413, "payload_too_large")
    assert "more than 16 parts" in body["error"]["message"] and "MB" not in body["error"]["message"]
    big = _err(c.post("/predict", data=b"\0" * (11 * 1024 * 1024), content_type="audio/wav"), 413, "payload_too_large")
    assert "10 MB limit" in big["error"]["message"]


def test_http_errors_are_json(bundle):
    c = _client(model_dir=str(bundle))
    body = _err(c.get("/predict"), 405, "method_not_allowed")
    assert "POST" in body["error"]["message"]
    _err(c.get("/nope"), 404, "not_found")
    _err(c.delete("/health"), 405, "method_not_allowed")
    _err(c.get("/api/nope"), 404, "not_found")
