"""Benchmark: a normal clip's latency with hostile uploads in flight (issue 22, item 2).

The real service (``python -m kws.serving.server``: Waitress, default settings) on loopback.
A normal request is one real 1 s WAV of the sample clips, POSTed as multipart ``file``; the same
clip as WebM/Opus (decoded by ffmpeg) is measured too. Phases, each ``--requests`` normal
requests one after the other:

* ``idle``: nothing else running;
* one phase per hostile kind, with ``--hostile`` threads each POSTing that upload in a loop
  (``--hostile`` uploads always in flight):

  * ``gzip_zeros``: ~1 MB of gzip-compressed zeros (the issue's attack: before the fix ffmpeg
    probed each for seconds of CPU);
  * ``ffmpeg_spinner``: a VALID 30 KB Matroska file (a minute of 8-channel 384 kHz FLAC silence)
    that passes the container check and would cost ffmpeg a second or more of CPU to decode:
    the CPU budget stops it.

* ``burst_<kind>`` (the issue's measurement): ``--hostile`` uploads of that kind sent at once, the
  normal WAV 0.2 s later, its latency recorded; repeated ``--requests // 2`` times (8 uploads, 8 MB
  in all, took 25.7 s of a normal clip's time before the fix).

The closed-loop phases are a flood: each hostile client resends the moment it is answered, so
the faster the refusal, the more requests per second. Reported per phase: normal-request latency (p50/p90/max), the ratio of p50 to the idle p50
(target <= 2), hostile answers by status and their latency, and the CPU the server's children
(ffmpeg/ffprobe) used per hostile upload. The load generator runs on the same machine.
Writes ``benchmarks/results/hostile.json``.

    .venv/bin/python benchmarks/bench_hostile.py [--requests 40 --hostile 8] [--setting KWS_FFMPEG_WAIT_S=0.2 ...]
"""

from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import requests

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, SAMPLE_DIR, machine_info, table, write_result  # noqa: E402
from tests.support.bundles import build_tiny_bundle  # noqa: E402
from tests.support.processes import ApiProcess  # noqa: E402


def gzip_zeros(size: int = 1_000_000) -> bytes:
    """At least ``size`` bytes of gzip-compressed zeros (about a GB of zeros)."""
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: gzip framing
    chunk, out, n = b"\0" * (1 << 24), [], 0
    while n < size:
        part = comp.compress(chunk)
        out.append(part)
        n += len(part)
    out.append(comp.flush())
    return b"".join(out)


def ffmpeg_file(tmp: Path, name: str, args: list[str]) -> bytes:
    out = tmp / name
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *args, str(out)], check=True,
                   capture_output=True, timeout=300)
    return out.read_bytes()


