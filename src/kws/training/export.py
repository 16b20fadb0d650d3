"""What a run leaves: its MLflow run (parameters, tags, label map, feature config, devices, the
model with signature and input example, the training-curves plot), ``history.csv`` and the
figure in the reports folder, the bundle (Keras, TFLite, labels, features, ``model_info.json``,
with :data:`WRITE_VIEWS` the views model of :mod:`kws.views`)
and ``run.json`` in the model folder. Only the chief writes; another worker of a multi-worker
cluster runs the same steps into a scratch folder, deleted at the end."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import shutil
import tempfile
from pathlib import Path

import numpy as np

from kws.config import flatten
from kws.training.callbacks import killed_on_interrupt
from kws.training.heads import fold_head, shift_logits
from kws.views import VIEW_SHIFTS_MS

log = logging.getLogger(__name__)

#: Whether the bundle gets the views model of :mod:`kws.views` (the service's short-clip shifts in
#: one invoke, where the architecture allows it). Off: on real speech it scored a little below the
#: batch of views it approximates (benchmarks/results/speed_views.json), and the service uses a
#: bundle's views model wherever there is one; ``python -m kws.views BUNDLE`` adds it to a bundle.
WRITE_VIEWS = False


@contextlib.contextmanager
def outputs(cfg, chief: bool, model_dir: Path, reports_dir: Path):
    """``(mlflow run or None, model_dir, reports_dir)`` while the run lasts (a non-chief worker's
    folders are scratch; see :func:`~kws.training.callbacks.killed_on_interrupt` for Ctrl-C)."""
    import mlflow

    from kws import tracking

    scratch = None
    if chief:
        tracking.setup(cfg.mlflow.experiment)
    else:  # TensorFlow's multi-worker recipe: every worker runs the same steps, only the chief's outputs count
        scratch = Path(tempfile.mkdtemp(prefix="kws-train-worker-"))
        model_dir, reports_dir = scratch / "model", scratch / "reports"
        log.info("not the chief worker: outputs go to %s (deleted at the end); the chief logs to MLflow", scratch)
    try:
        with (mlflow.start_run(run_name=f"{cfg.model.name}") if chief else contextlib.nullcontext()) as run, \
                killed_on_interrupt(chief):
            yield run, model_dir, reports_dir
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def log_start(cfg, meta: dict, training: dict, params_count: int, features) -> None:
    """The chief's MLflow record of what is trained, before ``fit``."""
    import mlflow

    from kws.cli import uninterrupted

    with uninterrupted():  # MLflow writes whole: one cut inside its SQLite transaction leaves the store locked
        mlflow.log_params(flatten(cfg))
        mlflow.set_tags({
            "kws.stage": "train", "kws.model": cfg.model.name, "kws.task": meta["task"],
            "kws.dataset": cfg.data.name, "kws.dataset_sha256": str(meta.get("source", {}).get("sha256")),
            "kws.strategy": training["strategy"], "kws.replicas": training["replicas"],
            "kws.gpus": len(training["gpus"]), "kws.precision": training["precision"],
            "kws.global_batch_size": training["global_batch_size"],
        })
        mlflow.log_dict({"labels": meta["labels"]}, "labels.json")
        mlflow.log_dict(features.to_dict(), "features.json")
        mlflow.log_dict(meta["counts"], "dataset_counts.json")
        mlflow.log_dict(training, "training_devices.json")
        mlflow.log_metric("params_count", params_count)


def log_summary(summary: dict, member: str = "") -> None:
    import mlflow

    from kws.cli import uninterrupted

    with uninterrupted():
        mlflow.log_metrics({f"{member}_best_{k}" if member else f"best_{k}": v for k, v in summary.items()})


def log_ensemble(summary: dict) -> None:
    """A seed ensemble's own validation figures (:func:`kws.training.ensemble.summary`)."""
    import mlflow

    from kws.cli import uninterrupted

    with uninterrupted():
        mlflow.log_metrics({"ensemble_val_accuracy": summary["val_accuracy"], "ensemble_val_loss": summary["val_loss"],
                            "ensemble_members": summary["members"]})


def write_history(history: dict, reports_dir: Path) -> Path:
    """``history.csv`` (one row per epoch, the learning rate last) and the training-curves figure."""
    from kws import plots

    reports_dir.mkdir(parents=True, exist_ok=True)
    keys = ([k for k in history if k != "learning_rate"]
            + (["learning_rate"] if "learning_rate" in history else []))
    epochs_run = len(history["loss"])
    with open(reports_dir / "history.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", *keys])
        for i in range(epochs_run):
            writer.writerow([i + 1, *(float(history[k][i]) for k in keys)])
    return plots.training_curves(history, reports_dir / "training_curves.png")


def exported_model(model, build, copy: bool, offsets: dict[str, float], labels: list[str], fold: np.ndarray,
                   words: list[str]):
    """What the service, TFLite and MLflow load: a plain float32, one-device model (``copy``: a
    float32 copy by ``build()``, needed after mixed precision or a strategy), with the logit offsets
    in its softmax bias and (``words``) the unknown words folded into ``_unknown_``."""
    from kws.training.distribute import float32_copy

    export = float32_copy(model, build) if copy else model
    shift_logits(export, offsets, labels, fold)
    if words:
        export = fold_head(export, fold)
    return export


def task_targets(splits) -> np.ndarray:
    """Validation targets as task labels: with ``train.unknown_by_word`` a target past the task's
    labels is an unknown word, which the exported head answers as ``_unknown_``."""
    from kws.labels import UNKNOWN

    y = np.asarray(splits.y_val)
    if UNKNOWN not in splits.labels:
        return y
    return np.where(y >= len(splits.labels), splits.labels.index(UNKNOWN), y)


def write_model(cfg, run, export, example: np.ndarray, curves: Path, model_dir: Path, splits, summary: dict,
                training: dict, offsets: dict[str, float]) -> dict:
    """The chief logs the plot and the model to MLflow; every process writes the bundle and
    ``run.json`` (where evaluate and promote find the run). Returns the run info."""
    from kws import tracking
    from kws.bundle import write_bundle

    run_info = {"run_id": None, "experiment_id": None, "model_uri": None, "architecture": cfg.model.name}
    if run is not None:
        import mlflow
        from mlflow.models import infer_signature

        from kws.cli import uninterrupted

        signature = infer_signature(example, export.predict(example, verbose=0))
        with uninterrupted():
            mlflow.log_artifact(str(curves), "plots")
            info = mlflow.tensorflow.log_model(export, name="model", signature=signature, input_example=example)
        run_info.update(run_id=run.info.run_id, experiment_id=run.info.experiment_id, model_uri=info.model_uri)
    write_bundle(model_dir, export, splits.labels, splits.features, metrics=summary,
                 info={**run_info, "dataset": cfg.data.name, "task": splits.meta["task"], "training": training,
                       "logit_offsets": offsets},
                 # int8 beside float32: calibrated on training features, checked against float32 on the
                 # validation split (scored by the task's labels, as the service answers)
                 representative=splits.x_train, check=(splits.x_val, task_targets(splits)),
                 views_shifts_ms=VIEW_SHIFTS_MS if WRITE_VIEWS else None)
    (model_dir / tracking.RUN_FILE).write_text(json.dumps(run_info, indent=2) + "\n")
    return run_info
