"""The keyword-spotting predictor: a loaded model bundle and its runtime, answering audio.

* The runtime (TFLite float32 or int8, or Keras) comes from :func:`kws.serving.runtimes.load_runtime`;
  the process-wide predictors and their live reload are :mod:`kws.serving.registry`'s. A
  predictor records its bundle's identity (:func:`bundle_fingerprint`) for that reload.
* Features come from :func:`kws.features.extract` (log-mel or MFCC, as the bundle says) — the same code the training pipeline used,
  with the bundle's ``features.json``.
* A short clip is scored alone by default (:data:`DEFAULT_TTA_SHIFTS_MS`). With test-time shifts
  (``tta_shifts_ms``, e.g. :data:`kws.views.VIEW_SHIFTS_MS`) it is scored in ONE feature pass
  and ONE runtime call: the features of the clip zero-padded by the largest shift on both sides,
  sliced at whole-frame offsets, give exactly the features of each zero-filled shifted clip
  (every frame depends on its own window only), and the views go to the runtime as one batch.
  Shifts are therefore whole feature hops; a setting that is not is rounded to the nearest hop
  (half a hop away from zero), logged, and ``describe()`` shows the shifts in use.
  Where the bundle has a views model for these shifts and this TFLite runtime
  (:mod:`kws.views`: the trunk run once over the padded clip, each view's crop through the
  head, the scores averaged), that one invoke of one padded clip replaces the batch of views;
  a views model that does not load or answer sanely is left out (logged) and the batch serves.
  ``describe()`` ``clip_path`` says which.
* Long audio is scanned with 1 s windows every ``stride_s`` seconds, all windows batched into
  as few runtime calls as possible, and the window scores are fed in time order to the
  streaming detector (:class:`kws.streaming.detector.StreamDetector`: smoothing, minimum count,
  suppression) with the bundle's operating point (``detector.json``) when it has one.
* A freshly loaded predictor is warmed up with a full inference, and its warm-up answers are
  checked (:meth:`Predictor.check_answer`): a model that loads but is broken is refused.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from kws.audio import fix_length
from kws.bundle import TFLITE_FILE, BundleMeta, pin_frontend, read_meta
from kws.errors import BundleError, ConfigError, KWSError
from kws.features import clip_features, extract
from kws.labels import SILENCE, UNKNOWN
from kws.serving.runtimes import TFLiteRuntime, load_runtime, single_threaded_blas
from kws.streaming.detector import DetectorSettings, StreamDetector
from kws.views import DEFAULT_TTA_SHIFTS_MS, RUNTIME_FILES, VIEWS_INFO_FILE, shift_frames, views_file  # noqa: F401

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Detection:
    keyword: str
    start_s: float
    end_s: float
    confidence: float
    fired_s: float | None = None  # when it was known: the end of the window that decided it (not in answers)

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
    """A loaded bundle + runtime; all methods are thread-safe. ``use_views``: score short clips
    with the bundle's views model where it matches (the module's doc); off: the batch of views."""

    def __init__(self, model_dir: str | Path, runtime: str = "tflite", threads: int = 1,
                 long_audio_s: float = 1.5, stride_s: float = 0.25, detection_threshold: float = 0.6,
                 warmup: bool = True, tta_shifts_ms: Sequence[float] = DEFAULT_TTA_SHIFTS_MS, fallback: bool = True,
                 use_views: bool = True):
        t0 = time.perf_counter()
        single_threaded_blas()
        self.fingerprint = bundle_fingerprint(model_dir)  # before reading: a swap during the load shows up later
        self.meta = read_meta(model_dir)
        self.frontend_pinned = pin_frontend(self.meta)
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
        self._views, self.clip_path = self._load_views(threads, use_views)
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
            "frontend": "bundle" if self.frontend_pinned else "librosa",
            "metrics": self.meta.metrics,
            "model_info": self.meta.info,
            "runtime": self.runtime.name,
            "scan": {"window_s": self.window_s, "stride_s": self.stride_s, "long_audio_s": self.long_audio_s,
                     "detection_threshold": self.detector.threshold},
            "detector": {**self.detector.to_dict(), "source": self.detector_source,
                         **({"operating_point": self.meta.detector.get("operating_point")}
                            if self.meta.detector.get("operating_point") else {})},
            "tta_shifts_ms": list(self.tta_shifts_ms),
            "clip_path": dict(self.clip_path),
        }

    def _load_views(self, threads: int, use_views: bool) -> tuple[TFLiteRuntime | None, dict[str, Any]]:
        """The bundle's views model for these shifts and this runtime (:func:`kws.views.views_file`),
        loaded, and ``clip_path`` (which rule scores a short clip, and why)."""
        pad = max(abs(k) for k in self._tta_frames)
        if pad == 0:
            return None, {"rule": "clip_alone"}
        if not use_views:
            return None, self._batch_path("use_views is off")
        path, why = views_file(self.meta, self.runtime.name, self._tta_frames)
        if path is None:
            return None, self._batch_path(why)
        try:
            views = TFLiteRuntime(path, num_threads=threads, name=self.runtime.name)
            want = (self.cfg.n_frames + 2 * pad, self.cfg.n_coeffs, 1)
            if tuple(views.input_shape) != want or views.n_outputs != len(self.labels):
                raise BundleError(f"{path.name} takes {tuple(views.input_shape)} and gives {views.n_outputs} "
                                  f"scores, expected {want} and {len(self.labels)}")
        except BundleError as err:
            return None, self._batch_path(f"{path.name} not used: {err.message}", warn=True)
        return views, {"rule": "views_model", "file": path.name, "why": why}

    def _batch_path(self, why: str, warn: bool = False) -> dict[str, Any]:
        if warn:
            log.warning("views model left out, the batch of views serves: %s", why)
        return {"rule": "batch_of_views", "views": len(self._tta_frames), "why": why}

    def warmup(self) -> None:
        """One full pass (features + inference, all batch sizes) so the first request is not slow."""
        rng = np.random.default_rng(0)
        wave = (rng.standard_normal(int(self.cfg.sample_rate * 3)) * 0.01).astype(np.float32)
        if self._views is not None:  # its own check first: a bad views model is left out, not the bundle
            try:
                self.check_answer(self.clip_scores(wave[None, : self.cfg.clip_samples]), "a clip (views model)")
            except BundleError as err:
                self._views = None
                self.clip_path = self._batch_path(f"{self.clip_path['file']} not used: {err.message}", warn=True)
        self.check_answer(self.scores_clip(wave[: self.cfg.clip_samples])[None], "a clip")
        self.check_answer(self.scan(wave, self.stride_s)[1], "a scan")
        for runtime in (self.runtime, self._views):
            warm = getattr(runtime, "warm", None)
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
        # an int8 model's softmax is quantized to steps of 1/256, so its rows sum to 1 only within
        # about one step per label; a broken model misses 1 by far more than that
        tolerance = 1e-3 if self.runtime.name != "tflite_int8" else len(self.labels) / 256
        if np.any(np.abs(sums - 1.0) > tolerance) or np.any(scores < -1e-6):
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
        runtime call for all ``n * shifts`` views, or one row per clip through the views model
        (the module's doc)."""
        waves = np.asarray(waves, np.float32)
        frames, pad = self.cfg.n_frames, max(abs(k) for k in self._tta_frames)
        if pad == 0:  # every view is the clip itself
            return self.runtime.infer(self.features(waves))
        edge = pad * self.cfg.hop_length
        feats = extract(np.pad(waves, ((0, 0), (edge, edge))), self.cfg, any_length=True)
        if self._views is not None:  # the views model: the padded clips' features, one row each
            return self._views.infer(feats[..., None])
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
        return window_detections(self.labels, self.window_s, settings, starts, scores, duration_s)


