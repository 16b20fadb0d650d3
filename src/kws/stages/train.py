"""DVC stage `train`: MFCC features -> Keras model, tracked in MLflow.

SpecAugment-style time/coefficient masking on the fly, early stopping on validation
accuracy with the best weights restored, seeded. MLflow gets every resolved parameter,
per-epoch metrics, the model (with signature and input example), the label map, the
feature config and a training-curves plot. The run id goes to ``<model dir>/run.json``
so evaluate and promote log into the same run.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from pathlib import Path

import numpy as np

from kws.config import flatten
from kws.errors import DatasetError
from kws.features import FeatureConfig

log = logging.getLogger(__name__)


def load_split(features_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    path = features_dir / f"{split}.npz"
    if not path.is_file():
        raise DatasetError(f"{path} not found: run the prepare stage first")
    with np.load(path) as data:
        return data["x"].astype(np.float32), data["y"].astype(np.int64)


def load_meta(features_dir: Path) -> dict:
    path = features_dir / "meta.json"
    if not path.is_file():
        raise DatasetError(f"{path} not found: run the prepare stage first")
    return json.loads(path.read_text())


def spec_augment(fill: np.ndarray, time_masks: int, time_mask_max: int, freq_masks: int, freq_mask_max: int):
    """A tf.data map masking random frame and coefficient bands with ``fill`` (the training
    mean per coefficient, i.e. zero after the model's normalization layer)."""
    import tensorflow as tf

    fill = tf.constant(fill.reshape(1, -1, 1), tf.float32)

    def band(size: int, max_width: int):
        width = tf.random.uniform([], 0, max_width + 1, tf.int32)
        start = tf.random.uniform([], 0, tf.maximum(size - width, 0) + 1, tf.int32)
        idx = tf.range(size)
        return (idx >= start) & (idx < start + width)

    def apply(x, y):
        frames, coeffs = x.shape[0], x.shape[1]
        for _ in range(time_masks):
            x = tf.where(band(frames, time_mask_max)[:, None, None], fill, x)
        for _ in range(freq_masks):
            x = tf.where(band(coeffs, freq_mask_max)[None, :, None], fill, x)
        return x, y

    return apply


class _MLflowEpochLogger:
    """Keras callback factory: logs every epoch's metrics (and learning rate) to the active run."""

    @staticmethod
    def make():
        import keras
        import mlflow

        class Logger(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                logs = dict(logs or {})
                mlflow.log_metrics({k: float(v) for k, v in logs.items()}, step=epoch)

        return Logger()


def train(cfg, features_dir: Path, model_dir: Path, reports_dir: Path) -> dict:
    import keras
    import mlflow
    import tensorflow as tf
    from mlflow.models import infer_signature

    from kws import plots, tracking
    from kws.bundle import write_bundle
    from kws.models import build_model

    meta = load_meta(features_dir)
    labels = meta["labels"]
    features = FeatureConfig.from_dict(meta["features"])
    x_train, y_train = load_split(features_dir, "train")
    x_val, y_val = load_split(features_dir, "validation")
    keras.utils.set_random_seed(int(cfg.seed))

    model = build_model(cfg.model, features.shape, len(labels), x_train)
    t = cfg.train
    model.compile(
        optimizer=keras.optimizers.Adam(float(t.learning_rate)),
        loss=keras.losses.SparseCategoricalCrossentropy(),
        metrics=["accuracy"],
    )
    fill = np.asarray(model.get_layer("mfcc_norm").mean).reshape(-1)
    sa = t.spec_augment
    train_ds = (
        tf.data.Dataset.from_tensor_slices((x_train[..., None], y_train))
        .shuffle(len(y_train), seed=int(cfg.seed), reshuffle_each_iteration=True)
        .map(spec_augment(fill, sa.time_masks, sa.time_mask_max, sa.freq_masks, sa.freq_mask_max),
             num_parallel_calls=tf.data.AUTOTUNE)
        .batch(int(t.batch_size))
        .prefetch(tf.data.AUTOTUNE)
    )
    val_ds = tf.data.Dataset.from_tensor_slices((x_val[..., None], y_val)).batch(256)

    tracking.setup(cfg.mlflow.experiment)
    with mlflow.start_run(run_name=f"{cfg.model.name}") as run:
        mlflow.log_params(flatten(cfg))
        mlflow.set_tags({
            "kws.stage": "train", "kws.model": cfg.model.name, "kws.task": meta["task"],
            "kws.dataset": cfg.data.name, "kws.dataset_sha256": str(meta.get("source", {}).get("sha256")),
        })
        mlflow.log_dict({"labels": labels}, "labels.json")
        mlflow.log_dict(features.to_dict(), "features.json")
        mlflow.log_dict(meta["counts"], "dataset_counts.json")
        mlflow.log_metric("params_count", model.count_params())
        started = time.perf_counter()
        history = model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=int(t.epochs),
            shuffle=False,  # train_ds reshuffles itself every epoch (seeded)
            verbose=2,
            callbacks=[
                keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max",
                                              patience=int(t.early_stopping_patience), restore_best_weights=True),
                keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2, min_lr=1e-5),
                _MLflowEpochLogger.make(),
            ],
        ).history
        seconds = time.perf_counter() - started
        epochs_run = len(history["loss"])
        best = int(np.argmax(history["val_accuracy"]))
        summary = {
            "best_epoch": best + 1, "epochs_run": epochs_run,
            "val_accuracy": float(history["val_accuracy"][best]), "val_loss": float(history["val_loss"][best]),
            "train_seconds": seconds, "seconds_per_epoch": seconds / max(epochs_run, 1),
            "params_count": int(model.count_params()),
        }
        mlflow.log_metrics({f"best_{k}": v for k, v in summary.items()})

        reports_dir.mkdir(parents=True, exist_ok=True)
        keys = [k for k in history if k != "learning_rate"] + (["learning_rate"] if "learning_rate" in history else [])
        with open(reports_dir / "history.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["epoch", *keys])
            for i in range(epochs_run):
                writer.writerow([i + 1, *(float(history[k][i]) for k in keys)])
        curves = plots.training_curves(history, reports_dir / "training_curves.png")
        mlflow.log_artifact(str(curves), "plots")

        example = x_val[:1, ..., None]
        info = mlflow.tensorflow.log_model(
            model, name="model",
            signature=infer_signature(example, model.predict(example, verbose=0)),
            input_example=example,
        )
        run_info = {
            "run_id": run.info.run_id, "experiment_id": run.info.experiment_id,
            "model_uri": info.model_uri, "architecture": cfg.model.name,
        }
        write_bundle(model_dir, model, labels, features, metrics=summary,
                     info={**run_info, "dataset": cfg.data.name, "task": meta["task"]})
        (model_dir / tracking.RUN_FILE).write_text(json.dumps(run_info, indent=2) + "\n")
    log.info("trained %s: best val_accuracy %.4f at epoch %d (%.1f s/epoch); run %s",
             cfg.model.name, summary["val_accuracy"], summary["best_epoch"], summary["seconds_per_epoch"],
             run_info["run_id"])
    return summary


def main(argv: list[str] | None = None) -> int:
    from kws.cli import stage_cli

    return stage_cli("kws-train", __doc__.splitlines()[0],
                     lambda cfg: train(cfg, Path(cfg.paths.features), Path(cfg.paths.model), Path(cfg.paths.reports) / "train"), argv)


if __name__ == "__main__":
    raise SystemExit(main())
