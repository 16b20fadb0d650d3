"""The models of a run, each trained from its seed on the same features: one after another in this
process, or (a seed ensemble on CPUs, ``trainer.parallel_models``) side by side, each in a
process of its own.

Why processes: the models are small, and TensorFlow's thread pool cannot keep two cores busy
with one model's convolutions; one model per core, each on one thread (``trainer.threads``),
trains an ensemble in about half the time on two cores (``benchmarks/bench_parallel.py``). A
worker process trains exactly what this process would at the same thread count, so the weights
do not depend on how many run at once (tests/test_parallel_models.py). The workers write each
exported model and its history to a scratch folder; this process logs them to the run's MLflow
run and averages them, as if it had trained them itself.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from kws.training import callbacks, data, distribute, export, fit, settings

log = logging.getLogger(__name__)


@dataclass
class Run:
    """What every model of a run shares: the settings, devices, splits and step counts."""

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
    features_dir: Path
    in_worker: bool = False  # a worker process: no MLflow, no progress bar (its log lines still go out)


def seed(value: int, deterministic: bool) -> None:
    """Seed Python, NumPy and TensorFlow; with ``train.deterministic`` (default) op determinism too."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(value)
    if deterministic:
        # Seeds alone do not repeat a run: parallel tf.data maps draw SpecAugment's random masks in
        # whatever order their threads run, and some kernels reduce in thread order. With this, the
        # same config, data and thread count give the same weights (process-wide, and it cannot be
        # switched off).
        tf.config.experimental.enable_op_determinism()


def devices_info(devices: distribute.Devices, batch_per_replica: int, words: list[str], threads: int | None) -> dict:
    """``model_info.json``'s ``training`` (and MLflow's ``training_devices.json``)."""
    return {
        "distribute": devices.kind, "strategy": distribute.STRATEGY_NAMES[devices.kind],
        "replicas": devices.replicas, "devices": devices.names(), "gpus": [d.name for d in devices.gpus],
        "precision": "mixed_float16" if devices.mixed else "float32", "threads": threads,
        "batch_size_per_replica": batch_per_replica, "global_batch_size": batch_per_replica * devices.replicas,
        "chief": devices.chief, "unknown_words": words,
    }


