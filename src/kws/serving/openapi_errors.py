"""Every error answer of the service, as the OpenAPI documents (:mod:`kws.serving.openapi`,
:mod:`kws.serving.stream_openapi`) describe it: each code once, with its status, what it means
and the headers sent with it; each operation names the codes it can answer.

tests/serving/test_openapi_errors.py derives the codes the service can emit from its sources
(the :class:`~kws.errors.KWSError` classes and the calls that raise them) and from the real app's
answers, and fails when one is missing here or from an operation that gives it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kws.serving.overload import CHEAP_PATHS


@dataclass(frozen=True)
class Answer:
    status: int
    meaning: str
    retry_after: bool = False  # sent with a ``Retry-After`` header (seconds)


_A = Answer
#: code -> its answer.
ERRORS: dict[str, Answer] = {
    # --- the request
    "missing_file": _A(400, "no audio in the request (no multipart `file` field, no raw audio body)"),
    "invalid_parameter": _A(400, "a bad parameter (`threshold`, `top_k`, `seq`, `format`, ...)"),
    "bad_request": _A(400, "the request could not be read (e.g. the client stopped sending its body)"),
    "unauthorized": _A(401, "missing or wrong admin token"),
    "forbidden": _A(403, "admin endpoints are off (KWS_ADMIN_TOKEN unset); behind nginx, a private route "
                         "asked by a client outside KWS_ADMIN_ALLOW"),
    "not_found": _A(404, "no such endpoint"),
    "unknown_session": _A(404, "no such session on this server (never opened, or the server restarted): open a "
                               "new one"),
    "method_not_allowed": _A(405, "this method is not served at this path (the `Allow` header lists those that are)"),
    "out_of_order": _A(409, "`seq` is not the number of the session's next chunk"),
    "session_busy": _A(409, "an earlier chunk of the session is still being scored"),
    "session_model_changed": _A(409, "the model now served works at another sample rate: open a new session"),
    "session_closed": _A(410, "the session was closed: open a new one"),
    "session_expired": _A(410, "the session expired after KWS_STREAM_IDLE_S without a chunk: open a new one"),
    "payload_too_large": _A(413, "the body is larger than KWS_MAX_UPLOAD_MB, or a multipart body has too many parts"),
    "audio_too_large": _A(413, "the audio decodes to more samples (channels x frames) than KWS_MAX_DECODED_SAMPLES: "
                               "fewer channels or a lower sample rate"),
    "chunk_too_large": _A(413, "the chunk is larger than KWS_STREAM_MAX_CHUNK_BYTES (send ~100 ms per request)"),
    "unsupported_media_type": _A(415, "not audio in a format we can decode, or a Content-Type not accepted here"),
    "empty_audio": _A(422, "the upload is empty or decodes to no samples"),
    "silent_audio": _A(422, "the audio is digital silence (peak below -80 dBFS)"),
    "invalid_audio": _A(422, "NaN or infinite samples"),
    "audio_too_long": _A(422, "the audio is longer than KWS_MAX_DURATION_S"),
    "empty_chunk": _A(422, "the chunk is empty"),
    "bad_chunk_length": _A(422, "the chunk is not a whole number of samples"),
    "invalid_samples": _A(422, "NaN or infinite samples in the chunk"),
    "wrong_sample_rate": _A(422, "the chunk's sample rate is not the session's (or audio/L16 without `rate`)"),
    "bad_channels": _A(422, "the chunk is not mono"),
    "bad_scores": _A(422, "the model's window scores could not be used (non-finite); the details are in the log"),
    "too_many_sessions": _A(429, "KWS_STREAM_MAX_SESSIONS sessions are open on this server: close one or retry later"),
    # --- the server
    "internal_error": _A(500, "unexpected server error (details only in the server log, by request id)"),
    "model_error": _A(500, "the model answered non-finite scores for this audio"),
    "model_not_found": _A(503, "no model bundle at KWS_MODEL_DIR"),
    "bad_bundle": _A(503, "the model bundle is incomplete or cannot be loaded"),
    "model_loading": _A(503, "the model is still loading: retry in a few seconds"),
    "shutting_down": _A(503, "the service is stopping (SIGTERM)"),
    "busy": _A(503, "every decoder for compressed formats (KWS_FFMPEG_CONCURRENCY) stayed taken for "
                    "KWS_FFMPEG_WAIT_S", retry_after=True),
    "storage_unavailable": _A(503, "the server could not stage or decode the upload for an operating-system reason "
                                   "(memory, disk, processes); the upload may be fine: retry later"),
    "overloaded": _A(503, "too many requests are waiting (KWS_MAX_QUEUE): answered at once, nothing decoded",
                     retry_after=True),
}

#: What every operation can answer whatever it does: an unexpected error, and (except the cheap
#: probes, which never wait: kws.serving.overload.CHEAP_PATHS) a request past the queue bound.
COMMON = ("internal_error", "overloaded")
#: Codes the model's absence gives on an operation that needs the model.
NO_MODEL = ("model_not_found", "bad_bundle")

RETRY_AFTER = {"description": "Seconds to wait before retrying.", "schema": {"type": "integer", "minimum": 1}}


def responses(path: str, *codes: str) -> dict[str, dict[str, Any]]:
    """The error responses of the operation at ``path`` that answers ``codes`` (plus :data:`COMMON`),
    one per status: what each code means, an example of each, ``Retry-After`` where it is sent."""
    every = list(dict.fromkeys((*codes, *(c for c in COMMON if c != "overloaded" or path not in CHEAP_PATHS))))
    by_status: dict[int, list[str]] = {}
    for code in every:
        by_status.setdefault(ERRORS[code].status, []).append(code)
    out = {}
    for status in sorted(by_status):
        listed = by_status[status]
        spec: dict[str, Any] = {
            "description": " ".join(f"`{c}`: {ERRORS[c].meaning}." for c in listed),
            "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Error"},
                "examples": {c: {"value": {"error": {"code": c, "message": "..."}}} for c in listed},
            }},
        }
        retrying = [c for c in listed if ERRORS[c].retry_after]
        if retrying:
            spec["headers"] = {"Retry-After": {**RETRY_AFTER, "description": "Seconds to wait before retrying "
                                               f"(sent with {', '.join(f'`{c}`' for c in retrying)})."}}
        out[str(status)] = spec
    return out


def any_path() -> dict[str, dict[str, Any]]:
    """``components.responses``: the answers of the router itself, at any path (no operation to list them)."""
    return {
        "NotFound": {"description": f"`not_found`: {ERRORS['not_found'].meaning} (any path not listed here).",
                     "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
        "MethodNotAllowed": {
            "description": f"`method_not_allowed`: {ERRORS['method_not_allowed'].meaning}.",
            "headers": {"Allow": {"description": "The methods served at this path.", "schema": {"type": "string"}}},
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
    }
