"""DVC stage `train`: features -> Keras model, tracked in MLflow.

SpecAugment-style time/coefficient masking and optional mixup on the fly, label
smoothing, per-example weights (extra training sources), a plateau or cosine learning-rate
schedule, early stopping on validation accuracy with the best weights restored, seeded. MLflow gets every resolved parameter,
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


def load_split(features_dir: Path, split: str, weights: bool = False):
    """``(x, y)`` of a split (``(x, y, w)`` with ``weights``: per-example weights, 1 when absent)."""
    path = features_dir / f"{split}.npz"
    if not path.is_file():
        raise DatasetError(f"{path} not found: run the prepare stage first")
    with np.load(path) as data:
        x, y = data["x"].astype(np.float32), data["y"].astype(np.int64)
        if not weights:
            return x, y
        w = data["w"].astype(np.float32) if "w" in data.files else np.ones(len(y), np.float32)
        return x, y, w


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

    def apply(x, y, w):
        frames, coeffs = x.shape[0], x.shape[1]
        for _ in range(time_masks):
            x = tf.where(band(frames, time_mask_max)[:, None, None], fill, x)
        for _ in range(freq_masks):
            x = tf.where(band(coeffs, freq_mask_max)[None, :, None], fill, x)
        return x, y, w

    return apply


def mixup(alpha: float):
    """A tf.data map over BATCHES: mix every example with another of the batch, weight
    ``lam ~ Beta(alpha, alpha)``, features, one-hot labels and sample weights alike."""
    import tensorflow as tf

    def apply(x, y, w):
        n = tf.shape(x)[0]
        g1, g2 = tf.random.gamma([n], alpha), tf.random.gamma([n], alpha)
        lam = g1 / (g1 + g2)
        perm = tf.random.shuffle(tf.range(n))
        mix = lambda a, r: lam[(...,) + (None,) * r] * a + (1 - lam[(...,) + (None,) * r]) * tf.gather(a, perm)  # noqa: E731
        return mix(x, 3), mix(y, 1), mix(w, 0)

    return apply


def learning_rate(t, steps_per_epoch: int):
    """``train.lr_schedule``: ``plateau`` (a constant, halved by a callback on a val-loss
    plateau) or ``cosine`` (linear warm-up for one epoch, cosine decay to 1 % over all epochs)."""
    import keras

    lr = float(t.learning_rate)
    kind = str(t.get("lr_schedule", "plateau"))
    if kind == "plateau":
        return lr
    if kind == "cosine":
        total = max(1, int(t.epochs) * steps_per_epoch)
        warmup = min(steps_per_epoch, total // 2)
        return keras.optimizers.schedules.CosineDecay(lr * 0.1, total - warmup, alpha=0.01,
                                                      warmup_target=lr, warmup_steps=warmup)
    from kws.errors import ConfigError

    raise ConfigError(f"unknown train.lr_schedule {kind!r}: use plateau or cosine")


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
    x_train, y_train, w_train = load_split(features_dir, "train", weights=True)
    x_val, y_val = load_split(features_dir, "validation")
    t = cfg.train
    for label, factor in (t.get("class_weights") or {}).items():  # e.g. {_unknown_: 2}: class balancing
        if label not in labels:
            from kws.errors import ConfigError

            raise ConfigError(f"train.class_weights names {label!r}, not one of the task's labels {labels}")
        w_train = np.where(y_train == labels.index(label), w_train * float(factor), w_train).astype(np.float32)
    keras.utils.set_random_seed(int(cfg.seed))
    n_classes = len(labels)

    model = build_model(cfg.model, features.shape, n_classes, x_train)
    batch = int(t.batch_size)
    steps = -(-len(y_train) // batch)
    schedule = learning_rate(t, steps)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.CategoricalCrossentropy(label_smoothing=float(t.get("label_smoothing", 0.0))),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        weighted_metrics=[],
    )
    fill = np.asarray(model.get_layer("mfcc_norm").mean).reshape(-1)
    sa = t.spec_augment
    one_hot = lambda x, y, w: (x, tf.one_hot(y, n_classes), w)  # noqa: E731
    train_ds = (
        tf.data.Dataset.from_tensor_slices((x_train[..., None], y_train, w_train))
        .shuffle(len(y_train), seed=int(cfg.seed), reshuffle_each_iteration=True)
        .map(spec_augment(fill, sa.time_masks, sa.time_mask_max, sa.freq_masks, sa.freq_mask_max),
             num_parallel_calls=tf.data.AUTOTUNE)
        .batch(batch)
        .map(one_hot)
    )
    if float(t.get("mixup_alpha", 0.0)) > 0:
        train_ds = train_ds.map(mixup(float(t.mixup_alpha)))
    train_ds = train_ds.prefetch(tf.data.AUTOTUNE)
    val_ds = tf.data.Dataset.from_tensor_slices((x_val[..., None], tf.one_hot(y_val, n_classes))).batch(256)
    callbacks = [
        keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max",
                                      patience=int(t.early_stopping_patience), restore_best_weights=True),
        _MLflowEpochLogger.make(),
    ]
    if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2, min_lr=1e-5))

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
            callbacks=callbacks,
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
