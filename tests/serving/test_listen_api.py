"""Live-listening sessions (POST /stream, POST /stream/<id>, DELETE) in the Flask app with the tiny
real bundle: chunks give the long-audio scan's detections, bad chunks get precise JSON errors
without disturbing other sessions, limits and expiry, a champion swap mid-stream, metrics."""

from __future__ import annotations

import json
import shutil
import time

import numpy as np
import pytest

from kws.atomic import staged_dir
from kws.serving import registry
from kws.serving.app import create_app
from kws.serving.stream_api import recommended_chunk_ms
from tests.support.bundles import long_recording
from tests.support.listen import L16, OCTET, chunks, encoded, offline_detections, quantized, to_f32, to_s16
from tests.support.serving import metric_value

PLACED = (1.0, "one"), (3.5, "two"), (6.0, "three")


def _app(model_dir, **cfg):
    return create_app({"preload": False, "model_dir": str(model_dir), **cfg})


def _err(resp, status, code):
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["error"]["code"] == code and body["error"]["message"], body
    assert "Traceback" not in resp.get_data(as_text=True)
    return body


def _open(c, **params):
    r = c.post("/stream", query_string=params)
    assert r.status_code == 201, r.get_data(as_text=True)
    return r.get_json()


def _send(c, sid, chunk, kind="l16", seq=None, prefix=""):
    body, ctype, query = encoded(chunk, kind)
    if seq is not None:
        query = f"{query}&seq={seq}" if query else f"seq={seq}"
    return c.post(f"{prefix}/stream/{sid}" + (f"?{query}" if query else ""), data=body, content_type=ctype)


@pytest.fixture(scope="module")
def recording(spoken):
    """9 s of a noise bed with one, two, three: (9 - 1) / 0.125 windows exactly, as /predict scans them."""
    return quantized(long_recording([(t, spoken[w]) for t, w in PLACED], duration_s=9.0))


def test_chunks_in_every_format_give_the_long_audio_scan(bundle, recording):
    app = _app(bundle)
    c = app.test_client()
    opened = _open(c)
    assert opened["sample_rate"] == 16000 and opened["stride_s"] == 0.125 and opened["window_s"] == 1.0
    assert opened["chunk"]["max_bytes"] == 32000 and opened["labels"][2:] == ["one", "two", "three"]
    assert opened["detector"]["threshold"] == 0.6 and len(opened["session"]) == 32
    found, times = [], []
    for seq, chunk in enumerate(chunks(recording, 200)):
        r = _send(c, opened["session"], chunk, ("l16", "s16", "f32")[seq % 3], seq=seq, prefix=("", "/api")[seq % 2])
        assert r.status_code == 200, r.get_data(as_text=True)
        body = r.get_json()
        assert body["seq"] == seq and body["t_s"] == pytest.approx((seq + 1) * 0.2)
        assert body["level"]["rms_dbfs"] < 0 and 0 <= body["level"]["peak"] <= 1
        if body["t_s"] >= 1.0:  # a window has been scored: every class of the latest one
            assert list(body["scores"]) == opened["labels"]
            assert sum(body["scores"].values()) == pytest.approx(1, abs=1e-3)
        found += [(d["keyword"], d["time_s"]) for d in body["detections"]]
        times += body["detections"]
    pred = app.extensions["kws"].predictor()
    assert found == offline_detections(pred, recording)
    assert [k for k, _ in found] == [w for _, w in PLACED]
    for (start, _), det in zip(PLACED, times):
        assert start <= det["time_s"] <= start + 1 and det["end_s"] - det["start_s"] == pytest.approx(1.0)
    closed = c.delete(f"/stream/{opened['session']}").get_json()
    assert closed == {"session": opened["session"], "closed": True, "chunks": 45, "t_s": 9.0, "detections": 3}


def test_the_recommended_chunk_ends_every_window_at_a_chunk_end(bundle, recording):
    # a window is scored when the chunk holding its last sample arrives: chunks of whole strides
    # never leave a window waiting for the rest of a chunk
    assert [recommended_chunk_ms(s) for s in (0.125, 0.0625, 0.25, 0.03, 0.5)] == [125, 125, 250, 120, 500]
    c = _app(bundle).test_client()
    opened = _open(c)
    n = int(opened["chunk"]["recommended_ms"] * opened["sample_rate"] / 1000)
    assert n == 2000
    for seq, chunk in enumerate(chunks(recording, opened["chunk"]["recommended_ms"])):
        body = _send(c, opened["session"], chunk, "f32", seq=seq).get_json()
        if body["t_s"] >= 1.0:
            assert body["windows"] == 1 and body["window_time_s"] + 0.5 == pytest.approx(body["t_s"])
    # 100 ms chunks on the same stride: some chunks complete no window, the others one that
    # ended before the chunk did
    opened = _open(c)
    waits = []
    for seq, chunk in enumerate(chunks(recording, 100)):
        body = _send(c, opened["session"], chunk, "f32", seq=seq).get_json()
        if body["windows"]:
            waits.append(body["t_s"] - (body["window_time_s"] + 0.5))
    assert max(waits) == pytest.approx(0.075) and min(waits) == pytest.approx(0.0)


