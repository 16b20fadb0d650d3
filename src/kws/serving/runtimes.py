"""Inference runtimes of a model bundle (``KWS_RUNTIME``), and the serving processes' BLAS limit.

* :class:`TFLiteRuntime` over the bundle's float32 ``model.tflite`` (``tflite``) or its int8
  ``model_int8.tflite`` (``tflite_int8``), one interpreter per thread via ``threading.local``
  (interpreters are cheap and one must never be shared between threads).
* :class:`KerasRuntime` (``keras``): one ``tf.function`` over the Keras model; thread-safe.
* ``auto`` (the service's default) is int8 where the bundle's export check passed it
  (``model_info.json`` ``int8.default``: its accuracy within 0.5 points of float32's,
  :func:`kws.bundle.int8_check`), else float32 TFLite. TFLite is several times faster than
  Keras in-process for one clip (``benchmarks/bench_serving.py``) and needs no TensorFlow.
* :func:`load_runtime` picks one (falling back to the next where asked);
  :func:`single_threaded_blas` limits numpy's BLAS to one thread per process.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np

from kws.bundle import KERAS_FILE, TFLITE_FILE, TFLITE_INT8_FILE, BundleMeta
from kws.errors import BundleError, ConfigError, KWSError

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "tflite", "tflite_int8", "keras")


class Runtime(Protocol):
    name: str

    def infer(self, x: np.ndarray) -> np.ndarray:
        """``(n, frames, n_coeffs, 1)`` float32 -> ``(n, n_labels)`` softmax scores."""


class TFLiteRuntime:
    """TFLite (LiteRT) interpreter, one per thread.

    Each thread keeps interpreters for a few fixed batch sizes (``buckets``); a request with
    ``n`` windows runs in chunks of the largest bucket, the last chunk padded up to the
    smallest bucket that holds it. Fixed shapes mean no ``allocate_tensors`` per request.
    """

    def __init__(self, path: Path, num_threads: int = 1, buckets: Sequence[int] = (1, 8, 32), name: str = "tflite"):
        self.name = name
        self._file = Path(path).name
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # pragma: no cover - depends on the installation
            try:
                from tensorflow.lite import Interpreter  # type: ignore[no-redef]
            except ImportError:
                raise BundleError("no TFLite interpreter installed (pip install ai-edge-litert)") from None
        self._Interpreter = Interpreter
        self._content = Path(path).read_bytes()
        self._threads = max(1, int(num_threads))
        self._buckets = tuple(sorted({int(b) for b in buckets if int(b) >= 1})) or (1,)
        self._local = threading.local()
        self._lock = threading.Lock()
        self.interpreters = 0  # how many were created (one set per serving thread)
        probe = self._make(1)  # fails here, at load time, on a bad flatbuffer
        self.input_shape = tuple(int(d) for d in probe[0].get_input_details()[0]["shape"][1:])
        self.n_outputs = int(probe[0].get_output_details()[0]["shape"][-1])

    def _make(self, batch: int):
        try:
            interp = self._Interpreter(model_content=self._content, num_threads=self._threads)
            inp = interp.get_input_details()[0]
            if int(inp["shape"][0]) != batch:
                interp.resize_tensor_input(inp["index"], [batch, *inp["shape"][1:]], strict=False)
            interp.allocate_tensors()
        except (ValueError, RuntimeError) as err:
            raise BundleError(f"{self._file} cannot be loaded: {err}") from None
        with self._lock:
            self.interpreters += 1
        return interp, interp.get_input_details()[0]["index"], interp.get_output_details()[0]["index"]

    def _get(self, batch: int):
        cache = getattr(self._local, "by_batch", None)
        if cache is None:
            cache = self._local.by_batch = {}
        if batch not in cache:
            cache[batch] = self._make(batch)
        return cache[batch]

    def infer(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        n, biggest = len(x), self._buckets[-1]
        out = []
        for start in range(0, n, biggest):
            part = x[start:start + biggest]
            size = next(b for b in self._buckets if b >= len(part))
            if size != len(part):
                part = np.concatenate([part, np.zeros((size - len(part), *part.shape[1:]), np.float32)])
            interp, inp, outp = self._get(size)
            interp.set_tensor(inp, part)
            interp.invoke()
            out.append(interp.get_tensor(outp)[: min(biggest, n - start)].copy())
        return np.concatenate(out) if len(out) > 1 else out[0]

    def warm(self) -> None:
        """Create this thread's interpreters for every bucket and run each once."""
        for b in self._buckets:
            self.infer(np.zeros((b, *self.input_shape), np.float32))


