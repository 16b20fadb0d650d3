"""Live-listening sessions: the state of one audio stream between its HTTP chunks.

Waitress speaks plain HTTP/1.1 (no WebSocket), so a live stream is a SESSION of small POSTs:
the client opens a session, posts 100–250 ms of audio per request, in order, and every answer
carries the detections that this chunk completed. What must survive between two requests lives
here, per session and bounded:

* a buffer of the samples not yet covered by a window (less than one window, plus at most one
  chunk: ``capacity`` samples, allocated once);
* the stream clock (samples received) and where the next window starts: windows start at
  ``0, stride, 2·stride, …`` exactly like the long-audio scan of ``/predict``, so a file streamed
  in chunks gives the windows, scores and detections ``/predict`` gives for the whole file;
* the :class:`~kws.streaming.detector.StreamDetector` (smoothing, minimum count, suppression),
  whose own memory is bounded too.

:class:`SessionStore` bounds the number of open sessions, expires idle ones, and remembers the
ids of recently closed or expired sessions (bounded) so that a late chunk gets a precise answer
(410 ``session_closed`` / ``session_expired``) instead of "unknown". Each session has a lock:
the chunks of one session are processed one at a time; different sessions never wait for each
other. The model is NOT held by a session: each chunk is scored by the predictor current at
that moment, so a session keeps answering across a champion swap (a new label set or operating
point starts a fresh detector; the audio buffer and the clock go on).
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from kws.errors import KWSError
from kws.streaming.detector import DetectorSettings, StreamDetector

log = logging.getLogger(__name__)

#: How many ids of closed/expired sessions are remembered for a precise 410 (bounded memory).
GONE_MEMORY = 4096
#: How long a chunk waits for its session's lock (another chunk of the SAME session being scored).
LOCK_WAIT_S = 10.0


class SessionError(KWSError):
    """A session cannot take this request (unknown, gone, busy, full)."""

    status = 409
    code = "session_error"


def detector_settings(pred: Any, threshold: float | None) -> DetectorSettings:
    """The predictor's operating point (the bundle's ``detector.json`` where the predictor reads
    one), else the detector's defaults at the service's detection threshold; ``threshold`` (the
    session's own, like ``/predict?threshold=``) replaces its threshold."""
    settings = getattr(pred, "detector", None)
    if not isinstance(settings, DetectorSettings):
        settings = DetectorSettings(threshold=float(pred.detection_threshold))
    return settings if threshold is None else settings.replace(threshold=float(threshold))


@dataclass(frozen=True)
class Window:
    """The windows one chunk completed."""

    starts: np.ndarray  # absolute sample indexes of their first samples
    waves: np.ndarray  # (n, clip_samples) float32


class Session:
    """One live stream (see the module doc). Use :meth:`feed` under :attr:`lock`."""

    def __init__(self, sid: str, sample_rate: int, capacity: int, threshold: float | None, now: float):
        self.id = sid
        self.sample_rate = int(sample_rate)
        self.threshold = threshold
        self.lock = threading.Lock()
        self.created = now
        self.last_used = now
        self.received = 0  # samples received: the stream clock
        self.next_start = 0  # absolute index of the next window's first sample
        self.seq = 0  # chunks accepted
        self.detected = 0
        self._buf = np.zeros(int(capacity), np.float32)
        self._buf_start = 0  # absolute index of _buf[0]
        self._detector: StreamDetector | None = None
        self._detector_key: tuple | None = None
        self.last_scores: dict[str, float] | None = None
        self.last_window_s: float | None = None

    @property
    def t_s(self) -> float:
        return self.received / self.sample_rate

    @property
    def capacity(self) -> int:
        return len(self._buf)

    # -- audio
    def _append(self, samples: np.ndarray) -> None:
        """Keep the samples from ``next_start`` on (less than one window) and add ``samples``."""
        keep_from = min(self.next_start, self.received)
        kept = self.received - keep_from
        if kept + len(samples) > len(self._buf):  # a larger model after a swap: grow once
            grown = np.zeros(kept + len(samples), np.float32)
            grown[:kept] = self._buf[keep_from - self._buf_start: self.received - self._buf_start]
            self._buf = grown
        else:
            offset = keep_from - self._buf_start
            self._buf[:kept] = self._buf[offset:offset + kept]
        self._buf[kept:kept + len(samples)] = samples
        self._buf_start = keep_from
        self.received += len(samples)

    def _windows(self, clip: int, hop: int) -> Window:
        starts = []
        while self.next_start + clip <= self.received:
            starts.append(self.next_start)
            self.next_start += hop
        waves = np.empty((len(starts), clip), np.float32)
        for i, s in enumerate(starts):
            waves[i] = self._buf[s - self._buf_start: s - self._buf_start + clip]
        return Window(np.asarray(starts, np.int64), waves)

    # -- detection
    def _detector_for(self, pred: Any) -> StreamDetector:
        settings = detector_settings(pred, self.threshold)
        key = (tuple(pred.labels), settings)
        if self._detector is None or key != self._detector_key:
            if self._detector is not None:
                log.info("session %s: new labels or operating point (model %s v%s): detector restarted",
                         self.id[:8], pred.model_name, pred.model_version)
            self._detector, self._detector_key = StreamDetector(pred.labels, settings), key
        return self._detector

    def feed(self, samples: np.ndarray, pred: Any, stride_s: float) -> dict[str, Any]:
        """Add one chunk, score every window it completes with ``pred``, run the detector.

        Returns the new detections (``keyword``, ``time_s`` = centre of the window where the
        keyword scored highest, ``start_s``/``end_s`` = that window, ``confidence``, ``fired_s`` =
        centre of the window that completed the detection), the scores of the latest window, and
        the level of the chunk."""
        if pred.cfg.sample_rate != self.sample_rate:
            raise SessionError(f"the model now served works at {pred.cfg.sample_rate} Hz but this session streams "
                               f"{self.sample_rate} Hz: open a new session", code="session_model_changed")
        clip = pred.cfg.clip_samples
        hop = max(1, int(round(stride_s * self.sample_rate)))
        self._append(samples)
        win = self._windows(clip, hop)
        detector = self._detector_for(pred)
        half = pred.window_s / 2
        found = []
        if len(win.starts):
            scores = np.concatenate([pred.runtime.infer(pred.features(win.waves[i:i + 64]))
                                     for i in range(0, len(win.waves), 64)])
            centres = win.starts / self.sample_rate + half
            found = detector.push_many(centres, scores)
            self.last_scores = {label: round(float(s), 4) for label, s in zip(pred.labels, scores[-1])}
            self.last_window_s = round(float(centres[-1]), 3)
        self.seq += 1
        self.detected += len(found)
        end_cap = self.t_s
        detections = [{"keyword": d.label, "time_s": round(d.time_s, 3),
                       "start_s": round(max(0.0, d.time_s - half), 3), "end_s": round(min(d.time_s + half, end_cap), 3),
                       "confidence": round(d.confidence, 6), "fired_s": round(d.fired_s, 3)} for d in found]
        return {"detections": detections, "windows": int(len(win.starts)), "scores": self.last_scores,
                "window_time_s": self.last_window_s, "level": level(samples)}


def level(samples: np.ndarray) -> dict[str, float]:
    """RMS level of a chunk in dBFS (floored at -120) and its peak amplitude, for a level meter."""
    if not len(samples):
        return {"rms_dbfs": -120.0, "peak": 0.0}
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
    return {"rms_dbfs": round(max(-120.0, 20 * math.log10(rms)) if rms > 0 else -120.0, 1),
            "peak": round(float(np.max(np.abs(samples))), 4)}


class SessionStore:
    """The open sessions of one process: bounded in number, idle ones expired (see the module doc)."""

    def __init__(self, max_sessions: int, idle_s: float, clock: Callable[[], float] = time.monotonic,
                 on_end: Callable[[str], None] | None = None):
        self.max_sessions = int(max_sessions)
        self.idle_s = float(idle_s)
        self._clock = clock
        self._sessions: dict[str, Session] = {}
        self._gone: OrderedDict[str, str] = OrderedDict()  # id -> "closed" | "expired"
        self._lock = threading.Lock()
        self._on_end = on_end or (lambda reason: None)

    def __len__(self) -> int:
        return len(self._sessions)

    def _forget(self, sid: str, reason: str) -> None:
        self._sessions.pop(sid, None)
        self._gone[sid] = reason
        while len(self._gone) > GONE_MEMORY:
            self._gone.popitem(last=False)
        self._on_end(reason)

    def sweep(self) -> int:
        """Expire the sessions idle for more than ``idle_s`` (never one busy with a chunk)."""
        now = self._clock()
        with self._lock:
            idle = [s for s in self._sessions.values() if now - s.last_used > self.idle_s and not s.lock.locked()]
            for s in idle:
                self._forget(s.id, "expired")
        for s in idle:
            log.info("stream session %s expired after %.0f s idle (%.1f s of audio)", s.id[:8], self.idle_s, s.t_s)
        return len(idle)

    def open(self, sample_rate: int, capacity: int, threshold: float | None = None,
             requested_id: str | None = None) -> Session:
        """A new session; ``requested_id`` (the proxy's, see ``stream_api``) when it is free."""
        self.sweep()
        with self._lock:
            if len(self._sessions) >= self.max_sessions:
                raise SessionError(f"{len(self._sessions)} live sessions are open, the limit of this server "
                                   f"(KWS_STREAM_MAX_SESSIONS={self.max_sessions}); close one or retry later",
                                   code="too_many_sessions", status=429)
            sid = requested_id
            if not sid or sid in self._sessions or sid in self._gone:
                sid = secrets.token_hex(16)
            session = Session(sid, sample_rate, capacity, threshold, self._clock())
            self._sessions[sid] = session
        return session

    def get(self, sid: str) -> Session:
        """The open session ``sid``; 404 ``unknown_session`` or 410 ``session_closed``/``session_expired``."""
        self.sweep()
        with self._lock:
            session = self._sessions.get(sid)
            if session is not None:
                session.last_used = self._clock()
                return session
            gone = self._gone.get(sid)
        if gone == "closed":
            raise SessionError(f"session {sid} was closed; open a new one with POST /stream",
                               code="session_closed", status=410)
        if gone == "expired":
            raise SessionError(f"session {sid} expired after {self.idle_s:g} s without a chunk "
                               "(KWS_STREAM_IDLE_S); open a new one with POST /stream", code="session_expired", status=410)
        raise SessionError(f"no live session {sid!r} on this server (never opened, or this server restarted); "
                           "open one with POST /stream", code="unknown_session", status=404)

    def close(self, sid: str) -> Session:
        session = self.get(sid)
        with self._lock:
            if sid in self._sessions:
                self._forget(sid, "closed")
        return session

    def acquire(self, session: Session) -> None:
        """Take the session's lock (chunks of one session run one at a time); 409 when it stays busy."""
        if not session.lock.acquire(timeout=LOCK_WAIT_S):
            raise SessionError(f"session {session.id} is still busy with an earlier chunk after {LOCK_WAIT_S:g} s; "
                               "send the chunks of one session one after another", code="session_busy")
        if session.id not in self._sessions:  # closed or expired while this chunk waited
            session.lock.release()
            self.get(session.id)
