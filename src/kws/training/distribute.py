"""Where training runs: the tf.distribute strategy of ``trainer.distribute`` (``none``: one
device, the GPU when TensorFlow sees one; ``mirrored``: every GPU of this machine, or every logical
CPU, see ``KWS_CPU_DEVICES``; ``multi_worker``: ``MultiWorkerMirroredStrategy``, the cluster from
``TF_CONFIG``, only the chief writes), ``trainer.mixed_precision`` (``mixed_float16`` on GPUs with
a float32 softmax head; the exported model is always a float32 copy) and the Keras work-arounds
multi-worker training needs."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field

from kws.errors import ConfigError

log = logging.getLogger(__name__)

STRATEGY_NAMES = {"none": "default", "mirrored": "MirroredStrategy", "multi_worker": "MultiWorkerMirroredStrategy"}

#: ``KWS_CPU_DEVICES=N`` splits the CPU into N logical devices, so ``trainer.distribute=mirrored``
#: runs N replicas on a machine without GPUs (tests, CI); unset: TensorFlow's default (one CPU).
CPU_DEVICES_ENV = "KWS_CPU_DEVICES"


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


def set_threads(n: int | None) -> None:
    """``trainer.threads``: TensorFlow's intra- and inter-op thread pools of this process (None:
    its default). Must run before TensorFlow starts its runtime; after, a different count is a
    warning (the weights may then differ from a fresh process's)."""
    if n is None:
        return
    import tensorflow as tf

    threading = tf.config.threading
    if threading.get_intra_op_parallelism_threads() == n and threading.get_inter_op_parallelism_threads() == n:
        return
    try:
        threading.set_intra_op_parallelism_threads(n)
        threading.set_inter_op_parallelism_threads(n)
    except RuntimeError:  # this process already started TensorFlow's runtime
        log.warning("trainer.threads=%d ignored: TensorFlow already runs in this process with its thread pools set",
                    n)


def make_strategy(kind: str):
    """The tf.distribute strategy for ``trainer.distribute`` (TensorFlow's default one-device strategy for none)."""
    import tensorflow as tf

    if kind == "multi_worker":  # first: it configures collective ops, before any other TensorFlow op
        if not os.environ.get("TF_CONFIG"):
            log.warning("trainer.distribute=multi_worker without TF_CONFIG: a cluster of this one worker")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "mirrored":
        if tf.config.list_logical_devices("GPU"):
            return tf.distribute.MirroredStrategy()  # every GPU of this machine
        # No GPU: every logical CPU (one, unless KWS_CPU_DEVICES splits it; MirroredStrategy's
        # default would take CPU:0 only).
        return tf.distribute.MirroredStrategy(devices=[d.name for d in tf.config.list_logical_devices("CPU")])
    return tf.distribute.get_strategy()


@dataclass
class Devices:
    """The strategy a run trains under, and what it means for the outputs."""

    kind: str  # trainer.distribute
    strategy: object
    gpus: list = field(default_factory=list)
    mixed: bool = False  # mixed_float16 (only with a GPU)
    replicas: int = 1
    chief: bool = True  # this process writes the outputs

    def names(self) -> list[str]:
        try:
            return [str(d) for d in self.strategy.extended.worker_devices]
        except (AttributeError, RuntimeError, NotImplementedError):  # the default strategy: TensorFlow's placement
            return ["/device:GPU:0" if self.gpus else "/device:CPU:0"]


def devices(kind: str, mixed: bool) -> Devices:
    """The strategy of ``trainer.distribute`` and the precision actually used (``mixed_precision``
    without a GPU: a warning, then float32)."""
    import tensorflow as tf

    strategy = make_strategy(kind)
    gpus = tf.config.list_physical_devices("GPU")
    if mixed and not gpus:
        log.warning("trainer.mixed_precision=true but TensorFlow sees no GPU: training in float32 "
                    "(mixed_float16 is slow or unsupported on CPUs)")
        mixed = False
    return Devices(kind, strategy, gpus, mixed, int(strategy.num_replicas_in_sync), is_chief(strategy))


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
