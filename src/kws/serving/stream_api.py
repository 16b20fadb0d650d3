"""The live-listening endpoints (a blueprint mounted at ``/`` and ``/api``, like the others).

* ``POST /stream`` opens a session: ``201`` with its id, the sample rate, the chunk limits, the
  window/stride and the detector's operating point. ``?threshold=`` sets the session's detection
  threshold (as ``/predict?threshold=`` does for long audio).
* ``POST /stream/<id>?seq=N`` posts the next chunk of raw audio, mono, at the session's rate:
  ``Content-Type: audio/L16;rate=16000`` (RFC 2586: 16-bit big-endian) or
  ``application/octet-stream`` with ``?format=s16`` (16-bit little-endian) or ``?format=f32``
  (32-bit float little-endian, what a browser's Float32Array holds). The answer: the detections
  this chunk completed, the class scores of the latest window, the chunk's level, the stream
  time. ``seq`` (optional) is the chunk's number from 0: a chunk out of order is refused.
* ``DELETE /stream/<id>`` closes it.

Every refusal is a JSON 4xx with its own code and never touches another session (see
``openapi_errors.ERRORS``). Behind nginx the session id is the proxy's ``$request_id`` of the
opening request (header ``X-KWS-Session``), and nginx routes ``/stream/<id>`` by a consistent
hash of that id, so with ``--scale api=N`` every chunk of a session reaches the replica holding
it. SIGTERM: no new session (503 ``shutting_down``); chunks already received are answered
(:func:`kws.serving.server.run_until_stopped`); a client whose next chunk then meets another
replica gets 404 ``unknown_session`` and opens a new session there (the page and ``kws-listen``
do, resending that chunk).
"""

from __future__ import annotations

import math
import re
import time
from typing import Any

import numpy as np
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from kws.errors import ConfigError, KWSError
from kws.serving.sessions import SessionError, SessionStore, detector_settings

stream_bp = Blueprint("stream", __name__)

#: Set by nginx to its ``$request_id`` on ``POST /stream``: the id its ``hash`` routes on.
SESSION_HEADER = "X-KWS-Session"
_SESSION_ID = re.compile(r"^[A-Za-z0-9_-]{16,64}$")
L16 = "audio/l16"
FORMATS = {"s16": np.dtype("<i2"), "f32": np.dtype("<f4")}
MIN_CHUNK_MS = 100.0  # shorter chunks cost a request each for little less latency
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.5)


class StreamMetrics:
    """The live-listening series, in the service's own registry (``/metrics``)."""

    def __init__(self, registry: CollectorRegistry):
        self.sessions = Counter("kws_stream_sessions", "Live sessions opened and ended, by event "
                                "(opened, closed, expired)", ["event"], registry=registry)
        self.open = Gauge("kws_stream_sessions_open", "Live sessions open now", registry=registry)
        self.chunks = Counter("kws_stream_chunks", "Audio chunks scored", registry=registry)
        self.audio = Counter("kws_stream_audio_seconds", "Seconds of live audio received", registry=registry)
        self.windows = Counter("kws_stream_windows", "1 s windows scored in live streams", registry=registry)
        self.detections = Counter("kws_stream_detections", "Keywords detected in live streams", ["label"],
                                  registry=registry)
        self.chunk_latency = Histogram("kws_stream_chunk_duration_seconds", "Server time per chunk, from "
                                       "receipt to answer (seconds)", buckets=LATENCY_BUCKETS, registry=registry)
        self.detection_latency = Histogram(
            "kws_stream_detection_latency_seconds", "Server time of the chunks that carried a detection, from "
            "receipt to answer (seconds; a client adds its chunk length and the network)",
            buckets=LATENCY_BUCKETS, registry=registry)


class Streaming:
    """Per-app live-listening state: the session store, the limits, the metrics."""

    def __init__(self, cfg: dict[str, Any], registry: CollectorRegistry):
        # the limits are validated with every other setting (kws.serving.settings)
        self.max_chunk_bytes = int(cfg["stream_max_chunk_bytes"])
        self.stride_s = float(cfg["window_stride_s"])  # the stride of /predict's long-audio scan
        self.metrics = StreamMetrics(registry)
        self.store = SessionStore(cfg["stream_max_sessions"], cfg["stream_idle_s"],
                                  on_end=lambda reason: self.metrics.sessions.labels(reason).inc())
        self.metrics.open.set_function(lambda: len(self.store))


