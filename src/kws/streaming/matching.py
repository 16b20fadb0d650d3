"""Detections vs the truth of a stream (like TensorFlow's ``test_streaming_accuracy``), and the
DET curve over thresholds.

Rules, per detection in time order (``tolerance_s`` = 0.75 s by default, TensorFlow's):

* the nearest truth word within the tolerance that no earlier detection has taken is taken;
  a keyword with the same label -> **hit**; a keyword with another label -> **wrong word**;
  another word (``_unknown_``) -> **false accept** (a keyword heard in a non-keyword);
* no free truth word within the tolerance -> **false accept**: in noise, or a second detection
  of a word already taken (``duplicates`` counts those among the false accepts);
* keyword truths left untaken -> **misses**.

Recall is hits / keywords said; false accepts per hour are over the streams' total duration.
Wrong words are reported apart (neither a hit nor a false accept), as TensorFlow does.

Latency: where a detection says when it was known (``Found.fired_s``, the end of the window that
decided it) and the truth where the word's speech ended (``Truth.end_s``), a hit's latency is
the difference. With ``max_latency_s``, hits later than that are counted as ``late`` and
``recall_on_time`` leaves them out: a live listener who sees a word a second after saying it
has not been answered.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from kws.labels import SILENCE, UNKNOWN
from kws.streaming.generate import Truth

TOLERANCE_S = 0.75
NOT_KEYWORDS = (SILENCE, UNKNOWN)


@dataclass(frozen=True)
class Found:
    """A detection as matching sees it."""

    label: str
    time_s: float
    confidence: float = 1.0
    fired_s: float | None = None  # when it was known: the end of the window that decided it


@dataclass
class Outcome:
    """The counts of one or more streams."""

    hits: int = 0
    wrong: int = 0
    false_accepts: int = 0
    duplicates: int = 0
    misses: int = 0
    late: int = 0                  # hits later than max_latency_s after their speech ended
    seconds: float = 0.0
    latencies: list = field(default_factory=list)       # seconds from speech end to fired, per timed hit
    said: Counter = field(default_factory=Counter)      # keyword -> times said
    heard: Counter = field(default_factory=Counter)     # keyword -> hits
    confusions: Counter = field(default_factory=Counter)  # (said, detected) -> wrong words

    def __iadd__(self, other: "Outcome") -> "Outcome":
        for name in ("hits", "wrong", "false_accepts", "duplicates", "misses", "late", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.latencies.extend(other.latencies)
        self.said.update(other.said)
        self.heard.update(other.heard)
        self.confusions.update(other.confusions)
        return self

    @property
    def keywords_said(self) -> int:
        return sum(self.said.values())

    @property
    def recall(self) -> float:
        return self.hits / self.keywords_said if self.keywords_said else float("nan")

    @property
    def recall_on_time(self) -> float:
        return (self.hits - self.late) / self.keywords_said if self.keywords_said else float("nan")

    @property
    def fa_per_hour(self) -> float:
        return self.false_accepts / (self.seconds / 3600) if self.seconds > 0 else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "recall": _r(self.recall), "miss_rate": _r(1 - self.recall),
            "false_accepts_per_hour": _r(self.fa_per_hour), "false_accepts": self.false_accepts,
            "duplicates": self.duplicates, "wrong_words": self.wrong, "hits": self.hits, "misses": self.misses,
            "keywords_said": self.keywords_said, "hours": _r(self.seconds / 3600),
            "recall_on_time": _r(self.recall_on_time), "late": self.late, "latency_s": latency_stats(self.latencies),
            "recall_per_keyword": {k: _r(self.heard[k] / n) for k, n in sorted(self.said.items())},
            "wrong_word_pairs": {f"{a}->{b}": n for (a, b), n in sorted(self.confusions.items())},
        }


def _r(x: float) -> float | None:
    return None if x != x else round(float(x), 6)


def latency_stats(latencies: Sequence[float]) -> dict[str, Any]:
    """p50 / p90 / p99 / max of hits' latencies (seconds after their speech ended)."""
    if not len(latencies):
        return {"n": 0}
    x = np.asarray(latencies, float)
    return {"n": int(len(x)), **{f"p{q}": _r(np.percentile(x, q)) for q in (50, 90, 99)}, "max": _r(x.max())}


