"""Benchmark live listening: N simultaneous streaming sessions in real time through nginx.

Every session streams its own recording of REAL clips (the bundle's keywords, from
``../shared/data``, one every ``--gap`` seconds over a quiet noise bed, each session with its own
order and start offset) to ``POST /stream/<id>`` in ``--chunk-ms`` chunks, each chunk sent at the
moment a microphone would have it (its last sample "captured"), the next one not before the
previous answer. Everything runs on 127.0.0.1: the real Waitress server (``kws-serve``,
``--threads``), the real nginx (project template), and the clients (one thread per session, in
this process, competing for the same cores: state this with the figures).

Measured:

* every chunk answered (HTTP 200) or not, the answer time of a chunk (sent -> answer);
* lateness: how far behind real time a session fell (answer time - capture time of the chunk);
* detection latency: from the capture of the end of the window that completed the detection
  (``fired_s + window_s / 2``) to its answer, from the end of the word's speech (the clip's last
  loud 10 ms frame, ``tests.support.listen.word_end_s``: what a listener calls the word's end)
  and from the end of the placed 1 s utterance (the clip's end, its trailing silence included);
  the detections answered more than ``--max-latency-ms`` after the word's speech ended are counted;
* the words found (keyword and place) against the words placed.

The model: ``--model-dir`` (default ``serving/model``); without one a tiny bundle is trained on
the sample clips now (``tests.support.bundles.build_tiny_bundle``). Writes
``benchmarks/results/listen.json``.

    .venv/bin/python benchmarks/bench_listen.py [--sessions 20 --duration 60]
    .venv/bin/python benchmarks/bench_listen.py --sessions 20 --duration 20      # a busy machine
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from _common import REPO, SAMPLE_DIR, machine_info, write_result

DEFAULT_MODEL_DIR = REPO / "serving" / "model"
REAL_DIR = SAMPLE_DIR.parent / "speech_commands_real"
MAX_SESSIONS = 200
SR = 16000


def stats_ms(values_s: list[float]) -> dict:
    if not values_s:
        return {"n": 0}
    ms = np.asarray(values_s) * 1000.0
    return {"n": int(len(ms)), **{f"p{q}_ms": round(float(np.percentile(ms, q)), 1) for q in (50, 90, 99)},
            "max_ms": round(float(ms.max()), 1), "mean_ms": round(float(ms.mean()), 1)}


def keyword_clips(labels: list[str]) -> dict[str, list[Path]]:
    out = {}
    for word in labels:
        if word.startswith("_"):
            continue
        paths = sorted((SAMPLE_DIR / word).glob("*.wav")) or sorted((REAL_DIR / word).glob("*.wav"))[:20]
        if paths:
            out[word] = paths
    if not out:
        raise SystemExit(f"no clips of the bundle's keywords {labels} under {SAMPLE_DIR} or {REAL_DIR}")
    return out


def session_audio(clips: dict[str, list[Path]], duration_s: float, gap_s: float, seed: int):
    """One session's recording and its words ``(start_s, word, end of its speech s)``."""
    from tests.support.bundles import long_recording
    from tests.support.listen import word_end_s

    rng = np.random.default_rng(seed)
    words = sorted(clips)
    placed, t = [], 1.0 + rng.uniform(0, gap_s / 2)
    while t + 1.0 < duration_s:
        word = words[int(rng.integers(len(words)))]
        paths = clips[word]
        placed.append((round(t, 3), word, paths[int(rng.integers(len(paths)))]))
        t += gap_s
    audio = long_recording([(s, p) for s, _, p in placed], duration_s=duration_s, sample_dir=SAMPLE_DIR, seed=seed)
    return audio, [(s, w, word_end_s(p, s), f"{w}/{p.name}") for s, w, p in placed]


