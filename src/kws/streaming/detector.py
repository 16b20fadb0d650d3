"""A streaming keyword detector over window scores (posterior smoothing, like TensorFlow's
``RecognizeCommands``).

Feed it the class scores of consecutive windows in time order, one at a time
(:meth:`StreamDetector.push`) or as a batch (:meth:`StreamDetector.push_many`). It keeps the
windows of the last ``average_window_s`` seconds, averages their scores, and emits a
:class:`Detection` when

* the averaged top label is a keyword (never ``_silence_`` or ``_unknown_``),
* its averaged score reaches ``threshold``,
* at least ``min_count`` windows are in the average (one window alone is never trusted),
* at least ``suppression_s`` seconds have passed since the last detection, unless it is a
  DIFFERENT keyword whose averaged score is above the last detection's confidence (see below), and
* for the SAME keyword as the last detection: its averaged score has dropped below
  ``threshold`` since then (the word ended). Without this re-arming, one long word still in
  view after ``suppression_s`` would be detected twice; a word said twice with any gap is not.

Suppression stops one word from being detected again and again as the window slides over it,
but it blocks every keyword, like TensorFlow's ``RecognizeCommands``. A word's start can look
like another keyword (the "o" of "off" is "on" until the "f" arrives), so a detection on the
first windows would hold the real word back until ``suppression_s`` is over: a live listener
would see it a second late. A more confident reading of a different keyword is therefore let
through at once: it follows the earlier detection rather than repeating it. Needing a higher
score than the detection it follows keeps this from alternating between two labels.

The state is per instance (one per stream or session), memory is bounded (at most
``max_windows`` windows are kept however dense the timestamps are), and :meth:`reset` starts
a new stream. Times are whatever clock the caller uses (seconds, increasing); the long-audio
service feeds each window's centre.

Example::

    det = StreamDetector(labels, DetectorSettings(threshold=0.7))
    for t, row in zip(times, scores):
        for d in det.push(t, row):
            print(d.label, d.time_s, d.confidence)
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from kws.errors import ConfigError, KWSError
from kws.labels import SILENCE, UNKNOWN


@dataclass(frozen=True)
class DetectorSettings:
    """How the detector decides; the operating point of a model (``detector.json`` in a bundle)."""

    threshold: float = 0.6         # averaged score of the keyword needed to detect it
    average_window_s: float = 0.5  # the windows of the last this-many seconds are averaged
    suppression_s: float = 1.0     # no detection within this many seconds of the previous one
    min_count: int = 2             # windows needed in the average

    def __post_init__(self) -> None:
        checks = [
            (isinstance(self.threshold, (int, float)) and 0.0 <= self.threshold <= 1.0,
             f"threshold must be within 0..1, got {self.threshold!r}"),
            (isinstance(self.average_window_s, (int, float)) and math.isfinite(self.average_window_s)
             and self.average_window_s >= 0, f"average_window_s must be >= 0 s, got {self.average_window_s!r}"),
            (isinstance(self.suppression_s, (int, float)) and math.isfinite(self.suppression_s)
             and self.suppression_s >= 0, f"suppression_s must be >= 0 s, got {self.suppression_s!r}"),
            (isinstance(self.min_count, int) and not isinstance(self.min_count, bool) and self.min_count >= 1,
             f"min_count must be a whole number >= 1, got {self.min_count!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"detector settings: {message}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DetectorSettings":
        """From a mapping (config, ``detector.json``); unknown keys are a :class:`ConfigError`."""
        known = {f.name for f in fields(cls)}
        extra = sorted(set(data) - known)
        if extra:
            raise ConfigError(f"detector settings: unknown key(s) {', '.join(extra)}; known: {', '.join(sorted(known))}")
        return cls(**dict(data))

    def replace(self, **changes: Any) -> "DetectorSettings":
        return DetectorSettings.from_dict({**self.to_dict(), **changes})


@dataclass(frozen=True)
class Detection:
    """One detected keyword: ``time_s`` is the time of the averaged window where the keyword
    scored highest (where the word is), ``fired_s`` the time of the window that triggered the
    detection (when it was known), ``confidence`` the averaged score."""

    label: str
    time_s: float
    confidence: float
    fired_s: float

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "time_s": round(self.time_s, 3), "confidence": round(self.confidence, 6),
                "fired_s": round(self.fired_s, 3)}


def keyword_mask(labels: Sequence[str], ignore: Iterable[str]) -> np.ndarray:
    """Which labels may be detected (every one not ignored); a :class:`ConfigError` if none."""
    ignored = set(ignore)
    mask = np.array([name not in ignored for name in labels])
    if not mask.any():
        raise ConfigError(f"no keyword among the labels {list(labels)}: everything is ignored")
    return mask


class StreamDetector:
    """Posterior smoothing + minimum count + suppression over a stream of window scores."""

    def __init__(self, labels: Sequence[str], settings: DetectorSettings | None = None,
                 ignore: Iterable[str] = (SILENCE, UNKNOWN), max_windows: int = 256):
        self.labels = list(labels)
        if not self.labels:
            raise ConfigError("the detector needs the model's labels")
        self.settings = settings or DetectorSettings()
        self._keyword = keyword_mask(self.labels, ignore)
        self._max = max(int(max_windows), self.settings.min_count)
        self.reset()

    def reset(self) -> None:
        """Forget the stream: a new one starts (nothing detected yet)."""
        self._times: deque[float] = deque()
        self._scores: deque[np.ndarray] = deque()
        self._sum = np.zeros(len(self.labels))  # running sum of the kept windows' scores
        self._last_label: int | None = None
        self._last_time = -math.inf
        self._last_confidence = 0.0
        self._armed = True  # False while the last detected keyword is still above threshold

    def push(self, time_s: float, scores: np.ndarray) -> list[Detection]:
        """Add one window's scores at ``time_s``; the detections it triggers (zero or one)."""
        row = np.asarray(scores, np.float64).reshape(-1)
        if row.shape[0] != len(self.labels):
            raise KWSError(f"window scores have {row.shape[0]} values but the detector has {len(self.labels)} labels",
                           code="bad_scores", status=422)
        time_s = float(time_s)
        if not math.isfinite(time_s) or not np.all(np.isfinite(row)):
            raise KWSError("window time and scores must be finite numbers", code="bad_scores", status=422)
        if self._times and time_s < self._times[-1]:
            raise KWSError(f"windows must come in time order: {time_s:g} s after {self._times[-1]:g} s",
                           code="bad_scores", status=422)
        self._times.append(time_s)
        self._scores.append(row)
        self._sum += row
        horizon = time_s - self.settings.average_window_s - 1e-9
        while self._times[0] < horizon or len(self._times) > self._max:
            self._times.popleft()
            self._sum -= self._scores.popleft()
        found = self._decide(time_s)
        return [found] if found else []

    def push_many(self, times: Sequence[float], scores: np.ndarray) -> list[Detection]:
        """:meth:`push` for each ``(times[i], scores[i])`` in order; all detections, in time order."""
        scores = np.asarray(scores)
        if len(times) != len(scores):
            raise KWSError(f"{len(times)} window times for {len(scores)} score rows", code="bad_scores", status=422)
        out: list[Detection] = []
        for t, row in zip(times, scores):
            out.extend(self.push(t, row))
        return out

    def _decide(self, now: float) -> Detection | None:
        s = self.settings
        count = len(self._scores)
        mean = self._sum / count
        if self._last_label is not None and not self._armed:
            # re-arm once the previous keyword's smoothed score has fallen below the threshold
            self._armed = bool(mean[self._last_label] < s.threshold)
        best = int(np.argmax(mean))
        if not self._keyword[best] or mean[best] < s.threshold or count < s.min_count:
            return None
        if best == self._last_label and not self._armed:
            return None
        suppressed = now - self._last_time < s.suppression_s - 1e-9
        if suppressed and (best == self._last_label or mean[best] <= self._last_confidence):
            return None  # only a more confident different keyword follows a detection this soon
        peak = int(np.argmax([row[best] for row in self._scores]))
        confidence = float(min(1.0, mean[best]))
        self._last_label, self._last_time, self._last_confidence, self._armed = best, now, confidence, False
        return Detection(self.labels[best], float(self._times[peak]), confidence, now)


