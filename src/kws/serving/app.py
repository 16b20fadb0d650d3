"""Flask application factory: configuration, request ids, access log, JSON errors, metrics.

Settings (``create_app(config)`` keys override the ``KWS_*`` environment): one table in
:mod:`kws.serving.settings`, documented in docs/settings.md.

Live model updates: ``promote`` swaps a new bundle into ``model_dir`` (mount its PARENT folder
in a container, so the swapped-in folder is visible). Every ``reload_s`` seconds, on SIGHUP, or
on ``POST /admin/reload``, the service loads and warms the new bundle beside the old one and
swaps predictors atomically (:func:`kws.serving.registry.reload_if_changed`): no request fails,
and ``/model`` reports the new version.
"""

from __future__ import annotations

import io
import logging
import re
import threading
import time
import uuid
from typing import Any, Callable, Mapping

from flask import Flask, Request, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from kws.errors import KWSError
from kws.logs import setup_logging
from kws.serving import overload, registry
from kws.serving.metrics import Metrics
from kws.serving.predictor import Predictor
from kws.serving.settings import load_config  # noqa: F401 - the app's settings (also imported from here)
from kws.serving.uploads import LenientFormDataParser

log = logging.getLogger("kws.serving")
access_log = logging.getLogger("kws.serving.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")

HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
    408: "request_timeout", 411: "length_required", 413: "payload_too_large", 414: "uri_too_long",
    415: "unsupported_media_type", 422: "unprocessable_entity", 429: "too_many_requests",
    431: "headers_too_large", 500: "internal_error", 501: "not_implemented", 503: "service_unavailable",
}


class InMemoryRequest(Request):
    """Uploads stay in memory (bounded by MAX_CONTENT_LENGTH): no spooled temp files, ever."""

    form_data_parser_class = LenientFormDataParser  # any bytes in a part's file name

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return io.BytesIO()


class ServiceState:
    """Per-app handle on the process-wide predictor (see :func:`kws.serving.registry.get_predictor`)."""

    def __init__(self, config: dict[str, Any], metrics: Metrics):
        self.config = config
        self.metrics = metrics
        self._loader: threading.Thread | None = None
        self._loader_lock = threading.Lock()
        self.on_ready: list[Callable[[Predictor], None]] = []
        self._announced = False
        self._announce_lock = threading.Lock()
        self.draining = False  # SIGTERM received: /ready says 503, in-flight requests finish
        self._wake = threading.Event()  # SIGHUP / admin: check the bundle now
        self._watcher: threading.Thread | None = None
        self._stop_watching = threading.Event()

    @property
    def _args(self) -> dict[str, Any]:
        c = self.config
        return {"model_dir": c["model_dir"], "runtime": c["runtime"], "threads": c["tflite_threads"],
                "long_audio_s": c["long_audio_s"], "stride_s": c["window_stride_s"],
                "detection_threshold": c["detection_threshold"], "tta_shifts_ms": c["tta_shifts_ms"]}

    def predictor(self) -> Predictor:
        """The loaded predictor (loading it now if needed); raises a 503 :class:`KWSError` if unavailable."""
        pred = registry.get_predictor(**self._args, retry_s=self.config["retry_s"])
        self._loaded(pred)
        return pred

    def _loaded(self, pred: Predictor) -> None:
        if self._announced:
            return
        with self._announce_lock:
            if self._announced:
                return
            self._announced = True
        self.metrics.model_loaded.set(1)
        self.metrics.model_info.labels(pred.model_name, pred.model_version, pred.runtime.name).set(1)
        for callback in self.on_ready:
            callback(pred)

    def reload_now(self) -> dict[str, Any] | None:
        """Swap in a new bundle if ``model_dir`` holds one: ``{"from": ..., "to": ...}``, else ``None``."""
        swapped = registry.reload_if_changed(**self._args, on_reject=self.metrics.reload_rejected.inc)
        if swapped is None:
            return None
        old, new = swapped
        self.metrics.reloads.inc()
        self.metrics.model_info.clear()
        self.metrics.model_info.labels(new.model_name, new.model_version, new.runtime.name).set(1)
        return {"from": {"name": old.model_name, "version": old.model_version},
                "to": {"name": new.model_name, "version": new.model_version}}

    def request_reload(self) -> None:
        """Ask the watcher to check the bundle now (safe from a signal handler: sets an event)."""
        self._wake.set()

    def start_watching(self) -> None:
        """Poll the bundle every ``reload_s`` seconds (and on :meth:`request_reload`) in a daemon thread."""
        if self._watcher is not None and self._watcher.is_alive():
            return
        self._watcher = threading.Thread(target=self._watch, name="kws-model-watcher", daemon=True)
        self._watcher.start()

    def stop_watching(self) -> None:
        self._stop_watching.set()
        self._wake.set()

    def _watch(self) -> None:
        interval = self.config["reload_s"] or None  # 0: only on request (SIGHUP / admin)
        while not self._stop_watching.is_set():
            self._wake.wait(interval)
            self._wake.clear()
            if self._stop_watching.is_set():
                return
            try:
                self.reload_now()
            except Exception:  # noqa: BLE001 - the watcher must survive anything
                log.exception("model reload check failed")

    def status(self) -> tuple[str, Any]:
        state, value = registry.peek(**self._args)
        if state == "ready":
            self._loaded(value)
        return state, value

    def start_loading(self) -> None:
        """Load (or retry loading) in a background thread; at most one at a time."""
        with self._loader_lock:
            if self._loader is not None and self._loader.is_alive():
                return
            self._loader = threading.Thread(target=self._load_quietly, name="kws-model-loader", daemon=True)
            self._loader.start()

    def _load_quietly(self) -> None:
        try:
            self.predictor()
        except KWSError:
            pass  # logged by get_predictor; /ready reports it
        except Exception:  # noqa: BLE001
            log.exception("model loading failed")


