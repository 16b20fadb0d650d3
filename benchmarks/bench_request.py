"""Where the time of one ``POST /predict`` goes (issue 21, item 3): the app's parts, profiled, and
what nginx and Waitress add around it.

1. **The app alone**: the service's own WSGI app (:func:`kws.serving.app.create_app`, the bundle
   loaded once) called in this process with ``--requests`` multipart uploads of real 1 s clips,
   each with a fresh random boundary as browsers and curl send them (the WSGI environs are built
   before the clock starts). Timed without a profiler: p50 per request.
2. **Its parts**, under ``cProfile`` over the same requests: the time inside each step of the
   hot path (multipart parsing, the audio decode, the silence check, the features, the runtime's
   invoke, the JSON answer), the rest being Flask and Werkzeug (routing, request context, hooks,
   headers, metrics). A deterministic profiler slows Python-heavy code more than C, so the
   shares are what it shows, scaled to the unprofiled p50 as an estimate.
3. **Around the app**: wrk through the real nginx to the real Waitress (``--threads``), one api
   process, ``GET /health`` (the floor: nginx, Waitress and Flask for a request that does nothing)
   against ``POST /predict`` of the same clip, ``--duration`` s each.

    .venv/bin/python benchmarks/bench_request.py --model-dir /tmp/speed/base-model

Writes ``benchmarks/results/request.json`` (``--output``).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import secrets
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, machine_info, write_result  # noqa: E402
from _wrk import load, multipart_body, write_get_script, write_post_script  # noqa: E402

REAL_POOL = REPO.parent / "shared" / "data" / "speech_commands_real"

#: The steps of the hot path: (name, file suffix, function names). They do not nest in one another.
PARTS = (
    ("multipart parsing", "kws/serving/uploads.py", ("_parse_multipart",)),
    ("audio decode", "kws/audio.py", ("decode",)),
    ("silence check", "kws/audio.py", ("check_not_silent",)),
    ("features", "kws/features.py", ("extract",)),
    ("runtime invoke", "kws/serving/runtimes.py", ("infer",)),
    ("JSON answer", "flask/json/__init__.py", ("jsonify",)),
    ("metrics (Prometheus)", "prometheus_client/metrics.py", ("observe", "inc", "dec", "labels")),
    ("access log line", "logging/__init__.py", ("_log",)),
)


def multipart(data: bytes, name: str) -> tuple[bytes, str]:
    """A browser-like multipart body of one file field with a fresh random boundary."""
    boundary = f"----WebKitFormBoundary{secrets.token_hex(8)}"
    return multipart_body(data, name, boundary), boundary


def environs(clips: list[Path], n: int) -> list[dict]:
    from werkzeug.test import EnvironBuilder

    out = []
    for i in range(n):
        body, boundary = multipart(clips[i % len(clips)].read_bytes(), clips[i % len(clips)].name)
        out.append(EnvironBuilder(path="/predict", method="POST", data=body,
                                  content_type=f"multipart/form-data; boundary={boundary}").get_environ())
    return out


def call(app, environ: dict) -> int:
    status = []
    body = b"".join(app(environ, lambda s, h, *a: status.append(s)))
    if not status or not status[0].startswith("200") or b'"keyword"' not in body:
        raise SystemExit(f"/predict answered {status[:1]}: {body[:300]!r}")
    return len(body)


def app_alone(app, clips: list[Path], n: int) -> dict:
    for env in environs(clips, 20):  # warm
        call(app, env)
    envs = environs(clips, n)
    ms = []
    for env in envs:
        t0 = time.perf_counter()
        call(app, env)
        ms.append(1000.0 * (time.perf_counter() - t0))
    return {"requests": n, "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p90_ms": round(float(np.percentile(ms, 90)), 3), "min_ms": round(float(min(ms)), 3)}


def profiled_parts(app, clips: list[Path], n: int, p50_ms: float) -> dict:
    envs = environs(clips, n)
    prof = cProfile.Profile()
    prof.enable()
    for env in envs:
        call(app, env)
    prof.disable()
    stats = pstats.Stats(prof, stream=io.StringIO())
    total = sum(tt for (_, _, tt, _, _) in stats.stats.values())  # all the time the profile saw
    parts = {}
    for name, suffix, funcs in PARTS:
        ct = sum(v[3] for (file, _, fn), v in stats.stats.items() if fn in funcs and file.endswith(suffix))
        parts[name] = ct
    parts["Flask, Werkzeug and the rest"] = max(0.0, total - sum(parts.values()))
    return {"requests": n, "profiled_ms_per_request": round(1000.0 * total / n, 3),
            "parts": {name: {"share": round(s / total, 4), "ms_at_unprofiled_p50": round(p50_ms * s / total, 3)}
                      for name, s in parts.items()}}


def around_the_app(model_dir: Path, clip: Path, args, tmp: Path) -> dict:
    """wrk through nginx to one api process: ``GET /health`` (the floor), then ``POST /predict``."""
    from tests.support.nginx import NginxProcess
    from tests.support.processes import ApiProcess

    post, _, _ = write_post_script(tmp, clip)
    scripts = {"GET /health": ("/health", write_get_script(tmp)), "POST /predict": ("/predict", post)}
    out = {}
    with ApiProcess(model_dir, tmp / "api", env={"KWS_THREADS": str(args.threads)}) as api, \
            NginxProcess(tmp / "nginx", upstream=f"127.0.0.1:{api.port}") as nginx:
        for what, (path, script) in scripts.items():
            load(nginx.url + path, script, 3, args.connections, 2, "30s")  # untimed warm-up
            out[what], _ = load(nginx.url + path, script, args.duration, args.connections, 2, "30s")
    return {"api_processes": 1, "waitress_threads": args.threads, "connections": args.connections,
            "wrk_threads": 2, "duration_s": args.duration, "clip": str(clip), "results": out}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, default=REPO / "serving" / "model")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of each wrk run")
    ap.add_argument("--connections", type=int, default=8)
    ap.add_argument("--threads", type=int, default=4, help="Waitress threads")
    ap.add_argument("--skip-http", action="store_true")
    ap.add_argument("--output", type=Path, default=None, help="default benchmarks/results/request.json")
    args = ap.parse_args(argv)

    from kws.logs import setup_logging
    from kws.serving.app import create_app

    setup_logging("WARNING")
    clips = sorted(REAL_POOL.glob("*/*.wav"))[::97][:35]
    if not clips:
        raise SystemExit(f"no real clips under {REAL_POOL}")
    tmp = Path(tempfile.mkdtemp(prefix="kws-request-"))
    try:
        app = create_app({"model_dir": str(args.model_dir.resolve()), "reload_s": 0})
        alone = app_alone(app, clips, args.requests)
        print("the app alone:", alone, flush=True)
        parts = profiled_parts(app, clips, args.requests, alone["p50_ms"])
        for name, v in parts["parts"].items():
            print(f"  {name:32s} {100 * v['share']:5.1f} %  ~{v['ms_at_unprofiled_p50']:.3f} ms")
        payload = {"benchmark": "request", "machine": machine_info(), "bundle": str(args.model_dir),
                   "clips": len(clips), "app_alone": alone, "profile": parts}
        if not args.skip_http:
            payload["http"] = around_the_app(args.model_dir.resolve(), clips[0], args, tmp)
            for what, r in payload["http"]["results"].items():
                print(f"  wrk {what}: {r['requests_per_s']:.0f} req/s, p50 {r['latency_ms']['p50']:.1f} ms, "
                      f"errors {r['errors_total']}", flush=True)
        path = write_result(args.output or "request.json", payload)
        print(f"wrote {path}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
