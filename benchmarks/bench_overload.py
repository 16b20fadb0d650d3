"""Overload the stack (real nginx -> real Waitress, loopback): the bounded request queue at work.

For each queue bound (``--max-queue``, KWS_MAX_QUEUE) a fresh ``kws-serve`` (``--threads``)
behind the project's nginx template is first probed idle (``--idle-requests`` sequential POSTs of
one real 1 s clip: its usual latency), then ``wrk`` opens ``--connections`` connections for
``--duration`` s POSTing the same clip (raw ``audio/wav``), while a probe thread sends one
clip and one ``GET /health`` at a time and records each answer's status and latency. Reported per
bound: wrk's status counts, socket errors and latency (all answers), the probe's 200 and 503
latencies (p50/p99/max), /health latencies, and the idle latency. wrk and the probe run on the
SAME machine and compete with the service for its cores (state this with the figures).

    .venv/bin/python benchmarks/bench_overload.py [--connections 400 --duration 30 --max-queue 8a,8,4]

Each bound runs twice over: the api's own bound (KWS_MAX_QUEUE) and nginx's limit on /predict in
flight (KWS_MAX_PREDICTS = threads + bound) in front of it; ``8a`` = the api's bound alone.

Writes ``benchmarks/results/overload.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))
import _wrk  # noqa: E402
from _common import SAMPLE_DIR, machine_info, write_result  # noqa: E402
from bench_serving import full_length_clip, resolve_model, stats_ms  # noqa: E402

LUA = """\
local f = assert(io.open("{body}", "rb"))
wrk.body = f:read("*a")
f:close()
wrk.method = "POST"
wrk.path = "/predict"
wrk.headers["Content-Type"] = "audio/wav"

local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function init(args) counts = {{}} end
function response(status, headers, body) counts[status] = (counts[status] or 0) + 1 end

function done(summary, latency, requests)
  local agg = {{}}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("counts")) do agg[tostring(k)] = (agg[tostring(k)] or 0) + v end
  end
  local parts = {{}}
  for k, v in pairs(agg) do table.insert(parts, string.format("\\"%s\\": %d", k, v)) end
  local e = summary.errors
  io.write(string.format(
    "KWS_WRK_JSON {{\\"requests\\": %d, \\"duration_us\\": %d, \\"status\\": {{%s}}, " ..
    "\\"errors\\": {{\\"connect\\": %d, \\"read\\": %d, \\"write\\": %d, \\"timeout\\": %d}}, " ..
    "\\"latency_us\\": {{\\"p50\\": %d, \\"p90\\": %d, \\"p99\\": %d, \\"max\\": %d}}}}\\n",
    summary.requests, summary.duration, table.concat(parts, ", "),
    e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max))
end
"""


def run_wrk(url: str, script: Path, duration: int, connections: int, threads: int) -> dict:
    j = _wrk.summary(_wrk.run(url, script, duration, connections, threads, "10s", latency=False))
    seconds = j["duration_us"] / 1e6
    return {"requests": j["requests"], "seconds": round(seconds, 2), "requests_per_s": round(j["requests"] / seconds, 1),
            "status": dict(sorted(j["status"].items())), "socket_errors": j["errors"],
            "latency_ms": {k: round(v / 1000, 1) for k, v in j["latency_us"].items()}}


class Probe(threading.Thread):
    """One clip, then one /health, again and again: each answer's status and latency."""

    def __init__(self, base: str, clip: bytes):
        super().__init__(daemon=True)
        self.base, self.clip = base, clip
        self.stop = threading.Event()
        self.predict: list[tuple[int, float]] = []
        self.health: list[tuple[int, float]] = []

    def run(self) -> None:
        import requests

        with requests.Session() as s:
            while not self.stop.is_set():
                for kind, call in (("predict", lambda: s.post(f"{self.base}/predict", data=self.clip, timeout=30,
                                                              headers={"Content-Type": "audio/wav"})),
                                   ("health", lambda: s.get(f"{self.base}/health", timeout=30))):
                    t = time.perf_counter()
                    try:
                        status = call().status_code
                    except requests.RequestException:
                        status = 0
                    getattr(self, kind).append((status, time.perf_counter() - t))
                self.stop.wait(0.05)


def _by_status(samples: list[tuple[int, float]]) -> dict:
    out = {}
    for status in sorted({s for s, _ in samples}):
        out[str(status)] = stats_ms([t for s, t in samples if s == status])
    return out


