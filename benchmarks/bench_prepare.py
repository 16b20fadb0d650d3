"""Benchmark the prepare stage: the original tutorial's JSON featurisation vs ``kws.stages.prepare``.

Both featurise the SAME word clips of a synthetic dataset (generated once into a cache dir):

* original: one process; per file ``librosa.load(path, sr=22050)`` (resampling), first
  22050 samples (shorter clips skipped, as the tutorial did; ``--original-short pad`` pads
  instead), ``librosa.feature.mfcc(n_mfcc=13, n_fft=2048, hop_length=512)``, ``.T.tolist()``
  into a dict, then ``json.dump(..., indent=4)``.
* ours: ``kws.stages.prepare.prepare(cfg, dataset, out_dir)`` with ``prepare.task=all_words``,
  ``prepare.augment.copies=0``, ``prepare.silence_percentage=0`` (one example per clip, no
  extras) and ``prepare.workers=0`` (all cores); the time includes index building and the
  process-pool start-up. Optionally also with one worker, to separate parallelism from the rest.

Dataset generation is not timed; the files are read once before timing so both sides start
with a warm page cache, and one untimed warm-up clip imports librosa/kws for both sides. Writes ``benchmarks/results/prepare.json``.

    .venv/bin/python benchmarks/bench_prepare.py [--voices 24 --takes 3 --repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from kws.logs import setup_logging  # noqa: E402
from _common import DEFAULT_CACHE, compose, dir_bytes, machine_info, synthetic_dataset, table, word_clips, write_result  # noqa: E402

ORIGINAL_SR = 22050
ORIGINAL_SAMPLES = 22050  # 1 s at 22.05 kHz


def original_prepare(dataset: Path, json_path: Path, short: str = "skip") -> dict:
    """The tutorial project's featurisation, re-implemented from its description (single process)."""
    import librosa
    import numpy as np

    data = {"mapping": [], "labels": [], "MFCCs": [], "files": []}
    skipped = 0
    words = sorted(d for d in dataset.iterdir() if d.is_dir() and not d.name.startswith("_"))
    for label, word_dir in enumerate(words):
        data["mapping"].append(word_dir.name)
        for path in sorted(word_dir.glob("*.wav")):
            signal, sr = librosa.load(str(path), sr=ORIGINAL_SR)
            if len(signal) < ORIGINAL_SAMPLES:
                if short == "skip":
                    skipped += 1
                    continue
                signal = np.pad(signal, (0, ORIGINAL_SAMPLES - len(signal)))
            signal = signal[:ORIGINAL_SAMPLES]
            coeffs = librosa.feature.mfcc(y=signal, sr=sr, n_mfcc=13, n_fft=2048, hop_length=512)
            data["MFCCs"].append(coeffs.T.tolist())
            data["labels"].append(label)
            data["files"].append(str(path))
    with open(json_path, "w") as f:
        json.dump(data, f, indent=4)
    shape = [len(data["MFCCs"][0]), len(data["MFCCs"][0][0])] if data["MFCCs"] else None
    return {"featurised": len(data["labels"]), "skipped_short": skipped, "feature_shape": shape}


def ours_prepare(dataset: Path, out_dir: Path, workers: int) -> dict:
    from kws.stages.prepare import prepare

    cfg = compose([
        "data=synthetic", "prepare.task=all_words", "prepare.augment.copies=0",
        "prepare.silence_percentage=0", f"prepare.workers={workers}",
    ])
    meta = prepare(cfg, dataset, out_dir)
    return {"featurised": int(sum(meta["counts"].values())), "counts": meta["counts"],
            "skipped_unreadable": len(meta["skipped"]), "feature_shape": meta["feature_shape"],
            "workers": workers or os.cpu_count()}


def original_prepare_warmup(path: Path) -> None:
    import librosa

    from kws.stages import prepare  # noqa: F401  (import cost is not part of either timing)

    y, sr = librosa.load(str(path), sr=ORIGINAL_SR)
    librosa.feature.mfcc(y=y[:ORIGINAL_SAMPLES], sr=sr, n_mfcc=13, n_fft=2048, hop_length=512)


def warm_cache(paths: list[Path]) -> int:
    total = 0
    for p in paths:
        total += len(p.read_bytes())
    return total


