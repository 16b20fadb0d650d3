"""The keyword-spotting service: one model bundle per process, TFLite or Keras runtime.

* :func:`get_predictor` returns the process-wide :class:`Predictor` for a configuration —
  created ONCE (lock + double-checked), warmed up with a full inference (feature code and
  interpreter) before it is handed out. A failed load is remembered and retried at most every
  ``retry_s`` seconds, so a bundle mounted late is picked up without a restart.
* Runtimes (``KWS_RUNTIME``): :class:`TFLiteRuntime` over the bundle's float32 ``model.tflite``
  (``tflite``) or its int8 ``model_int8.tflite`` (``tflite_int8``), one interpreter per thread
  via ``threading.local`` (interpreters are cheap and one must never be shared between
  threads), and :class:`KerasRuntime` (``keras``: one ``tf.function`` over the Keras model;
  thread-safe). ``auto`` (the service's default) is int8 where the bundle's export check passed
  it (``model_info.json`` ``int8.default``: its accuracy within 0.5 points of float32's,
  :func:`kws.bundle.int8_check`), else float32 TFLite. TFLite is several times faster than
  Keras in-process for one clip (``benchmarks/bench_serving.py``) and needs no TensorFlow.
* Features come from :func:`kws.features.extract` (log-mel or MFCC, as the bundle says) — the same code the training pipeline used,
  with the bundle's ``features.json``.
* A short clip is scored with test-time shifts (:data:`DEFAULT_TTA_SHIFTS_MS`) in ONE feature pass
  and ONE runtime call: the features of the clip zero-padded by the largest shift on both sides,
  sliced at whole-frame offsets, give exactly the features of each zero-filled shifted clip
  (every frame depends on its own window only), and the views go to the runtime as one batch.
  Shifts are therefore whole feature hops; a setting that is not is rounded to the nearest hop
  (half a hop away from zero), logged, and ``describe()`` shows the shifts in use.
* Live model updates: :func:`reload_if_changed` compares the bundle's fingerprint (folder
  identity, model file, ``model_info.json``) with the loaded one; when ``promote`` has swapped a
  new bundle in, the new predictor is loaded and warmed BESIDE the old one and then replaces it
  in one assignment. Requests that hold the old predictor finish on it; nothing fails. A bundle
  that is missing (mid-swap) or broken is not loaded; the old one keeps serving. A reload accepts
  only a bundle that loads with the CONFIGURED runtime (no fallback to the other one) and whose
  warm-up answers are sane (:meth:`Predictor.check_answer`); a refused bundle is logged once.
* Long audio is scanned with 1 s windows every ``stride_s`` seconds, all windows batched into
  as few runtime calls as possible, and the window scores are fed in time order to the
  streaming detector (:class:`kws.streaming.detector.StreamDetector`: smoothing, minimum count,
  suppression) with the bundle's operating point (``detector.json``) when it has one.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from kws.audio import fix_length, time_shift
from kws.bundle import KERAS_FILE, TFLITE_FILE, TFLITE_INT8_FILE, BundleMeta, read_meta
from kws.errors import BundleError, ConfigError, KWSError
from kws.features import clip_features, extract
from kws.labels import SILENCE, UNKNOWN
from kws.streaming.detector import DetectorSettings, StreamDetector

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "tflite", "tflite_int8", "keras")
#: Test-time shifts of a short clip (ms): the clip is scored as it is and moved two 20 ms feature
#: hops earlier and later (zero-filled, like the training time shift); the class scores are
#: averaged. Whole hops, so that one feature pass serves all three views (the module's doc);
#: ±40 vs ±60 ms were measured on real speech (benchmarks/bench_speed.py, results/speed.json).
#: ``KWS_TTA_SHIFTS_MS=0`` turns it off.
DEFAULT_TTA_SHIFTS_MS = (0, -40, 40)


# --------------------------------------------------------------------------- runtimes
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


def shift_frames(shifts_ms: Sequence[float], cfg) -> tuple[int, ...]:
    """Test-time shifts (ms, positive: later) as whole feature hops, rounded to the nearest
    (half a hop away from zero); a rounded value is logged."""
    hop_ms = 1000.0 * cfg.hop_length / cfg.sample_rate
    frames = tuple(int(math.copysign(math.floor(abs(float(ms)) / hop_ms + 0.5), float(ms))) for ms in shifts_ms)
    moved = [f"{float(ms):g}->{k * hop_ms:g}" for ms, k in zip(shifts_ms, frames) if abs(k * hop_ms - float(ms)) > 1e-6]
    if moved:
        log.warning("test-time shifts must be whole feature hops (%g ms): rounded %s ms", hop_ms, ", ".join(moved))
    return frames or (0,)


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


# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Detection:
    keyword: str
    start_s: float
    end_s: float
    confidence: float

    def to_dict(self) -> dict:
        return {"keyword": self.keyword, "start_s": round(self.start_s, 3), "end_s": round(self.end_s, 3),
                "confidence": round(self.confidence, 6)}


def detector_settings(meta: BundleMeta, default_threshold: float) -> tuple[DetectorSettings, str]:
    """The bundle's operating point (``detector.json``'s ``settings``) and ``"bundle"``, else the
    default settings with the service's ``detection_threshold`` and ``"default"``."""
    chosen = meta.detector.get("settings") if meta.detector else None
    if chosen is None:
        return DetectorSettings(threshold=float(default_threshold)), "default"
    if not isinstance(chosen, dict):
        raise BundleError(f"{meta.path / 'detector.json'}: `settings` must be an object")
    try:
        return DetectorSettings.from_dict(chosen), "bundle"
    except ConfigError as err:
        raise BundleError(f"{meta.path / 'detector.json'} is invalid: {err.message}") from None


