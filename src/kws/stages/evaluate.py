"""DVC stage `evaluate`: test-split accuracy, per-class precision/recall/F1, confusion matrix.

Writes ``metrics.json`` (for ``dvc metrics``), per-class scores, the confusion matrix as a
PNG and as rows for ``dvc plots``, and logs everything into the training run in MLflow.
The TFLite conversion is evaluated too, so a conversion problem shows up as a metric.
When the download stage fetched the official canonical test set (``data.canonical_test`` ->
``paths.canonical``), the bundle is also scored on it clip by clip through the service's
predictor: ``metrics.json``'s ``canonical`` (accuracy, 95 % interval, recall per class) and
MLflow's ``canonical_*`` metrics — the figure to compare with papers.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np

from kws.artifacts import load_meta, load_split

log = logging.getLogger(__name__)


def tflite_predict(tflite_path: Path, x: np.ndarray, batch: int = 256) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(tflite_path))
    inp = interpreter.get_input_details()[0]["index"]
    out = []
    for i in range(0, len(x), batch):
        chunk = x[i : i + batch]
        interpreter.resize_tensor_input(inp, chunk.shape)
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp, chunk)
        interpreter.invoke()
        out.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy())
    return np.concatenate(out)


def canonical_scores(folder: Path | None, bundle_dir: Path, labels: list[str], progress: bool = True) -> dict | None:
    """Score the bundle on the canonical test set in ``folder`` (``<class>/*.wav``) clip by clip,
    through the service's decoder and predictor. ``None`` when there is none (empty folder)."""
    from kws.scoring.classifier import bundle_classifier, score
    from kws.scoring.folders import collect
    from kws.errors import KWSError
    from kws.data.install import dataset_root

    if folder is None or not folder.is_dir() or not any(folder.iterdir()):
        return None
    try:
        items, _ = collect(dataset_root(folder), labels, layout="canonical")
    except KWSError as err:  # e.g. a 35-word model: the canonical set is a 12-class task
        log.warning("canonical test set not scored: %s", err.message)
        return {"skipped": err.message}
    result = score(items, bundle_classifier(bundle_dir), labels, progress=progress)
    return {
        "accuracy": result["accuracy"], "ci95": result["ci95"], "n": result["n"], "errors": len(result["errors"]),
        "recall": {label: row["recall"] for label, row in result["per_class"].items()},
        "latency_ms_p50": result["latency_ms"]["p50"],
    }


def evaluate(cfg, features_dir: Path, model_dir: Path, reports_dir: Path) -> dict:
    import keras
    import mlflow
    from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

    from kws import plots, tracking
    from kws.bundle import KERAS_FILE, TFLITE_FILE

    meta = load_meta(features_dir)
    labels = meta["labels"]
    x_test, y_test = load_split(features_dir, "test")
    x = x_test[..., None]
    model = keras.models.load_model(model_dir / KERAS_FILE)
    probs = model.predict(x, batch_size=256, verbose=0)
    y_pred = probs.argmax(axis=1)
    y_pred_tflite = tflite_predict(model_dir / TFLITE_FILE, x).argmax(axis=1)

    ids = list(range(len(labels)))
    report = classification_report(y_test, y_pred, labels=ids, target_names=labels, output_dict=True, zero_division=0)
    matrix = confusion_matrix(y_test, y_pred, labels=ids)
    metrics = {
        "accuracy": float(accuracy_score(y_test, y_pred)),
        "macro_f1": float(f1_score(y_test, y_pred, labels=ids, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_test, y_pred, labels=ids, average="weighted", zero_division=0)),
        "tflite_accuracy": float(accuracy_score(y_test, y_pred_tflite)),
        "tflite_agreement": float(np.mean(y_pred_tflite == y_pred)),
        "n_test": int(len(y_test)),
    }
    test_set = {"dataset": meta.get("dataset"), "test_digest": meta.get("test_digest")}
    per_class = {
        name: {k: float(report[name][k]) for k in ("precision", "recall", "f1-score", "support")} for name in labels
    }

    canonical_dir = cfg.paths.get("canonical")
    canonical = canonical_scores(Path(canonical_dir) if canonical_dir else None, model_dir, labels)

    reports_dir.mkdir(parents=True, exist_ok=True)
    (reports_dir / "metrics.json").write_text(
        json.dumps({"test": metrics, "test_set": test_set, "canonical": canonical}, indent=2) + "\n")
    (reports_dir / "per_class.json").write_text(json.dumps(per_class, indent=2) + "\n")
    with open(reports_dir / "confusion.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["actual", "predicted"])
        writer.writerows((labels[a], labels[p]) for a, p in zip(y_test, y_pred))
    png = plots.confusion_matrix(
        matrix, labels, reports_dir / "confusion_matrix.png",
        title=f"{cfg.model.name} on {cfg.data.name} test split: accuracy {metrics['accuracy']:.3f}",
    )

    run = tracking.read_run(model_dir)
    tracking.setup(cfg.mlflow.experiment)
    with mlflow.start_run(run_id=run["run_id"]):
        mlflow.log_metrics({f"test_{k}": v for k, v in metrics.items()})
        mlflow.set_tags({f"kws.{k}": str(v) for k, v in test_set.items()})
        mlflow.log_metrics({f"test_f1_{name.strip('_')}": v["f1-score"] for name, v in per_class.items()})
        if canonical and "accuracy" in canonical:
            mlflow.log_metrics({"canonical_accuracy": canonical["accuracy"],
                                **{f"canonical_recall_{k.strip('_')}": v for k, v in canonical["recall"].items()}})
            mlflow.log_dict(canonical, "evaluation/canonical.json")
        mlflow.log_artifact(str(png), "plots")
        mlflow.log_dict(per_class, "evaluation/per_class.json")
        mlflow.log_dict({"labels": labels, "matrix": matrix.tolist()}, "evaluation/confusion_matrix.json")
    log.info("test accuracy %.4f (macro F1 %.4f, TFLite %.4f) on %d clips",
             metrics["accuracy"], metrics["macro_f1"], metrics["tflite_accuracy"], metrics["n_test"])
    if canonical and "accuracy" in canonical:
        log.info("canonical test set: accuracy %.4f [%.4f, %.4f] on %d clips", canonical["accuracy"],
                 *canonical["ci95"], canonical["n"])
    return metrics


def main(argv: list[str] | None = None) -> int:
    from kws.cli import stage_cli

    return stage_cli("kws-evaluate", __doc__.splitlines()[0],
                     lambda cfg: evaluate(cfg, Path(cfg.paths.features), Path(cfg.paths.model), Path(cfg.paths.reports) / "evaluate"), argv)


if __name__ == "__main__":
    raise SystemExit(main())