def test_bad_chunks_get_precise_errors_and_never_disturb_another_session(bundle, recording):
    c = _app(bundle, stream_max_chunk_bytes=16000).test_client()
    a, b = _open(c)["session"], _open(c)["session"]
    good = recording[:3200]
    nan = good.copy()
    nan[7] = np.nan
    inf = good.copy()
    inf[0] = np.inf
    cases = [
        (dict(data=to_s16(good)[:-1], content_type=L16), 422, "bad_chunk_length"),
        (dict(data=to_f32(good)[:-2], content_type=OCTET, query_string="format=f32"), 422, "bad_chunk_length"),
        (dict(data=b"", content_type=L16), 422, "empty_chunk"),
        (dict(data=b"\0" * 16002, content_type=L16), 413, "chunk_too_large"),
        (dict(data=to_f32(nan), content_type=OCTET, query_string="format=f32"), 422, "invalid_samples"),
        (dict(data=to_f32(inf), content_type=OCTET, query_string="format=f32"), 422, "invalid_samples"),
        (dict(data=to_s16(good), content_type="audio/L16;rate=8000"), 422, "wrong_sample_rate"),
        (dict(data=to_s16(good), content_type="audio/L16"), 422, "wrong_sample_rate"),
        (dict(data=to_s16(good), content_type=OCTET, query_string="format=s16&rate=44100"), 422, "wrong_sample_rate"),
        (dict(data=to_s16(good), content_type="audio/L16;rate=16000;channels=2"), 422, "bad_channels"),
        (dict(data=to_s16(good), content_type=OCTET), 400, "invalid_parameter"),
        (dict(data=to_s16(good), content_type=OCTET, query_string="format=s24"), 400, "invalid_parameter"),
        (dict(data=to_s16(good), content_type="audio/wav"), 415, "unsupported_media_type"),
        (dict(data=to_s16(good), content_type=L16, query_string="seq=3"), 409, "out_of_order"),
        (dict(data=to_s16(good), content_type=L16, query_string="seq=-1"), 400, "invalid_parameter"),
        (dict(data=to_s16(good), content_type=L16, query_string="seq=first"), 400, "invalid_parameter"),
    ]
    for i, (kw, status, code) in enumerate(cases):
        _err(c.post(f"/stream/{a}", **kw), status, code)
        ok = _send(c, b, recording[i * 3200:(i + 1) * 3200], seq=i)  # the other session goes on, in order
        assert ok.status_code == 200 and ok.get_json()["seq"] == i, ok.get_data(as_text=True)
    first = _send(c, a, good, seq=0)  # nothing of the refused chunks reached session a
    assert first.status_code == 200 and first.get_json()["t_s"] == 0.2
    _err(c.post("/stream/no-such-session", data=to_s16(good), content_type=L16), 404, "unknown_session")
    assert c.delete(f"/stream/{a}").status_code == 200
    _err(_send(c, a, good), 410, "session_closed")
    _err(c.delete(f"/stream/{a}"), 410, "session_closed")
    _err(c.post("/stream?threshold=2"), 400, "invalid_parameter")
    assert _send(c, b, good, seq=len(cases)).status_code == 200


def test_session_limit_and_idle_expiry(bundle, recording):
    app = _app(bundle, stream_max_sessions=2, stream_idle_s=0.6)
    c = app.test_client()
    s1, s2 = _open(c)["session"], _open(c)["session"]
    body = _err(c.post("/stream"), 429, "too_many_sessions")
    assert "KWS_STREAM_MAX_SESSIONS=2" in body["error"]["message"]
    assert c.delete(f"/stream/{s1}").status_code == 200
    s3 = _open(c)["session"]
    for _ in range(3):  # a session that keeps streaming stays open
        time.sleep(0.3)
        assert _send(c, s3, recording[:3200]).status_code == 200
    _err(_send(c, s2, recording[:3200]), 410, "session_expired")
    time.sleep(0.7)
    _err(_send(c, s3, recording[:3200]), 410, "session_expired")
    _open(c), _open(c)  # the expired sessions freed their places
    text = c.get("/metrics").get_data(as_text=True)
    assert metric_value(text, "kws_stream_sessions_total", event="opened") == 5
    assert metric_value(text, "kws_stream_sessions_total", event="closed") == 1
    assert metric_value(text, "kws_stream_sessions_total", event="expired") == 2
    assert metric_value(text, "kws_stream_sessions_open") == 2
    assert metric_value(text, "kws_stream_chunks_total") == 3
    assert metric_value(text, "kws_stream_chunk_duration_seconds_count") == 3


