"""Benchmark serving: our service vs the original project's, in-process and through nginx.

Requests are the REAL word clips of ``../shared/data/speech_commands_sample`` (every folder not
starting with ``_``; 1 s or a little shorter, 16 kHz PCM_16 WAV), sent as their file bytes.

1. In-process, per clip, from the raw file bytes to the answer (``--requests`` cycling over the
   clips after ``--warmup`` untimed ones; the variants take turns on each request, so load
   changes hit all of them alike):

   * ``ours_tflite``: ``kws.audio.decode`` + ``check_not_silent`` + ``Predictor.predict``
     (TFLite runtime, 1 interpreter thread: what ``/predict`` does, minus Flask/JSON);
   * ``ours_keras``: the same with the Keras runtime;
   * ``legacy``: ``benchmarks/legacy_serving.py`` — save the bytes to a (private) temp file,
     ``librosa.load`` at 22.05 kHz, first second, 13 MFCCs (n_fft 2048, hop 512) -> (44, 13),
     Keras ``model.predict``, argmax.

2. Over HTTP through the real nginx (project template, ``nginx/``) on loopback, load from
   ``wrk`` (``--connections``, ``--wrk-threads``, ``--duration`` s, ``--latency``) POSTing one real
   1 s WAV as multipart field ``file``: first ``kws-serve`` (Waitress, ``--threads``, ``--runtime``), then
   the legacy Flask app on the same Waitress with the same thread count behind the same nginx
   config. An untimed ``--http-warmup`` s wrk run precedes each measured run. wrk runs on
   the SAME machine and competes for its cores (state this with the figures).

The model: ``--model-dir`` (default ``serving/model``, the pipeline's bundle); when that does not
exist a tiny bundle is trained now on the sample clips (``tests.support.bundles.build_tiny_bundle``,
~10 s) into a temp dir. The legacy model is the original ``cnn_seed`` architecture on (44, 13, 1)
inputs with random or briefly trained weights (``--legacy-epochs``): latency does not depend on
the weights. Writes ``benchmarks/results/serving.json``.

    .venv/bin/python benchmarks/bench_serving.py [--requests 200 --duration 60 --connections 8 --threads 4]
    .venv/bin/python benchmarks/bench_serving.py --requests 30 --duration 5 --http-warmup 2   # smoke run
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kws.logs import setup_logging  # noqa: E402
import _wrk  # noqa: E402
from _common import REPO, SAMPLE_DIR, machine_info, table, word_clips, write_result  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_MODEL_DIR = REPO / "serving" / "model"
GOAL_P50_MS = 5.0


# --------------------------------------------------------------------------- helpers
def stats_ms(seconds: list[float]) -> dict:
    import numpy as np

    ms = np.asarray(seconds) * 1000.0
    return {"n": int(len(ms)), "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p90_ms": round(float(np.percentile(ms, 90)), 3), "p99_ms": round(float(np.percentile(ms, 99)), 3),
            "mean_ms": round(float(ms.mean()), 3), "min_ms": round(float(ms.min()), 3),
            "max_ms": round(float(ms.max()), 3)}


def resolve_model(arg: Path | None, tmp: Path, log=print) -> tuple[Path, str]:
    if arg is not None:
        if not (arg / "model.tflite").is_file():
            raise SystemExit(f"--model-dir {arg}: no model bundle there (model.tflite missing)")
        return arg, f"given bundle {arg}"
    if (DEFAULT_MODEL_DIR / "model.tflite").is_file():
        return DEFAULT_MODEL_DIR, f"pipeline bundle {DEFAULT_MODEL_DIR.relative_to(REPO)}"
    from tests.support.bundles import build_tiny_bundle

    log(f"{DEFAULT_MODEL_DIR.relative_to(REPO)} does not exist: training a tiny bundle on the sample clips ...")
    t0 = time.perf_counter()
    out = build_tiny_bundle(tmp / "tiny-bundle", SAMPLE_DIR)
    return Path(out), (f"tiny bundle trained now on the sample clips in {time.perf_counter() - t0:.0f} s "
                       f"({DEFAULT_MODEL_DIR.relative_to(REPO)} does not exist)")


def full_length_clip(clips: list[Path]) -> Path:
    import soundfile as sf

    for c in clips:
        info = sf.info(str(c))
        if info.frames == info.samplerate:
            return c
    return clips[0]


# --------------------------------------------------------------------------- benchmark 1: in-process
def bench_inprocess(model_dir: Path, legacy_dir: Path, clips: list[Path], n_requests: int, n_warmup: int,
                    tmp: Path) -> dict:
    import legacy_serving

    from kws.audio import check_not_silent, decode
    from kws.serving.predictor import Predictor

    datas = [c.read_bytes() for c in clips]
    variants = {}
    for runtime in ("tflite", "keras"):
        pred = Predictor(model_dir, runtime=runtime, threads=1)
        if pred.runtime.name != runtime:
            raise RuntimeError(f"asked for the {runtime} runtime, got {pred.runtime.name}")

        def ours(data: bytes, pred=pred) -> str:
            audio = decode(data, pred.cfg.sample_rate, 60.0)
            check_not_silent(audio.samples)
            return pred.predict(audio.samples, top_k=3)["keyword"]

        variants[f"ours_{runtime}"] = ours
    upload_dir = tmp / "legacy-uploads"
    upload_dir.mkdir(mode=0o700)
    spotter = legacy_serving.LegacyKeywordSpotter(legacy_dir, upload_dir)
    variants["legacy"] = spotter.predict_bytes

    names = list(variants)
    for i in range(n_warmup):
        for name in names:
            variants[name](datas[i % len(datas)])
    times = {name: [] for name in names}
    answers = {name: {} for name in names}
    load_before = round(os.getloadavg()[0], 2)
    for i in range(n_requests):
        data = datas[i % len(datas)]
        k = i % len(names)
        for name in names[k:] + names[:k]:  # rotate who goes first
            t0 = time.perf_counter()
            kw = variants[name](data)
            times[name].append(time.perf_counter() - t0)
            answers[name][kw] = answers[name].get(kw, 0) + 1
    spotter.close()
    res = {name: {**stats_ms(times[name]), "answers": answers[name]} for name in names}
    leg = res["legacy"]
    for name in ("ours_tflite", "ours_keras"):
        res[name]["speedup_p50_vs_legacy"] = round(leg["p50_ms"] / res[name]["p50_ms"], 1)
        res[name]["speedup_mean_vs_legacy"] = round(leg["mean_ms"] / res[name]["mean_ms"], 1)
    return {"requests": n_requests, "warmup_requests": n_warmup, "distinct_clips": len(clips),
            "loadavg_1min_before": load_before, "results": res}


# --------------------------------------------------------------------------- benchmark 2: HTTP via nginx
def check_request(url: str, body: bytes, boundary: str) -> dict:
    import requests

    r = requests.post(url, data=body, timeout=60,
                      headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    if r.status_code != 200 or "keyword" not in r.json():
        raise RuntimeError(f"POST {url} -> HTTP {r.status_code}: {r.text[:500]}")
    return r.json()


def bench_http(name: str, apis: list, tmp: Path, args, script: Path, body: bytes, boundary: str, log=print) -> dict:
    """wrk through one nginx in front of ``apis`` (api processes, nginx balancing over them)."""
    import contextlib

    from tests.support.nginx import NginxProcess

    with contextlib.ExitStack() as stack:  # ApiProcess/NginxProcess stop themselves, also when start() fails
        for api in apis:
            stack.enter_context(api)
        upstream = " ".join(f"127.0.0.1:{api.port}" for api in apis)
        with NginxProcess(tmp / f"nginx-{name}", upstream=upstream, workers=args.nginx_workers) as nginx:
            url = f"{nginx.url}/predict"
            sample = check_request(url, body, boundary)
            log(f"  {name}: {url} -> upstream {upstream}; one request answered {sample.get('keyword')!r}")
            if args.http_warmup > 0:
                _wrk.load(url, script, args.http_warmup, args.connections, args.wrk_threads, args.wrk_timeout)
            load_before = round(os.getloadavg()[0], 2)
            res, text = _wrk.load(url, script, args.duration, args.connections, args.wrk_threads, args.wrk_timeout)
            res["loadavg_1min_before"] = load_before
            res["sample_answer"] = {k: sample[k] for k in ("keyword", "confidence", "model") if k in sample}
            log("    " + text.strip().replace("\n", "\n    "))
    if res["errors_total"]:
        log(f"  WARNING: {name}: {res['non_2xx_3xx']} non-2xx/3xx responses, socket errors {res['socket_errors']}; "
            f"service logs: {', '.join(str(api.log) for api in apis)}")
    return res


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", type=Path, default=None,
                    help="serving bundle (default serving/model; a tiny bundle is trained when that is absent)")
    ap.add_argument("--requests", type=int, default=200, help="in-process: timed requests per variant")
    ap.add_argument("--warmup", type=int, default=20, help="in-process: untimed requests per variant first")
    ap.add_argument("--duration", type=float, default=60, help="HTTP: seconds of each measured wrk run")
    ap.add_argument("--http-warmup", type=float, default=10, help="HTTP: seconds of the untimed wrk run before (0: none)")
    ap.add_argument("--connections", type=int, default=8, help="HTTP: wrk connections")
    ap.add_argument("--wrk-threads", type=int, default=2, help="HTTP: wrk threads")
    ap.add_argument("--wrk-timeout", default="30s", help="HTTP: wrk per-request timeout (slower = socket timeout error)")
    ap.add_argument("--threads", type=int, default=4, help="HTTP: Waitress worker threads (both services)")
    ap.add_argument("--replicas", type=int, default=1,
                    help="HTTP: kws-serve processes behind the one nginx (one Python process uses about one core)")
    ap.add_argument("--runtime", default="auto",
                    help="HTTP: KWS_RUNTIME of our service (default auto: what kws-serve serves, int8 where the "
                         "bundle's export check chose it; tflite: float32)")
    ap.add_argument("--tta-shifts-ms", default="0",
                    help="HTTP: KWS_TTA_SHIFTS_MS of our service (default 0: the clip alone, as served; "
                         "0,-40,40: the views rule before)")
    ap.add_argument("--skip-legacy", action="store_true", help="HTTP: measure our service only")
    ap.add_argument("--nginx-workers", type=int, default=1, help="HTTP: nginx worker processes")
    ap.add_argument("--legacy-epochs", type=int, default=3, help="brief training of the legacy model (0: random weights)")
    ap.add_argument("--skip-inprocess", action="store_true")
    ap.add_argument("--skip-http", action="store_true")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (bundles, logs, nginx prefix)")
    ap.add_argument("--output", type=Path, default=None, help="result JSON (default benchmarks/results/serving.json)")
    args = ap.parse_args(argv)
    setup_logging("WARNING")  # the project's one logging configuration

    clips = word_clips(SAMPLE_DIR)
    if not clips:
        raise SystemExit(f"no word clips under {SAMPLE_DIR}")
    tmp = Path(tempfile.mkdtemp(prefix="kws-bench-serving-"))
    try:
        model_dir, model_source = resolve_model(args.model_dir, tmp)
        from kws.bundle import read_meta

        meta = read_meta(model_dir)
        print(f"model: {model_source}")
        print(f"  labels {list(meta.labels)}; features {meta.features.n_frames}x{meta.features.n_coeffs} "
              f"at {meta.features.sample_rate} Hz")
        import legacy_serving

        legacy_dir = tmp / "legacy-model"
        legacy_info = legacy_serving.build_legacy_model(legacy_dir, clips, epochs=args.legacy_epochs)
        print(f"legacy model: cnn_seed on (44, 13, 1) librosa MFCCs, {legacy_info['params']} parameters, "
              f"{legacy_info['weights']} — latency does not depend on the weights")
        print(f"requests: {len(clips)} real word clips from {SAMPLE_DIR}")

        payload = {
            "benchmark": "serving",
            "description": "per-clip latency in-process (raw WAV bytes -> keyword) and HTTP load through nginx "
                           "with wrk: our service (decode + MFCC + TFLite) vs the original project's "
                           "(temp file + librosa 22.05 kHz + Keras model.predict)",
            "machine": machine_info(),
            "model": {"source": model_source, "path": str(model_dir), "labels": list(meta.labels),
                      "features": meta.features.to_dict(), "info": meta.info},
            "legacy_model": legacy_info,
            "requests_from": {"dir": str(SAMPLE_DIR), "clips": len(clips)},
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        }

        if not args.skip_inprocess:
            print(f"\n[1] in-process, raw bytes -> keyword: {args.warmup} warm-up + {args.requests} timed "
                  "requests per variant (variants take turns) ...")
            inproc = bench_inprocess(model_dir, legacy_dir, clips, args.requests, args.warmup, tmp)
            payload["inprocess"] = inproc
            r = inproc["results"]
            rows = [[name, *(f"{v[k]:.2f}" for k in ("p50_ms", "p90_ms", "p99_ms", "mean_ms")),
                     f"{v['speedup_p50_vs_legacy']}x" if "speedup_p50_vs_legacy" in v else "1x"]
                    for name, v in r.items()]
            print(table(rows, ["variant", "p50 ms", "p90 ms", "p99 ms", "mean ms", "speed-up (p50)"]))
            p50 = r["ours_tflite"]["p50_ms"]
            payload["goal"] = {"ours_p50_ms_max": GOAL_P50_MS, "ours_p50_ms": p50, "met": p50 <= GOAL_P50_MS}
            print(f"ours (tflite) p50 {p50:.2f} ms (goal <= {GOAL_P50_MS:g} ms: "
                  f"{'MET' if p50 <= GOAL_P50_MS else 'NOT met'}); legacy p50 {r['legacy']['p50_ms']:.1f} ms; "
                  f"speed-up {r['ours_tflite']['speedup_p50_vs_legacy']}x; 1-min load before: "
                  f"{inproc['loadavg_1min_before']}")

        if not args.skip_http:
            from tests.support.nginx import nginx_binary
            from tests.support.processes import ApiProcess

            if nginx_binary() is None or not (shutil.which("wrk") or Path("/usr/bin/wrk").is_file()):
                raise SystemExit("benchmark 2 needs nginx and wrk installed (or pass --skip-http)")
            clip = full_length_clip(clips)
            script, body, boundary = _wrk.write_post_script(tmp, clip)
            print(f"\n[2] HTTP through nginx ({args.nginx_workers} worker), {args.replicas} kws-serve x Waitress "
                  f"{args.threads} threads, "
                  f"wrk -t{args.wrk_threads} -c{args.connections} -d{round(args.duration)}s "
                  f"(+{args.http_warmup:g} s untimed warm-up) POSTing {clip.parent.name}/{clip.name} "
                  f"({len(body)} B multipart); wrk shares the machine ...")
            http = {"clip": str(clip), "body_bytes": len(body), "connections": args.connections,
                    "wrk_threads": args.wrk_threads, "waitress_threads": args.threads,
                    "nginx_workers": args.nginx_workers, "duration_s": args.duration,
                    "warmup_s": args.http_warmup, "results": {}}
            env = {"KWS_THREADS": str(args.threads), "KWS_RUNTIME": args.runtime, "KWS_TFLITE_THREADS": "1",
                   "KWS_TTA_SHIFTS_MS": args.tta_shifts_ms}
            http["api_replicas"] = args.replicas
            ours = [ApiProcess(model_dir, tmp / f"api-ours-{i}", env=env) for i in range(args.replicas)]
            http["results"]["ours"] = bench_http("ours", ours, tmp, args, script, body, boundary)
            o = http["results"]["ours"]
            http["errors_total"] = o["errors_total"]
            if not args.skip_legacy:
                pythonpath = os.pathsep.join(p for p in (str(BENCH_DIR), os.environ.get("PYTHONPATH")) if p)
                legacy = ApiProcess(legacy_dir, tmp / "api-legacy", module="legacy_serving",
                                    env={"KWS_THREADS": str(args.threads), "PYTHONPATH": pythonpath})
                lg = http["results"]["legacy"] = bench_http("legacy", [legacy], tmp, args, script, body, boundary)
                http["throughput_ratio"] = round(o["requests_per_s"] / lg["requests_per_s"], 1) if lg["requests_per_s"] else None
                http["p50_ratio"] = round(lg["latency_ms"]["p50"] / o["latency_ms"]["p50"], 1) if o["latency_ms"]["p50"] else None
                http["errors_total"] += lg["errors_total"]
            payload["http"] = http
            rows = [[name, v["requests"], f"{v['requests_per_s']:.1f}",
                     *(f"{v['latency_ms'][k]:.1f}" for k in ("p50", "p90", "p99")),
                     v["non_2xx_3xx"], sum(v["socket_errors"].values())]
                    for name, v in http["results"].items()]
            print()
            print(table(rows, ["service", "requests", "req/s", "p50 ms", "p90 ms", "p99 ms", "non-2xx", "socket err"]))
            if "throughput_ratio" in http:
                print(f"throughput {http['throughput_ratio']}x, p50 latency {http['p50_ratio']}x lower")
            print(f"errors: {http['errors_total']} ({'OK' if not http['errors_total'] else 'NOT 0 — see the logs'})")

        path = write_result(args.output or "serving.json", payload)
        print(f"\nwrote {path}")
        if args.keep_tmp:
            print(f"kept {tmp}")
        errors = payload.get("http", {}).get("errors_total", 0)
        return 1 if errors else 0
    finally:
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
