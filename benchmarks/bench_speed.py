"""Faster and smaller (issue 21): the one-pass clip rule, the int8 model and batch scoring, each
beside what it replaces, in the same run.

1. **In-process latency** of one 1 s real clip, from the file bytes to the answer
   (``kws.audio.decode`` + ``check_not_silent`` + ``Predictor.predict``), the variants taking
   turns on each request: ``three_pass_50ms`` (the previous rule: the clip and its ±50 ms
   zero-filled shifts, each through the features and the runtime on its own, re-implemented
   here as it was, with numpy's default BLAS threads as before), ``one_pass`` (today's rule:
   one feature pass, the ±40 ms views sliced from it, one runtime call, with the service's
   single BLAS thread, :func:`kws.serving.runtimes.single_threaded_blas`) with float32 and with
   int8, and the clip alone.
   With ``--views`` (the bundle has a views model, :mod:`kws.views`; ``python -m kws.views
   BUNDLE --features DIR`` adds one): the views model (one invoke of the padded clip), the
   one-pass batch of views and the clip alone, each with float32 and int8, instead (no
   three-pass rule), and the parts of one answer (features, invokes) timed on their own.
2. **Accuracy** on the bundle's held-out test split (``--features``: ``test_examples.json``, every
   example rendered from the clips again as ``kws.stages.evaluate.bundle_accuracy`` does), for
   the rules and runtimes above and the ±60 ms shifts; plus float32 vs int8 on the precomputed
   test features (``test.npz``, the clip alone). The int8 model is converted here from the
   bundle's Keras model (calibrated on ``train.npz``) when the bundle has none.
3. **Size** of both TFLite files.
4. **kws-score throughput** on ``--pool`` (default the real pool): clip by clip in this process
   (as before) vs ``--workers`` processes scoring batches (``kws.scoring.batch.score_bundle``); the
   predictions must be identical.

    .venv/bin/python benchmarks/bench_speed.py --bundle /tmp/base-model --features /tmp/base-features
    .venv/bin/python benchmarks/bench_speed.py --bundle DIR --features DIR --sections latency   # only that one
    .venv/bin/python benchmarks/bench_speed.py --bundle /tmp/views/base-model --features /tmp/base-features \
        --views --sections latency,accuracy --output benchmarks/results/speed_views.json

Writes ``benchmarks/results/speed.json`` (``--output``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, machine_info, write_result  # noqa: E402

REAL_POOL = REPO.parent / "shared" / "data" / "speech_commands_real"
OLD_SHIFTS_MS = (0, -50, 50)
ALL = {"latency", "accuracy", "pool"}


def stats_ms(seconds: list[float], cpu_seconds: list[float]) -> dict:
    """Wall-clock and CPU-time (this thread's) percentiles: on a shared, overloaded machine the wall
    clock mostly measures the wait for a core, the CPU time what one answer costs."""
    ms, cpu = np.asarray(seconds) * 1000.0, np.asarray(cpu_seconds) * 1000.0
    return {"n": int(len(ms)), "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p90_ms": round(float(np.percentile(ms, 90)), 3), "min_ms": round(float(ms.min()), 3),
            "cpu_p50_ms": round(float(np.percentile(cpu, 50)), 3), "cpu_p90_ms": round(float(np.percentile(cpu, 90)), 3)}


def three_pass_scores(pred, waves: np.ndarray, shifts_ms=OLD_SHIFTS_MS) -> np.ndarray:
    """The previous clip rule: every zero-filled shifted clip through the features and the runtime."""
    from kws.audio import time_shift

    total = None
    for ms in shifts_ms:
        k = int(round(ms * pred.cfg.sample_rate / 1000))
        moved = waves if k == 0 else np.stack([time_shift(w, k) for w in waves])
        scores = pred.runtime.infer(pred.features(moved))
        total = scores if total is None else total + scores
    return total / len(shifts_ms)


def with_int8(bundle: Path, features: Path, tmp: Path) -> tuple[Path, str]:
    """The bundle with ``model_int8.tflite``: its own, or converted now from its Keras model."""
    from kws.bundle import INFO_FILE, KERAS_FILE, TFLITE_FILE, TFLITE_INT8_FILE, int8_check, representative_sample, to_tflite_int8

    if (bundle / TFLITE_INT8_FILE).is_file():
        return bundle, "the bundle's own"
    import keras

    out = tmp / "bundle"
    shutil.copytree(bundle, out)
    x = np.load(features / "train.npz")["x"]
    t0 = time.perf_counter()
    model = keras.saving.load_model(out / KERAS_FILE, compile=False)
    int8_model = to_tflite_int8(model, representative_sample(x))
    (out / TFLITE_INT8_FILE).write_bytes(int8_model)
    val = np.load(features / "validation.npz")
    info = json.loads((out / INFO_FILE).read_text())
    info["int8"] = int8_check((out / TFLITE_FILE).read_bytes(), int8_model, val["x"], val["y"])  # as the export does
    (out / INFO_FILE).write_text(json.dumps(info))
    return out, (f"converted now from model.keras in {time.perf_counter() - t0:.1f} s (300 train.npz rows); "
                 f"export check: {info['int8']}")


def views_predictors(bundle: Path) -> dict:
    """The predictors that score with the bundle's views model, float32 and int8."""
    from kws.serving.predictor import Predictor

    preds = {rt: Predictor(bundle, runtime=rt) for rt in ("tflite", "tflite_int8")}
    for rt, pred in preds.items():
        if pred.clip_path["rule"] != "views_model":
            raise SystemExit(f"--views: the {rt} predictor does not use a views model: {pred.clip_path}")
    return preds


def bench_latency(bundle: Path, clips: list[Path], n_requests: int, views: bool = False) -> dict:
    from kws.audio import check_not_silent, decode
    from kws.serving.predictor import Predictor

    from kws.views import VIEW_SHIFTS_MS

    f32 = Predictor(bundle, runtime="tflite", use_views=False, tta_shifts_ms=VIEW_SHIFTS_MS)  # the batch of views
    i8 = Predictor(bundle, runtime="tflite_int8", use_views=False, tta_shifts_ms=VIEW_SHIFTS_MS)
    old = Predictor(bundle, runtime="tflite", tta_shifts_ms=OLD_SHIFTS_MS[:1])  # runtime + features; rule below
    old.runtime = f32.runtime.__class__(bundle / "model.tflite", buckets=(1, 8, 32))  # the previous buckets

    def answer(pred, data, rule):
        audio = decode(data, pred.cfg.sample_rate, 60.0)
        check_not_silent(audio.samples)
        if rule == "old":
            from kws.audio import fix_length

            scores = three_pass_scores(pred, fix_length(pred.loudest_window(audio.samples), pred.cfg.clip_samples)[None])[0]
            return pred.labels[int(np.argmax(scores))]
        return pred.predict(audio.samples)["keyword"]

    plain = Predictor(bundle, runtime="tflite", tta_shifts_ms=(0,))  # the served rule (the default)
    plain8 = Predictor(bundle, runtime="tflite_int8", tta_shifts_ms=(0,))
    variants = {"three_pass_50ms_float32": lambda d: answer(old, d, "old"),
                "one_pass_40ms_float32": lambda d: answer(f32, d, "new"),
                "one_pass_40ms_int8": lambda d: answer(i8, d, "new"),
                "clip_alone_float32": lambda d: answer(plain, d, "new"),
                "clip_alone_int8": lambda d: answer(plain8, d, "new")}
    if views:
        v = views_predictors(bundle)
        del variants["three_pass_50ms_float32"]
        variants = {"views_40ms_float32": lambda d: answer(v["tflite"], d, "new"),
                    "views_40ms_int8": lambda d: answer(v["tflite_int8"], d, "new"), **variants}
    datas = [c.read_bytes() for c in clips]
    names = list(variants)
    for i in range(20):
        for name in names:
            variants[name](datas[i % len(datas)])
    from threadpoolctl import threadpool_limits

    times = {name: [] for name in names}
    cpu = {name: [] for name in names}
    blas_threads = os.cpu_count()  # the previous rule ran with numpy's default BLAS threads
    for i in range(n_requests):
        k = i % len(names)
        for name in names[k:] + names[:k]:
            with threadpool_limits(limits=blas_threads if name.startswith("three_pass") else 1, user_api="blas"):
                t0, c0 = time.perf_counter(), time.thread_time()
                variants[name](datas[i % len(datas)])
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.thread_time() - c0)
    out = {"requests": n_requests, "distinct_clips": len(clips), "loadavg_1min": round(os.getloadavg()[0], 2),
           "results": {name: stats_ms(times[name], cpu[name]) for name in names}}
    if views:
        out["parts"] = bench_parts(v["tflite"], f32, datas, n_requests)
    return out