def install(app: Flask, state: Any) -> Streaming:
    """Add live listening to the app (``create_app`` calls this)."""
    streaming = Streaming(app.config["KWS"], state.metrics.registry)
    app.extensions["kws_stream"] = streaming
    app.register_blueprint(stream_bp)
    app.register_blueprint(stream_bp, url_prefix="/api", name="stream_prefixed")
    return streaming


def _streaming() -> Streaming:
    return current_app.extensions["kws_stream"]


def _bad_param(message: str) -> KWSError:
    return KWSError(message, code="invalid_parameter", status=400)


def _number(name: str, kind: type, low: float, high: float | None = None) -> Any:
    raw = request.args.get(name, "").strip()
    if raw == "":
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise _bad_param(f"{name} must be a {'whole ' if kind is int else ''}number, got {raw!r}") from None
    if value < low or (high is not None and value > high):
        bounds = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
        raise _bad_param(f"{name} must be {bounds}, got {value:g}")
    return value


def _chunk_error(message: str, code: str, status: int = 422) -> KWSError:
    return KWSError(message, code=code, status=status)


def recommended_chunk_ms(stride_s: float) -> float:
    """The chunk a client should send: whole strides, at least :data:`MIN_CHUNK_MS`.

    A window is scored when the chunk holding its last sample arrives. With chunks of whole
    strides every window ends exactly at a chunk's end, so none waits for the rest of a chunk to
    be captured: 100 ms chunks on the 125 ms stride made a window wait up to 100 ms, a tenth of a
    second on top of every detection."""
    stride_ms = 1000.0 * stride_s
    return round(stride_ms * max(1, math.ceil(MIN_CHUNK_MS / stride_ms - 1e-9)), 3)


def _check_rate(rate: str | None, want: int, required: bool) -> None:
    if rate is None:
        if required:
            raise _chunk_error(f"audio/L16 needs its rate: Content-Type: audio/L16;rate={want}", "wrong_sample_rate")
        return
    if rate.strip() != str(want):
        raise _chunk_error(f"this session takes {want} Hz audio, the chunk says {rate.strip()} Hz: resample to "
                           f"{want} Hz before sending", "wrong_sample_rate")


def read_chunk(max_bytes: int, sample_rate: int) -> np.ndarray:
    """The request body as float32 samples (see the module doc for the formats); JSON 4xx otherwise."""
    mimetype, params = request.mimetype, request.mimetype_params
    if mimetype == L16:
        dtype, rate, channels = np.dtype(">i2"), params.get("rate"), params.get("channels", "1")
    elif mimetype == "application/octet-stream":
        fmt = request.args.get("format", "")
        if fmt not in FORMATS:
            raise _bad_param(f"application/octet-stream needs ?format=s16 (16-bit little-endian) or ?format=f32 "
                             f"(32-bit float little-endian), got {fmt!r}")
        dtype, rate, channels = FORMATS[fmt], request.args.get("rate"), request.args.get("channels", "1")
    else:
        raise KWSError(f"Content-Type {mimetype or '(none)'!r} is not a raw audio chunk: send audio/L16;rate="
                       f"{sample_rate} or application/octet-stream with ?format=s16|f32", code="unsupported_media_type",
                       status=415)
    _check_rate(rate, sample_rate, required=mimetype == L16)
    if str(channels).strip() != "1":
        raise _chunk_error(f"chunks must be mono (1 channel), got {channels}", "bad_channels")
    if request.content_length is not None and request.content_length > max_bytes:
        raise _chunk_error(f"the chunk has {request.content_length} bytes, more than the {max_bytes} allowed "
                           "(KWS_STREAM_MAX_CHUNK_BYTES); send the session's chunk.recommended_ms per request",
                           "chunk_too_large", 413)
    data = request.get_data(cache=False)
    if len(data) > max_bytes:
        raise _chunk_error(f"the chunk has more than the {max_bytes} bytes allowed", "chunk_too_large", 413)
    if not data:
        raise _chunk_error("the chunk is empty (0 bytes)", "empty_chunk")
    if len(data) % dtype.itemsize:
        raise _chunk_error(f"the chunk has {len(data)} bytes, not a whole number of {dtype.itemsize}-byte samples",
                           "bad_chunk_length")
    raw = np.frombuffer(data, dtype)
    samples = raw.astype(np.float32) / 32768.0 if dtype.kind == "i" else raw.astype(np.float32)
    if not np.all(np.isfinite(samples)):
        raise _chunk_error("the chunk contains NaN or infinite sample values", "invalid_samples")
    return samples


