"""kws-score's throughput on the real pool (issue 21, item 4): clip by clip against batches in
worker processes, float32 and int8, with the predictions checked identical.

For each runtime (``tflite``; ``tflite_int8``, converted from the bundle's Keras model into a
copy under ``--work-dir`` when the bundle has no int8 model, as ``bench_speed.py`` does):

1. **the reference**, in this process: every clip through the service's classifier one at a time
   (:func:`kws.scoring.classifier.score`, :meth:`Predictor.predict` per clip);
2. **the command**, ``kws-score BUNDLE POOL --silence-dir ... --output F`` in a fresh process, for each
   ``--runs`` setting (``workers:batch``; ``1:1`` is kws-score clip by clip), ``--repeats`` times
   (the best kept: the machine is shared). Recorded: the command's wall time, kws-score's own
   ``seconds``, ``startup_s`` and clips/s with and without the start-up; its predictions must be
   the reference's, clip for clip. The CPU time the command and its workers used is recorded too:
   on a shared machine the wall clock mostly measures the wait for a core. The same command on 2
   clips gives the start-up's CPU time, and so the CPU time per clip once started.
3. **the pinned front end**: the float32 command with every core, on the bundle as it is and on a
   copy without ``frontend.npz`` (librosa imported to compute the filterbank, as before), taking
   turns ``--repeats`` times: what pinning the front end saves of the start-up.

    .venv/bin/python benchmarks/bench_score.py --bundle /tmp/speed/base-model --features /tmp/speed/base-features

Writes ``benchmarks/results/score.json`` (``--output``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, machine_info, write_result  # noqa: E402

POOL = REPO.parent / "shared" / "data" / "speech_commands_real"
SILENCE = REPO.parent / "shared" / "data" / "speech_commands_real_silence"
TARGET = {"clips_per_s": 1000, "cores": 2,
          "what": "kws-score on the real pool, with the predictions of clip-by-clip scoring"}


def int8_bundle(bundle: Path, features: Path, work: Path) -> tuple[Path, str]:
    """The bundle with ``model_int8.tflite``: itself, or a copy under ``work`` with one converted."""
    from kws.bundle import TFLITE_INT8_FILE

    if (bundle / TFLITE_INT8_FILE).is_file():
        return bundle, "the bundle's own"
    out = work / "bundle-int8"
    if (out / TFLITE_INT8_FILE).is_file():
        return out, f"converted earlier into {out}"
    from bench_speed import with_int8

    tmp = work / "convert"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    converted, how = with_int8(bundle, features, tmp)
    shutil.rmtree(out, ignore_errors=True)
    converted.rename(out)
    shutil.rmtree(tmp, ignore_errors=True)
    return out, how


def reference(bundle: Path, runtime: str, items: list, labels: list[str]) -> tuple[dict, list]:
    """Clip by clip in this process, through ``Predictor.predict``: the answers to match."""
    from kws.scoring.classifier import bundle_classifier, score

    t0 = time.perf_counter()
    classify = bundle_classifier(bundle, runtime=runtime)
    load = time.perf_counter() - t0
    cpu = time.process_time()
    result = score(items, classify, labels, progress=False)
    cpu_ms = 1000.0 * (time.process_time() - cpu) / len(items)
    return ({"load_s": round(load, 2), "seconds": result["seconds"], "clips_per_s": result["clips_per_s"],
             "cpu_ms_per_clip": round(cpu_ms, 3),
             "accuracy": round(result["accuracy"], 4), "errors": len(result["errors"])},
            [p["predicted"] for p in result["predictions"]])


def command(bundle: Path, runtime: str, workers: int, batch: int, pool: Path, silence: Path, out: Path,
            limit: int | None = None) -> dict:
    """``kws-score --output`` in a fresh process; its result, the command's wall and CPU time."""
    script = Path(sys.executable).parent / "kws-score"
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "kws.score"]
    cmd += [str(bundle), str(pool), "--silence-dir", str(silence), "--runtime", runtime, "--workers", str(workers),
            "--batch", str(batch), "--output", str(out), *(["--limit", str(limit)] if limit else [])]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the command and its workers (waited for by it)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(out.read_text())
    return {**result, "command_s": wall, "command_cpu_s": cpu}


