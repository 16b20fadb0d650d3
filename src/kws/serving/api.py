"""The HTTP endpoints (one blueprint, mounted at ``/`` and at ``/api``)."""

from __future__ import annotations

import hmac
import time
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from flask.json.provider import DefaultJSONProvider

from kws.audio import Decoder, check_not_silent
from kws.errors import DecoderBusyError, EmptyAudioError, KWSError, UnsupportedAudioError
from kws.ffmpeg import Limits
from kws.serving.openapi import AUDIO_TYPES, document

bp = Blueprint("api", __name__)


class StrictJSONProvider(DefaultJSONProvider):
    """JSON answers never carry NaN or Infinity (not JSON: browsers' ``JSON.parse`` and strict
    parsers reject them): a non-finite number that slipped through is a server error, not a 200."""

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("allow_nan", False)
        return super().dumps(obj, **kwargs)


@bp.record_once
def _make_decoder(setup) -> None:
    """One :class:`Decoder` per app: its gate bounds the app's concurrent ffmpeg decodes."""
    cfg = setup.app.config["KWS"]
    limits = Limits(cpu_s=cfg["ffmpeg_cpu_s"], concurrency=cfg["ffmpeg_concurrency"], wait_s=cfg["ffmpeg_wait_s"])
    setup.app.extensions["kws_decoder"] = Decoder(limits)


@bp.errorhandler(DecoderBusyError)
def _busy(err: DecoderBusyError) -> Response:
    from kws.serving.app import error_response  # noqa: PLC0415 - app imports this module

    return error_response(err.code, err.message, err.status, {"Retry-After": str(err.retry_after_s)})

#: Raw-body Content-Types taken as audio. ``application/x-www-form-urlencoded`` is what
#: ``curl --data-binary @clip.wav`` sends without ``-H Content-Type``; it is read as raw bytes.
RAW_TYPES = frozenset(AUDIO_TYPES) | {"application/x-www-form-urlencoded", ""}


def _state():
    return current_app.extensions["kws"]


def _param(name: str) -> str | None:
    value = request.args.get(name)
    if value is None and request.mimetype == "multipart/form-data":
        value = request.form.get(name)
    return None if value is None or value.strip() == "" else value.strip()


def _bad_param(message: str) -> KWSError:
    return KWSError(message, code="invalid_parameter", status=400)


def _threshold() -> float | None:
    raw = _param("threshold")
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise _bad_param(f"threshold must be a number between 0 and 1, got {raw!r}") from None
    if not 0.0 <= value <= 1.0:
        raise _bad_param(f"threshold must be between 0 and 1, got {value:g}")
    return value


def _top_k(default: int) -> int:
    raw = _param("top_k")
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise _bad_param(f"top_k must be a whole number >= 1, got {raw!r}") from None
    if value < 1:
        raise _bad_param(f"top_k must be at least 1, got {value}")
    return value


def _missing() -> KWSError:
    return KWSError("no audio in the request: send it as the multipart form field `file`, or as the raw body "
                    "with an audio Content-Type (audio/wav, audio/flac, audio/ogg, audio/mpeg, audio/webm, audio/mp4)",
                    code="missing_file", status=400)


def _read_audio() -> tuple[bytes, str | None]:
    """The uploaded bytes and the client's file name, from multipart ``file`` or the raw body."""
    mimetype = request.mimetype
    if mimetype == "multipart/form-data":
        upload = request.files.get("file")
        if upload is None:
            raise _missing()
        data = upload.read()
        if not data and not upload.filename:
            raise _missing()  # a browser form submitted with no file chosen
        if not data:
            raise EmptyAudioError(f"the uploaded file {upload.filename!r} is empty (0 bytes)")
        return data, upload.filename
    if mimetype in RAW_TYPES or mimetype.startswith("audio/"):
        data = request.get_data(cache=False)
        if not data:
            if mimetype in ("", "application/x-www-form-urlencoded"):
                raise _missing()
            raise EmptyAudioError("the request body is empty (0 bytes)")
        return data, None
    raise UnsupportedAudioError(
        f"Content-Type {mimetype!r} is not accepted: send multipart/form-data with a `file` field, or the raw "
        "audio with an audio Content-Type")


