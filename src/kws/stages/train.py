"""DVC stage `train`: features -> Keras model, tracked in MLflow.

SpecAugment-style time/coefficient masking and optional mixup on the fly, label
smoothing, per-example weights (extra training sources), a plateau or cosine learning-rate
schedule, early stopping on validation accuracy with the best weights restored, seeded. MLflow gets every resolved parameter,
per-epoch metrics, the model (with signature and input example), the label map, the
feature config and a training-curves plot. ``train.steps_per_epoch`` (null: the whole training
split) bounds the steps of each epoch, for benchmarks and smoke runs; the cosine schedule then
decays over the bounded steps. The run id goes to ``<model dir>/run.json``
so evaluate and promote log into the same run.

Devices: a GPU is used when TensorFlow sees one. ``train.distribute`` picks a tf.distribute
strategy: ``none`` (one device), ``mirrored`` (every GPU of this machine; without GPUs every
logical CPU, see ``KWS_CPU_DEVICES``) or ``multi_worker`` (``MultiWorkerMirroredStrategy``,
cluster from ``TF_CONFIG``; only the chief writes the outputs and logs to MLflow). The global
batch is ``train.batch_size`` x replicas in sync. ``train.mixed_precision`` trains in
``mixed_float16`` on GPUs (softmax head in float32); the exported model is always float32.
``train.logit_offsets`` (label -> number) adds a constant to those labels' logits in the exported
model (a log-prior correction: softmax(log p + b)), so the service, ``kws-score``, evaluate and
promote all decide with it.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from kws.config import flatten
from kws.errors import ConfigError, DatasetError
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


def load_files(features_dir: Path, split: str) -> np.ndarray:
    """The ``files`` of a split: each example's clip path relative to its source (``word/clip.wav``)."""
    with np.load(features_dir / f"{split}.npz") as data:
        if "files" not in data.files:
            raise DatasetError(f"{features_dir / split}.npz has no clip paths: run the prepare stage again")
        return data["files"]


