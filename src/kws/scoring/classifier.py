"""The service's classifier as ``path -> label``, and clip-by-clip scoring.

A clip goes through exactly what the HTTP service does with an upload (:func:`kws.audio.decode`,
:func:`kws.audio.check_not_silent`, then :meth:`kws.serving.predictor.Predictor.predict`), so
the figure is the service's own. A clip the service would reject (corrupt, empty, silent, too
long) is not a crash: :func:`score` counts it as wrong and lists it under ``errors``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from kws.errors import ConfigError, DatasetError, KWSError
from kws.scoring.folders import Item
from kws.scoring.summary import Row, summarize


def error_message(err: Exception) -> str:
    return getattr(err, "message", None) or str(err)


class BundleClassifier:
    """``classify(path) -> label`` through the service's decoder and predictor (loaded once)."""

    def __init__(self, bundle: str | Path, runtime: str = "tflite", threshold: float | None = None,
                 max_duration_s: float = 60.0, tta_shifts_ms: Sequence[float] | None = None):
        from kws.serving.predictor import Predictor

        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ConfigError(f"threshold must be between 0 and 1, got {threshold:g}")
        rule = {} if tta_shifts_ms is None else {"tta_shifts_ms": tuple(tta_shifts_ms)}  # None: the service's rule
        self.predictor = Predictor(bundle, runtime=runtime, warmup=True, **rule)
        self.labels = list(self.predictor.labels)
        self.runtime = self.predictor.runtime.name
        self.threshold = threshold
        self.max_duration_s = max_duration_s

    def load(self, path: Path) -> np.ndarray:
        """The clip's samples as the service decodes an upload (a :class:`KWSError` where it would refuse it)."""
        from kws.audio import check_not_silent, decode

        try:
            data = Path(path).read_bytes()
        except OSError as err:
            raise DatasetError(f"cannot read {path}: {err.strerror or err}") from None
        audio = decode(data, sample_rate=self.predictor.cfg.sample_rate, max_duration_s=self.max_duration_s)
        check_not_silent(audio.samples)  # the service answers 422 to silent audio
        return audio.samples

    def __call__(self, path: Path) -> str:
        return self.predictor.predict(self.load(path), threshold=self.threshold)["keyword"]

    def classify_many(self, paths: Sequence[Path]) -> list[Row]:
        """``(predicted label or None, error message or None, seconds per clip)`` of each path; the
        clips that decode are scored together (:meth:`Predictor.predict_clips`: one feature pass
        and one runtime call), which answers what :meth:`__call__` answers clip by clip."""
        t0 = time.perf_counter()
        loaded, errors = {}, {}
        for i, path in enumerate(paths):
            try:
                loaded[i] = self.load(path)
            except (KWSError, OSError) as err:
                errors[i] = error_message(err)
        answers = dict(zip(loaded, self.predictor.predict_clips(list(loaded.values()), threshold=self.threshold)))
        seconds = (time.perf_counter() - t0) / max(1, len(paths))
        return [(answers[i]["keyword"], None, seconds) if i in answers else (None, errors[i], seconds)
                for i in range(len(paths))]


def bundle_classifier(bundle: str | Path, runtime: str = "tflite", threshold: float | None = None) -> BundleClassifier:
    """A callable ``path -> predicted label`` with ``.labels``, ``.runtime`` and ``.predictor``."""
    return BundleClassifier(bundle, runtime=runtime, threshold=threshold)


def score(items: Iterable[Item], classify: Callable[[Path], str], labels: Sequence[str], progress: bool = True) -> dict:
    """Run ``classify`` on every ``(path, true label)``, one clip at a time; the
    :func:`~kws.scoring.summary.summarize` of the answers (latency: each clip's own)."""
    from tqdm import tqdm

    items = list(items)
    started = time.perf_counter()
    rows: list[Row] = []
    bar = tqdm(items, desc="scoring", unit="clip", file=sys.stderr, disable=(not progress or len(items) < 20) or None)
    for path, _ in bar:
        t0 = time.perf_counter()
        try:
            rows.append((classify(path), None, time.perf_counter() - t0))
        except (KWSError, OSError) as err:
            rows.append((None, error_message(err), time.perf_counter() - t0))
    return summarize(items, rows, labels, time.perf_counter() - started)