def prepare(cfg, features_dir: Path, in_worker: bool = False) -> Run:
    """Everything a run's models share, checked and loaded (settings before TensorFlow)."""
    t = cfg.train
    checked = settings.check(cfg)  # every invalid setting fails before TensorFlow is loaded
    distribute.split_cpu()  # before anything initializes TensorFlow's devices
    distribute.set_threads(checked.threads)
    devices = distribute.devices(checked.distribute, checked.mixed_precision)
    splits = data.load(t, features_dir)
    offsets = settings.logit_offsets(t, splits.labels)
    words, fold = data.unknown_words(splits, features_dir, bool(t.get("unknown_by_word", False)))
    training = devices_info(devices, int(t.batch_size), words, checked.threads) | {"seeds": checked.seeds}
    full_steps = -(-splits.n_train // training["global_batch_size"])
    steps = settings.bounded_steps(t, full_steps)  # the learning-rate schedule counts these steps
    training["steps_per_epoch"] = steps
    if not in_worker:
        log.info("training devices: %d GPU(s) visible %s; trainer.distribute=%s: %s with %d replica(s) in sync on "
                 "%s; %s; %s thread(s); global batch %d (%d per replica)", len(devices.gpus), training["gpus"],
                 devices.kind, training["strategy"], devices.replicas, training["devices"], training["precision"],
                 checked.threads or "every core's", training["global_batch_size"], int(t.batch_size))
        if steps < full_steps:
            log.info("train.steps_per_epoch=%d: %d of the %d steps of a whole epoch per epoch", steps, steps, full_steps)
    return Run(cfg, checked, devices, splits, words, fold, offsets, training, steps, full_steps, features_dir, in_worker)


def member_name(index: int) -> str:
    """The MLflow prefix of the ``index``-th model: "" for the first, ``member1``... after it."""
    return f"member{index}" if index else ""


def fit_member(r: Run, value: int, member: str, run, progress: Path | None = None) -> tuple[object, dict, dict]:
    """One model from its training seed: built, fitted, exported (offsets in, unknown words folded):
    ``(exported model, history, summary)``. ``progress``: a file that holds the epochs done (a worker's)."""
    import keras

    t, n_classes = r.cfg.train, len(r.fold)
    keras.backend.clear_session()  # every member starts as a run of its own would (names, seed state)
    seed(value, bool(t.get("deterministic", True)))
    model, schedule = fit.compiled_model(r.cfg, r.devices, r.splits.features.shape, n_classes, r.splits.x_train,
                                         r.steps, r.checked.ema_momentum, r.fold if r.words else None)
    train_ds, val_ds = data.datasets(t, r.splits, n_classes, fit.normalization_mean(model),
                                     r.training["global_batch_size"], value, bounded=r.steps < r.full_steps,
                                     multi_worker=r.devices.kind == "multi_worker")
    fit_callbacks = callbacks.callbacks(t, r.checked.keep_weights, r.checked.ema_momentum, r.steps,
                                        r.devices.chief and not r.in_worker, schedule, member)
    if progress is not None:
        fit_callbacks.append(_epochs_to(progress))
    if run is not None and not member:
        export.log_start(r.cfg, r.splits.meta, r.training, model.count_params(), r.splits.features)
    history, summary = fit.fit(model, r.devices, train_ds, val_ds, int(t.epochs),
                               r.steps if r.steps < r.full_steps else None, fit_callbacks, r.checked.keep_weights)
    if run is not None:
        export.log_summary(summary, member)
    exported = export.exported_model(model, lambda: fit.build(r.cfg, r.splits.features.shape, n_classes),
                                     r.devices.kind != "none" or r.devices.mixed, r.offsets, r.splits.labels,
                                     r.fold, r.words)
    log.info("trained %s%s (seed %d): kept the weights of epoch %d (train.keep_weights=%s), val_accuracy %.4f; "
             "best epoch %d (%.1f s/epoch)", r.cfg.model.name, f" {member}" if member else "", value,
             summary["kept_epoch"], r.checked.keep_weights, summary["val_accuracy"], summary["best_epoch"],
             summary["seconds_per_epoch"])
    return exported, {k: [float(v) for v in vs] for k, vs in history.items()}, summary


#: a worker's memory besides the features: TensorFlow, the model, its optimizer
WORKER_BASE_BYTES = 1_200_000_000
#: a worker's peak in copies of the features: its own, TensorFlow's, and the normalization's
#: passes over them (benchmarks/bench_train_memory.py: ~3.8 GB a worker on 0.95 GB of features)
WORKER_FEATURE_COPIES = 3


def processes(r: Run) -> int:
    """How many of the run's models train at once (:func:`models_at_once`)."""
    return models_at_once(r.checked, len(r.checked.seeds), bool(r.devices.gpus), Path(r.features_dir))


def models_at_once(checked: settings.Settings, models: int, gpu: bool, features_dir: Path) -> int:
    """``trainer.parallel_models``, or (auto) one per ``trainer.threads`` of this machine's usable
    cores on CPUs, one where there is a GPU, and no more than the available memory holds (each
    worker loads the features and copies them); never more than ``models``."""
    n = checked.parallel_models
    if n is None:
        cores = len(os.sched_getaffinity(0))
        n = 1 if gpu else cores // (checked.threads or cores)
        features = sum(f.stat().st_size for f in features_dir.glob("*.npz"))
        available = available_memory()
        fits = available // (WORKER_BASE_BYTES + WORKER_FEATURE_COPIES * features)
        if fits < n:
            log.info("trainer.parallel_models=auto: %d at a time, as many as %.1f GB of available memory hold",
                     max(1, fits), available / 1e9)
            n = fits
    return max(1, min(n, models))


def available_memory() -> int:
    """The kernel's estimate of the memory available to new processes (bytes)."""
    import psutil

    return int(psutil.virtual_memory().available)


def fit_all(r: Run, run) -> list[tuple[object, dict, dict]]:
    """Every model of the run, in seed order: ``[(exported model, history, summary)]``."""
    n = processes(r)
    if n == 1:
        return [fit_member(r, s, member_name(i), run) for i, s in enumerate(r.checked.seeds)]
    return _fit_in_processes(r, n, run)


def _fit_in_processes(r: Run, n: int, run) -> list[tuple[object, dict, dict]]:
    import keras
    from omegaconf import OmegaConf

    from kws.workers import start_process

    seeds = list(enumerate(r.checked.seeds))
    jobs = [seeds[k::n] for k in range(n)]
    log.info("training %d models %d at a time (trainer.parallel_models), each in a process of its own on %s "
             "thread(s)", len(seeds), n, r.checked.threads or "every core's")
    if run is not None:
        params = fit.build(r.cfg, r.splits.features.shape, len(r.fold)).count_params()
        export.log_start(r.cfg, r.splits.meta, r.training, params, r.splits.features)
    config = OmegaConf.to_container(r.cfg, resolve=True)
    with tempfile.TemporaryDirectory(prefix="kws-train-models-") as scratch:
        out = Path(scratch)
        workers = [start_process(_worker, (config, str(r.features_dir), job, str(out), os.getpid())) for job in jobs]
        try:
            _wait(out, workers, jobs, int(r.cfg.train.epochs), r.devices.chief)
        except BaseException:  # Ctrl-C, SIGTERM, a worker failed: the others' training is of no use any more
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.join()
            raise
        keras.backend.clear_session()
        results = []
        for index, _ in seeds:
            result = json.loads((out / f"{index}.json").read_text())
            model = keras.models.load_model(out / f"{index}.keras", compile=False)
            if run is not None:
                _log_member(result["history"], result["summary"], member_name(index))
            results.append((model, result["history"], result["summary"]))
    return results


def _wait(out: Path, workers: list, jobs: list, epochs: int, enabled: bool) -> None:
    """Until every worker is done, with one progress bar over every model's epochs; the first
    worker to fail raises at once (:func:`_raise_failed`)."""
    from multiprocessing.connection import wait

    from tqdm import tqdm

    pending = dict(zip(workers, jobs))
    total = epochs * sum(len(job) for job in jobs)
    with tqdm(total=total, desc=f"train ({len(workers)} at a time)", unit="epoch", disable=not enabled,
              dynamic_ncols=True) as bar:
        while pending:
            ready = wait([w.sentinel for w in pending], timeout=2.0)
            bar.update(min(_epochs_done(out), total) - bar.n)
            for worker in [w for w in pending if w.sentinel in ready]:
                worker.join()
                _raise_failed(out, worker, pending.pop(worker))


def _raise_failed(out: Path, worker, job: list) -> None:
    """A worker's own error (a :class:`~kws.errors.KWSError`) again here, or one saying how it ended."""
    from kws import errors

    if worker.exitcode != 0:
        reported = out / f"error-{job[0][0]}.json"
        if reported.is_file():
            err = json.loads(reported.read_text())
            raise getattr(errors, err["type"], errors.KWSError)(err["message"])
        raise errors.KWSError(
            f"the process training models {[i for i, _ in job]} ended with exit code {worker.exitcode} (its log is "
            f"above; a negative code is the signal that ended it, e.g. -9 when out of memory): train fewer at "
            f"once with trainer.parallel_models=1")


def _log_member(history: dict, summary: dict, member: str) -> None:
    """A worker's model in this run's MLflow run, under the names training here would give it."""
    import mlflow

    from kws.cli import uninterrupted

    prefix = f"{member}_" if member else ""
    with uninterrupted():
        for epoch in range(len(history["loss"])):
            mlflow.log_metrics({prefix + k: v[epoch] for k, v in history.items()}, step=epoch)
    export.log_summary(summary, member)


def _worker(config: dict, features_dir: str, job: list[tuple[int, int]], out_dir: str, parent: int) -> None:
    """A worker process: train ``job``'s models (index, seed), write each one and its history."""
    from omegaconf import OmegaConf

    from kws.errors import KWSError
    from kws.logs import setup_logging

    setup_logging()
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()
    out = Path(out_dir)
    try:
        r = prepare(OmegaConf.create(config), Path(features_dir), in_worker=True)
        for index, value in job:
            model, history, summary = fit_member(r, value, member_name(index), None, out / f"{index}.epochs")
            model.save(out / f"{index}.keras")
            (out / f"{index}.json").write_text(json.dumps({"history": history, "summary": summary}) + "\n")
    except KWSError as err:
        (out / f"error-{job[0][0]}.json").write_text(json.dumps({"type": type(err).__name__, "message": str(err)}))
        raise SystemExit(1) from None


def _epochs_to(path: Path):
    """A Keras callback: the epochs done so far, written to ``path`` (this process's bar reads it)."""
    import keras

    class Epochs(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            path.write_text(str(epoch + 1))

    return Epochs()


def _epochs_done(out: Path) -> int:
    done = 0
    for f in out.glob("*.epochs"):
        try:
            done += int(f.read_text() or 0)
        except (OSError, ValueError):  # being written
            pass
    return done


def _exit_with(parent: int) -> None:
    """A worker whose parent is gone (killed outright) stops too, instead of training for no one."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)
