"""The ORIGINAL project's model (``../shared/baselines/original_cnn``) scored beside ours on the
same clips and the same streams, through ITS OWN front end: used by ``bench_real.py`` and
``bench_det_compare.py``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from _common import paths
from real_pooling import STREAM_KEYS, det_rows

ORIGINAL = paths.BASELINES / "original_cnn"
ORIGINAL_WORDS = ("bed bird cat dog down eight five four go happy house left marvin nine no off on one "
                  "right seven sheila six stop three tree two up wow yes zero").split()


class OriginalModel:
    """The original project's model as a ``classify(path) -> 12-class label`` (its own features:
    librosa at 22.05 kHz, first second, 13 MFCCs, n_fft 2048, hop 512; a keyword is itself,
    any other of its 30 words ``_unknown_``; it has no ``_silence_``). Predictions are batched
    per fold and looked up."""

    def __init__(self, path: Path = ORIGINAL / "model.h5"):
        import keras

        self.model = keras.models.load_model(str(path), compile=False)
        self.cache: dict[str, str] = {}

    def precompute(self, paths: list[Path]) -> None:
        from legacy_serving import legacy_mfcc

        from kws.labels import KEYWORDS, UNKNOWN

        todo = [p for p in paths if str(p) not in self.cache]
        if not todo:
            return
        x = np.stack([legacy_mfcc(p) for p in todo])[..., None].astype(np.float32)
        words = np.asarray(ORIGINAL_WORDS)[self.model.predict(x, batch_size=256, verbose=0).argmax(axis=1)]
        for p, w in zip(todo, words):
            self.cache[str(p)] = w if w in KEYWORDS else UNKNOWN

    def __call__(self, path: Path) -> str:
        return self.cache[str(path)]


class OriginalStreams:
    """The original model as the stream benchmark's predictor: 1 s windows at the stride, each
    through ITS front end (the stream resampled once to 22.05 kHz, 13 MFCCs, n_fft 2048, hop 512)
    and its Keras model; its 30 words folded into our labels (a keyword is itself, any other word
    ``_unknown_``; it has no ``_silence_``). The same detector and sweep choose its operating point."""

    window_s = 1.0

    def __init__(self, original: OriginalModel, labels: list[str]):
        from types import SimpleNamespace

        from kws.streaming.detector import DetectorSettings

        self.model, self.labels = original.model, list(labels)
        self.cfg = SimpleNamespace(sample_rate=16000)
        self.detector = DetectorSettings()
        fold = np.zeros((len(ORIGINAL_WORDS), len(self.labels)), np.float32)
        for i, word in enumerate(ORIGINAL_WORDS):
            fold[i, self.labels.index(word) if word in self.labels else self.labels.index("_unknown_")] = 1.0
        self._fold = fold

    def scan(self, samples: np.ndarray, stride_s: float) -> tuple[np.ndarray, np.ndarray]:
        import librosa
        from legacy_serving import HOP_LENGTH, N_FFT, N_MFCC, SAMPLES_TO_CONSIDER

        sr = 22050
        wave = librosa.resample(np.asarray(samples, np.float32), orig_sr=16000, target_sr=sr)
        starts = np.arange(0.0, len(samples) / 16000 - self.window_s + 1e-9, stride_s)
        windows = np.stack([wave[int(round(t * sr)):int(round(t * sr)) + SAMPLES_TO_CONSIDER] for t in starts])
        mfcc = librosa.feature.mfcc(y=windows, sr=sr, n_mfcc=N_MFCC, n_fft=N_FFT, hop_length=HOP_LENGTH)
        x = np.swapaxes(mfcc, -1, -2)[..., None].astype(np.float32)
        return starts, self.model.predict(x, batch_size=256, verbose=0) @ self._fold

    def detect(self, starts, scores, duration_s=None, settings=None):
        from kws.serving.predictor import window_detections

        return window_detections(self.labels, self.window_s, settings or self.detector, starts, scores, duration_s)


def original_streams(cfg, original: OriginalModel, labels: list[str]) -> dict:
    """The original model on this fold's very streams, its operating point chosen the same way."""
    from omegaconf import OmegaConf

    from kws.stages.stream import split_streams, thresholds
    from kws.streaming import benchmark as bm

    sc, features, pred = cfg.stream, Path(cfg.paths.features), OriginalStreams(original, labels)
    stride, tol, late = float(sc.stride_s), float(sc.tolerance_s), sc.get("max_latency_s")
    val, _ = split_streams(features, "validation", sc, 16000)
    test, _ = split_streams(features, "test", sc, 16000)
    grid, sweep = bm.settings_grid(OmegaConf.to_container(sc.smoothing, resolve=True)), thresholds(sc.thresholds)
    chosen = bm.choose(pred, bm.score_streams(pred, val, stride), grid, sweep, float(sc.target_fa_per_hour), tol, late)
    test_scored = bm.score_streams(pred, test, stride)
    at_test = bm.outcome(pred, test_scored, chosen["settings"], tol, late).summary()
    curve = bm.curve(pred, test_scored, chosen["settings"], sweep, tol, late)
    return {"settings": chosen["settings"].to_dict(), "validation": {"recall": chosen["row"]["recall"]},
            **{k: at_test[k] for k in STREAM_KEYS}, "det": det_rows(curve)}