def children_cpu_s(pid: int) -> float:
    """CPU seconds of the server's reaped children (cutime + cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def stats_ms(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000.0
    return {"n": int(len(ms)), "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p90_ms": round(float(np.percentile(ms, 90)), 1), "max_ms": round(float(ms.max()), 1)}


def timed_posts(url: str, data: bytes, name: str, n: int) -> list[float]:
    out = []
    with requests.Session() as s:
        for _ in range(n):
            t0 = time.perf_counter()
            r = s.post(f"{url}/predict", files={"file": (name, data)}, timeout=120)
            out.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
    return out


def burst(url: str, data: bytes, name: str, n: int, wav: bytes, rounds: int) -> tuple[list[float], dict]:
    """``n`` hostile uploads at once, then one normal WAV: its latency, per round."""
    out, answers = [], collections.Counter()

    def one():
        r = requests.post(f"{url}/predict", files={"file": (name, data)}, timeout=120)
        answers[f"{r.status_code} {r.json().get('error', {}).get('code', 'ok')}"] += 1

    for _ in range(rounds):
        threads = [threading.Thread(target=one) for _ in range(n)]
        for t in threads:
            t.start()
        time.sleep(0.2)
        t0 = time.perf_counter()
        r = requests.post(f"{url}/predict", files={"file": ("clip.wav", wav)}, timeout=120)
        out.append(time.perf_counter() - t0)
        assert r.status_code == 200, r.text
        for t in threads:
            t.join(120)
    return out, dict(answers)


class Hostile:
    """``threads`` clients each POSTing ``data`` in a loop until stopped."""

    def __init__(self, url: str, data: bytes, name: str, threads: int):
        self.url, self.data, self.name = url, data, name
        self.stop = threading.Event()
        self.answers: collections.Counter = collections.Counter()
        self.latency: list[float] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with requests.Session() as s:
            while not self.stop.is_set():
                t0 = time.perf_counter()
                try:
                    r = s.post(f"{self.url}/predict", files={"file": (self.name, self.data)}, timeout=120)
                    code = r.json().get("error", {}).get("code", "ok") if r.status_code != 200 else "ok"
                    self.answers[f"{r.status_code} {code}"] += 1
                except requests.RequestException as err:
                    self.answers[type(err).__name__] += 1
                self.latency.append(time.perf_counter() - t0)

    def __enter__(self):
        for t in self.threads:
            t.start()
        time.sleep(1.0)  # all in flight
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(120)


def _server_settings(overrides: dict[str, str]) -> str:
    """The server's decode settings in this run (its defaults, with ``--setting`` applied)."""
    from kws.serving.settings import load_config

    c = load_config(environ=overrides)
    return (f"kws.serving.server (Waitress: {c['threads']} threads, {c['ffmpeg_concurrency']} ffmpeg decodes at "
            f"once, {c['ffmpeg_cpu_s']:g} s CPU each, {c['ffmpeg_wait_s']:g} s wait for a decoder)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=40)
    ap.add_argument("--hostile", type=int, default=8)
    ap.add_argument("--model-dir", type=Path, default=REPO / "serving" / "model")
    ap.add_argument("--out", default="hostile.json")
    ap.add_argument("--setting", action="append", default=[], metavar="KWS_X=VALUE",
                    help="a service setting for this run (repeatable), e.g. KWS_FFMPEG_WAIT_S=0.2")
    args = ap.parse_args(argv)
    if shutil.which("ffmpeg") is None:
        print("ffmpeg is required", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="kws-bench-hostile-") as tmp_name:
        tmp = Path(tmp_name)
        model_dir = args.model_dir
        if not (model_dir / "model.tflite").is_file():
            model_dir = build_tiny_bundle(tmp / "model", sample_dir=SAMPLE_DIR)
        clip_path = sorted((SAMPLE_DIR / "one").glob("*.wav"))[0]
        wav = clip_path.read_bytes()
        webm = ffmpeg_file(tmp, "clip.webm", ["-i", str(clip_path), "-c:a", "libopus"])
        hostile = {
            "gzip_zeros": (gzip_zeros(), "zeros.wav"),
            "ffmpeg_spinner": (ffmpeg_file(tmp, "spin.mkv", ["-f", "lavfi", "-i", "anullsrc=r=384000:cl=7.1",
                                                               "-t", "60", "-c:a", "flac"]), "spin.webm"),
        }
        settings = dict(item.split("=", 1) for item in args.setting)
        api = ApiProcess(model_dir, tmp / "api", env={"KWS_RELOAD_S": "0", **settings})
        phases, rows = {}, []
        with api:
            timed_posts(api.url, wav, "clip.wav", 5)  # warm
            timed_posts(api.url, webm, "clip.webm", 3)
            idle = {"wav": stats_ms(timed_posts(api.url, wav, "clip.wav", args.requests)),
                    "webm": stats_ms(timed_posts(api.url, webm, "clip.webm", args.requests // 2))}
            phases["idle"] = idle
            for kind, (data, name) in hostile.items():
                cpu0 = children_cpu_s(api.proc.pid)
                with Hostile(api.url, data, name, args.hostile) as attack:
                    wav_s = timed_posts(api.url, wav, "clip.wav", args.requests)
                    webm_codes = collections.Counter()
                    for _ in range(args.requests // 2):
                        r = requests.post(f"{api.url}/predict", files={"file": ("c.webm", webm)}, timeout=120)
                        webm_codes[str(r.status_code)] += 1
                n_hostile = sum(attack.answers.values())
                cpu = children_cpu_s(api.proc.pid) - cpu0
                phases[kind] = {
                    "upload_bytes": len(data), "wav": stats_ms(wav_s),
                    "wav_p50_vs_idle": round(float(np.percentile(wav_s, 50) * 1000) / idle["wav"]["p50_ms"], 2),
                    "webm_answers_under_attack": dict(webm_codes),
                    "hostile_answers": dict(attack.answers), "hostile_latency": stats_ms(attack.latency),
                    "ffmpeg_cpu_s_per_hostile_upload": round(cpu / max(1, n_hostile), 3),
                }
                rows.append([kind, len(data), phases[kind]["wav"]["p50_ms"], phases[kind]["wav"]["p90_ms"],
                             phases[kind]["wav_p50_vs_idle"], dict(attack.answers),
                             phases[kind]["ffmpeg_cpu_s_per_hostile_upload"]])
            for kind, (data, name) in hostile.items():
                wav_s, answers = burst(api.url, data, name, args.hostile, wav, max(1, args.requests // 2))
                phases[f"burst_{kind}"] = {
                    "wav": stats_ms(wav_s),
                    "wav_p50_vs_idle": round(float(np.percentile(wav_s, 50) * 1000) / idle["wav"]["p50_ms"], 2),
                    "hostile_answers": answers}
                rows.append([f"burst_{kind}", len(data), phases[f"burst_{kind}"]["wav"]["p50_ms"],
                             phases[f"burst_{kind}"]["wav"]["p90_ms"], phases[f"burst_{kind}"]["wav_p50_vs_idle"],
                             answers, "-"])
        payload = {
            "benchmark": "bench_hostile", "machine": machine_info(),
            "setup": {"requests": args.requests, "hostile_in_flight": args.hostile, "server": _server_settings(settings),
                      "settings": settings,
                      "model": str(model_dir) if model_dir == args.model_dir else "tiny bundle trained now",
                      "normal_clip": str(clip_path.relative_to(SAMPLE_DIR.parent))},
            "target": "normal WAV p50 with hostile uploads in flight <= 2x idle p50",
            "phases": phases,
        }
        path = write_result(args.out, payload)
    print(f"idle: wav p50 {idle['wav']['p50_ms']} ms, webm p50 {idle['webm']['p50_ms']} ms")
    print(table(rows, ["hostile", "bytes", "wav p50 ms", "wav p90 ms", "p50 vs idle", "hostile answers",
                       "ffmpeg CPU s/upload"]))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
