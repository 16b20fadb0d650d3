"""DVC stage `stream`: keyword recall at a false-accept rate on continuous audio, and the
model's operating point.

Long recordings are generated from the prepared splits' clips (:mod:`kws.streaming.generate`):
VALIDATION streams from ``validation_examples.json`` choose the detector's operating point (the
best recall at or under ``stream.target_fa_per_hour`` over the threshold and smoothing sweep),
TEST streams from ``test_examples.json`` report at that point: recall per keyword, wrong words,
false accepts per hour, detection latency after each word's speech, and the DET curve. With
``stream.max_latency_s`` the choice counts only hits known within that time (live listening). Streams are scored through the service's own
long-audio path (:class:`kws.serving.predictor.Predictor`). Writes ``reports/stream/``:
``metrics.json``, ``det.csv``, ``det.png`` and ``operating_point.json`` (the bundle's
``detector.json``), and logs them into the model's MLflow run.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from kws.errors import ConfigError
from kws.streaming import benchmark as bm
from kws.streaming.detector import DetectorSettings
from kws.streaming.generate import StreamRecipe, generate_streams, split_clips

log = logging.getLogger(__name__)

TEST_SEED_OFFSET = 500  # test streams' seeds never coincide with validation streams'


def thresholds(spec) -> list[float]:
    start, stop, step = float(spec["start"]), float(spec["stop"]), float(spec["step"])
    if not (0 <= start <= stop <= 1 and step > 0):
        raise ConfigError(f"stream.thresholds must have 0 <= start <= stop <= 1 and step > 0, got {dict(spec)}")
    return [round(float(t), 6) for t in np.arange(start, stop + step / 2, step)]


def recipe(sc, seed: int) -> StreamRecipe:
    return StreamRecipe(seed=int(seed), duration_s=float(sc.duration_s), gap_s=tuple(sc.gap_s),
                        snr_db=tuple(sc.snr_db), keyword_share=float(sc.keyword_share), noise_rms=float(sc.noise_rms))


def split_streams(features_dir: Path, split: str, sc, sample_rate: int):
    """The ``validation`` or ``test`` streams of the prepared split in ``features_dir`` by the
    recipe ``sc`` (each split its seeds and its number of streams), and what identifies them."""
    from kws.artifacts import TEST_EXAMPLES_FILE, VALIDATION_EXAMPLES_FILE

    if split not in ("validation", "test"):
        raise ConfigError(f"streams are generated for the validation or test split, not {split!r}")
    examples = features_dir / (VALIDATION_EXAMPLES_FILE if split == "validation" else TEST_EXAMPLES_FILE)
    seed = int(sc.seed) + (0 if split == "validation" else TEST_SEED_OFFSET)
    count = int(sc.validation_streams if split == "validation" else sc.streams)
    clips, noise = split_clips(examples)
    streams = generate_streams(clips, noise, recipe(sc, seed), count, sample_rate)
    doc = json.loads(examples.read_text())
    info = {"examples": str(examples), "digest": doc.get("digest"), "clips": len(clips), "streams": len(streams),
            "minutes": round(sum(s.duration_s for s in streams) / 60, 3), "words": sum(len(s.truth) for s in streams),
            "noise": [s.noise for s in streams], "seeds": [s.recipe.seed for s in streams]}
    return streams, info


def _write_det(path: Path, curves: dict[str, list[dict]]) -> None:
    with open(path, "w", newline="") as f:
        cols = ["threshold", "miss_rate", "recall", "recall_on_time", "false_accepts_per_hour", "false_accepts",
                "wrong_words", "late"]
        writer = csv.writer(f)
        writer.writerow(["split", *cols])
        for split, rows in curves.items():
            writer.writerows([split, *(r[c] for c in cols)] for r in rows)


def measure(sc, features_dir: Path, model_dir: Path) -> tuple[dict, dict, dict[str, list[dict]]]:
    """The stream benchmark of the bundle-like ``model_dir`` with settings ``sc`` (``cfg.stream``):
    ``(metrics, operating_point, det curves)``, nothing written (the stage and benchmarks share it)."""
    from kws.serving.predictor import Predictor

    t0 = time.perf_counter()
    # the runtime the service picks by default (int8 where the bundle's export check chose it), so
    # the operating point is chosen on the scores it will be applied to
    predictor = Predictor(model_dir, runtime=str(sc.get("runtime", "auto")), warmup=False)
    rate, stride, tol, target = predictor.cfg.sample_rate, float(sc.stride_s), float(sc.tolerance_s), float(sc.target_fa_per_hour)
    late = sc.get("max_latency_s")
    late = None if late is None else float(late)
    val, val_info = split_streams(features_dir, "validation", sc, rate)
    test, test_info = split_streams(features_dir, "test", sc, rate)
    t_gen = time.perf_counter()
    val_scored = bm.score_streams(predictor, val, stride, desc="validation streams")
    test_scored = bm.score_streams(predictor, test, stride, desc="test streams")
    t_score = time.perf_counter()

    grid, sweep = bm.settings_grid(OmegaConf.to_container(sc.smoothing, resolve=True)), thresholds(sc.thresholds)
    chosen = bm.choose(predictor, val_scored, grid, sweep, target, tol, late)
    settings = chosen["settings"]
    at_val = bm.outcome(predictor, val_scored, settings, tol, late).summary()
    at_test = bm.outcome(predictor, test_scored, settings, tol, late).summary()
    curves = {"validation": chosen["curve"], "test": bm.curve(predictor, test_scored, settings, sweep, tol, late)}
    by_runtime = {predictor.runtime.name: {k: at_test[k] for k in ("recall", "false_accepts_per_hour", "wrong_words")}}
    if predictor.runtime.name != "tflite":  # the float32 model on the same test streams, same settings, beside it
        f32 = Predictor(model_dir, runtime="tflite", warmup=False)
        f32_scored = bm.score_streams(f32, test, stride, desc="test streams, float32")
        f32_test = bm.outcome(f32, f32_scored, settings, tol).summary()
        by_runtime["tflite"] = {k: f32_test[k] for k in ("recall", "false_accepts_per_hour", "wrong_words")}
    t_sweep = time.perf_counter()

    point = {"target_fa_per_hour": target, "target_met_on_validation": chosen["target_met"], "chosen_on": "validation",
             "stride_s": stride, "tolerance_s": tol, "max_latency_s": late,
             "smoothing_swept": len(grid), "thresholds_swept": len(sweep),
             "validation": {k: at_val[k] for k in ("recall", "recall_on_time", "false_accepts_per_hour", "wrong_words")},
             "test": {k: at_test[k] for k in ("recall", "recall_on_time", "false_accepts_per_hour", "wrong_words")}}
    operating_point = {"settings": settings.to_dict(), "operating_point": point}
    metrics = {"test": at_test, "validation": at_val, "operating_point": {**settings.to_dict(), **point},
               "runtime": predictor.runtime.name, "test_by_runtime": by_runtime,
               "recipe": {**recipe(sc, int(sc.seed)).to_dict(), "test_streams": int(sc.streams),
                          "test_seed_offset": TEST_SEED_OFFSET},
               "streams": {"validation": val_info, "test": test_info},
               "seconds": {"generate": round(t_gen - t0, 2), "score": round(t_score - t_gen, 2),
                           "sweep": round(t_sweep - t_score, 2)}}
    return metrics, operating_point, curves


def run_stream(cfg, features_dir: Path, model_dir: Path, reports_dir: Path) -> dict:
    metrics, operating_point, curves = measure(cfg.stream, features_dir, model_dir)
    at_val, at_test, point = metrics["validation"], metrics["test"], metrics["operating_point"]
    settings = DetectorSettings.from_dict(operating_point["settings"])
    val_info, test_info = metrics["streams"]["validation"], metrics["streams"]["test"]
    reports_dir.mkdir(parents=True, exist_ok=True)
    (reports_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (reports_dir / "operating_point.json").write_text(json.dumps(operating_point, indent=2) + "\n")
    _write_det(reports_dir / "det.csv", curves)
    title = (f"{cfg.model.name} on {cfg.data.name} streams ({test_info['minutes']:g} min of test audio)\n"
             f"test recall {at_test['recall']:.3f} at {at_test['false_accepts_per_hour']:.1f} FA/h "
             f"(threshold {settings.threshold:.2f}, chosen on validation)")
    marks = {split: next(r for r in rows if r["threshold"] == settings.threshold) for split, rows in curves.items()}
    png = bm.plot_det(curves, marks, reports_dir / "det.png", title, point["target_fa_per_hour"])
    _log_to_mlflow(cfg, model_dir, reports_dir, png, metrics)
    log.info("streams: %s min validation / %s min test; operating point %s (validation recall %.3f at %.1f FA/h); "
             "test recall %.3f at %.1f FA/h, %d wrong words", val_info["minutes"], test_info["minutes"],
             settings.to_dict(), at_val["recall"], at_val["false_accepts_per_hour"], at_test["recall"],
             at_test["false_accepts_per_hour"], at_test["wrong_words"])
    return metrics


def _log_to_mlflow(cfg, model_dir: Path, reports_dir: Path, png: Path, metrics: dict) -> None:
    import mlflow

    from kws import tracking

    run = tracking.read_run(model_dir)
    tracking.setup(cfg.mlflow.experiment)
    test, op = metrics["test"], metrics["operating_point"]
    values = {"stream_recall": test["recall"], "stream_false_accepts_per_hour": test["false_accepts_per_hour"],
              "stream_wrong_words": test["wrong_words"], "stream_threshold": op["threshold"],
              "stream_validation_recall": metrics["validation"]["recall"],
              "stream_recall_on_time": test["recall_on_time"], "stream_latency_p90_s": test["latency_s"].get("p90"),
              "stream_latency_max_s": test["latency_s"].get("max"),
              **{f"stream_recall_{k}": v for k, v in test["recall_per_keyword"].items()}}
    with mlflow.start_run(run_id=run["run_id"]):
        mlflow.log_metrics({k: float(v) for k, v in values.items() if v is not None})
        mlflow.log_artifact(str(png), "plots")
        for name in ("det.csv", "metrics.json", "operating_point.json"):
            mlflow.log_artifact(str(reports_dir / name), "stream")


def main(argv: list[str] | None = None) -> int:
    from kws.cli import stage_cli

    return stage_cli("kws-stream", __doc__.splitlines()[0],
                     lambda cfg: run_stream(cfg, Path(cfg.paths.features), Path(cfg.paths.model),
                                            Path(cfg.paths.reports) / "stream"), argv)


if __name__ == "__main__":
    raise SystemExit(main())
