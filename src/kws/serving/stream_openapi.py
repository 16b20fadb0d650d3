"""The live-listening part of the OpenAPI document (``/stream``; see :mod:`kws.serving.stream_api`)."""

from __future__ import annotations

from typing import Any

from kws.serving.openapi_errors import NO_MODEL, responses


def _json(ref: str, description: str) -> dict:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


_SESSION = {"name": "session", "in": "path", "required": True, "schema": {"type": "string"},
            "description": "The id `POST /stream` answered."}

PATHS: dict[str, Any] = {
    "/stream": {"post": {
        "summary": "Open a live-listening session",
        "description": "Then post the audio in small chunks, in order, to `/stream/{session}`. Behind nginx the "
                       "chunks of a session always reach the server that holds it (consistent hash on the id).",
        "parameters": [{"name": "threshold", "in": "query", "required": False,
                        "schema": {"type": "number", "minimum": 0, "maximum": 1},
                        "description": "The session's detection threshold (default: the model's operating point)."}],
        "responses": {"201": _json("StreamSession", "The session, its sample rate, chunk limits and detector."),
                      **responses("/stream", "invalid_parameter", "too_many_sessions", "shutting_down", *NO_MODEL)},
    }},
    "/stream/{session}": {
        "post": {
            "summary": "Send the next chunk of a session (100-250 ms of mono audio)",
            "parameters": [_SESSION,
                           {"name": "seq", "in": "query", "required": False, "schema": {"type": "integer", "minimum": 0},
                            "description": "This chunk's number (0, 1, 2, ...); a chunk out of order is refused."},
                           {"name": "format", "in": "query", "required": False, "schema": {"enum": ["s16", "f32"]},
                            "description": "With application/octet-stream: 16-bit integer or 32-bit float samples, "
                                           "little-endian."},
                           {"name": "rate", "in": "query", "required": False, "schema": {"type": "integer"},
                            "description": "With application/octet-stream: the sample rate, if the client states it "
                                           "(must be the session's)."}],
            "requestBody": {"required": True, "content": {
                "audio/L16;rate=16000": {"schema": {"type": "string", "format": "binary"},
                                         "example": "16-bit big-endian samples (RFC 2586)"},
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
            "responses": {"200": _json("StreamChunk", "What this chunk completed."),
                          **responses("/stream/{session}", "invalid_parameter", "bad_request", "unknown_session",
                                      "out_of_order", "session_busy", "session_model_changed", "session_closed",
                                      "session_expired", "chunk_too_large", "payload_too_large",
                                      "unsupported_media_type", "empty_chunk", "bad_chunk_length", "invalid_samples",
                                      "wrong_sample_rate", "bad_channels", "bad_scores", *NO_MODEL)},
        },
        "delete": {"summary": "Close a session", "parameters": [_SESSION], "responses": {
            "200": {"description": "Closed: its chunk and detection counts.",
                    "content": {"application/json": {"schema": {"type": "object"}}}},
            **responses("/stream/{session}", "unknown_session", "session_closed", "session_expired")}},
    },
}

SCHEMAS: dict[str, Any] = {
    "StreamSession": {"type": "object", "required": ["session", "sample_rate", "chunk"], "properties": {
        "session": {"type": "string"}, "url": {"type": "string", "description": "Relative URL of the chunks."},
        "sample_rate": {"type": "integer", "example": 16000},
        "formats": {"type": "object"},
        "chunk": {"type": "object", "properties": {"max_bytes": {"type": "integer"}, "max_ms_s16": {"type": "number"},
                                                   "max_ms_f32": {"type": "number"},
                                                   "recommended_ms": {"type": "number", "description": "Whole strides (at least 100 ms): every window then ends at a chunk's end."}}},
        "window_s": {"type": "number"}, "stride_s": {"type": "number"}, "idle_timeout_s": {"type": "number"},
        "detector": {"type": "object", "description": "The operating point: threshold, average_window_s, "
                                                      "suppression_s, min_count."},
        "labels": {"type": "array", "items": {"type": "string"}}, "model": {"type": "object"}}},
    "StreamDetection": {"type": "object", "required": ["keyword", "time_s", "confidence"], "properties": {
        "keyword": {"type": "string"},
        "time_s": {"type": "number", "description": "Stream time of the centre of the window where it scored highest."},
        "start_s": {"type": "number"}, "end_s": {"type": "number"},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "fired_s": {"type": "number", "description": "Centre of the window that completed the detection: it was "
                                                    "known once the audio up to fired_s + window_s / 2 had arrived."}}},
    "StreamChunk": {"type": "object", "required": ["session", "seq", "t_s", "detections"], "properties": {
        "session": {"type": "string"}, "seq": {"type": "integer"},
        "t_s": {"type": "number", "description": "Stream time at the end of this chunk."},
        "detections": {"type": "array", "items": {"$ref": "#/components/schemas/StreamDetection"}},
        "windows": {"type": "integer", "description": "1 s windows this chunk completed and scored."},
        "scores": {"type": "object", "nullable": True, "additionalProperties": {"type": "number"},
                   "description": "Every label's score in the latest window (null before the first second)."},
        "window_time_s": {"type": "number", "nullable": True},
        "level": {"type": "object", "properties": {"rms_dbfs": {"type": "number"}, "peak": {"type": "number"}}},
        "model": {"type": "object"}, "latency_ms": {"type": "number"}}},
}


def extend(doc: dict[str, Any]) -> dict[str, Any]:
    """Add the live-listening paths and schemas to the service's document (their error codes are
    among :data:`kws.serving.openapi_errors.ERRORS`)."""
    doc["paths"].update(PATHS)
    doc["components"]["schemas"].update(SCHEMAS)
    return doc