def top_scores(scores: np.ndarray, labels: Sequence[str], k: int) -> list[dict]:
    order = np.argsort(-scores, kind="stable")[: max(1, k)]
    return [{"label": labels[i], "score": round(float(scores[i]), 6)} for i in order]


# --------------------------------------------------------------------------- predictor
class Predictor:
    """A loaded bundle + runtime; all methods are thread-safe."""

    def __init__(self, model_dir: str | Path, runtime: str = "tflite", threads: int = 1,
                 long_audio_s: float = 1.5, stride_s: float = 0.25, detection_threshold: float = 0.6,
                 warmup: bool = True, tta_shifts_ms: Sequence[float] = DEFAULT_TTA_SHIFTS_MS, fallback: bool = True):
        t0 = time.perf_counter()
        single_threaded_blas()
        self.fingerprint = bundle_fingerprint(model_dir)  # before reading: a swap during the load shows up later
        self.meta = read_meta(model_dir)
        self.labels = list(self.meta.labels)
        self.cfg = self.meta.features
        self._tta_frames = shift_frames(tuple(tta_shifts_ms) or (0.0,), self.cfg)
        views = len(self._tta_frames)
        self.runtime = load_runtime(self.meta, runtime, threads, fallback=fallback,
                                    buckets=sorted({1, views, 8, 32}))
        expected = (*self.cfg.shape, 1)
        if tuple(self.runtime.input_shape) != expected:
            raise BundleError(f"the model expects input {tuple(self.runtime.input_shape)} but features.json "
                              f"gives {expected}: the bundle is inconsistent")
        if self.runtime.n_outputs != len(self.labels):
            raise BundleError(f"the model has {self.runtime.n_outputs} outputs but labels.json lists "
                              f"{len(self.labels)} labels")
        self.long_audio_s = float(long_audio_s)
        self.stride_s = float(stride_s)
        self.detection_threshold = float(detection_threshold)
        self.detector, self.detector_source = detector_settings(self.meta, detection_threshold)
        self.window_s = self.cfg.clip_samples / self.cfg.sample_rate
        hop_ms = 1000.0 * self.cfg.hop_length / self.cfg.sample_rate
        self.tta_shifts_ms = tuple(k * hop_ms for k in self._tta_frames)  # as used (whole hops)
        self.loaded_at = time.time()
        if warmup:
            self.warmup()
        self.load_seconds = time.perf_counter() - t0

    # -- info
    @property
    def model_name(self) -> str:
        return str(self.meta.info.get("name") or self.meta.path.name)

    @property
    def model_version(self) -> str:
        return str(self.meta.info.get("version") or "unknown")

    def describe(self) -> dict[str, Any]:
        return {
            "labels": self.labels,
            "features": self.cfg.to_dict(),
            "metrics": self.meta.metrics,
            "model_info": self.meta.info,
            "runtime": self.runtime.name,
            "scan": {"window_s": self.window_s, "stride_s": self.stride_s, "long_audio_s": self.long_audio_s,
                     "detection_threshold": self.detector.threshold},
            "detector": {**self.detector.to_dict(), "source": self.detector_source,
                         **({"operating_point": self.meta.detector.get("operating_point")}
                            if self.meta.detector.get("operating_point") else {})},
            "tta_shifts_ms": list(self.tta_shifts_ms),
        }

    def warmup(self) -> None:
        """One full pass (features + inference, all batch sizes) so the first request is not slow."""
        rng = np.random.default_rng(0)
        wave = (rng.standard_normal(int(self.cfg.sample_rate * 3)) * 0.01).astype(np.float32)
        self.check_answer(self.scores_clip(wave[: self.cfg.clip_samples])[None], "a clip")
        self.check_answer(self.scan(wave, self.stride_s)[1], "a scan")
        warm = getattr(self.runtime, "warm", None)
        if warm:
            warm()

    def check_answer(self, scores: np.ndarray, what: str) -> None:
        """Raise :class:`BundleError` unless ``scores`` are rows of one finite probability per label
        that sum to 1 (softmax): what a model that loads but is broken (a truncated or foreign
        file) fails."""
        scores = np.asarray(scores)
        if scores.ndim != 2 or scores.shape[1] != len(self.labels):
            raise BundleError(f"the model answered {what} with shape {scores.shape}, expected (n, {len(self.labels)})")
        if not np.all(np.isfinite(scores)):
            raise BundleError(f"the model answered {what} with NaN or infinite scores")
        sums = scores.astype(np.float64).sum(axis=1)
        if np.any(np.abs(sums - 1.0) > 1e-3) or np.any(scores < -1e-6):
            raise BundleError(f"the model's scores for {what} are not probabilities (sums {sums.min():.4g}.."
                              f"{sums.max():.4g}, expected 1)")

    # -- features + inference
    def features(self, waves: np.ndarray) -> np.ndarray:
        """``(n, clip_samples)`` -> model input ``(n, frames, n_coeffs, 1)``."""
        return extract(waves, self.cfg)[..., None]

    def scores_clip(self, samples: np.ndarray, tta: bool = True) -> np.ndarray:
        """Scores of one clip, padded/cropped to the clip length (:func:`kws.features.clip_features`);
        averaged over the test-time shifts unless ``tta`` is false."""
        samples = np.asarray(samples, np.float32)
        if not tta:
            return self.runtime.infer(clip_features(samples, self.cfg)[None, ..., None])[0]
        return self.clip_scores(fix_length(samples, self.cfg.clip_samples)[None])[0]

    def clip_scores(self, waves: np.ndarray) -> np.ndarray:
        """``(n, clip_samples)`` clips -> ``(n, n_labels)`` scores averaged over the test-time shifts.

        One feature pass over the clips zero-padded by the largest shift, the shifted views sliced
        from it (a view starting ``k`` frames earlier is the clip moved ``k`` hops later), and one
        runtime call for all ``n * shifts`` views (the module's doc)."""
        waves = np.asarray(waves, np.float32)
        frames, pad = self.cfg.n_frames, max(abs(k) for k in self._tta_frames)
        if pad == 0:  # every view is the clip itself
            return self.runtime.infer(self.features(waves))
        edge = pad * self.cfg.hop_length
        feats = extract(np.pad(waves, ((0, 0), (edge, edge))), self.cfg, any_length=True)
        views = np.stack([feats[:, pad - k:pad - k + frames] for k in self._tta_frames], axis=1)
        scores = self.runtime.infer(views.reshape(-1, frames, feats.shape[-1], 1))
        return scores.reshape(len(waves), len(self._tta_frames), -1).mean(axis=1)

    def windows(self, samples: np.ndarray, stride_s: float) -> tuple[np.ndarray, np.ndarray]:
        """Start times (s) and the ``(n, clip_samples)`` windows every ``stride_s``; the last one ends at the end."""
        n = self.cfg.clip_samples
        if len(samples) <= n:
            return np.zeros(1), fix_length(samples, n)[None]
        hop = max(1, int(round(stride_s * self.cfg.sample_rate)))
        idx = list(range(0, len(samples) - n + 1, hop))
        if idx[-1] != len(samples) - n:
            idx.append(len(samples) - n)
        view = np.lib.stride_tricks.sliding_window_view(samples, n)
        return np.asarray(idx, float) / self.cfg.sample_rate, np.ascontiguousarray(view[idx], np.float32)

    def scan(self, samples: np.ndarray, stride_s: float | None = None, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """Scores of every 1 s window: ``(starts_s, scores (n_windows, n_labels))``."""
        starts, waves = self.windows(np.asarray(samples, np.float32), stride_s or self.stride_s)
        out = [self.runtime.infer(self.features(waves[i:i + batch])) for i in range(0, len(waves), batch)]
        return starts, np.concatenate(out)

    def loudest_window(self, samples: np.ndarray) -> np.ndarray:
        """For audio a little longer than a clip: the clip-long window with the most energy."""
        n = self.cfg.clip_samples
        if len(samples) <= n:
            return samples
        energy = np.concatenate([[0.0], np.cumsum(samples.astype(np.float64) ** 2)])
        hop = self.cfg.sample_rate // 100
        starts = np.arange(0, len(samples) - n + 1, hop)
        best = int(starts[np.argmax(energy[starts + n] - energy[starts])])
        return samples[best:best + n]

    # -- the answer
    def _clip_answer(self, scores: np.ndarray, threshold: float | None, top_k: int) -> dict[str, Any]:
        """The answer for one short clip's scores (``threshold``: below it the keyword is ``_unknown_``)."""
        _finite(scores)
        best = int(np.argmax(scores))
        keyword, confidence = self.labels[best], float(scores[best])
        if threshold is not None and confidence < threshold:
            keyword = UNKNOWN
        return {"keyword": keyword, "confidence": round(confidence, 6),
                "scores": top_scores(scores, self.labels, max(1, min(int(top_k), len(self.labels))))}

    def predict_clips(self, recordings: Sequence[np.ndarray], threshold: float | None = None,
                      top_k: int = 3) -> list[dict[str, Any]]:
        """:meth:`predict` of each recording, the short ones scored together (one feature pass and
        one runtime call for all of them): the same answers, fewer calls (``kws-score``)."""
        answers: list[dict[str, Any] | None] = [None] * len(recordings)
        rate, n = self.cfg.sample_rate, self.cfg.clip_samples
        short = [i for i, r in enumerate(recordings) if len(r) / rate <= self.long_audio_s]
        if short:
            waves = np.stack([fix_length(self.loudest_window(np.asarray(recordings[i], np.float32)), n) for i in short])
            for i, row in zip(short, self.clip_scores(waves)):
                answers[i] = self._clip_answer(row, threshold, top_k)
        return [a if a is not None else self.predict(r, threshold, top_k) for a, r in zip(answers, recordings)]

    def predict(self, samples: np.ndarray, threshold: float | None = None, top_k: int = 3,
                stride_s: float | None = None) -> dict[str, Any]:
        """Recognise ``samples`` (mono float32 at the bundle's sample rate).

        Short audio (<= ``long_audio_s``): one clip. ``threshold``: below it the keyword is
        ``_unknown_``. Longer audio: sliding windows fed to the streaming detector ->
        ``detections`` (``threshold`` replaces the operating point's threshold); the keyword is
        the most confident detection, else ``_silence_`` or ``_unknown_``.
        """
        samples = np.asarray(samples, np.float32)
        duration = len(samples) / self.cfg.sample_rate
        top_k = max(1, min(int(top_k), len(self.labels)))
        if duration <= self.long_audio_s:
            return self._clip_answer(self.scores_clip(self.loudest_window(samples)), threshold, top_k)
        stride = stride_s or self.stride_s
        starts, scores = self.scan(samples, stride)
        _finite(scores)
        dets = self.detect(starts, scores, threshold, duration)
        if dets:
            lead = max(dets, key=lambda d: d.confidence)
            row = scores[int(np.argmin(np.abs(starts - lead.start_s)))]
            keyword, confidence = lead.keyword, lead.confidence
        else:
            row = scores.mean(axis=0)
            silence_idx = self.labels.index(SILENCE) if SILENCE in self.labels else None
            best = int(np.argmax(row))
            keyword = SILENCE if silence_idx is not None and best == silence_idx else UNKNOWN
            confidence = float(row[self.labels.index(keyword)]) if keyword in self.labels else float(row[best])
        return {"keyword": keyword, "confidence": round(confidence, 6),
                "scores": top_scores(row, self.labels, top_k),
                "detections": [d.to_dict() for d in dets],
                "scan": {"windows": int(len(starts)), "window_s": self.window_s, "stride_s": stride}}

    def detect(self, starts: np.ndarray, scores: np.ndarray, threshold: float | None = None,
               duration_s: float | None = None, settings: DetectorSettings | None = None) -> list[Detection]:
        """Window scores (``starts`` in seconds) -> detections, through a fresh :class:`StreamDetector`
        with ``settings`` (default: this bundle's), ``threshold`` overriding their threshold. A
        detection spans the window where its keyword scored highest."""
        settings = settings or self.detector
        if threshold is not None:
            settings = settings.replace(threshold=float(threshold))
        half = self.window_s / 2
        found = StreamDetector(self.labels, settings).push_many(np.asarray(starts) + half, scores)
        cap = duration_s if duration_s is not None else float("inf")
        return [Detection(d.label, max(0.0, d.time_s - half), min(d.time_s + half, cap), d.confidence)
                for d in found]


def _finite(scores: np.ndarray) -> None:
    if not np.all(np.isfinite(scores)):  # never a NaN in an answer (the audio is checked; this is the model)
        raise KWSError("the model produced non-finite scores for this audio; the details are in the server log",
                       code="model_error", status=500)


def bundle_fingerprint(model_dir: str | Path) -> str | None:
    """Identity of the bundle now at ``model_dir`` (``None`` if absent or incomplete).

    Cheap enough to poll every second: the folder's inode and mtime (``promote`` swaps the
    whole folder by rename), the model file's size and mtime, and ``model_info.json``'s bytes.
    """
    path = Path(model_dir)
    try:
        folder = path.stat()
        model = (path / TFLITE_FILE).stat()
        info = (path / "model_info.json").read_bytes() if (path / "model_info.json").is_file() else b""
    except OSError:
        return None
    digest = hashlib.sha256(info)
    digest.update(f"{folder.st_ino}:{folder.st_mtime_ns}:{model.st_ino}:{model.st_size}:{model.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


# --------------------------------------------------------------------------- the singleton
_lock = threading.Lock()
_reload_lock = threading.Lock()
_rejected: dict[tuple, str] = {}  # key -> fingerprint of a bundle that failed to load (not retried)
_instances: dict[tuple, Predictor] = {}
_failures: dict[tuple, tuple[float, KWSError]] = {}
_loading: set[tuple] = set()


def _key(model_dir: str | Path, runtime: str, threads: int, long_audio_s: float, stride_s: float,
         detection_threshold: float, tta_shifts_ms: Sequence[float] = DEFAULT_TTA_SHIFTS_MS) -> tuple:
    return (str(Path(model_dir).resolve()), runtime, int(threads), float(long_audio_s), float(stride_s),
            float(detection_threshold), tuple(float(ms) for ms in tta_shifts_ms))


def get_predictor(model_dir: str | Path, runtime: str = "tflite", threads: int = 1, long_audio_s: float = 1.5,
                  stride_s: float = 0.25, detection_threshold: float = 0.6, retry_s: float = 5.0,
                  tta_shifts_ms: Sequence[float] = DEFAULT_TTA_SHIFTS_MS) -> Predictor:
    """The process-wide predictor for this configuration, loaded once (lock + double-checked).

    Raises the load error (a :class:`KWSError`, 503) when the bundle cannot be loaded; the
    load is retried after ``retry_s`` seconds.
    """
    key = _key(model_dir, runtime, threads, long_audio_s, stride_s, detection_threshold, tta_shifts_ms)
    inst = _instances.get(key)
    if inst is not None:  # fast path, no lock
        return inst
    with _lock:
        inst = _instances.get(key)
        if inst is not None:
            return inst
        failed = _failures.get(key)
        if failed and time.monotonic() - failed[0] < retry_s:
            raise failed[1]
        _loading.add(key)
        try:
            inst = Predictor(model_dir, runtime=runtime, threads=threads, long_audio_s=long_audio_s,
                             stride_s=stride_s, detection_threshold=detection_threshold, tta_shifts_ms=tta_shifts_ms)
        except KWSError as err:
            _failures[key] = (time.monotonic(), err)
            log.error("model bundle not loaded: %s", err.message)
            raise
        except Exception as err:  # noqa: BLE001 - any loader failure becomes a clean 503
            wrapped = BundleError(f"the model bundle at {model_dir} could not be loaded: {err}")
            _failures[key] = (time.monotonic(), wrapped)
            log.exception("model bundle not loaded")
            raise wrapped from None
        finally:
            _loading.discard(key)
        _failures.pop(key, None)
        _instances[key] = inst
        log.info("model %s v%s loaded from %s (%s runtime, %d labels) in %.2f s", inst.model_name,
                 inst.model_version, inst.meta.path, inst.runtime.name, len(inst.labels), inst.load_seconds)
        return inst


def peek(model_dir: str | Path, runtime: str = "tflite", threads: int = 1, long_audio_s: float = 1.5,
         stride_s: float = 0.25, detection_threshold: float = 0.6,
         tta_shifts_ms: Sequence[float] = DEFAULT_TTA_SHIFTS_MS) -> tuple[str, Predictor | KWSError | None]:
    """Non-blocking state: ``("ready", predictor)``, ``("loading", None)``, ``("failed", error)`` or ``("absent", None)``."""
    key = _key(model_dir, runtime, threads, long_audio_s, stride_s, detection_threshold, tta_shifts_ms)
    if key in _instances:
        return "ready", _instances[key]
    if key in _loading:
        return "loading", None
    if key in _failures:
        return "failed", _failures[key][1]
    return "absent", None


def reload_if_changed(model_dir: str | Path, runtime: str = "tflite", threads: int = 1, long_audio_s: float = 1.5,
                      stride_s: float = 0.25, detection_threshold: float = 0.6,
                      tta_shifts_ms: Sequence[float] = DEFAULT_TTA_SHIFTS_MS,
                      on_reject: Callable[[], None] | None = None) -> tuple[Predictor, Predictor] | None:
    """Swap in the bundle now at ``model_dir`` if it is not the loaded one: ``(old, new)``, else ``None``.

    Nothing happens before the first load (that is :func:`get_predictor`'s job), while the
    folder is absent or incomplete (``promote`` is mid-swap), or when this very bundle already
    failed to load (logged once, ``on_reject`` called once). The new predictor must load with
    ``runtime`` itself (no fallback: a broken ``model.tflite`` must not become a Keras model of
    three times the memory) and pass the warm-up answer check; it is built and warmed while the
    old one keeps serving, then replaces it atomically.
    """
    key = _key(model_dir, runtime, threads, long_audio_s, stride_s, detection_threshold, tta_shifts_ms)
    with _reload_lock:  # one reload at a time; readers never wait for it
        old = _instances.get(key)
        if old is None:
            return None
        fp = bundle_fingerprint(model_dir)
        if fp is None or fp == old.fingerprint or _rejected.get(key) == fp:
            return None
        try:
            new = Predictor(model_dir, runtime=runtime, threads=threads, long_audio_s=long_audio_s,
                            stride_s=stride_s, detection_threshold=detection_threshold, tta_shifts_ms=tta_shifts_ms,
                            fallback=False)
        except Exception as err:  # noqa: BLE001 - a bad bundle must never take the service down
            message = err.message if isinstance(err, KWSError) else f"{type(err).__name__}: {err}"
            if bundle_fingerprint(model_dir) == fp:  # not a swap in progress: this bundle is broken
                _rejected[key] = fp
                log.error("new model bundle at %s NOT loaded, still serving %s v%s (%s runtime): %s", model_dir,
                          old.model_name, old.model_version, old.runtime.name, message)
                if on_reject is not None:
                    on_reject()
            return None
        _rejected.pop(key, None)
        _instances[key] = new
        log.info("model reloaded: %s v%s -> %s v%s (%s, loaded and warmed in %.2f s)", old.model_name,
                 old.model_version, new.model_name, new.model_version, model_dir, new.load_seconds)
        return old, new


def reset() -> None:
    """Forget every loaded predictor (tests)."""
    with _lock:
        _instances.clear()
        _failures.clear()
        _rejected.clear()