def bench_parts(views, batch, datas: list[bytes], n: int) -> dict:
    """The parts of one float32 answer timed on their own, in turns: the decode, the padded clip's
    features, one invoke of the views model, of one view and of the batch of three views."""
    from kws.audio import decode, fix_length
    from kws.features import extract

    cfg, pad = views.cfg, max(abs(k) for k in views._tta_frames)
    edge = pad * cfg.hop_length
    waves = [fix_length(decode(d, cfg.sample_rate, 60.0).samples, cfg.clip_samples) for d in datas]
    feats = [extract(np.pad(w[None], ((0, 0), (edge, edge))), cfg, any_length=True)[..., None] for w in waves]
    steps = {"decode": lambda i: decode(datas[i], cfg.sample_rate, 60.0),
             "features_padded": lambda i: extract(np.pad(waves[i][None], ((0, 0), (edge, edge))), cfg, any_length=True),
             "invoke_views_model": lambda i: views._views.infer(feats[i]),
             "invoke_one_view": lambda i: batch.runtime.infer(feats[i][:, pad:pad + cfg.n_frames]),
             "invoke_three_views": lambda i: batch.runtime.infer(np.concatenate(
                 [feats[i][:, pad - k:pad - k + cfg.n_frames] for k in batch._tta_frames]))}
    times = {name: [] for name in steps}
    cpu = {name: [] for name in steps}
    for r in range(n):
        for name, step in steps.items():
            t0, c0 = time.perf_counter(), time.thread_time()
            step(r % len(datas))
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.thread_time() - c0)
    return {name: stats_ms(times[name], cpu[name]) for name in steps}