def window_detections(labels: Sequence[str], window_s: float, settings: DetectorSettings, starts: np.ndarray,
                      scores: np.ndarray, duration_s: float | None = None) -> list[Detection]:
    """The detections of windows of ``window_s`` seconds starting at ``starts`` (one score row
    each, ``labels``' order): a fresh :class:`StreamDetector` fed each window's centre, each
    detection spanning the window where its keyword peaked (within ``0..duration_s``), with the
    end of the window that decided it."""
    half = window_s / 2
    found = StreamDetector(labels, settings).push_many(np.asarray(starts) + half, scores)
    cap = duration_s if duration_s is not None else float("inf")
    return [Detection(d.label, max(0.0, d.time_s - half), min(d.time_s + half, cap), d.confidence,
                      d.fired_s + half) for d in found]


def _finite(scores: np.ndarray) -> None:
    if not np.all(np.isfinite(scores)):  # never a NaN in an answer (the audio is checked; this is the model)
        raise KWSError("the model produced non-finite scores for this audio; the details are in the server log",
                       code="model_error", status=500)


def bundle_fingerprint(model_dir: str | Path) -> str | None:
    """Identity of the bundle now at ``model_dir`` (``None`` if absent or incomplete).

    Cheap enough to poll every second: the folder's inode and mtime (``promote`` swaps the
    whole folder by rename), the model files' sizes and mtimes (the views models' too, where
    present), and the bytes of ``model_info.json`` and ``views.json``.
    """
    path = Path(model_dir)
    try:
        folder = path.stat()
        models = [(path / TFLITE_FILE).stat()] + [(path / f).stat() for f in RUNTIME_FILES.values()
                                                   if (path / f).is_file()]
        digest = hashlib.sha256()
        for name in ("model_info.json", VIEWS_INFO_FILE):
            digest.update((path / name).read_bytes() if (path / name).is_file() else b"-")
    except OSError:
        return None
    digest.update(f"{folder.st_ino}:{folder.st_mtime_ns}".encode())
    for m in models:
        digest.update(f":{m.st_ino}:{m.st_size}:{m.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]