def _model(pred: Any) -> dict[str, str]:
    return {"name": pred.model_name, "version": pred.model_version}


@stream_bp.post("/stream")
def open_session() -> Response:
    state, streaming = current_app.extensions["kws"], _streaming()
    if state.draining:
        raise KWSError("the service is shutting down; open the session again (another server takes it)",
                       code="shutting_down", status=503)
    threshold = _number("threshold", float, 0.0, 1.0)
    pred = state.predictor()
    requested = request.headers.get(SESSION_HEADER, "")
    rate = pred.cfg.sample_rate
    capacity = pred.cfg.clip_samples + streaming.max_chunk_bytes // 2
    session = streaming.store.open(rate, capacity, threshold, requested if _SESSION_ID.match(requested) else None)
    streaming.metrics.sessions.labels("opened").inc()
    m = streaming.max_chunk_bytes
    body = {
        "session": session.id,
        "url": f"stream/{session.id}",
        "sample_rate": rate,
        "formats": {"audio/L16": f"audio/L16;rate={rate} (16-bit big-endian)",
                    "s16": "application/octet-stream ?format=s16 (16-bit little-endian)",
                    "f32": "application/octet-stream ?format=f32 (32-bit float little-endian)"},
        "chunk": {"max_bytes": m, "max_ms_s16": round(1000 * m / 2 / rate, 1),
                  "max_ms_f32": round(1000 * m / 4 / rate, 1), "recommended_ms": recommended_chunk_ms(streaming.stride_s)},
        "window_s": pred.window_s,
        "stride_s": streaming.stride_s,
        "idle_timeout_s": streaming.store.idle_s,
        "detector": detector_settings(pred, threshold).to_dict(),
        "labels": list(pred.labels),
        "model": _model(pred),
    }
    resp = jsonify(body)
    resp.status_code = 201
    resp.headers["Location"] = f"{request.script_root}{request.path.rstrip('/')}/{session.id}"
    return resp


@stream_bp.post("/stream/<sid>")
def post_chunk(sid: str) -> Response:
    state, streaming = current_app.extensions["kws"], _streaming()
    session = streaming.store.get(sid)
    seq = _number("seq", int, 0)
    samples = read_chunk(streaming.max_chunk_bytes, session.sample_rate)
    streaming.store.acquire(session)
    try:
        if seq is not None and seq != session.seq:
            raise SessionError(f"chunk {seq} arrived but this session expects chunk {session.seq} next: send the "
                               "chunks of a session one after another, in order", code="out_of_order")
        pred = state.predictor()
        result = session.feed(samples, pred, streaming.stride_s)
        number, t_s = session.seq - 1, session.t_s
    finally:
        session.lock.release()
    m = streaming.metrics
    m.chunks.inc()
    m.audio.inc(len(samples) / session.sample_rate)
    m.windows.inc(result["windows"])
    seconds = time.perf_counter() - g.t0
    m.chunk_latency.observe(seconds)
    for det in result["detections"]:
        m.detections.labels(det["keyword"]).inc()
    if result["detections"]:
        m.detection_latency.observe(seconds)
    g.outcome = ",".join(d["keyword"] for d in result["detections"]) or "-"
    return jsonify({"session": sid, "seq": number, "t_s": round(t_s, 4), **result, "model": _model(pred),
                    "latency_ms": round(seconds * 1000, 2)})


@stream_bp.delete("/stream/<sid>")
def close_session(sid: str) -> Response:
    session = _streaming().store.close(sid)
    return jsonify({"session": sid, "closed": True, "chunks": session.seq, "t_s": round(session.t_s, 4),
                    "detections": session.detected})