def _request_id() -> str:
    incoming = request.headers.get("X-Request-ID", "")
    return incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex


def error_response(code: str, message: str, status: int, headers: Mapping[str, str] | None = None) -> Response:
    body = {"error": {"code": code, "message": message}, "request_id": getattr(g, "request_id", None)}
    resp = jsonify(body)
    resp.status_code = status
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    g.outcome = code
    return resp


def create_app(config: dict | None = None) -> Flask:
    """Build the Flask app. ``config`` keys override the ``KWS_*`` environment (see module doc)."""
    setup_logging()
    cfg = load_config(config)
    from kws.serving.api import StrictJSONProvider, bp

    app = Flask(__name__)
    app.json = StrictJSONProvider(app)
    app.request_class = InMemoryRequest
    app.json.sort_keys = False
    app.config.update(
        MAX_CONTENT_LENGTH=int(cfg["max_upload_mb"] * 1024 * 1024),
        # Werkzeug applies this to the multipart decoder's buffer, file parts included (a
        # smaller value turns any upload above it into a 413); the whole body is capped above.
        MAX_FORM_MEMORY_SIZE=int(cfg["max_upload_mb"] * 1024 * 1024),
        MAX_FORM_PARTS=16,
        KWS=cfg,
    )
    state = ServiceState(cfg, Metrics())
    app.extensions["kws"] = state
    # Each route has exactly two spellings, /X and /api/X (nginx passes only the first): no
    # "//" merging into a redirect, no other prefix; anything else is the JSON 404.
    app.url_map.merge_slashes = False
    app.register_blueprint(bp)
    app.register_blueprint(bp, url_prefix="/api", name="api_prefixed")
    from kws.serving import stream_api  # live listening: /stream (its own blueprint and settings check)

    stream_api.install(app, state)

    @app.before_request
    def _start() -> Response | None:
        g.t0 = time.perf_counter()
        g.request_id = _request_id()
        g.outcome = "-"
        g.counted = True
        state.metrics.in_flight.inc()
        if overload.shedding():  # past the queue bound (kws.serving.overload): answer now, decode nothing
            return error_response("overloaded", "the service is overloaded: too many requests are waiting; "
                                  f"retry in {cfg['overload_retry_after_s']} s", 503,
                                  {"Retry-After": str(cfg["overload_retry_after_s"])})
        return None

    @app.teardown_request
    def _done(_exc: BaseException | None) -> None:
        if getattr(g, "counted", False):
            state.metrics.in_flight.dec()

    @app.after_request
    def _finish(resp: Response) -> Response:
        seconds = time.perf_counter() - getattr(g, "t0", time.perf_counter())
        rid = getattr(g, "request_id", None) or uuid.uuid4().hex
        resp.headers["X-Request-ID"] = rid
        resp.headers.setdefault("Cache-Control", "no-store")
        resp.headers["X-Content-Type-Options"] = "nosniff"
        if request.url_rule is not None:
            rule = request.url_rule.rule
        elif resp.status_code == 405:  # the path exists (only the method is wrong): bounded cardinality
            rule = request.path
        else:
            rule = "<unmatched>"
        endpoint = rule[len("/api"):] if rule.startswith("/api/") else rule
        state.metrics.observe_request(endpoint, request.method, resp.status_code, seconds)
        if resp.status_code >= 400:
            state.metrics.errors.labels(getattr(g, "outcome", "-")).inc()
        access_log.info("rid=%s %s %s %d %.1fms outcome=%s client=%s", rid, request.method, request.path,
                        resp.status_code, seconds * 1000, getattr(g, "outcome", "-"),
                        request.headers.get("X-Real-IP") or request.remote_addr)
        return resp

    @app.errorhandler(KWSError)
    def _kws_error(err: KWSError) -> Response:
        if err.status >= 500:
            log.warning("rid=%s %s: %s", getattr(g, "request_id", "-"), err.code, err.message)
        return error_response(err.code, err.message, err.status)

    @app.errorhandler(HTTPException)
    def _http_error(err: HTTPException) -> Response:
        status = err.code or 500
        code = HTTP_CODES.get(status, f"http_{status}")
        headers = {}
        if status == 413:
            limit = app.config["MAX_CONTENT_LENGTH"]
            if request.content_length is not None and request.content_length <= limit:
                # the body fits: the multipart decoder refused the number of parts
                message = (f"the multipart body has more than {app.config['MAX_FORM_PARTS']} parts; send the audio "
                           "as the single `file` field (plus at most a few parameters)")
            else:
                message = f"the upload is larger than the {cfg['max_upload_mb']:g} MB limit"
        elif status == 404:
            message = f"no endpoint at {request.path}; see /openapi.json"
        elif status == 405:
            allowed = sorted(getattr(err, "valid_methods", None) or [])
            message = f"{request.method} is not allowed on {request.path}" + (f"; use {', '.join(allowed)}" if allowed else "")
            if allowed:
                headers["Allow"] = ", ".join(allowed)
        else:
            message = err.description or err.name
        return error_response(code, message, status, headers)

    @app.errorhandler(Exception)
    def _unexpected(err: Exception) -> Response:
        log.exception("rid=%s unexpected error on %s %s", getattr(g, "request_id", "-"), request.method, request.path)
        return error_response("internal_error", "unexpected server error; the details are in the server log "
                              f"(request id {getattr(g, 'request_id', '-')})", 500)

    if cfg["preload"]:
        state.start_loading()
    return app