class KerasRuntime:
    """The Keras model behind one ``tf.function`` with a fixed input signature (no retracing)."""

    name = "keras"

    def __init__(self, path: Path):
        try:
            import keras
            import tensorflow as tf
        except ImportError:
            raise BundleError("the keras runtime needs tensorflow and keras installed") from None
        try:
            self.model = keras.saving.load_model(str(path), compile=False)
        except Exception as err:  # noqa: BLE001 - keras raises many types for a bad file
            raise BundleError(f"{KERAS_FILE} cannot be loaded: {err}") from None
        shape = tuple(self.model.inputs[0].shape[1:])
        self.input_shape = tuple(int(d) for d in shape)
        self.n_outputs = int(self.model.outputs[0].shape[-1])
        model = self.model
        spec = tf.TensorSpec([None, *self.input_shape], tf.float32)
        self._fn = tf.function(lambda x: model(x, training=False), input_signature=[spec])

    def infer(self, x: np.ndarray) -> np.ndarray:
        return self._fn(np.ascontiguousarray(x, dtype=np.float32)).numpy()

    def warm(self) -> None:
        self.infer(np.zeros((1, *self.input_shape), np.float32))


def int8_preferred(meta: BundleMeta) -> bool:
    """Whether the bundle's export check chose its int8 model (``model_info.json`` ``int8.default``)."""
    check = meta.info.get("int8")
    return isinstance(check, dict) and check.get("default") is True and (meta.path / TFLITE_INT8_FILE).is_file()


def load_runtime(meta: BundleMeta, runtime: str, threads: int = 1, fallback: bool = True,
                 buckets: Sequence[int] = (1, 8, 32)) -> Runtime:
    """``runtime`` (see :data:`RUNTIMES`); when it cannot be loaded and ``fallback``, the next one.

    ``auto`` is ``tflite_int8`` where :func:`int8_preferred`, else ``tflite``. An explicit
    ``tflite_int8`` never falls back: a bundle without ``model_int8.tflite`` is a BundleError.
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"unknown runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
    if runtime == "tflite_int8" and not (meta.path / TFLITE_INT8_FILE).is_file():
        raise BundleError(f"runtime tflite_int8 asked for, but the bundle at {meta.path} has no {TFLITE_INT8_FILE} "
                          "(exported before int8 quantization): re-run the train stage, or use KWS_RUNTIME=tflite")
    if runtime == "auto":
        order = (["tflite_int8"] if int8_preferred(meta) else []) + ["tflite", "keras"]
    elif runtime == "tflite_int8":
        order = ["tflite_int8"]
    else:
        order = [runtime] + [r for r in ("tflite", "keras") if r != runtime]
    order = order if fallback else order[:1]
    errors = []
    for name in order:
        try:
            if name == "keras":
                return KerasRuntime(meta.path / KERAS_FILE)
            file = TFLITE_INT8_FILE if name == "tflite_int8" else TFLITE_FILE
            return TFLiteRuntime(meta.path / file, num_threads=threads, buckets=buckets, name=name)
        except KWSError as err:
            errors.append(err.message)
            if name != order[-1]:
                log.warning("%s runtime unavailable (%s); falling back to the next", name, err.message)
    raise BundleError("; ".join(errors))


_blas_limited = False


def single_threaded_blas() -> None:
    """Limit the BLAS library (OpenBLAS under numpy) to one thread, once per process.

    A clip's feature matmul is tiny: BLAS worker threads bring nothing to it, and on a busy
    machine the calling thread spins waiting for workers that are not scheduled, which made the
    feature pass the slowest step of an answer (benchmarks/results/speed.json). The serving
    threads (Waitress) and ``kws-score``'s processes are the parallelism instead.
    """
    global _blas_limited
    if _blas_limited:
        return
    _blas_limited = True
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with librosa's scikit-learn
        return
    threadpool_limits(limits=1, user_api="blas")
