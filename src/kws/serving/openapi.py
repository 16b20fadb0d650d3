"""The OpenAPI 3.0 document served at ``/openapi.json`` (a module, so it ships inside the package)."""

from __future__ import annotations

from typing import Any

from kws.serving import stream_openapi
from kws.serving.openapi_errors import ERRORS, NO_MODEL, any_path, responses

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
                        **responses("/predict", "missing_file", "invalid_parameter", "bad_request",
                                    "payload_too_large", "audio_too_large", "unsupported_media_type", "empty_audio",
                                    "silent_audio", "invalid_audio", "audio_too_long", "model_error", *NO_MODEL,
                                    "busy", "storage_unavailable"),
                    },
                },
            },
            "/health": {"get": {"summary": "Liveness: the process answers", "responses": {
                "200": _json("Health", "Always 200 while the process runs."), **responses("/health")}}},
            "/ready": {"get": {"summary": "Readiness: the model is loaded", "responses": {
                "200": _json("Ready", "Model loaded and warmed up."),
                **responses("/ready", "shutting_down", "model_loading", *NO_MODEL)}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": {
                "description": "Prometheus text exposition format.",
                "content": {"text/plain": {"schema": {"type": "string"}}}}, **responses("/metrics", "forbidden")}}},
            "/model": {"get": {"summary": "Metadata of the loaded bundle", "responses": {
                "200": _json("ModelMeta", "Labels, feature parameters, metrics and model info."),
                **responses("/model", *NO_MODEL)}}},
            "/admin/reload": {"post": {
                "summary": "Swap in a new champion bundle now (also: SIGHUP, or polling every KWS_RELOAD_S)",
                "description": "Needs `Authorization: Bearer <KWS_ADMIN_TOKEN>`; off (403) when KWS_ADMIN_TOKEN is "
                               "unset. nginx does not expose it publicly.",
                "responses": {"200": {"description": "`reloaded` says whether a new bundle was swapped in; `model` "
                                      "is the one served now.",
                                      "content": {"application/json": {"schema": {"type": "object"}}}},
                              **responses("/admin/reload", "unauthorized", "forbidden", *NO_MODEL)}}},
            "/openapi.json": {"get": {"summary": "This document, the whole surface (private behind nginx)",
                                      "responses": {"200": {"description": "OpenAPI 3 document.", "content": {
                                          "application/json": {"schema": {"type": "object"}}}},
                                          **responses("/openapi.json", "forbidden")}}},
            "/openapi.public.json": {"get": {"summary": "This document, the public routes only (served to anyone)",
                                             "responses": {"200": {"description": "OpenAPI 3 document.", "content": {
                                                 "application/json": {"schema": {"type": "object"}}}},
                                                 **responses("/openapi.public.json")}}},
        },
        "components": {
            "responses": any_path(),
            "schemas": {
                "Error": {
                    "type": "object", "required": ["error"],
                    "properties": {"error": {
                        "type": "object", "required": ["code", "message"],
                        "properties": {
                            "code": {"type": "string", "enum": sorted(ERRORS)},
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