def bench_bound(bound: int, nginx_bound: bool, args, model_dir: Path, clip: Path, tmp: Path) -> dict:
    """One run: KWS_MAX_QUEUE=bound; nginx's KWS_MAX_PREDICTS = threads + bound, or (not
    ``nginx_bound``) so high that only the api's own bound acts."""
    from tests.support.nginx import NginxProcess
    from tests.support.processes import ApiProcess

    env = {"KWS_THREADS": str(args.threads), "KWS_MAX_QUEUE": str(bound), "KWS_LOG_LEVEL": "WARNING"}
    data = clip.read_bytes()
    nginx_limit = args.threads + bound if nginx_bound else 65_000
    name = f"{bound}-{'nginx' if nginx_bound else 'api'}"
    with ApiProcess(model_dir, tmp / f"api-{name}", env=env) as api:
        ngx = NginxProcess(tmp / f"nginx-{name}", upstream=f"127.0.0.1:{api.port}", workers=args.nginx_workers)
        ngx.variables["KWS_MAX_PREDICTS"] = str(nginx_limit)
        with ngx:
            return _measure(api, ngx, args, data) | {
                "max_queue": bound, "threads": args.threads,
                "nginx_max_predicts": nginx_limit if nginx_bound else None}


def _measure(api, ngx, args, data: bytes) -> dict:
    import requests

    idle = []
    with requests.Session() as s:
        for _ in range(args.idle_requests):
            t = time.perf_counter()
            r = s.post(f"{ngx.url}/predict", data=data, headers={"Content-Type": "audio/wav"}, timeout=30)
            assert r.status_code == 200, r.text
            idle.append(time.perf_counter() - t)
    probe = Probe(ngx.url, data)
    load_before = round(os.getloadavg()[0], 2)
    probe.start()
    wrk = run_wrk(ngx.url, args.script, args.duration, args.connections, args.wrk_threads)
    probe.stop.set()
    probe.join(60)
    queue_warnings = api.log.read_text().count("Task queue depth is")
    return {"loadavg_1min_before": load_before,
            "idle_predict": stats_ms(idle), "wrk": wrk,
            "probe_predict_by_status": _by_status(probe.predict), "probe_health_by_status": _by_status(probe.health),
            "queue_warning_lines": queue_warnings}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--connections", type=int, default=400)
    ap.add_argument("--duration", type=int, default=30)
    ap.add_argument("--max-queue", default="8a,8,4", help="comma-separated queue bounds, one run each; a "
                    "trailing 'a': the api's bound only (nginx's KWS_MAX_PREDICTS out of the way)")
    ap.add_argument("--threads", type=int, default=4, help="Waitress worker threads (KWS_THREADS)")
    ap.add_argument("--wrk-threads", type=int, default=2)
    ap.add_argument("--nginx-workers", type=int, default=1)
    ap.add_argument("--idle-requests", type=int, default=30)
    ap.add_argument("--model-dir", type=Path, default=None)
    ap.add_argument("--out", default="overload.json")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kws-overload-") as tmp_name:
        tmp = Path(tmp_name)
        model_dir, model_note = resolve_model(args.model_dir, tmp)
        clip = full_length_clip(sorted(p for p in SAMPLE_DIR.glob("*/*.wav") if not p.parent.name.startswith("_")))
        (tmp / "clip.wav").write_bytes(clip.read_bytes())
        script = tmp / "post.lua"
        script.write_text(LUA.format(body=str(tmp / "clip.wav")))
        runs = []
        args.script = script
        for item in args.max_queue.split(","):
            bound, nginx_bound = int(item.rstrip("a")), not item.endswith("a")
            print(f"max_queue={bound} nginx bound={nginx_bound}: {args.connections} connections for "
                  f"{args.duration} s ...", flush=True)
            runs.append(bench_bound(bound, nginx_bound, args, model_dir, clip, tmp))
            print(json.dumps(runs[-1], indent=1), flush=True)
    path = write_result(args.out, {
        "benchmark": "overload: wrk through the real nginx -> real Waitress (bounded request queue), loopback",
        "note": "wrk, the probe, nginx and the service share the machine's cores",
        "model": model_note, "clip": clip.name, "connections": args.connections, "duration_s": args.duration,
        "machine": machine_info(), "runs": runs})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