def word_targets(y: np.ndarray, files: np.ndarray, labels: list[str],
                 words: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """``train.unknown_by_word``: every ``_unknown_`` example's target becomes a class of its own
    word (``word/clip.wav``), after the task's labels: ``len(labels) + words.index(word)``.
    ``words`` (None: the sorted unknown words of ``files``) is the vocabulary; an unknown example
    whose word is not in it keeps the ``_unknown_`` class (the head folds them together anyway)."""
    from kws.labels import UNKNOWN

    if UNKNOWN not in labels:
        return y, []
    unknown = y == labels.index(UNKNOWN)
    example_words = np.asarray([str(f).split("/", 1)[0] for f in files])
    if words is None:
        words = sorted(set(example_words[unknown]))
    column = {w: len(labels) + i for i, w in enumerate(words)}
    mapped = np.asarray([column.get(w, -1) for w in example_words], np.int64)
    targets = np.where(unknown & (mapped >= 0), mapped, y)
    return targets.astype(np.int64), list(words)


def fold_matrix(labels: list[str], words: list[str]) -> np.ndarray:
    """``(len(labels) + len(words), len(labels))`` 0/1: a label to itself, each unknown word to ``_unknown_``."""
    from kws.labels import UNKNOWN

    fold = np.zeros((len(labels) + len(words), len(labels)), np.float32)
    fold[np.arange(len(labels)), np.arange(len(labels))] = 1.0
    if words:
        fold[len(labels):, labels.index(UNKNOWN)] = 1.0
    return fold


def folded_accuracy(fold: np.ndarray):
    """Keras metric ``accuracy`` of the task's labels when the head has one class per unknown word."""
    import keras
    import tensorflow as tf

    matrix = tf.constant(fold)

    def accuracy(y_true, y_pred):
        true = tf.argmax(tf.matmul(tf.cast(y_true, tf.float32), matrix), axis=-1)
        pred = tf.argmax(tf.matmul(tf.cast(y_pred, tf.float32), matrix), axis=-1)
        return tf.cast(tf.equal(true, pred), tf.float32)

    return keras.metrics.MeanMetricWrapper(accuracy, name="accuracy")


def fold_head(model, fold: np.ndarray):
    """``model`` (softmax over labels + unknown words) -> the same layers plus a fixed 0/1 matrix
    that sums each unknown word's probability into ``_unknown_``: a softmax over the task's labels."""
    import keras

    layer = keras.layers.Dense(fold.shape[1], use_bias=False, trainable=False, name="unknown_words_to_unknown")
    folded = keras.Model(model.inputs, layer(model.outputs[0]), name=model.name)
    layer.set_weights([fold])
    if getattr(model, "optimizer", None) is not None:  # keep the trained optimizer (state, schedule) in model.keras
        folded.compile(optimizer=model.optimizer, loss=keras.losses.CategoricalCrossentropy(),
                       metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")])
    return folded


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


KEEP_WEIGHTS = ("best_val", "last")


def keep_weights(t) -> str:
    """``train.keep_weights``: ``best_val`` (the epoch with the best validation accuracy, restored
    at the end) or ``last`` (the weights training ends with: a cosine schedule has annealed them;
    a small validation split picks an earlier, less converged epoch by noise)."""
    keep = str(t.get("keep_weights", "best_val"))
    if keep not in KEEP_WEIGHTS:
        raise ConfigError(f"unknown train.keep_weights {keep!r}: use best_val or last")
    return keep


def ema_momentum(t) -> float | None:
    """``train.ema_momentum``: null (off) or a momentum in (0, 1). On, the optimizer keeps an
    exponential moving average of the weights (Polyak averaging: a run's last few epochs averaged,
    so a smaller draw of the weights' noise), and validation, the kept epoch and the exported model
    all use that average (Keras' ``use_ema`` with its ``SwapEMAWeights`` callback)."""
    value = t.get("ema_momentum", None)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ConfigError(f"train.ema_momentum must be null (off) or a number between 0 and 1 "
                          f"(e.g. 0.998), not {value!r}")
    return float(value)


def logit_offsets(t, labels: list[str] | None = None) -> dict[str, float]:
    """``train.logit_offsets``: null or ``{label: offset}``, checked (numbers first, the labels once
    the task's ``labels`` are known: a label of no task is an error, one of another task's labels,
    e.g. ``_unknown_`` under ``all_words``, does not apply and is left out). The exported model's
    probabilities become softmax(log p + offset): a positive offset for ``_unknown_`` answers it
    more often (fewer false accepts of other words, a few more missed keywords); training itself
    is unchanged."""
    from kws.labels import task_labels

    value = t.get("logit_offsets", None) or {}
    if not hasattr(value, "items"):
        raise ConfigError(f"train.logit_offsets must be null or a mapping label -> number "
                          f"(e.g. {{_unknown_: 0.5}}), not {value!r}")
    offsets = {}
    for label, offset in value.items():
        if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not math.isfinite(offset):
            raise ConfigError(f"train.logit_offsets.{label} must be a finite number, not {offset!r}")
        if label not in {*task_labels("keywords"), *task_labels("all_words")}:
            raise ConfigError(f"train.logit_offsets names {label!r}, which is no task's label "
                              f"(e.g. _unknown_, _silence_, yes)")
        if labels is not None and label not in labels:
            log.info("train.logit_offsets.%s left out: not a label of this task", label)
            continue
        offsets[str(label)] = float(offset)
    return offsets


def shift_logits(model, offsets: dict[str, float], labels: list[str], fold: np.ndarray) -> None:
    """Add ``offsets`` (label -> number) to the bias of ``model``'s softmax classifier, in place.
    With one class per unknown word (``fold``), each word's class gets ``_unknown_``'s offset."""
    import keras

    if not offsets:
        return
    by_label = np.asarray([offsets.get(label, 0.0) for label in labels], np.float32)
    head = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)
            and getattr(layer.activation, "__name__", "") == "softmax"]
    if not head or not head[-1].use_bias:
        raise ConfigError(f"train.logit_offsets needs a model that ends in a softmax Dense layer with a bias; "
                          f"{model.name} does not")
    kernel, bias = head[-1].get_weights()
    head[-1].set_weights([kernel, bias + fold @ by_label])
    log.info("train.logit_offsets: %s added to the exported model's logits",
             ", ".join(f"{label} {v:+g}" for label, v in offsets.items()))