@bp.post("/predict")
def predict() -> Response:
    state = _state()
    cfg = state.config
    threshold = _threshold()
    top_k = _top_k(cfg["top_k"])
    data, filename = _read_audio()
    pred = state.predictor()
    audio = current_app.extensions["kws_decoder"].decode(data, pred.cfg.sample_rate, cfg["max_duration_s"],
                                                         cfg["max_decoded_samples"])
    del data
    check_not_silent(audio.samples)
    t0 = time.perf_counter()
    result = pred.predict(audio.samples, threshold=threshold, top_k=top_k, stride_s=cfg["window_stride_s"])
    state.metrics.inference.observe(time.perf_counter() - t0)
    state.metrics.audio_seconds.observe(audio.duration_s)
    state.metrics.predictions.labels(result["keyword"]).inc()
    for det in result.get("detections", ()):
        state.metrics.detections.labels(det["keyword"]).inc()
    body: dict[str, Any] = {
        "keyword": result["keyword"],
        "confidence": result["confidence"],
        "scores": result["scores"],
        "duration_s": round(audio.duration_s, 3),
        "sample_rate": audio.source_sample_rate,
        "channels": audio.source_channels,
        "model": {"name": pred.model_name, "version": pred.model_version, "runtime": pred.runtime.name},
        "request_id": g.request_id,
    }
    if threshold is not None:
        body["threshold"] = threshold
    if "detections" in result:
        body["detections"] = result["detections"]
        body["scan"] = result["scan"]
    body["latency_ms"] = round((time.perf_counter() - g.t0) * 1000, 2)
    g.outcome = result["keyword"]
    return jsonify(body)


@bp.get("/health")
def health() -> Response:
    return jsonify({"status": "ok"})


@bp.get("/ready")
def ready() -> Response:
    state = _state()
    if state.draining:  # SIGTERM: load balancers and healthchecks stop sending; in-flight requests finish
        raise KWSError("the service is shutting down", code="shutting_down", status=503)
    status, value = state.status()
    if status == "ready":
        return jsonify({"status": "ready", "model": {"name": value.model_name, "version": value.model_version,
                                                     "runtime": value.runtime.name, "labels": len(value.labels)}})
    state.start_loading()  # first call without preload, or a retry after a failure (rate-limited)
    if status == "failed":
        err: KWSError = value
        raise KWSError(err.message, code=err.code, status=503)
    raise KWSError("the model is loading; retry in a few seconds", code="model_loading", status=503)


@bp.get("/model")
def model() -> Response:
    return jsonify(_state().predictor().describe())


@bp.post("/admin/reload")
def admin_reload() -> Response:
    """Check the bundle folder now and swap in a new champion (``Authorization: Bearer $KWS_ADMIN_TOKEN``)."""
    state = _state()
    token = state.config["admin_token"]
    if not token:
        raise KWSError("admin endpoints are disabled: set KWS_ADMIN_TOKEN to enable POST /admin/reload "
                       "(or send SIGHUP; the service also polls the bundle every KWS_RELOAD_S seconds)",
                       code="forbidden", status=403)
    given = request.headers.get("Authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise KWSError("missing or wrong admin token: send `Authorization: Bearer <KWS_ADMIN_TOKEN>`",
                       code="unauthorized", status=401)
    state.predictor()  # 503 if no model could be loaded at all
    swapped = state.reload_now()
    pred = state.predictor()
    current = {"name": pred.model_name, "version": pred.model_version}
    return jsonify({"reloaded": swapped is not None, "model": current,
                    **({"previous": swapped["from"]} if swapped else {})})


@bp.get("/metrics")
def metrics() -> Response:
    payload, content_type = _state().metrics.render()
    return Response(payload, mimetype=None, content_type=content_type)


@bp.get("/openapi.json")
def openapi() -> Response:
    from kws import __version__ as version  # noqa: PLC0415

    return jsonify(document(str(version)))


@bp.get("/openapi.public.json")
def openapi_public() -> Response:
    """The public routes only: what nginx serves to anyone (the web page links it)."""
    from kws import __version__ as version  # noqa: PLC0415

    return jsonify(document(str(version), public=True))
