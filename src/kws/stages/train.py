"""DVC stage `train`: features -> Keras model, tracked in MLflow.

SpecAugment-style time/coefficient masking and optional mixup on the fly, label smoothing,
per-example weights (extra training sources), a plateau or cosine learning-rate schedule, early
stopping on validation accuracy with the best (or last) weights kept, seeded and deterministic.
MLflow gets every resolved parameter, per-epoch metrics, the model (with signature and input
example), the label map, the feature config and a training-curves plot. ``train.steps_per_epoch``
(null: the whole training split) bounds the steps of each epoch, for benchmarks and smoke runs.
The run id goes to ``<model dir>/run.json`` so evaluate and promote log into the same run.

Hardware is the ``trainer`` config group, apart from the recipe: ``trainer=cpu`` (default: one
device, float32), ``gpu`` (mixed precision), ``mirrored`` (every GPU of this machine) or
``multi_worker`` (a ``TF_CONFIG`` cluster); see :mod:`kws.training.distribute`. The global batch
is ``train.batch_size`` x replicas in sync. ``train.logit_offsets`` (label -> number) is added to
those labels' logits in the exported model, so the service, ``kws-score``, evaluate and promote
all decide with it. The work itself is :mod:`kws.training`'s; this module puts it in order.
"""

from __future__ import annotations

import logging
from pathlib import Path

from kws.training import callbacks, data, distribute, export, fit, settings

log = logging.getLogger(__name__)


def _seed(cfg) -> None:
    """Seed Python, NumPy and TensorFlow; with ``train.deterministic`` (default) op determinism too."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(int(cfg.seed))
    if bool(cfg.train.get("deterministic", True)):
        # Seeds alone do not repeat a run: parallel tf.data maps draw SpecAugment's random masks in
        # whatever order their threads run, and some kernels reduce in thread order. With this, the
        # same config and data give the same weights (process-wide, and it cannot be switched off).
        tf.config.experimental.enable_op_determinism()


def _devices_info(devices: distribute.Devices, batch_per_replica: int, words: list[str]) -> dict:
    """``model_info.json``'s ``training`` (and MLflow's ``training_devices.json``)."""
    info = {
        "distribute": devices.kind, "strategy": distribute.STRATEGY_NAMES[devices.kind],
        "replicas": devices.replicas, "devices": devices.names(), "gpus": [d.name for d in devices.gpus],
        "precision": "mixed_float16" if devices.mixed else "float32",
        "batch_size_per_replica": batch_per_replica, "global_batch_size": batch_per_replica * devices.replicas,
        "chief": devices.chief, "unknown_words": words,
    }
    log.info("training devices: %d GPU(s) visible %s; trainer.distribute=%s: %s with %d replica(s) in sync on %s; "
             "%s; global batch %d (%d per replica)", len(devices.gpus), info["gpus"], devices.kind, info["strategy"],
             devices.replicas, info["devices"], info["precision"], info["global_batch_size"], batch_per_replica)
    return info


def train(cfg, features_dir: Path, model_dir: Path, reports_dir: Path) -> dict:
    t = cfg.train
    checked = settings.check(cfg)  # every invalid setting fails before TensorFlow is loaded
    distribute.split_cpu()  # before anything initializes TensorFlow's devices
    devices = distribute.devices(checked.distribute, checked.mixed_precision)
    splits = data.load(t, features_dir)
    offsets = settings.logit_offsets(t, splits.labels)
    _seed(cfg)
    words, fold = data.unknown_words(splits, features_dir, bool(t.get("unknown_by_word", False)))
    n_classes = len(fold)  # the training head: the task's labels + one class per unknown word
    training = _devices_info(devices, int(t.batch_size), words)
    batch = training["global_batch_size"]

    full_steps = -(-splits.n_train // batch)
    steps = settings.bounded_steps(t, full_steps)  # the learning-rate schedule counts these steps
    training["steps_per_epoch"] = steps
    if steps < full_steps:
        log.info("train.steps_per_epoch=%d: %d of the %d steps of a whole epoch per epoch", steps, steps, full_steps)
    model, schedule = fit.compiled_model(cfg, devices, splits.features.shape, n_classes, splits.x_train, steps,
                                         checked.ema_momentum, fold if words else None)
    train_ds, val_ds = data.datasets(t, splits, n_classes, fit.normalization_mean(model), batch, int(cfg.seed),
                                     bounded=steps < full_steps, multi_worker=devices.kind == "multi_worker")
    fit_callbacks = callbacks.callbacks(t, checked.keep_weights, checked.ema_momentum, steps, devices.chief, schedule)

    with export.outputs(cfg, devices.chief, model_dir, reports_dir) as (run, model_dir, reports_dir):
        if run is not None:
            export.log_start(cfg, splits.meta, training, model, splits.features)
        history, summary = fit.fit(model, devices, train_ds, val_ds, int(t.epochs),
                                   steps if steps < full_steps else None, fit_callbacks, checked.keep_weights)
        if run is not None:
            export.log_summary(summary)
        curves = export.write_history(history, reports_dir)
        final = export.exported_model(model, lambda: fit.build(cfg, splits.features.shape, n_classes),
                                      devices.kind != "none" or devices.mixed, offsets, splits.labels, fold, words)
        run_info = export.write_model(cfg, run, final, splits.x_val[:1, ..., None], curves, model_dir, splits,
                                      summary, training, offsets)
    log.info("trained %s: kept the weights of epoch %d (train.keep_weights=%s), val_accuracy %.4f; best epoch %d "
             "(%.1f s/epoch); run %s", cfg.model.name, summary["kept_epoch"], checked.keep_weights,
             summary["val_accuracy"], summary["best_epoch"], summary["seconds_per_epoch"], run_info["run_id"])
    return summary


def main(argv: list[str] | None = None) -> int:
    from kws.cli import stage_cli

    return stage_cli("kws-train", __doc__.splitlines()[0],
                     lambda cfg: train(cfg, Path(cfg.paths.features), Path(cfg.paths.model), Path(cfg.paths.reports) / "train"), argv)


if __name__ == "__main__":
    raise SystemExit(main())