def ema_callbacks(keras, momentum: float | None) -> tuple[list, list]:
    """Callbacks around early stopping for ``train.ema_momentum``: (before, after).

    Before it: ``SwapEMAWeights(swap_on_epoch=True)`` puts the average in the model for
    validation and at each epoch's end, so the best epoch early stopping records is the average's.
    After it: when early stopping ends training before the last epoch, the average is handed to
    ``fit``'s final step (which otherwise writes the raw training weights into the model)."""
    if momentum is None:
        return [], []
    swap = keras.callbacks.SwapEMAWeights(swap_on_epoch=True)

    class KeepAverageOnEarlyStop(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if self.model.stop_training and epoch < self.params["epochs"] - 1:
                swap._finalize_ema_values()  # what SwapEMAWeights does itself at the last epoch

    return [swap], [KeepAverageOnEarlyStop()]


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

        from kws.cli import uninterrupted

        class Logger(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                logs = dict(logs or {})
                with uninterrupted():  # never stopped mid-transaction: the run must still be ended
                    mlflow.log_metrics({k: float(v) for k, v in logs.items()}, step=epoch)

        return Logger()


@contextlib.contextmanager
def _killed_on_interrupt(chief: bool):
    """Ctrl-C or SIGTERM (see :func:`kws.cli.terminate_as_interrupt`) ends the MLflow run as
    KILLED, not FAILED and never left RUNNING; the model folder is written only at the end."""
    try:
        yield
    except KeyboardInterrupt:
        if chief:
            import mlflow

            log.warning("training interrupted: MLflow run ended as KILLED, no model written")
            mlflow.end_run(status="KILLED")
        raise


class _Progress:
    """Keras callback factory: one progress bar over every step of the run (tqdm: rate and ETA,
    redrawn at most every few seconds so logs stay short) and one log line per epoch with its
    metrics, its duration and the time left if every epoch runs (early stopping may end sooner)."""

    @staticmethod
    def make(epochs: int, steps: int, enabled: bool = True):
        import keras
        from tqdm import tqdm

        from kws.cli import raise_if_interrupted

        class Progress(keras.callbacks.Callback):
            def on_train_begin(self, logs=None):
                self.bar = tqdm(total=epochs * steps, desc="train", unit="step", disable=not enabled,
                                mininterval=2.0, dynamic_ncols=True)
                self.started = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                raise_if_interrupted()  # a signal whose exception a library swallowed still stops training
                self.bar.update(1)

            def on_epoch_end(self, epoch, logs=None):
                if logs is not None and "learning_rate" not in logs:  # where the schedule is: history.csv, MLflow
                    logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
                logs = logs or {}
                done = epoch + 1
                per_epoch = (time.perf_counter() - self.started) / done
                left = per_epoch * (epochs - done)
                shown = {k: logs[k] for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in logs}
                self.bar.set_postfix({k: f"{float(v):.4f}" for k, v in shown.items()}, refresh=False)
                log.info("epoch %d/%d: %s (%.1f s/epoch; at most %s left)", done, epochs,
                         " ".join(f"{k} {float(v):.4f}" for k, v in shown.items()), per_epoch,
                         time.strftime("%H:%M:%S", time.gmtime(left)))

            def on_train_end(self, logs=None):
                self.bar.close()

        return Progress()


STRATEGIES = ("none", "mirrored", "multi_worker")
STRATEGY_NAMES = {"none": "default", "mirrored": "MirroredStrategy", "multi_worker": "MultiWorkerMirroredStrategy"}
#: ``KWS_CPU_DEVICES=N`` splits the CPU into N logical devices, so ``train.distribute=mirrored``
#: runs N replicas on a machine without GPUs (tests, CI); unset: TensorFlow's default (one CPU).
CPU_DEVICES_ENV = "KWS_CPU_DEVICES"


def bounded_steps(t, full_steps: int) -> int:
    """Steps per epoch: ``full_steps`` (the whole training split) unless ``train.steps_per_epoch``
    (null = the whole epoch) bounds it, for benchmarks and smoke runs. :class:`ConfigError` when invalid."""
    bound = t.get("steps_per_epoch")
    if bound is None:
        return full_steps
    if isinstance(bound, bool) or not isinstance(bound, int) or bound < 1:
        raise ConfigError(f"train.steps_per_epoch must be a positive integer or null, got {bound!r}")
    return min(full_steps, bound)


def distribute_config(t) -> tuple[str, bool]:
    """``(train.distribute, train.mixed_precision)``, checked: :class:`ConfigError` when invalid."""
    kind = t.get("distribute", "none")
    kind = "none" if kind is None else str(kind).strip().lower()
    if kind not in STRATEGIES:
        raise ConfigError(f"unknown train.distribute {t.get('distribute')!r}: use none, mirrored or multi_worker")
    mixed = t.get("mixed_precision", False)
    if not isinstance(mixed, bool):
        raise ConfigError(f"train.mixed_precision must be true or false, got {mixed!r}")
    return kind, mixed


def split_cpu() -> int:
    """Honour ``KWS_CPU_DEVICES`` (N logical CPUs); must run before TensorFlow initializes its devices."""
    raw = os.environ.get(CPU_DEVICES_ENV, "").strip()
    if not raw:
        return 0
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"{CPU_DEVICES_ENV} must be a positive integer, got {raw!r}")
    import tensorflow as tf

    n = int(raw)
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
    except RuntimeError:  # this process already initialized TensorFlow's devices
        have = len(tf.config.list_logical_devices("CPU"))
        if have != n:
            log.warning("%s=%d ignored: TensorFlow is already initialized with %d logical CPU(s)",
                        CPU_DEVICES_ENV, n, have)
    return n


def make_strategy(kind: str):
    """The tf.distribute strategy for ``train.distribute`` (TensorFlow's default one-device strategy for none)."""
    import tensorflow as tf

    if kind == "multi_worker":  # first: it configures collective ops, before any other TensorFlow op
        if not os.environ.get("TF_CONFIG"):
            log.warning("train.distribute=multi_worker without TF_CONFIG: a cluster of this one worker")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "mirrored":
        if tf.config.list_logical_devices("GPU"):
            return tf.distribute.MirroredStrategy()  # every GPU of this machine
        # No GPU: every logical CPU (one, unless KWS_CPU_DEVICES splits it; MirroredStrategy's
        # default would take CPU:0 only).
        return tf.distribute.MirroredStrategy(devices=[d.name for d in tf.config.list_logical_devices("CPU")])
    return tf.distribute.get_strategy()


def is_chief(strategy) -> bool:
    """Whether this process writes the outputs: always, but for a multi-worker cluster's non-chief
    workers (the chief is task ``chief``, else ``worker`` 0, as in TensorFlow's multi-worker guide)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or resolver.task_type in (None, "chief"):
        return True
    return (resolver.task_type == "worker" and int(resolver.task_id or 0) == 0
            and "chief" not in resolver.cluster_spec().as_dict())


def float32_head(model):
    """Under ``mixed_float16``: the same model with its last layer (the softmax classifier) in float32."""
    import keras

    last = model.layers[-1]
    if last.compute_dtype == "float32":
        return model
    head = last.__class__.from_config({**last.get_config(), "dtype": "float32"})
    return keras.Model(model.inputs, head(last.input), name=model.name)


def float32_copy(model, build):
    """``build()`` (a float32 model, built outside any strategy) with ``model``'s trained weights."""
    export = build()
    export.set_weights(model.get_weights())
    for layer in export.layers:  # Normalization caches its mean/variance
        if hasattr(layer, "finalize_state"):
            layer.finalize_state()
    return export


@contextlib.contextmanager
def keras_multi_worker_fixes(model, strategy):
    """While it lasts, ``model.fit`` works under ``MultiWorkerMirroredStrategy`` with Keras 3, which
    fails there as released (keras-team/keras#20585, tensorflow/tensorflow#72388): (1) fit's
    symbolic build all-reduces a whole nested batch, which the collective strategy cannot: it
    builds from this worker's local batch instead (shapes are all it needs); (2) the scalar
    metrics are all-reduced along axis 0, which a scalar lacks: they are averaged over every
    replica of every worker instead, so all workers see the same logs (and stop early together)."""
    import tensorflow as tf

    try:
        from keras.src import tree
        from keras.src.backend.tensorflow import trainer as tf_trainer

        original = tf_trainer.reduce_per_replica
        multi_worker = tf_trainer._collective_all_reduce_multi_worker
    except (ImportError, AttributeError):  # another Keras: fit as it is
        log.warning("Keras %s: multi-worker work-arounds not applied", __import__("keras").__version__)
        yield
        return

    def local(v):
        return strategy.experimental_local_results(v)[0] if isinstance(v, tf.distribute.DistributedValues) else v

    def symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, it in iterator:
                data_batch = tree.map_structure(local, next(it))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    def reduce_per_replica(values, strategy_, reduction):
        if reduction in ("auto", "mean") and multi_worker(strategy_):
            return tree.map_structure(
                lambda v: strategy_.reduce("MEAN", v, axis=None if len(v.shape) == 0 else 0), values)
        return original(values, strategy_, reduction)

    model._maybe_symbolic_build = symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica
    try:
        yield
    finally:
        tf_trainer.reduce_per_replica = original
        del model._maybe_symbolic_build


def train(cfg, features_dir: Path, model_dir: Path, reports_dir: Path) -> dict:
    t = cfg.train
    kind, mixed = distribute_config(t)
    bounded_steps(t, 1)  # an invalid train.steps_per_epoch fails before TensorFlow is loaded
    keep = keep_weights(t)  # and so does a misspelt train.keep_weights
    ema = ema_momentum(t)  # and an invalid train.ema_momentum
    logit_offsets(t)  # and a train.logit_offsets that is not label -> number
    split_cpu()  # before anything initializes TensorFlow's devices
    import keras
    import mlflow
    import tensorflow as tf
    from mlflow.models import infer_signature

    from kws import plots, tracking
    from kws.bundle import write_bundle
    from kws.cli import uninterrupted
    from kws.models import build_model

    strategy = make_strategy(kind)
    gpus = tf.config.list_physical_devices("GPU")
    if mixed and not gpus:
        log.warning("train.mixed_precision=true but TensorFlow sees no GPU: training in float32 "
                    "(mixed_float16 is slow or unsupported on CPUs)")
        mixed = False
    replicas = int(strategy.num_replicas_in_sync)
    chief = is_chief(strategy)

    meta = load_meta(features_dir)
    labels = meta["labels"]
    features = FeatureConfig.from_dict(meta["features"])
    x_train, y_train, w_train = load_split(features_dir, "train", weights=True)
    x_val, y_val = load_split(features_dir, "validation")
    offsets = logit_offsets(t, labels)
    for label, factor in (t.get("class_weights") or {}).items():  # e.g. {_unknown_: 2}: class balancing
        if label not in labels:
            raise ConfigError(f"train.class_weights names {label!r}, not one of the task's labels {labels}")
        w_train = np.where(y_train == labels.index(label), w_train * float(factor), w_train).astype(np.float32)
    keras.utils.set_random_seed(int(cfg.seed))
    if bool(t.get("deterministic", True)):
        # Seeds alone do not repeat a run: parallel tf.data maps draw SpecAugment's random masks in
        # whatever order their threads run, and some kernels reduce in thread order. With this, the
        # same config and data give the same weights (process-wide, and it cannot be switched off).
        tf.config.experimental.enable_op_determinism()
    words: list[str] = []
    if bool(t.get("unknown_by_word", False)):
        y_train, words = word_targets(y_train, load_files(features_dir, "train"), labels)
        y_val, _ = word_targets(y_val, load_files(features_dir, "validation"), labels, words)
        log.info("train.unknown_by_word: %d unknown words trained as classes of their own, summed into "
                 "_unknown_ by the exported model", len(words))
    fold = fold_matrix(labels, words)
    n_classes = len(fold)  # the training head: the task's labels + one class per unknown word

    batch = int(t.batch_size) * replicas  # the global batch: train.batch_size per replica
    try:
        devices = [str(d) for d in strategy.extended.worker_devices]
    except (AttributeError, RuntimeError, NotImplementedError):  # the default strategy: TensorFlow's placement
        devices = ["/device:GPU:0" if gpus else "/device:CPU:0"]
    training = {
        "distribute": kind, "strategy": STRATEGY_NAMES[kind], "replicas": replicas, "devices": devices,
        "gpus": [d.name for d in gpus], "precision": "mixed_float16" if mixed else "float32",
        "batch_size_per_replica": int(t.batch_size), "global_batch_size": batch, "chief": chief,
        "unknown_words": words,
    }
    log.info("training devices: %d GPU(s) visible %s; train.distribute=%s: %s with %d replica(s) in sync on %s; "
             "%s; global batch %d (%d per replica)", len(gpus), training["gpus"], kind, training["strategy"],
             replicas, devices, training["precision"], batch, int(t.batch_size))

    full_steps = -(-len(y_train) // batch)
    steps = bounded_steps(t, full_steps)  # the learning-rate schedule counts these steps
    training["steps_per_epoch"] = steps
    if steps < full_steps:
        log.info("train.steps_per_epoch=%d: %d of the %d steps of a whole epoch per epoch", steps, steps, full_steps)
    previous_policy = keras.mixed_precision.global_policy()
    if mixed:
        keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with strategy.scope():  # variables (model, optimizer, metrics) mirrored over the replicas
            model = build_model(cfg.model, features.shape, n_classes, x_train)
            if mixed:
                model = float32_head(model)
            schedule = learning_rate(t, steps)
            model.compile(  # under mixed_float16 Keras wraps the optimizer in a LossScaleOptimizer
                optimizer=keras.optimizers.Adam(schedule, use_ema=ema is not None, ema_momentum=ema or 0.99),
                loss=keras.losses.CategoricalCrossentropy(label_smoothing=float(t.get("label_smoothing", 0.0))),
                # accuracy of the task's labels (an unknown word for another is not an error)
                metrics=[folded_accuracy(fold) if words else keras.metrics.CategoricalAccuracy(name="accuracy")],
                weighted_metrics=[],
            )
    finally:  # the layers keep their policy; later layers (the exported copy) are float32
        keras.mixed_precision.set_global_policy(previous_policy)
    fill = np.asarray(model.get_layer("mfcc_norm").mean, np.float32).reshape(-1)
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
    if steps < full_steps:  # bounded epochs: one endless (reshuffled) stream, each epoch takes the next `steps`
        train_ds = train_ds.repeat()
    train_ds = train_ds.prefetch(tf.data.AUTOTUNE)
    val_ds = tf.data.Dataset.from_tensor_slices((x_val[..., None], tf.one_hot(y_val, n_classes))).batch(256)
    if kind == "multi_worker":
        # Every worker builds the same, equally seeded pipeline and takes its share of each batch
        # (in-memory arrays: there are no files to shard by).
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
        train_ds, val_ds = train_ds.with_options(options), val_ds.with_options(options)
    stopping = keras.callbacks.EarlyStopping(monitor="val_accuracy", mode="max",
                                             patience=int(t.early_stopping_patience),
                                             restore_best_weights=keep == "best_val")
    before, after = ema_callbacks(keras, ema)
    callbacks = [*before, stopping, *after]
    callbacks.append(_Progress.make(int(t.epochs), steps, enabled=chief))
    if chief:
        callbacks.append(_MLflowEpochLogger.make())
    if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
        callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2, min_lr=1e-5))

    scratch = None
    if chief:
        tracking.setup(cfg.mlflow.experiment)
    else:  # TensorFlow's multi-worker recipe: every worker runs the same steps, only the chief's outputs count
        scratch = Path(tempfile.mkdtemp(prefix="kws-train-worker-"))
        model_dir, reports_dir = scratch / "model", scratch / "reports"
        log.info("not the chief worker: outputs go to %s (deleted at the end); the chief logs to MLflow", scratch)
    try:
        with (mlflow.start_run(run_name=f"{cfg.model.name}") if chief else contextlib.nullcontext()) as run, \
                _killed_on_interrupt(chief):
            if chief:
                with uninterrupted():  # MLflow writes whole: one cut inside its SQLite transaction leaves the store locked
                    mlflow.log_params(flatten(cfg))
                    mlflow.set_tags({
                        "kws.stage": "train", "kws.model": cfg.model.name, "kws.task": meta["task"],
                        "kws.dataset": cfg.data.name, "kws.dataset_sha256": str(meta.get("source", {}).get("sha256")),
                        "kws.strategy": training["strategy"], "kws.replicas": replicas, "kws.gpus": len(gpus),
                        "kws.precision": training["precision"], "kws.global_batch_size": batch,
                    })
                    mlflow.log_dict({"labels": labels}, "labels.json")
                    mlflow.log_dict(features.to_dict(), "features.json")
                    mlflow.log_dict(meta["counts"], "dataset_counts.json")
                    mlflow.log_dict(training, "training_devices.json")
                    mlflow.log_metric("params_count", model.count_params())
            started = time.perf_counter()
            with keras_multi_worker_fixes(model, strategy) if kind == "multi_worker" else contextlib.nullcontext():
                history = model.fit(
                    train_ds,
                    validation_data=val_ds,
                    epochs=int(t.epochs),
                    steps_per_epoch=steps if steps < full_steps else None,
                    shuffle=False,  # train_ds reshuffles itself every epoch (seeded)
                    verbose=0,  # _Progress: one bar with an ETA, one log line per epoch
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
            if chief:
                with uninterrupted():
                    mlflow.log_metrics({f"best_{k}": v for k, v in summary.items()})

            reports_dir.mkdir(parents=True, exist_ok=True)
            keys = ([k for k in history if k != "learning_rate"]
                    + (["learning_rate"] if "learning_rate" in history else []))
            with open(reports_dir / "history.csv", "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["epoch", *keys])
                for i in range(epochs_run):
                    writer.writerow([i + 1, *(float(history[k][i]) for k in keys)])
            curves = plots.training_curves(history, reports_dir / "training_curves.png")

            # What the service, TFLite and MLflow load: a plain float32, one-device model.
            export = (float32_copy(model, lambda: build_model(cfg.model, features.shape, n_classes))
                      if kind != "none" or mixed else model)
            shift_logits(export, offsets, labels, fold)
            if words:
                export = fold_head(export, fold)
            example = x_val[:1, ..., None]
            run_info = {"run_id": None, "experiment_id": None, "model_uri": None, "architecture": cfg.model.name}
            if chief:
                signature = infer_signature(example, export.predict(example, verbose=0))
                with uninterrupted():
                    mlflow.log_artifact(str(curves), "plots")
                    info = mlflow.tensorflow.log_model(export, name="model", signature=signature,
                                                       input_example=example)
                run_info.update(run_id=run.info.run_id, experiment_id=run.info.experiment_id,
                                model_uri=info.model_uri)
            write_bundle(model_dir, export, labels, features, metrics=summary,
                         info={**run_info, "dataset": cfg.data.name, "task": meta["task"], "training": training,
                               "logit_offsets": offsets},
                         # int8 beside float32 (issue 21, branch speed): calibrated on training features,
                         # checked against float32 on the validation split (the task's labels, not word targets)
                         representative=x_train, check=(x_val, load_split(features_dir, "validation")[1]))
            (model_dir / tracking.RUN_FILE).write_text(json.dumps(run_info, indent=2) + "\n")
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    log.info("trained %s: kept the weights of epoch %d (train.keep_weights=%s), val_accuracy %.4f; best epoch %d "
             "(%.1f s/epoch); run %s", cfg.model.name, summary["kept_epoch"], keep, summary["val_accuracy"],
             summary["best_epoch"], summary["seconds_per_epoch"], run_info["run_id"])
    return summary


def main(argv: list[str] | None = None) -> int:
    from kws.cli import stage_cli

    return stage_cli("kws-train", __doc__.splitlines()[0],
                     lambda cfg: train(cfg, Path(cfg.paths.features), Path(cfg.paths.model), Path(cfg.paths.reports) / "train"), argv)


if __name__ == "__main__":
    raise SystemExit(main())