def bench_accuracy(bundle: Path, features: Path, root: Path, views: bool = False) -> dict:
    from kws.audio import load_file
    from kws.bundle import tflite_scores
    from kws.dataset import Example, render
    from kws.serving.predictor import Predictor

    data = np.load(features / "test.npz")
    x, y = data["x"], data["y"]
    plain = {name: float(np.mean(tflite_scores((bundle / file).read_bytes(), x).argmax(1) == y))
             for name, file in (("float32", "model.tflite"), ("int8", "model_int8.tflite"))}
    test_set = json.loads((features / "test_examples.json").read_text())
    f32 = Predictor(bundle, runtime="tflite", warmup=False)
    cfg = f32.cfg
    examples = [Example(**e) for e in test_set["examples"]]
    noise = ([load_file(root / f, cfg.sample_rate) for f in test_set["noise_files"]]
             if any(e.noise >= 0 for e in examples) else [])
    waves = np.stack([render(e, [root / test_set["root"]], noise, cfg.clip_samples, cfg.sample_rate) for e in examples])
    truth = np.asarray([e.label for e in examples])
    rules = {"clip_alone": (0,), "three_pass_50ms": None, "one_pass_40ms": (0, -40, 40), "one_pass_60ms": (0, -60, 60)}
    if views:
        rules = {"views_40ms": (0, -40, 40), "one_pass_40ms": (0, -40, 40), "clip_alone": (0,)}
    rows, right = {}, {}
    for runtime in ("tflite", "tflite_int8"):
        for rule, shifts in rules.items():
            pred = Predictor(bundle, runtime=runtime, warmup=False, tta_shifts_ms=shifts or (0,),
                             use_views=rule.startswith("views"))
            if rule.startswith("views") and pred.clip_path["rule"] != "views_model":
                raise SystemExit(f"--views: the {runtime} predictor does not use a views model: {pred.clip_path}")
            scores = np.concatenate([(three_pass_scores(pred, waves[i:i + 128]) if shifts is None
                                      else pred.clip_scores(waves[i:i + 128])) for i in range(0, len(waves), 128)])
            correct = int(np.sum(scores.argmax(1) == truth))
            name = f"{rule}_{'int8' if runtime == 'tflite_int8' else 'float32'}"
            right[name] = scores.argmax(1) == truth
            rows[name] = {"accuracy": round(correct / len(truth), 4), "correct": correct, "n": int(len(truth))}
    out = {"test_npz_clip_alone": {k: round(v, 4) for k, v in plain.items()},
           "test_npz_loss_points": round(100 * (plain["float32"] - plain["int8"]), 2),
           "rendered_test_split": rows, "n_test": int(len(y))}
    if views:  # paired: the clips one rule gets right and the other wrong
        out["views_vs_one_pass"] = {rt: {"only_views_right": int(np.sum(right[f"views_40ms_{rt}"] & ~right[f"one_pass_40ms_{rt}"])),
                                         "only_one_pass_right": int(np.sum(~right[f"views_40ms_{rt}"] & right[f"one_pass_40ms_{rt}"]))}
                                    for rt in ("float32", "int8")}
    return out