def run_session(url: str, audio: np.ndarray, chunk_ms: float, start_at: float, out: dict) -> None:
    """Stream ``audio`` in real time from ``start_at`` (monotonic clock); record every outcome."""
    import requests

    n = int(round(chunk_ms * SR / 1000))
    with requests.Session() as http:
        while time.monotonic() < start_at:
            time.sleep(0.005)
        r = http.post(f"{url}/stream", timeout=30)
        if r.status_code != 201:
            out["errors"].append(f"open: HTTP {r.status_code} {r.text[:200]}")
            return
        sid = r.json()["session"]
        t0 = time.monotonic()
        for seq, i in enumerate(range(0, len(audio), n)):
            chunk = audio[i:i + n]
            captured = t0 + (i + len(chunk)) / SR
            time.sleep(max(0.0, captured - time.monotonic()))
            sent = time.monotonic()
            try:
                r = http.post(f"{url}/stream/{sid}?format=f32&seq={seq}", data=chunk.astype("<f4").tobytes(),
                              headers={"Content-Type": "application/octet-stream"}, timeout=30)
            except requests.RequestException as err:
                out["errors"].append(f"chunk {seq}: {type(err).__name__}")
                continue
            done = time.monotonic()
            out["sent"] += 1
            if r.status_code != 200:
                out["errors"].append(f"chunk {seq}: HTTP {r.status_code} {r.text[:200]}")
                continue
            out["ok"] += 1
            out["answer_s"].append(done - sent)
            out["late_s"].append(done - captured)
            for d in r.json()["detections"]:
                fired_end = t0 + d["fired_s"] + 0.5
                out["detections"].append({"keyword": d["keyword"], "time_s": d["time_s"],
                                          "after_window_s": done - fired_end, "answered_at_s": done - t0})
        http.delete(f"{url}/stream/{sid}", timeout=30)


