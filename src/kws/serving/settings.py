"""The ONE table of serving settings: what the app, the server, docs/settings.md and compose read.

Each :class:`Setting` names its key (``create_app(config)`` overrides use it), its environment
variable, type, default, a one-line help and its validation. :func:`load_config` reads them
(defaults <- environment <- overrides). ``docs/settings.md`` is generated from the table:

    python -m kws.serving.settings --markdown > docs/settings.md

and tests/serving/test_settings_docs.py fails when the page or docker-compose.yml disagree with it.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from kws.errors import ConfigError

RUNTIMES = ("auto", "tflite", "tflite_int8", "keras")  # kws.serving.runtimes.RUNTIMES (checked by a test; no heavy import here)
DEFAULT_TTA_SHIFTS_MS = (0,)  # kws.serving.predictor.DEFAULT_TTA_SHIFTS_MS (idem): the clip alone


@dataclass(frozen=True)
class Setting:
    key: str
    env: str
    kind: type
    default: Any
    help: str
    check: Callable[[Any], str | None] | None = None  # returns what is wrong, or None
    rule: str = ""  # the check in words, for the docs


def _positive(v) -> str | None:
    return None if v > 0 else "must be positive"


def _non_negative(v) -> str | None:
    return None if v >= 0 else "must be zero or positive"


def _at_least_1(v) -> str | None:
    return None if v >= 1 else "must be at least 1"


def _unit(v) -> str | None:
    return None if 0 <= v <= 1 else "must be within 0..1"


def _port(v) -> str | None:
    return None if 1 <= v <= 65535 else "must be a port number 1..65535"


def _runtime(v) -> str | None:
    return None if v in RUNTIMES else f"must be one of {', '.join(RUNTIMES)}"


def _shifts(v) -> str | None:
    return None if v and all(abs(s) < 500 for s in v) else "must list one or more shifts under 500 ms"


def _host(v) -> str | None:
    return None if v.strip() else "must be an address to bind, e.g. 0.0.0.0 or 127.0.0.1"


_S = Setting
SETTINGS: tuple[Setting, ...] = (
    # ---- the server (kws-serve: Waitress)
    # max_queue: an accepted request waits for at most max_queue / threads requests ahead of it
    # per worker. The bound must let a normal burst through (8 clients at once, more than the
    # threads, is ordinary) yet keep an accepted request's wait far below a second; nginx's
    # KWS_MAX_PREDICTS (threads + max_queue) sheds the rest before Python sees them
    # (benchmarks/results/overload.json compares bounds).
    _S("host", "KWS_HOST", str, "0.0.0.0", "address to bind", _host, "an address"),
    _S("port", "KWS_PORT", int, 8000, "port to listen on", _port, "1..65535"),
    _S("threads", "KWS_THREADS", int, 4, "Waitress worker threads (requests handled at once)", _at_least_1, ">= 1"),
    _S("max_queue", "KWS_MAX_QUEUE", int, 8,
       "requests waiting for a worker beyond which new ones get 503 `overloaded` at once (0: no waiting); "
       "the chunks of open live sessions have KWS_STREAM_MAX_SESSIONS more places",
       _non_negative, ">= 0"),
    _S("overload_retry_after_s", "KWS_OVERLOAD_RETRY_AFTER_S", int, 1,
       "the `Retry-After` seconds of a 503 `overloaded` answer", _at_least_1, ">= 1"),
    _S("connection_limit", "KWS_CONNECTION_LIMIT", int, 1000,
       "open connections Waitress accepts (beyond, new ones wait in the listen backlog)", _at_least_1, ">= 1"),
    _S("queue_warning_s", "KWS_QUEUE_WARNING_S", float, 10.0,
       "at most one Waitress `Task queue depth` warning per this many seconds (with a count)", _non_negative,
       ">= 0"),
    _S("grace_s", "KWS_GRACE_S", float, 20.0, "SIGTERM: seconds to finish in-flight requests", _non_negative, ">= 0"),
    _S("log_level", "KWS_LOG_LEVEL", str, "INFO", "log level (DEBUG, INFO, WARNING, ...)"),
    # ---- the model
    _S("model_dir", "KWS_MODEL_DIR", str, "serving/model", "the model bundle folder"),
    _S("runtime", "KWS_RUNTIME", str, "auto",
       "inference runtime (auto: int8 where the bundle's export check chose it, else float32 TFLite)", _runtime,
       " / ".join(RUNTIMES)),
    _S("tflite_threads", "KWS_TFLITE_THREADS", int, 1, "threads inside one TFLite invoke", _at_least_1, ">= 1"),
    _S("preload", "KWS_PRELOAD", bool, True, "load + warm the model at start", None, "true / false"),
    _S("retry_s", "KWS_RETRY_S", float, 5.0, "seconds before a failed model load is retried", None),
    _S("reload_s", "KWS_RELOAD_S", float, 2.0, "poll the bundle for a new champion every N s (0: off)",
       _non_negative, ">= 0"),
    _S("admin_token", "KWS_ADMIN_TOKEN", str, "", "enables POST /admin/reload with this bearer token (unset: off)"),
    # ---- decoding with ffmpeg (formats libsndfile cannot read): a hostile upload costs a bounded
    # fraction of a second and never holds the in-memory WAV/FLAC/MP3 path
    _S("ffmpeg_concurrency", "KWS_FFMPEG_CONCURRENCY", int, 2, "ffmpeg decodes at once (more wait, then 503 `busy`)",
       _at_least_1, ">= 1"),
    _S("ffmpeg_cpu_s", "KWS_FFMPEG_CPU_S", float, 0.5, "CPU seconds one ffmpeg or ffprobe run may use", _positive,
       "> 0"),
    # ffmpeg_wait_s: a request waiting for a decoder holds a Waitress worker all that time, so a
    # few hostile uploads waiting in turn would starve the WAV requests queued behind them; with
    # no wait, the decoders are the only thing hostile uploads can hold (bench_hostile.py).
    _S("ffmpeg_wait_s", "KWS_FFMPEG_WAIT_S", float, 0.0, "seconds a request waits for a free decoder, then 503 `busy`",
       _non_negative, ">= 0"),
    # ---- live listening (kws.serving.stream_api): bounded sessions
    _S("stream_max_sessions", "KWS_STREAM_MAX_SESSIONS", int, 64,
       "live-listening sessions open at once, per process (more: 429)", _at_least_1, ">= 1"),
    _S("stream_idle_s", "KWS_STREAM_IDLE_S", float, 30.0, "a session without a chunk for this long expires (s)",
       _positive, "> 0"),
    _S("stream_max_chunk_bytes", "KWS_STREAM_MAX_CHUNK_BYTES", int, 32000,
       "largest audio chunk of a session (bytes; 32000 = 1 s of 16-bit audio)", _at_least_1, ">= 1"),
    # ---- requests and answers
    _S("max_upload_mb", "KWS_MAX_UPLOAD_MB", float, 10.0, "upload limit in MB (nginx reads the same variable)",
       _positive, "> 0"),
    _S("max_duration_s", "KWS_MAX_DURATION_S", float, 60.0, "longest audio accepted (seconds)", _positive, "> 0"),
    # 12,000,000: a minute of stereo at 96 kHz, about 48 MB as float32 per request in flight
    _S("max_decoded_samples", "KWS_MAX_DECODED_SAMPLES", int, 12_000_000,
       "samples (all channels together) an upload may decode to in memory (more: 413 `audio_too_large`)",
       _at_least_1, ">= 1"),
    _S("window_stride_s", "KWS_WINDOW_STRIDE_S", float, 0.125, "stride of the 1 s windows over long audio (s)",
       _positive, "> 0"),
    _S("long_audio_s", "KWS_LONG_AUDIO_S", float, 1.5, "longer audio is scanned for detections (s)", _positive, "> 0"),
    _S("top_k", "KWS_TOP_K", int, 3, "scores in an answer by default", _at_least_1, ">= 1"),
    _S("detection_threshold", "KWS_DETECTION_THRESHOLD", float, 0.6, "confidence of a detection in long audio",
       _unit, "0..1"),
    _S("tta_shifts_ms", "KWS_TTA_SHIFTS_MS", tuple, DEFAULT_TTA_SHIFTS_MS,
       "test-time shifts of a short clip, averaged (comma-separated ms, rounded to whole feature hops; 0: the clip alone)", _shifts, "each under 500 ms"),
)
BY_KEY: dict[str, Setting] = {s.key: s for s in SETTINGS}
BY_ENV: dict[str, Setting] = {s.env: s for s in SETTINGS}


def _parse(name: str, kind: type, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    if kind is tuple:  # comma-separated numbers, e.g. "0,-50,50"
        items = value if isinstance(value, (list, tuple)) else [v for v in str(value).split(",") if v.strip()]
        try:
            return tuple(float(v) for v in items)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} must be comma-separated numbers (milliseconds), got {value!r}") from None
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a {'whole number' if kind is int else kind.__name__}, got {value!r}") from None


def load_config(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Defaults <- environment <- ``overrides`` (by key); validated. Raises :class:`ConfigError`."""
    environ = os.environ if environ is None else environ
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(BY_KEY)
    if unknown:
        raise ConfigError(f"unknown service settings {sorted(unknown)}; known: {sorted(BY_KEY)}")
    cfg = {}
    for s in SETTINGS:
        if s.key in overrides:
            name, value = s.key, _parse(s.key, s.kind, overrides[s.key])
        elif environ.get(s.env, "") != "":
            name, value = s.env, _parse(s.env, s.kind, environ[s.env])
        else:
            name, value = s.env, s.default
        problem = s.check(value) if s.check else None
        if problem:
            raise ConfigError(f"{name} {problem}, got {value!r}")
        cfg[s.key] = value
    return cfg