def bench_runtime(bundle: Path, runtime: str, runs: list[tuple[int, int]], repeats: int, items, labels, args,
                  work: Path) -> dict:
    ref, want = reference(bundle, runtime, items, labels)
    print(runtime, "reference", ref, flush=True)
    rows = []
    for workers, batch in runs:
        tries = [command(bundle, runtime, workers, batch, args.pool, args.silence_dir, work / "score-run.json")
                 for _ in range(repeats)]
        best = max(tries, key=lambda r: r["clips_per_s"])
        # the same command on 2 clips: its CPU time is the start-up's (Python, imports, predictors, the folder)
        idle = command(bundle, runtime, workers, batch, args.pool, args.silence_dir, work / "score-run.json", limit=2)
        scoring_cpu = best["command_cpu_s"] - idle["command_cpu_s"]
        row = {"workers": best["workers"], "batch": batch, "command_s": round(best["command_s"], 2),
               "command_cpu_s": round(best["command_cpu_s"], 2), "startup_cpu_s": round(idle["command_cpu_s"], 2),
               "cpu_ms_per_clip_scoring": round(1000.0 * scoring_cpu / best["n"], 3),
               "seconds": best["seconds"], "startup_s": best["startup_s"], "clips_per_s": best["clips_per_s"],
               "clips_per_s_scoring": best["clips_per_s_scoring"],
               "clips_per_s_command": round(best["n"] / best["command_s"], 1),
               "clips_per_s_tries": [t["clips_per_s"] for t in tries], "accuracy": round(best["accuracy"], 4),
               "errors": len(best["errors"]),
               "identical_predictions": all([p["predicted"] for p in t["predictions"]] == want for t in tries)}
        print(runtime, row, flush=True)
        rows.append(row)
    return {"reference": ref, "runs": rows}


def bench_frontend(bundle: Path, repeats: int, args, work: Path) -> dict | None:
    """The float32 command on every core, with the bundle's pinned front end and without it (librosa)."""
    from kws.features import FRONTEND_FILE

    if not (bundle / FRONTEND_FILE).is_file():
        return None
    unpinned = work / "unpinned-bundle"
    shutil.rmtree(unpinned, ignore_errors=True)
    shutil.copytree(bundle, unpinned)
    (unpinned / FRONTEND_FILE).unlink()
    workers = os.cpu_count() or 1
    tries: dict[str, list[dict]] = {"pinned": [], "librosa": []}
    for _ in range(repeats):
        for name, b in (("pinned", bundle), ("librosa", unpinned)):
            tries[name].append(command(b, "tflite", workers, 256, args.pool, args.silence_dir, work / "score-run.json"))
    shutil.rmtree(unpinned, ignore_errors=True)
    out = {name: {"startup_s": min(t["startup_s"] for t in runs),
                  "command_s": round(min(t["command_s"] for t in runs), 2),
                  "clips_per_s": max(t["clips_per_s"] for t in runs)} for name, runs in tries.items()}
    print("front end", out, flush=True)
    return {"workers": workers, "batch": 256, "runtime": "tflite", **out}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, required=True, help="a serving bundle (model.keras + model.tflite)")
    p.add_argument("--features", type=Path, help="its prepare output (train.npz, validation.npz): for the int8 model")
    p.add_argument("--pool", type=Path, default=POOL)
    p.add_argument("--silence-dir", type=Path, default=SILENCE)
    p.add_argument("--runtimes", default="tflite,tflite_int8")
    p.add_argument("--runs", default="1:1,1:256,2:256", help="workers:batch settings, comma-separated")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--work-dir", type=Path, default=Path("/tmp/score"), help="the int8 copy and scratch files")
    p.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "score.json")
    args = p.parse_args(argv)

    from kws.bundle import read_meta
    from kws.logs import setup_logging
    from kws.scoring.folders import collect

    setup_logging("WARNING")
    args.work_dir.mkdir(parents=True, exist_ok=True)
    labels = read_meta(args.bundle).labels
    items, layout = collect(args.pool, labels, silence_dir=args.silence_dir)
    runs = [tuple(int(x) for x in r.split(":")) for r in args.runs.split(",")]
    sections, int8_source = {}, None
    for runtime in args.runtimes.split(","):
        bundle = args.bundle
        if runtime == "tflite_int8":
            if args.features is None and not (args.bundle / "model_int8.tflite").is_file():
                raise SystemExit("the bundle has no int8 model: give --features to convert one")
            bundle, int8_source = int8_bundle(args.bundle, args.features, args.work_dir)
        sections[runtime] = bench_runtime(bundle, runtime, runs, args.repeats, items, labels, args, args.work_dir)
    info = json.loads((args.bundle / "model_info.json").read_text()) if (args.bundle / "model_info.json").is_file() else {}
    write_result(args.output, {
        "benchmark": "score", "machine": machine_info(), "bundle": str(args.bundle),
        "architecture": info.get("architecture"), "int8_model": int8_source, "pool": str(args.pool),
        "silence_dir": str(args.silence_dir), "clips": len(items), "layout": layout, "target": TARGET,
        "runtimes": sections, "frontend": bench_frontend(args.bundle, args.repeats, args, args.work_dir),
    })
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