def match(truth: Sequence[Truth], found: Iterable[Found], duration_s: float,
          tolerance_s: float = TOLERANCE_S, max_latency_s: float | None = None) -> Outcome:
    """Match one stream's detections to its truth (the rules above)."""
    out = Outcome(seconds=float(duration_s))
    times = np.array([t.time_s for t in truth], float)
    taken = np.zeros(len(truth), bool)
    for t in truth:
        if t.label not in NOT_KEYWORDS:
            out.said[t.label] += 1
    for det in sorted(found, key=lambda d: d.time_s):
        near = np.abs(times - det.time_s) <= tolerance_s + 1e-9 if len(times) else np.zeros(0, bool)
        free = np.flatnonzero(near & ~taken)
        if len(free) == 0:
            out.false_accepts += 1
            out.duplicates += int(near.any())
            continue
        i = int(free[np.argmin(np.abs(times[free] - det.time_s))])
        taken[i] = True
        said = truth[i].label
        if said in NOT_KEYWORDS:
            out.false_accepts += 1
        elif said == det.label:
            out.hits += 1
            out.heard[said] += 1
            if det.fired_s is not None and truth[i].end_s is not None:
                latency = float(det.fired_s) - float(truth[i].end_s)
                out.latencies.append(latency)
                out.late += int(max_latency_s is not None and latency > max_latency_s + 1e-9)
        else:
            out.wrong += 1
            out.confusions[(said, det.label)] += 1
    out.misses = sum(1 for i, t in enumerate(truth) if not taken[i] and t.label not in NOT_KEYWORDS)
    return out


def det_curve(thresholds: Sequence[float], detect: Callable[[float, int], list[Found]],
              truths: Sequence[Sequence[Truth]], durations: Sequence[float],
              tolerance_s: float = TOLERANCE_S, max_latency_s: float | None = None) -> list[dict[str, Any]]:
    """One row per threshold: ``detect(threshold, stream_index)`` gives that stream's detections;
    the row has the threshold, miss rate, recall, recall on time, false accepts per hour and wrong words,
    and the counts behind them (hits, false accepts, late hits: what pools over several curves)."""
    rows = []
    for thr in thresholds:
        total = Outcome()
        for i, (truth, seconds) in enumerate(zip(truths, durations)):
            total += match(truth, detect(float(thr), i), seconds, tolerance_s, max_latency_s)
        rows.append({"threshold": round(float(thr), 6), "miss_rate": _r(1 - total.recall), "recall": _r(total.recall),
                     "recall_on_time": _r(total.recall_on_time), "false_accepts_per_hour": _r(total.fa_per_hour),
                     "hits": total.hits, "false_accepts": total.false_accepts, "wrong_words": total.wrong,
                     "late": total.late})
    return rows


def pick_threshold(curve: Sequence[dict[str, Any]], target_fa_per_hour: float,
                   recall_key: str = "recall") -> dict[str, Any] | None:
    """The row with the best recall (``recall_key``: ``recall``, or ``recall_on_time`` where late
    hits do not count) among those at or under ``target_fa_per_hour``; among ties the fewest false
    accepts, then the highest threshold (the most margin on unseen audio). ``None`` if no
    threshold reaches the target."""
    ok = [r for r in curve if r["false_accepts_per_hour"] is not None and r["false_accepts_per_hour"] <= target_fa_per_hour]
    if not ok:
        return None
    return max(ok, key=lambda r: (r[recall_key] or 0.0, -r["false_accepts_per_hour"], r["threshold"]))