def _default_text(s: Setting) -> str:
    if s.kind is tuple:
        return ",".join(f"{v:g}" for v in s.default)
    if s.kind is bool:
        return "true" if s.default else "false"
    if s.default == "":
        return "(unset)"
    return f"{s.default:g}" if isinstance(s.default, float) else str(s.default)


_KIND = {str: "text", int: "whole number", float: "number", bool: "true/false", tuple: "list of numbers"}


def markdown() -> str:
    """docs/settings.md: the table, as generated from :data:`SETTINGS`."""
    lines = [
        "# Serving settings",
        "",
        "Environment variables of the api (`kws-serve`). Generated from `src/kws/serving/settings.py`",
        "by `python -m kws.serving.settings --markdown > docs/settings.md`; a test fails when this page",
        "or docker-compose.yml disagree with the table. `create_app(config)` takes the same settings by key.",
        "",
        "| variable | key | type | default | allowed | what it does |",
        "|---|---|---|---|---|---|",
    ]
    for s in SETTINGS:
        lines.append(f"| `{s.env}` | `{s.key}` | {_KIND[s.kind]} | `{_default_text(s)}` | {s.rule or 'any'} | {s.help} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kws.serving.settings", description=__doc__.splitlines()[0])
    p.add_argument("--markdown", action="store_true", help="print docs/settings.md")
    args = p.parse_args(argv)
    if args.markdown:
        sys.stdout.write(markdown())
    else:
        for s in SETTINGS:
            print(f"{s.env}={_default_text(s)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
