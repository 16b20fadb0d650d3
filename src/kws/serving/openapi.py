"""The OpenAPI 3.0 document served at ``/openapi.json`` (a module, so it ships inside the package)."""

from __future__ import annotations

from typing import Any

from kws.serving import stream_openapi

AUDIO_TYPES = (
    "audio/wav", "audio/x-wav", "audio/wave", "audio/vnd.wave", "audio/flac", "audio/x-flac", "audio/ogg",
    "audio/mpeg", "audio/mp3", "audio/webm", "audio/mp4", "audio/x-m4a", "audio/aac", "video/webm",
    "application/ogg", "application/octet-stream",
)

#: The routes, each served at /X and /api/X. nginx (nginx/templates/default.conf.template) passes
#: PUBLIC_ROUTES to everyone, OPERATOR_ROUTES only to KWS_ADMIN_ALLOW, nothing else;
#: tests/serving/test_paths.py checks that the api, this document and nginx list the same routes.
PUBLIC_ROUTES = ("/predict", "/health", "/ready", "/model", "/openapi.public.json")
OPERATOR_ROUTES = ("/metrics", "/openapi.json", "/admin/reload")
#: Live listening, public too, through nginx's own location: a session is pinned to one replica.
STREAM_ROUTES = ("/stream", "/stream/<sid>")

ERROR_CODES = {
    400: ["missing_file", "invalid_parameter", "bad_request"],
    401: ["unauthorized"],
    403: ["forbidden"],
    404: ["not_found"],
    405: ["method_not_allowed"],
    413: ["payload_too_large"],
    415: ["unsupported_media_type"],
    422: ["empty_audio", "silent_audio", "invalid_audio", "audio_too_long", "bad_audio"],
    500: ["internal_error"],
    503: ["model_not_found", "bad_bundle", "model_loading", "shutting_down", "overloaded"],
}

_DESCRIPTIONS = {
    400: "Bad request: no audio (`missing_file`) or a bad `threshold`/`top_k` (`invalid_parameter`).",
    401: "Missing or wrong admin token.",
    403: "Not served here (admin endpoints without KWS_ADMIN_TOKEN, or private behind nginx).",
    404: "No such endpoint.",
    405: "Method not allowed for this endpoint.",
    413: "The upload is larger than the limit (KWS_MAX_UPLOAD_MB), or a multipart body with too many parts.",
    415: "Not audio in a format we can decode, or an unsupported Content-Type.",
    422: "Decoded but unusable: empty, silent, NaN/Inf samples or longer than the maximum duration.",
    500: "Unexpected server error (details are only in the server log).",
    503: "The model bundle is not loaded (missing, invalid or still loading), the service is shutting down, or "
         "it is overloaded (`overloaded`, with `Retry-After`: too many requests waiting; retry then).",
}


def _error(status: int) -> dict:
    return {
        "description": _DESCRIPTIONS[status],
        "content": {"application/json": {
            "schema": {"$ref": "#/components/schemas/Error"},
            "example": {"error": {"code": ERROR_CODES[status][0], "message": "..."}},
        }},
    }