class SmoothedStream:
    """A whole stream's window scores, averaged once for ``settings``' window: the detections a
    fresh :class:`StreamDetector` with these settings would make, at ANY threshold, without
    feeding it window by window again (a threshold sweep reruns only the decisions, which are
    few). The same rules as :meth:`StreamDetector._decide`; ``settings.threshold`` is not used.
    tests/test_detector.py holds it equal to ``StreamDetector.push_many``."""

    def __init__(self, labels: Sequence[str], settings: DetectorSettings, times: Sequence[float], scores: np.ndarray,
                 ignore: Iterable[str] = (SILENCE, UNKNOWN), max_windows: int = 256):
        self.labels, self.settings = list(labels), settings
        self.times = np.asarray(times, np.float64).reshape(-1)
        self.scores = np.asarray(scores, np.float64).reshape(len(self.times), -1)
        if self.scores.shape[1] != len(self.labels):
            raise KWSError(f"window scores have {self.scores.shape[1]} values but the detector has "
                           f"{len(self.labels)} labels", code="bad_scores", status=422)
        if not (np.all(np.isfinite(self.times)) and np.all(np.isfinite(self.scores))):
            raise KWSError("window time and scores must be finite numbers", code="bad_scores", status=422)
        if np.any(np.diff(self.times) < 0):
            raise KWSError("windows must come in time order", code="bad_scores", status=422)
        n = len(self.times)
        keep = max(int(max_windows), settings.min_count)
        # the windows StreamDetector keeps at window i: those of the last average_window_s, at most `keep`
        self.first = np.maximum(np.searchsorted(self.times, self.times - settings.average_window_s - 1e-9, "left"),
                                np.arange(n) - keep + 1)
        count = np.arange(n) + 1 - self.first
        total = np.vstack([np.zeros((1, len(self.labels))), np.cumsum(self.scores, axis=0)])
        self.mean = (total[1:] - total[self.first]) / count[:, None]
        self.best = np.argmax(self.mean, axis=1)
        self.top = self.mean[np.arange(n), self.best]
        self._candidate = keyword_mask(self.labels, ignore)[self.best] & (count >= settings.min_count)

    def detections(self, threshold: float) -> list[Detection]:
        """What ``StreamDetector(labels, settings.replace(threshold=threshold)).push_many(times, scores)`` returns."""
        s, out = self.settings, []
        last, last_time, last_conf, armed_at = None, -math.inf, 0.0, 0
        for i in np.flatnonzero(self._candidate & (self.top >= threshold)):
            best = int(self.best[i])
            if best == last and i < armed_at:
                continue  # the same keyword, still above the threshold since it was detected
            if self.times[i] - last_time < s.suppression_s - 1e-9 and (best == last or self.top[i] <= last_conf):
                continue  # only a more confident different keyword follows a detection this soon
            lo = int(self.first[i])
            peak = lo + int(np.argmax(self.scores[lo:i + 1, best]))
            last, last_time, last_conf = best, float(self.times[i]), float(min(1.0, self.top[i]))
            out.append(Detection(self.labels[best], float(self.times[peak]), last_conf, last_time))
            below = np.flatnonzero(self.mean[i + 1:, best] < threshold)  # where the detector re-arms
            armed_at = i + 1 + int(below[0]) if len(below) else len(self.times)
        return out
