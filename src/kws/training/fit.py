"""The model a run trains and ``fit`` itself: built and compiled under the strategy's scope (and
``mixed_float16`` when on), then fitted; the summary says which epoch's weights it kept."""

from __future__ import annotations

import contextlib
import time

import numpy as np

from kws.training.distribute import Devices, float32_head, keras_multi_worker_fixes
from kws.training.heads import folded_accuracy
from kws.training.settings import learning_rate


def compiled_model(cfg, devices: Devices, input_shape, n_classes: int, x_train: np.ndarray, steps: int,
                   ema: float | None, fold: np.ndarray | None):
    """``(model, learning-rate schedule)``: the model of ``cfg.model``, its input normalization
    adapted on ``x_train``, compiled with Adam (``train.ema_momentum``: with a weight average),
    label smoothing and the accuracy of the task's labels (``fold``: the head has one class per
    unknown word, and an unknown word for another is not an error)."""
    import keras

    from kws.models import build_model

    t = cfg.train
    previous_policy = keras.mixed_precision.global_policy()
    if devices.mixed:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with devices.strategy.scope():  # variables (model, optimizer, metrics) mirrored over the replicas
            model = build_model(cfg.model, input_shape, n_classes, x_train)
            if devices.mixed:
                model = float32_head(model)
            schedule = learning_rate(t, steps)
            model.compile(  # under mixed_float16 Keras wraps the optimizer in a LossScaleOptimizer
                optimizer=keras.optimizers.Adam(schedule, use_ema=ema is not None, ema_momentum=ema or 0.99),
                loss=keras.losses.CategoricalCrossentropy(label_smoothing=float(t.get("label_smoothing", 0.0))),
                metrics=[folded_accuracy(fold) if fold is not None else keras.metrics.CategoricalAccuracy(name="accuracy")],
                weighted_metrics=[],
            )
    finally:  # the layers keep their policy; later layers (the exported copy) are float32
        keras.mixed_precision.set_global_policy(previous_policy)
    return model, schedule


def fit(model, devices: Devices, train_ds, val_ds, epochs: int, steps: int | None, callbacks: list,
        keep: str) -> tuple[dict, dict]:
    """``(history, summary)`` of ``model.fit``; ``steps``: bounded epochs (None: whole ones)."""
    started = time.perf_counter()
    fixes = keras_multi_worker_fixes(model, devices.strategy) if devices.kind == "multi_worker" else contextlib.nullcontext()
    with fixes:
        history = model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=epochs,
            steps_per_epoch=steps,
            shuffle=False,  # train_ds reshuffles itself every epoch (seeded)
            verbose=0,  # callbacks.progress: one bar with an ETA, one log line per epoch
            callbacks=callbacks,
        ).history
    seconds = time.perf_counter() - started
    epochs_run = len(history["loss"])
    best = int(np.argmax(history["val_accuracy"]))
    kept = best if keep == "best_val" else epochs_run - 1  # the weights the model leaves with
    summary = {
        "best_epoch": best + 1, "epochs_run": epochs_run, "kept_epoch": kept + 1,
        "val_accuracy": float(history["val_accuracy"][kept]), "val_loss": float(history["val_loss"][kept]),
        "train_seconds": seconds, "seconds_per_epoch": seconds / max(epochs_run, 1),
        "params_count": int(model.count_params()),
    }
    return history, summary


def build(cfg, input_shape, n_classes: int):
    """A fresh float32 model of ``cfg.model`` (for the exported copy: outside any strategy)."""
    from kws.models import build_model

    return build_model(cfg.model, input_shape, n_classes)


def normalization_mean(model) -> np.ndarray:
    """The training mean per coefficient (the adapted normalization's): what SpecAugment masks
    with, i.e. zero after normalization."""
    from kws.models import NORM_LAYER

    return np.asarray(model.get_layer(NORM_LAYER).mean, np.float32).reshape(-1)