def timed(fn, *args, **kwargs) -> tuple[float, dict]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--voices", type=int, default=24)
    ap.add_argument("--takes", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs of each variant; the median is reported")
    ap.add_argument("--original-short", choices=("skip", "pad"), default="skip",
                    help="what the original does with clips shorter than 1 s (the tutorial skipped them)")
    ap.add_argument("--no-single-worker", action="store_true", help="skip the extra 1-worker run of ours")
    ap.add_argument("--output", type=Path, default=None, help="result JSON (default benchmarks/results/prepare.json)")
    args = ap.parse_args(argv)
    setup_logging("WARNING")  # the project's one logging configuration

    dataset, ds_info = synthetic_dataset(args.cache, args.voices, args.takes)
    clips = word_clips(dataset)
    work = args.cache / "prepare"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    warm_bytes = warm_cache(clips)
    # Untimed warm-up: imports and librosa's lazy initialisation happen once, for both sides.
    original_prepare_warmup(clips[0])
    print(f"{len(clips)} word clips ({warm_bytes / 1e6:.1f} MB of WAV) in {dataset}; {args.repeats} timed run(s) each")

    variants = {"original": [], "ours": []}
    if not args.no_single_worker:
        variants["ours_1_worker"] = []
    details, sizes, loads = {}, {}, []
    for r in range(args.repeats):
        loads.append(round(os.getloadavg()[0], 2))
        json_path = work / "data.json"
        json_path.unlink(missing_ok=True)
        s, details["original"] = timed(original_prepare, dataset, json_path, args.original_short)
        variants["original"].append(s)
        sizes["original"] = {"json_bytes": json_path.stat().st_size}
        print(f"  run {r + 1}: original {s:6.2f} s", end="", flush=True)

        out_dir = work / "features"
        shutil.rmtree(out_dir, ignore_errors=True)
        s, details["ours"] = timed(ours_prepare, dataset, out_dir, 0)
        variants["ours"].append(s)
        files = {p.name: p.stat().st_size for p in sorted(out_dir.iterdir()) if p.is_file()}
        sizes["ours"] = {"files": files, "npz_bytes": sum(v for k, v in files.items() if k.endswith(".npz")),
                         "meta_json_bytes": files.get("meta.json", 0), "total_bytes": dir_bytes(out_dir)}
        print(f" | ours {s:6.2f} s", end="", flush=True)

        if not args.no_single_worker:
            shutil.rmtree(out_dir, ignore_errors=True)
            s, details["ours_1_worker"] = timed(ours_prepare, dataset, out_dir, 1)
            variants["ours_1_worker"].append(s)
            print(f" | ours (1 worker) {s:6.2f} s", end="", flush=True)
        print()

    n = len(clips)
    if details["ours"]["featurised"] != n:
        print(f"WARNING: ours featurised {details['ours']['featurised']} examples for {n} clips", file=sys.stderr)
    results = {}
    for name, secs in variants.items():
        med = statistics.median(secs)
        results[name] = {"seconds_runs": [round(s, 3) for s in secs], "seconds_median": round(med, 3),
                         "seconds_min": round(min(secs), 3), "clips_per_s": round(n / med, 1),
                         "clips_per_s_best": round(n / min(secs), 1), **details[name]}
    json_bytes = sizes["original"]["json_bytes"]
    ours_bytes = sizes["ours"]["total_bytes"]
    speedup = results["original"]["seconds_median"] / results["ours"]["seconds_median"]
    size_reduction = json_bytes / ours_bytes
    payload = {
        "benchmark": "prepare",
        "description": "original tutorial JSON featurisation vs kws.stages.prepare on the same synthetic clips "
                       "(task all_words, no augmentation, no silence); wall time excludes dataset generation, "
                       "page cache warm; ours includes index building and process-pool start-up",
        "machine": machine_info(),
        "dataset": {"path": str(dataset), "word_clips": n, "wav_bytes": warm_bytes, **ds_info},
        "original_short_clips": args.original_short,
        "repeats": args.repeats,
        "loadavg_1min_before_each_run": loads,
        "results": results,
        "artifacts": {"original_json_bytes": json_bytes, **{f"ours_{k}": v for k, v in sizes["ours"].items()}},
        "speedup": round(speedup, 2),
        "speedup_best_runs": round(results["original"]["seconds_min"] / results["ours"]["seconds_min"], 2),
        "speedup_1_worker": round(results["original"]["seconds_median"] / results["ours_1_worker"]["seconds_median"], 2)
        if "ours_1_worker" in results else None,
        "size_reduction": round(size_reduction, 2),
        "goal": {"speedup_min": 10, "size_reduction_min": 5,
                 "speedup_met": speedup >= 10, "size_reduction_met": size_reduction >= 5},
    }
    path = write_result(args.output or "prepare.json", payload)

    rows = []
    for name, r in results.items():
        size = json_bytes if name == "original" else ours_bytes if name == "ours" else None
        rows.append([name, r["featurised"], f"{r['seconds_median']:.2f}", f"{r['clips_per_s']:.0f}",
                     "x".join(map(str, r["feature_shape"] or [])),
                     f"{size / 1e6:.2f}" if size else "(same)"])
    print()
    print(table(rows, ["variant", "clips", "wall s (median)", "clips/s", "features/clip", "artifact MB"]))
    print(f"\n1-min load average before each run: {loads} (other processes on the machine skew timings)")
    print(f"speed-up {speedup:.1f}x (goal >= 10x: {'MET' if speedup >= 10 else 'NOT met'}); "
          f"size reduction {size_reduction:.1f}x (goal >= 5x: {'MET' if size_reduction >= 5 else 'NOT met'})")
    if payload["speedup_1_worker"]:
        print(f"speed-up with ONE worker (no parallelism): {payload['speedup_1_worker']:.1f}x")
    if results["original"].get("skipped_short"):
        print(f"note: the original skipped {results['original']['skipped_short']} clips shorter than 1 s")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
