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
all decide with it. ``train.ensemble_seeds`` trains the recipe again from each of those training
seeds on the same features and exports the mean of the models' probabilities as one model
(:mod:`kws.training.ensemble`); history.csv and the curves are the first model's, the MLflow
metrics of the others carry ``member1_``, ``member2_``... The work itself is :mod:`kws.training`'s;
this module puts it in order.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from kws.training import callbacks, data, distribute, ensemble, export, fit, settings

log = logging.getLogger(__name__)


def _seed(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and TensorFlow; with ``train.deterministic`` (default) op determinism too."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    if deterministic:
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


@dataclass
class _Run:
    """What every member of a run shares: the settings, devices, splits and step counts."""

    cfg: object
    checked: settings.Settings
    devices: distribute.Devices
    splits: data.Splits
    words: list[str]
    fold: object  # the training head's labels -> the task's labels
    offsets: dict[str, float]
    training: dict
    steps: int
    full_steps: int


def _fit_member(r: _Run, seed: int, member: str, run) -> tuple[object, dict, dict]:
    """One model from its training seed: built, fitted, exported (offsets in, unknown words folded):
    ``(exported model, history, summary)``. ``member``: "" for the first, ``member1``... after it."""
    import keras

    t, n_classes = r.cfg.train, len(r.fold)
    keras.backend.clear_session()  # every member starts as a run of its own would (names, seed state)
    _seed(seed, bool(t.get("deterministic", True)))
    model, schedule = fit.compiled_model(r.cfg, r.devices, r.splits.features.shape, n_classes, r.splits.x_train,
                                         r.steps, r.checked.ema_momentum, r.fold if r.words else None)
    train_ds, val_ds = data.datasets(t, r.splits, n_classes, fit.normalization_mean(model),
                                     r.training["global_batch_size"], seed, bounded=r.steps < r.full_steps,
                                     multi_worker=r.devices.kind == "multi_worker")
    fit_callbacks = callbacks.callbacks(t, r.checked.keep_weights, r.checked.ema_momentum, r.steps, r.devices.chief,
                                        schedule, member)
    if run is not None and not member:
        export.log_start(r.cfg, r.splits.meta, r.training, model, r.splits.features)
    history, summary = fit.fit(model, r.devices, train_ds, val_ds, int(t.epochs),
                               r.steps if r.steps < r.full_steps else None, fit_callbacks, r.checked.keep_weights)
    if run is not None:
        export.log_summary(summary, member)
    exported = export.exported_model(model, lambda: fit.build(r.cfg, r.splits.features.shape, n_classes),
                                     r.devices.kind != "none" or r.devices.mixed, r.offsets, r.splits.labels,
                                     r.fold, r.words)
    log.info("trained %s%s (seed %d): kept the weights of epoch %d (train.keep_weights=%s), val_accuracy %.4f; "
             "best epoch %d (%.1f s/epoch)", r.cfg.model.name, f" {member}" if member else "", seed,
             summary["kept_epoch"], r.checked.keep_weights, summary["val_accuracy"], summary["best_epoch"],
             summary["seconds_per_epoch"])
    return exported, history, summary


def train(cfg, features_dir: Path, model_dir: Path, reports_dir: Path) -> dict:
    t = cfg.train
    checked = settings.check(cfg)  # every invalid setting fails before TensorFlow is loaded
    seeds = checked.seeds
    distribute.split_cpu()  # before anything initializes TensorFlow's devices
    devices = distribute.devices(checked.distribute, checked.mixed_precision)
    splits = data.load(t, features_dir)
    offsets = settings.logit_offsets(t, splits.labels)
    words, fold = data.unknown_words(splits, features_dir, bool(t.get("unknown_by_word", False)))
    training = _devices_info(devices, int(t.batch_size), words) | {"seeds": seeds}
    full_steps = -(-splits.n_train // training["global_batch_size"])
    steps = settings.bounded_steps(t, full_steps)  # the learning-rate schedule counts these steps
    training["steps_per_epoch"] = steps
    if steps < full_steps:
        log.info("train.steps_per_epoch=%d: %d of the %d steps of a whole epoch per epoch", steps, steps, full_steps)
    r = _Run(cfg, checked, devices, splits, words, fold, offsets, training, steps, full_steps)

    with export.outputs(cfg, devices.chief, model_dir, reports_dir) as (run, model_dir, reports_dir):
        members = [_fit_member(r, seed, f"member{i}" if i else "", run) for i, seed in enumerate(seeds)]
        _, history, summary = members[0]  # history.csv, the curves and best_* are the first member's
        curves = export.write_history(history, reports_dir)
        final = ensemble.averaged([m for m, _, _ in members])
        if len(members) > 1:
            summary = ensemble.summary(final, [s for _, _, s in members], splits)
            log.info("seed ensemble of %d (seeds %s): val_accuracy %.4f (members %s)", len(seeds), seeds,
                     summary["val_accuracy"], ", ".join(f"{s:.4f}" for s in summary["member_val_accuracy"]))
            if run is not None:
                export.log_ensemble(summary)
        run_info = export.write_model(cfg, run, final, splits.x_val[:1, ..., None], curves, model_dir, splits,
                                      summary, training, offsets)
    log.info("trained %s: run %s", cfg.model.name if len(seeds) == 1 else f"an ensemble of {len(seeds)} {cfg.model.name}",
             run_info["run_id"])
    return summary


def main(argv: list[str] | None = None) -> int:
    from kws.cli import stage_cli

    return stage_cli("kws-train", __doc__.splitlines()[0],
                     lambda cfg: train(cfg, Path(cfg.paths.features), Path(cfg.paths.model), Path(cfg.paths.reports) / "train"), argv)


if __name__ == "__main__":
    raise SystemExit(main())