def bench_pool(bundle: Path, pool: Path, workers: int, batch: int, limit: int | None) -> dict:
    from kws.bundle import read_meta
    from kws.scoring.batch import score_bundle
    from kws.scoring.classifier import bundle_classifier, score
    from kws.scoring.folders import collect

    labels = read_meta(bundle).labels
    items, layout = collect(pool, labels)
    if limit:
        items = items[:limit]
    t0 = time.perf_counter()
    before = score(items, bundle_classifier(bundle), labels, progress=False)
    before_s = time.perf_counter() - t0
    after = score_bundle(items, bundle, workers=workers, progress=False, **({'batch': batch} if batch else {}))
    same = [p["predicted"] for p in before["predictions"]] == [p["predicted"] for p in after["predictions"]]
    return {"pool": str(pool), "clips": len(items), "layout": layout,
            "clip_by_clip": {"seconds": round(before_s, 2), "clips_per_s": round(len(items) / before_s, 1),
                             "accuracy": round(before["accuracy"], 4)},
            "batched": {"workers": after["workers"], "batch": after["batch"], "clips_per_s": after["clips_per_s"],
                        "accuracy": round(after["accuracy"], 4)},
            "identical_predictions": same}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", type=Path, required=True, help="a serving bundle (model.keras + model.tflite)")
    p.add_argument("--features", type=Path, required=True, help="its prepare output (train.npz, test.npz, test_examples.json)")
    p.add_argument("--root", type=Path, default=Path.cwd(),
                   help="the folder test_examples.json's relative paths start from (the pipeline's checkout)")
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--pool", type=Path, default=REAL_POOL)
    p.add_argument("--pool-limit", type=int, default=None)
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--batch", type=int, default=None, help="default: kws-score's (kws.scoring.batch.DEFAULT_BATCH)")
    p.add_argument("--sections", default="latency,accuracy,pool",
                   help="which to run; the others are kept from an existing --output")
    p.add_argument("--output", type=Path, default=REPO / "benchmarks" / "results" / "speed.json")
    p.add_argument("--views", action="store_true",
                   help="the views model (the bundle must have one) beside the batch of views and the clip alone")
    args = p.parse_args(argv)

    from kws.logs import setup_logging

    setup_logging("WARNING")
    with tempfile.TemporaryDirectory(prefix="kws-speed-") as tmp:
        bundle, int8_source = with_int8(args.bundle, args.features, Path(tmp))
        sizes = {"float32_bytes": (bundle / "model.tflite").stat().st_size,
                 "int8_bytes": (bundle / "model_int8.tflite").stat().st_size}
        sizes["ratio"] = round(sizes["float32_bytes"] / sizes["int8_bytes"], 2)
        sizes.update({f"{name}_bytes": (bundle / f"model_{name}.tflite").stat().st_size
                      for name in ("views", "views_int8") if (bundle / f"model_{name}.tflite").is_file()})
        print("sizes", sizes, flush=True)
        clips = sorted(p for p in args.pool.glob("*/*.wav"))[::97]
        sections = set(args.sections.split(","))
        old = json.loads(args.output.read_text()) if args.output.is_file() and sections != ALL else {}
        latency = (bench_latency(bundle, clips, args.requests, args.views) if "latency" in sections
                   else old.get("latency"))
        print(json.dumps(latency, indent=1), flush=True)
        accuracy = (bench_accuracy(bundle, args.features, args.root, args.views) if "accuracy" in sections
                    else old.get("accuracy"))
        print(json.dumps(accuracy, indent=1), flush=True)
        pool = (bench_pool(bundle, args.pool, args.workers, args.batch, args.pool_limit) if "pool" in sections
                else old.get("kws_score"))
        print(json.dumps(pool, indent=1), flush=True)
    info = json.loads((args.bundle / "model_info.json").read_text()) if (args.bundle / "model_info.json").is_file() else {}
    write_result(args.output, {
        "benchmark": "speed", "machine": machine_info(), "bundle": str(args.bundle),
        "architecture": info.get("architecture"), "int8_model": int8_source, "sizes": sizes,
        **({"views_model": json.loads((bundle / "views.json").read_text())} if args.views else {}),
        "latency": latency, "accuracy": accuracy, "kws_score": pool,
    })
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