def _json(ref: str, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def document(version: str = "1", public: bool = False) -> dict[str, Any]:
    """The whole surface, or (``public``) only :data:`PUBLIC_ROUTES`: what nginx serves to anyone."""
    doc = _document(version)
    if public:
        doc["paths"] = {path: spec for path, spec in doc["paths"].items()
                        if path in PUBLIC_ROUTES or path in stream_openapi.PATHS}
    return doc


def _document(version: str) -> dict[str, Any]:
    request_id = {"name": "X-Request-ID", "in": "header", "required": False, "schema": {"type": "string", "maxLength": 128},
                  "description": "Correlation id; echoed in the response header and body (generated when absent)."}
    params = [
        {"name": "threshold", "in": "query", "required": False,
         "schema": {"type": "number", "minimum": 0, "maximum": 1},
         "description": "Clips: answer `_unknown_` when the best score is below it. Long audio: the detection "
                        "threshold (server default otherwise). Also accepted as a multipart form field."},
        {"name": "top_k", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 1},
         "description": "How many labels to list in `scores` (default 3; capped at the number of labels)."},
        request_id,
    ]
    audio_schema = {"type": "string", "format": "binary"}
    doc = {
        "openapi": "3.0.3",
        "info": {
            "title": "kws keyword spotting API",
            "version": version,
            "description": (
                "Recognises a spoken keyword in a short clip, or finds keywords in longer audio with a sliding "
                "1 s window. Any common audio format (WAV, FLAC, Ogg, MP3, WebM, M4A), any sample rate, channel "
                "count or bit depth. Every error is JSON: `{\"error\": {\"code\", \"message\"}}`."),
        },
        "paths": {
            "/predict": {
                "post": {
                    "summary": "Recognise the keyword(s) in an audio upload",
                    "parameters": params,
                    "requestBody": {
                        "required": True,
                        "content": {
                            "multipart/form-data": {
                                "schema": {"type": "object", "required": ["file"], "properties": {
                                    "file": audio_schema,
                                    "threshold": {"type": "number", "minimum": 0, "maximum": 1},
                                    "top_k": {"type": "integer", "minimum": 1},
                                }},
                            },
                            **{t: {"schema": audio_schema} for t in AUDIO_TYPES},
                        },
                    },
                    "responses": {
                        "200": _json("Prediction", "The recognised keyword (and detections for audio longer than ~1.5 s)."),
                        **{str(s): _error(s) for s in (400, 405, 413, 415, 422, 500, 503)},
                    },
                },
            },
            "/health": {"get": {"summary": "Liveness: the process answers", "responses": {
                "200": _json("Health", "Always 200 while the process runs.")}}},
            "/ready": {"get": {"summary": "Readiness: the model is loaded", "responses": {
                "200": _json("Ready", "Model loaded and warmed up."), "503": _error(503)}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
                "description": "Prometheus text exposition format.",
                "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/model": {"get": {"summary": "Metadata of the loaded bundle", "responses": {
                "200": _json("ModelMeta", "Labels, feature parameters, metrics and model info."), "503": _error(503)}}},
            "/admin/reload": {"post": {
                "summary": "Swap in a new champion bundle now (also: SIGHUP, or polling every KWS_RELOAD_S)",
                "description": "Needs `Authorization: Bearer <KWS_ADMIN_TOKEN>`; off (403) when KWS_ADMIN_TOKEN is "
                               "unset. nginx does not expose it publicly.",
                "responses": {"200": {"description": "`reloaded` says whether a new bundle was swapped in; `model` "
                                      "is the one served now.",
                                      "content": {"application/json": {"schema": {"type": "object"}}}},
                              "401": _error(401), "403": _error(403), "503": _error(503)}}},
            "/openapi.json": {"get": {"summary": "This document, the whole surface (private behind nginx)",
                                      "responses": {"200": {"description": "OpenAPI 3 document.", "content": {
                                          "application/json": {"schema": {"type": "object"}}}}}}},
            "/openapi.public.json": {"get": {"summary": "This document, the public routes only (served to anyone)",
                                             "responses": {"200": {"description": "OpenAPI 3 document.", "content": {
                                                 "application/json": {"schema": {"type": "object"}}}}}}},
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object", "required": ["error"],
                    "properties": {"error": {
                        "type": "object", "required": ["code", "message"],
                        "properties": {
                            "code": {"type": "string", "enum": sorted({c for cs in ERROR_CODES.values() for c in cs})},
                            "message": {"type": "string"},
                        },
                    }, "request_id": {"type": "string"}},
                },
                "Score": {"type": "object", "required": ["label", "score"], "properties": {
                    "label": {"type": "string"}, "score": {"type": "number", "minimum": 0, "maximum": 1}}},
                "Detection": {"type": "object", "required": ["keyword", "start_s", "end_s", "confidence"],
                              "description": "A keyword found by the streaming detector (scores smoothed over "
                                             "recent windows, suppression after a detection): the 1 s window where "
                                             "it scored highest; `confidence` is the smoothed score.",
                              "properties": {
                    "keyword": {"type": "string"}, "start_s": {"type": "number"}, "end_s": {"type": "number"},
                    "confidence": {"type": "number", "minimum": 0, "maximum": 1}}},
                "Prediction": {
                    "type": "object",
                    "required": ["keyword", "confidence", "scores", "duration_s", "sample_rate", "model", "request_id"],
                    "properties": {
                        "keyword": {"type": "string", "description": "Best label; `_unknown_` below `threshold`."},
                        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                        "scores": {"type": "array", "items": {"$ref": "#/components/schemas/Score"}},
                        "duration_s": {"type": "number"},
                        "sample_rate": {"type": "integer", "nullable": True, "description": "Sample rate of the uploaded audio (null if the decoder could not tell)."},
                        "channels": {"type": "integer", "nullable": True, "description": "Channel count of the uploaded audio."},
                        "model": {"type": "object", "properties": {"name": {"type": "string"}, "version": {"type": "string"},
                                                                   "runtime": {"type": "string"}}},
                        "request_id": {"type": "string"},
                        "detections": {"type": "array", "items": {"$ref": "#/components/schemas/Detection"},
                                       "description": "Only for audio longer than ~1.5 s."},
                        "latency_ms": {"type": "number"},
                    },
                },
                "Health": {"type": "object", "properties": {"status": {"type": "string", "example": "ok"}}},
                "Ready": {"type": "object", "properties": {"status": {"type": "string", "example": "ready"},
                                                           "model": {"type": "object"}}},
                "ModelMeta": {"type": "object", "properties": {
                    "labels": {"type": "array", "items": {"type": "string"}}, "features": {"type": "object"},
                    "metrics": {"type": "object"}, "model_info": {"type": "object"}, "runtime": {"type": "string"},
                    "detector": {"type": "object", "description": "The long-audio detector's settings (threshold, "
                                 "average_window_s, suppression_s, min_count); `source` is `bundle` when they are the "
                                 "model's operating point (detector.json), else `default`."}}},
            },
        },
    }
    return stream_openapi.extend(doc)  # live listening: /stream