def test_draining_refuses_new_sessions_but_answers_open_ones(bundle, recording):
    app = _app(bundle)
    c = app.test_client()
    sid = _open(c)["session"]
    app.extensions["kws"].draining = True
    _err(c.post("/stream"), 503, "shutting_down")
    assert _send(c, sid, recording[:3200]).status_code == 200


def _version(src, dst, version):
    shutil.copytree(src, dst)
    info = json.loads((dst / "model_info.json").read_text())
    (dst / "model_info.json").write_text(json.dumps({**info, "version": version}))
    return dst


def test_a_session_keeps_answering_across_a_champion_swap(tmp_path, bundle, clips):
    model_dir = _version(bundle, tmp_path / "serving" / "model", "test-1")
    app = _app(model_dir)
    c = app.test_client()
    sid = _open(c)["session"]
    audio = quantized(long_recording([(1.0, clips["one"][0]), (5.0, clips["two"][0])], duration_s=8.0))
    answers = []
    try:
        for seq, chunk in enumerate(chunks(audio, 200)):
            if seq == 18:  # 3.6 s in: promote publishes a new champion; the watcher swaps it in
                with staged_dir(model_dir) as tmp:
                    for item in _version(bundle, tmp_path / "v2", "test-2").iterdir():
                        shutil.copy2(item, tmp / item.name)
                assert app.extensions["kws"].reload_now()["to"]["version"] == "test-2"
            r = _send(c, sid, chunk, seq=seq)
            assert r.status_code == 200, r.get_data(as_text=True)
            answers.append(r.get_json())
    finally:
        registry.reset()
    versions = [a["model"]["version"] for a in answers]
    assert versions == ["test-1"] * 18 + ["test-2"] * (len(answers) - 18)
    found = [(d["keyword"], a["model"]["version"]) for a in answers for d in a["detections"]]
    assert found == [("one", "test-1"), ("two", "test-2")]


def test_any_chunk_sizes_give_the_same_windows_and_memory_stays_bounded(bundle, recording):
    app = _app(bundle)
    c = app.test_client()
    sid = _open(c)["session"]
    store = app.extensions["kws_stream"].store
    sizes, i, seq, found = [1, 1601, 4000, 333, 3200, 7999], 0, 0, []
    while i < len(recording):
        n = sizes[seq % len(sizes)]
        r = _send(c, sid, recording[i:i + n], ("f32", "s16")[seq % 2], seq=seq)
        assert r.status_code == 200, r.get_data(as_text=True)
        found += [(d["keyword"], d["time_s"]) for d in r.get_json()["detections"]]
        i, seq = i + n, seq + 1
        assert store.get(sid).capacity == 16000 + 32000 // 2  # one window + the largest chunk, never more
    assert found == offline_detections(app.extensions["kws"].predictor(), recording)


def test_the_proxy_names_the_session(bundle):
    c = _app(bundle).test_client()
    named = c.post("/stream", headers={"X-KWS-Session": "a" * 32})
    assert named.status_code == 201 and named.get_json()["session"] == "a" * 32
    assert named.headers["Location"].endswith("/stream/" + "a" * 32)
    again = c.post("/stream", headers={"X-KWS-Session": "a" * 32}).get_json()["session"]  # taken: a new id
    odd = c.post("/stream", headers={"X-KWS-Session": "../x y"}).get_json()["session"]  # malformed: a new id
    assert len({"a" * 32, again, odd}) == 3 and all(len(s) == 32 for s in (again, odd))


def test_sessions_use_the_bundles_operating_point(tmp_path, bundle, recording):
    model_dir = shutil.copytree(bundle, tmp_path / "model")
    point = {"threshold": 0.99, "average_window_s": 0.75, "suppression_s": 1.5, "min_count": 3}
    (model_dir / "detector.json").write_text(json.dumps({"settings": point}))
    try:
        c = _app(model_dir).test_client()
        opened = _open(c)
        assert opened["detector"] == point
        assert _open(c, threshold=0.5)["detector"] == {**point, "threshold": 0.5}
        found = [d for chunk in chunks(recording, 200)
                 for d in _send(c, opened["session"], chunk).get_json()["detections"]]
        assert found == []  # nothing of the tiny model reaches 0.99 averaged over 0.75 s
    finally:
        registry.reset()
