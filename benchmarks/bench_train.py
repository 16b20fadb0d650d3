"""Benchmark training of each architecture on the SYNTHETIC dataset (12-class keywords task).

For every model (``--models``): ``kws.stages.train.train`` on cached prepare features
(default keywords task and augmentation), then ``kws.stages.evaluate.evaluate`` on the
synthetic test split, then the 30 REAL Speech Commands digit clips (zero..nine, words that
are not keywords) from ``../shared/data/speech_commands_sample`` are classified: the share
predicted ``_unknown_`` shows how the synthetic-trained model treats real non-keyword speech.

The accuracy is SYNTHETIC test accuracy (espeak-ng voices), NOT Speech Commands accuracy.
MLflow logs to a throw-away store (``sqlite:////tmp/kws-bench/mlflow.db`` unless
``--mlflow-uri``); TensorFlow uses its default threading. Writes ``benchmarks/results/train.json``.

    .venv/bin/python benchmarks/bench_train.py [--models cnn_seed ds_cnn bc_resnet --epochs 15]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kws.logs import setup_logging  # noqa: E402
from _common import DEFAULT_CACHE, SAMPLE_DIR, compose, machine_info, synthetic_dataset, table, write_result  # noqa: E402

DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def cached_features(dataset: Path, cache: Path, cfg, log=print) -> Path:
    """Run prepare once per (dataset, prepare/feature config); reuse the output afterwards."""
    from omegaconf import OmegaConf

    from kws.stages.prepare import prepare

    key = json.dumps({"dataset": str(dataset), "seed": cfg.seed,
                      "prepare": OmegaConf.to_container(cfg.prepare, resolve=True),
                      "features": OmegaConf.to_container(cfg.features, resolve=True)}, sort_keys=True)
    out = cache / f"features-{cfg.prepare.task}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    if (out / "meta.json").is_file():
        log(f"reusing features {out}")
        return out
    log(f"preparing features into {out} ...")
    t0 = time.perf_counter()
    meta = prepare(cfg, dataset, out)
    log(f"prepared {meta['counts']} in {time.perf_counter() - t0:.1f} s")
    return out


def real_digits(model_dir: Path, features_dir: Path) -> dict:
    """Classify the 30 real digit clips (non-keywords) with the bundle's Keras model."""
    import keras
    import numpy as np

    from kws.audio import load_file
    from kws.bundle import KERAS_FILE
    from kws.features import FeatureConfig, clip_features
    from kws.labels import UNKNOWN

    meta = json.loads((features_dir / "meta.json").read_text())
    labels = meta["labels"]
    fcfg = FeatureConfig.from_dict(meta["features"])
    paths = sorted(p for d in DIGITS for p in (SAMPLE_DIR / d).glob("*.wav"))
    if not paths:
        raise SystemExit(f"no digit clips under {SAMPLE_DIR}")
    x = np.stack([clip_features(load_file(p, fcfg.sample_rate), fcfg) for p in paths])[..., None]
    model = keras.models.load_model(model_dir / KERAS_FILE)
    pred = model.predict(x, verbose=0).argmax(axis=1)
    names = [labels[i] for i in pred]
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return {
        "clips": len(paths),
        "unknown_share": float(np.mean([n == UNKNOWN for n in names])),
        "predicted_counts": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
        "per_clip": {f"{p.parent.name}/{p.name}": n for p, n in zip(paths, names)},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["cnn_seed", "ds_cnn", "bc_resnet"])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--voices", type=int, default=24)
    ap.add_argument("--takes", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--mlflow-uri", default=None, help="default sqlite:///<cache>/mlflow.db")
    ap.add_argument("--output", type=Path, default=None, help="result JSON (default benchmarks/results/train.json)")
    args = ap.parse_args(argv)
    setup_logging("WARNING")  # the project's one logging configuration

    if args.output:
        args.output = args.output.resolve()
    cache = args.cache.resolve()
    cache.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = args.mlflow_uri or f"sqlite:///{cache / 'mlflow.db'}"
    # kws.tracking puts the artifact store at <cwd>/mlruns: keep it out of the repository.
    work = cache / "train"
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)

    dataset, ds_info = synthetic_dataset(cache, args.voices, args.takes)
    base_cfg = compose(["data=synthetic"])
    features_dir = cached_features(dataset, cache, base_cfg)
    meta = json.loads((features_dir / "meta.json").read_text())

    import tensorflow as tf

    from kws.bundle import KERAS_FILE, TFLITE_FILE
    from kws.stages.evaluate import evaluate
    from kws.stages.train import train

    results = {}
    started_all = time.perf_counter()
    for name in args.models:
        print(f"\n=== {name}: {args.epochs} epochs ===", flush=True)
        cfg = compose(["data=synthetic", f"model={name}", f"train.epochs={args.epochs}"])
        model_dir, reports = work / "models" / name, work / "reports" / name
        shutil.rmtree(model_dir, ignore_errors=True)
        t0 = time.perf_counter()
        summary = train(cfg, features_dir, model_dir, reports / "train")
        train_wall = time.perf_counter() - t0
        t0 = time.perf_counter()
        metrics = evaluate(cfg, features_dir, model_dir, reports / "evaluate")
        eval_wall = time.perf_counter() - t0
        digits = real_digits(model_dir, features_dir)
        results[name] = {
            "epochs_requested": args.epochs,
            "epochs_run": summary["epochs_run"],
            "best_epoch": summary["best_epoch"],
            "seconds_per_epoch": round(summary["seconds_per_epoch"], 3),
            "fit_seconds": round(summary["train_seconds"], 2),
            "train_stage_wall_seconds": round(train_wall, 2),
            "evaluate_stage_wall_seconds": round(eval_wall, 2),
            "params_count": summary["params_count"],
            "best_val_accuracy_synthetic": round(summary["val_accuracy"], 4),
            "test_accuracy_synthetic": round(metrics["accuracy"], 4),
            "test_macro_f1_synthetic": round(metrics["macro_f1"], 4),
            "tflite_test_accuracy_synthetic": round(metrics["tflite_accuracy"], 4),
            "tflite_agreement": round(metrics["tflite_agreement"], 4),
            "n_test_synthetic": metrics["n_test"],
            "tflite_bytes": (model_dir / TFLITE_FILE).stat().st_size,
            "keras_bytes": (model_dir / KERAS_FILE).stat().st_size,
            "real_digits_unknown_share": round(digits["unknown_share"], 4),
            "real_digits": digits,
        }
        print(f"{name}: {summary['seconds_per_epoch']:.2f} s/epoch, val {summary['val_accuracy']:.3f}, "
              f"synthetic test {metrics['accuracy']:.3f}, real digits -> _unknown_ {digits['unknown_share']:.0%}",
              flush=True)
    total = time.perf_counter() - started_all

    payload = {
        "benchmark": "train",
        "note": "Accuracies are on the SYNTHETIC dataset (espeak-ng voices + real background noise), "
                "NOT Speech Commands accuracy. real_digits_unknown_share = share of the 30 real Speech "
                "Commands digit clips (non-keywords) classified as _unknown_.",
        "machine": {**machine_info(), "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads(),
                    "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads()},
        "dataset": {"path": str(dataset), **ds_info},
        "features": {"path": str(features_dir), "task": meta["task"], "labels": meta["labels"],
                     "counts": meta["counts"], "feature_shape": meta["feature_shape"],
                     "augment_copies": base_cfg.prepare.augment.copies},
        "train_config": {"epochs": args.epochs, "batch_size": base_cfg.train.batch_size,
                         "learning_rate": base_cfg.train.learning_rate,
                         "early_stopping_patience": base_cfg.train.early_stopping_patience},
        "mlflow_tracking_uri": os.environ["MLFLOW_TRACKING_URI"],
        "total_wall_seconds": round(total, 1),
        "results": results,
    }
    path = write_result(args.output or "train.json", payload)

    rows = [[n, r["params_count"], f"{r['epochs_run']}/{r['epochs_requested']}", f"{r['seconds_per_epoch']:.2f}",
             f"{r['best_val_accuracy_synthetic']:.3f}", f"{r['test_accuracy_synthetic']:.3f}",
             f"{r['tflite_bytes'] / 1024:.0f}", f"{r['real_digits_unknown_share']:.0%}"]
            for n, r in results.items()]
    print()
    print(table(rows, ["model", "params", "epochs", "s/epoch", "val acc (SYNTH)", "test acc (SYNTH)",
                       "TFLite KiB", "real digits->_unknown_"]))
    print(f"\ntrain split {meta['counts']['train']} examples (with augmentation), test {meta['counts']['test']}; "
          f"total {total:.0f} s; SYNTHETIC accuracy, not Speech Commands accuracy")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