def match(placed: list[tuple[float, str, float, str]], found: list[dict]) -> tuple[int, int, int, list, list[float]]:
    """Hits (right keyword within its 1 s utterance +- 0.5 s), wrong or extra detections, misses,
    and for each hit ``(latency after the end of its speech, clip)`` and the latency after the
    utterance's end."""
    used, hits, after_speech, after_utt = set(), 0, [], []
    for start, word, speech_end, clip in placed:
        for k, d in enumerate(found):
            if k not in used and d["keyword"] == word and start - 0.5 <= d["time_s"] <= start + 1.5:
                used.add(k)
                hits += 1
                after_speech.append((d["answered_at_s"] - speech_end, clip))
                after_utt.append(d["answered_at_s"] - (start + 1.0))
                break
    return hits, len(found) - len(used), len(placed) - hits, after_speech, after_utt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=20, help=f"simultaneous sessions (1..{MAX_SESSIONS})")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds each session streams (5..600)")
    ap.add_argument("--chunk-ms", type=float, default=None,
                    help="audio per request (default: the session's chunk.recommended_ms, what the page sends)")
    ap.add_argument("--max-latency-ms", type=float, default=500.0,
                    help="target: no detection answered later than this after its word's speech ended")
    ap.add_argument("--gap", type=float, default=2.5, help="seconds between the words of a session")
    ap.add_argument("--threads", type=int, default=8, help="Waitress worker threads")
    ap.add_argument("--blas-threads", default="",
                    help="OPENBLAS_NUM_THREADS/OMP_NUM_THREADS of the server (default: kws-serve's own, 1; the "
                         "libraries' own default is one per core)")
    ap.add_argument("--model-dir", type=Path, default=None, help="bundle (default serving/model, else a tiny one)")
    ap.add_argument("--output", type=Path, default=None, help="result JSON (default benchmarks/results/listen.json)")
    args = ap.parse_args(argv)
    if not 1 <= args.sessions <= MAX_SESSIONS or not 5 <= args.duration <= 600:
        ap.error(f"--sessions must be 1..{MAX_SESSIONS} and --duration 5..600 s")

    from kws.bundle import read_meta
    from tests.support.bundles import build_tiny_bundle
    from tests.support.nginx import NginxProcess
    from tests.support.processes import ApiProcess

    with tempfile.TemporaryDirectory(prefix="kws-bench-listen-") as tmp_name:
        tmp = Path(tmp_name)
        model_dir = (args.model_dir.resolve() if args.model_dir else None) or (DEFAULT_MODEL_DIR if (DEFAULT_MODEL_DIR / "model.tflite").is_file() else None)
        model_note = f"bundle {model_dir}" if model_dir else "tiny bundle trained now on the sample clips"
        if model_dir is None:
            print("no serving/model: training a tiny bundle on the sample clips ...", flush=True)
            model_dir = build_tiny_bundle(tmp / "tiny" / "model", SAMPLE_DIR)
        labels = list(read_meta(model_dir).labels)
        clips = keyword_clips(labels)
        audios = [session_audio(clips, args.duration, args.gap, seed=i) for i in range(args.sessions)]
        env = {"KWS_THREADS": str(args.threads), "KWS_STREAM_MAX_SESSIONS": str(max(64, args.sessions)),
               "KWS_LOG_LEVEL": "WARNING"}
        if args.blas_threads:
            env.update(OPENBLAS_NUM_THREADS=args.blas_threads, OMP_NUM_THREADS=args.blas_threads)
        with ApiProcess(Path(model_dir), tmp / "api", env=env) as api, \
                NginxProcess(tmp / "nginx", upstream=f"127.0.0.1:{api.port}") as ngx:
            if args.chunk_ms is None:  # what the page and kws-listen send: the session's recommendation
                import requests

                opened = requests.post(f"{ngx.url}/stream", timeout=30).json()
                requests.delete(f"{ngx.url}/stream/{opened['session']}", timeout=30)
                args.chunk_ms = float(opened["chunk"]["recommended_ms"])
            outs = [{"sent": 0, "ok": 0, "errors": [], "answer_s": [], "late_s": [], "detections": []}
                    for _ in range(args.sessions)]
            begin = time.monotonic() + 1.0
            chunk_s = args.chunk_ms / 1000
            threads = [threading.Thread(target=run_session, args=(ngx.url, audio, args.chunk_ms,
                                                                  begin + chunk_s * i / args.sessions, out))
                       for i, ((audio, _), out) in enumerate(zip(audios, outs))]
            print(f"{args.sessions} sessions x {args.duration:g} s in real time ...", flush=True)
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.monotonic() - begin
            import requests

            metrics_text = requests.get(f"{api.url}/metrics", timeout=10).text

    expected = sum(int(np.ceil(len(a) / int(round(args.chunk_ms * SR / 1000)))) for a, _ in audios)
    hits = extra = misses = 0
    after_speech: list[tuple[float, str]] = []
    after_utt: list[float] = []
    for (_, placed), out in zip(audios, outs):
        h, e, m, speech, utt = match(placed, out["detections"])
        hits, extra, misses = hits + h, extra + e, misses + m
        after_speech += speech
        after_utt += utt
    late = sorted(((x, clip) for x, clip in after_speech if x * 1000 > args.max_latency_ms), reverse=True)
    after_window = [d["after_window_s"] for o in outs for d in o["detections"]]
    server = [line for line in metrics_text.splitlines() if line.startswith("kws_stream_chunk_duration_seconds_")
              and ("_sum" in line or "_count" in line)]
    result = {
        "what": "live listening: simultaneous real-time streaming sessions through nginx -> Waitress on 127.0.0.1",
        "machine": machine_info(),
        "config": {"sessions": args.sessions, "duration_s": args.duration, "chunk_ms": args.chunk_ms,
                   "gap_s": args.gap, "waitress_threads": args.threads, "blas_threads": args.blas_threads or "kws-serve default (1)", "model": model_note, "labels": labels,
                   "clients": "one thread per session in the benchmark process, on the same cores"},
        "wall_s": round(wall, 1),
        "chunks": {"expected": expected, "sent": sum(o["sent"] for o in outs), "answered_200": sum(o["ok"] for o in outs),
                   "errors": sum(len(o["errors"]) for o in outs),
                   "first_errors": [e for o in outs for e in o["errors"]][:10]},
        "chunk_answer": stats_ms([x for o in outs for x in o["answer_s"]]),
        "behind_real_time": stats_ms([x for o in outs for x in o["late_s"]]),
        "detection_latency_after_deciding_window": stats_ms(after_window),
        "detection_latency_after_speech_end": stats_ms([x for x, _ in after_speech]),
        "detection_latency_after_utterance_end": stats_ms(after_utt),
        "detections_later_than_target": {"target_ms": args.max_latency_ms, "count": len(late),
                                         "of": len(after_speech),
                                         "latest": [{"clip": c, "ms": round(x * 1000, 1)} for x, c in late[:10]]},
        "words": {"placed": hits + misses, "hits": hits, "misses": misses, "wrong_or_extra": extra},
        "server_metrics": server,
    }
    path = write_result(args.output or "listen.json", result)
    print(f"chunks answered {result['chunks']['answered_200']}/{expected}, errors {result['chunks']['errors']}")
    print("chunk answer", result["chunk_answer"])
    print("detection after deciding window", result["detection_latency_after_deciding_window"])
    print("detection after speech end", result["detection_latency_after_speech_end"])
    print("detection after utterance end", result["detection_latency_after_utterance_end"])
    print(f"detections later than {args.max_latency_ms:g} ms after the speech's end: {len(late)} of {len(after_speech)}",
          [f"{c} {x * 1000:.0f} ms" for x, c in late[:10]])
    print("words", result["words"], "->", path)
    return 0 if result["chunks"]["answered_200"] == expected else 1


if __name__ == "__main__":
    raise SystemExit(main())
